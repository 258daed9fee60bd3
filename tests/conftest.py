"""Shared fixtures: tiny real GPT-NeoX checkpoints built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach the network from tests; huggingface_hub/transformers must use what we serve.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Pythia's real tokenizer is not shipped; tests look for it beside the checkout (../shared)
# unless the environment names another copy. The package itself has no such default.
os.environ.setdefault(
    "PF_NEOX_TOKENIZER",
    str(Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt-neox-20b.json"),
)

from tinymodels import save_checkpoint, tiny_neox, train_bpe_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_bpe_tokenizer()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A saved tiny GPT-NeoX revision directory (safetensors + tokenizer)."""
    model = tiny_neox(len(tiny_tokenizer), seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("tiny") / "step100", model, tiny_tokenizer)


@pytest.fixture
def run_cli(capsys):
    """Call the CLI in-process: `run_cli([...]) -> (exit code, stdout, stderr)`."""
    from pythia_forensics.cli import main

    def run(argv):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    return run
