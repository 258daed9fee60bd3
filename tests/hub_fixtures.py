"""Builders for tests that need a tiny local suite and the loopback hub serving it.

Import the pieces a test file needs and define fixtures there (conftest.py is shared)::

    from hub_fixtures import build_local_suite, publish_to_hub
    from hubserver import HubServer
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from hubserver import HubServer
from tinymodels import save_checkpoint, tiny_neox

TINY_REPO = "EleutherAI/pythia-tiny"
TINY_MODEL = "pythia-tiny"


def build_local_suite(root: Path, tokenizer, *, model: str = TINY_MODEL, steps=(0, 1, 2, 4),
                      tokens_per_step: int = 4096, hidden: int = 32, layers: int = 2) -> Path:
    """Write `root/<model>/step<N>/` (a distinct random GPT-NeoX per step) and a manifest.

    Returns:
        The model folder `root/<model>`.
    """
    model_dir = Path(root) / model
    params_total = params_nonemb = None
    for i, step in enumerate(steps):
        net = tiny_neox(len(tokenizer), hidden=hidden, layers=layers, seed=1000 + i)
        params_total = sum(p.numel() for p in net.parameters())
        params_nonemb = params_total - net.get_input_embeddings().weight.numel() - net.get_output_embeddings().weight.numel()
        save_checkpoint(model_dir / f"step{step}", net, tokenizer)
    manifest = {
        "model": model, "params_total": params_total, "params_nonembedding": params_nonemb,
        "tokens_per_step": tokens_per_step, "layers": layers, "d_model": hidden, "heads": 4,
        "vocab_size": len(tokenizer), "seed": 0, "steps": list(steps), "corpus": {}, "train": {},
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return model_dir


def publish_to_hub(hub: HubServer, model_dir: Path, *, repo: str = TINY_REPO, main: str | None = "last") -> dict[str, str]:
    """Push every `step<N>/` folder of a local model as a `step<N>` branch (+ `main`).

    Args:
        main: which step folder `main` mirrors ("last" = the highest step; None: no main).

    Returns:
        branch -> commit sha.
    """
    step_dirs = sorted((p for p in Path(model_dir).iterdir() if p.is_dir() and p.name.startswith("step")),
                       key=lambda p: int(p.name[4:]))
    commits = {p.name: hub.add_branch(repo, p.name, p) for p in step_dirs}
    if main is not None:
        source = step_dirs[-1] if main == "last" else Path(model_dir) / main
        commits["main"] = hub.add_branch(repo, "main", source)
    return commits


class DiskPoller:
    """Peak bytes of regular files under a folder, polled in a thread (independent of replay)."""

    def __init__(self, folder: Path, period_s: float = 0.002) -> None:
        self.folder, self.period_s, self.peak = folder, period_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.folder):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if not os.path.islink(path):
                        total += os.stat(path).st_size
                except FileNotFoundError:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._size())
            time.sleep(self.period_s)

    def __enter__(self) -> "DiskPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._size())
