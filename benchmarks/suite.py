"""Random Pythia-shaped checkpoints: the layer shapes the benchmark measures and the local
suites `DIR/<shape>/step<N>/` it builds from them (random GPT-NeoX weights with the registry's
layer shape, vocabulary padded to 50304 rows, the real GPT-NeoX-20B tokenizer, `save_pretrained`
layout)."""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.settings import (
    BENCH_LARGE_SHAPES,
    BENCH_QUICK_LARGE_SHAPE,
    BENCH_QUICK_SHAPE,
    BENCH_REVISIONS,
    BENCH_SEED,
    BENCH_SHAPES,
    BENCH_WEIGHT_STD,
    PAD_ID,
)
from pythia_forensics.checkpoints.manifest import Manifest, read_manifest, write_manifest
from pythia_forensics.constants import STEP_DIR_PREFIX, neox_tokenizer_file
from pythia_forensics.errors import PFError

if TYPE_CHECKING:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

__all__ = ["BenchShape", "BenchmarkError", "bench_shapes", "build_suite", "neox_config", "neox_tokenizer",
           "random_model", "revision_dirs"]


class BenchmarkError(PFError, RuntimeError):
    """The benchmark cannot run as asked (missing tokenizer or competitor library, bad option)."""


@dataclass(frozen=True)
class BenchShape:
    """A GPT-NeoX layer shape (Pythia's, or a tiny one for --quick and tests)."""

    name: str
    layers: int
    d_model: int
    heads: int
    vocab_size: int = 50304

    @property
    def params_nonembedding(self) -> int:
        d, n = self.d_model, self.layers
        return 12 * d * d * n + 13 * d * n + 2 * d

    @property
    def params_total(self) -> int:
        return self.params_nonembedding + 2 * self.vocab_size * self.d_model


def registry_shape(name: str) -> BenchShape:
    """The layer shape of a Pythia registry model (`pythia-70m`)."""
    from pythia_forensics.checkpoints.registry import get_suite

    m = get_suite("pythia").model(name)
    return BenchShape(name=name, layers=int(m.layers), d_model=int(m.d_model), heads=int(m.heads),
                      vocab_size=int(m.vocab_size))


def bench_shapes(names: Sequence[str] | None = None, *, quick: bool = False,
                 large: bool = False) -> tuple[BenchShape, ...]:
    """The benchmark's shapes, read from the Pythia registry and the mini suite's config.

    Args:
        names: registry model names (`pythia-70m`) or mini-suite names (`mini-s`, whose body
            gets Pythia's vocabulary: one tokenizer for all); default `BENCH_SHAPES`, or
            `BENCH_LARGE_SHAPES` with `large`.
        quick: return one tiny shape with Pythia's padded vocabulary instead.
        large: the large tier's shapes (with `quick`: a second, slightly larger tiny shape).

    Returns:
        The shapes, in the order asked.
    """
    from pythia_forensics.experiments.mini.config import demo_config

    vocab = registry_shape("pythia-70m").vocab_size
    if quick:
        return ((BenchShape(name="tiny-large", vocab_size=vocab, **BENCH_QUICK_LARGE_SHAPE),) if large
                else (BenchShape(name="tiny", vocab_size=vocab, **BENCH_QUICK_SHAPE),))
    if names is None:
        names = BENCH_LARGE_SHAPES if large else BENCH_SHAPES
    minis = {m.name: m for m in demo_config().models}
    return tuple(BenchShape(name=n, layers=minis[n].layers, d_model=minis[n].d_model, heads=minis[n].heads,
                            vocab_size=vocab) if n in minis else registry_shape(n) for n in names)


def _require_tokenizer() -> Path:
    path = neox_tokenizer_file()
    if path is None or not path.is_file():
        where = "PF_NEOX_TOKENIZER is not set" if path is None else f"GPT-NeoX-20B tokenizer not found at {path}"
        raise BenchmarkError(f"{where}: the benchmark needs Pythia's real tokenizer; "
                             "set PF_NEOX_TOKENIZER to its tokenizer.json")
    return path


def neox_tokenizer() -> PreTrainedTokenizerFast:
    """Pythia's GPT-NeoX-20B fast tokenizer (pad = <|padding|>, no BOS added).

    Raises:
        BenchmarkError: PF_NEOX_TOKENIZER is unset or names no file.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(_require_tokenizer()), bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|padding|>")


def neox_config(shape: BenchShape) -> GPTNeoXConfig:
    """Pythia's architecture in `shape`: rotary on a quarter of each head, parallel residual,
    untied head."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.d_model, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=4 * shape.d_model, max_position_embeddings=2048,
        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False,
        layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=0, pad_token_id=PAD_ID, dtype="float32",
    )


def randomise(model: GPTNeoXForCausalLM, seed: int, std: float = BENCH_WEIGHT_STD) -> None:
    """Fill every matrix with N(0, std) (seeded), LayerNorm gains with 1, biases with 0."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                # drawn on the CPU generator, then copied: the same numbers on any device
                p.copy_(torch.empty(p.shape).normal_(0.0, std, generator=gen))
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def random_model(shape: BenchShape, *, dtype: str = "float32", device: str = "cpu", seed: int = BENCH_SEED,
                 std: float = BENCH_WEIGHT_STD) -> GPTNeoXForCausalLM:
    """A random GPT-NeoX in `shape`, built directly in `dtype` on `device` (no fp32 copy of a
    large model first), in eval mode."""
    import torch
    from transformers import GPTNeoXForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = GPTNeoXForCausalLM(neox_config(shape)).eval()
    finally:
        torch.set_default_dtype(previous)
    randomise(model, seed, std)
    return model


def build_suite(directory: str | Path, shape: BenchShape, *, revisions: int = BENCH_REVISIONS,
                seed: int = BENCH_SEED, std: float = BENCH_WEIGHT_STD, progress: bool = True) -> Path:
    """Write (or reuse) a local suite `DIR/<shape>/step<N>/` of random revisions.

    Each revision has its own random weights (seed + k), so revisions really differ. A suite
    already built with the same shape, revisions, seed and std is reused.

    Args:
        directory: the suite folder (`DIR`).
        shape: the layer shape.
        revisions: how many `step<N>` revisions (steps 1000, 2000, ...).
        seed: base seed (revision k uses seed + k).
        std: weight standard deviation.
        progress: show a progress bar.

    Returns:
        The model folder `DIR/<shape.name>`.

    Raises:
        BenchmarkError: the GPT-NeoX tokenizer is missing.
    """
    from tqdm.auto import tqdm

    tokenizer = neox_tokenizer()
    model_dir = Path(directory) / shape.name
    steps = [1000 * (k + 1) for k in range(revisions)]
    recipe = {"shape": asdict(shape), "revisions": revisions, "seed": seed, "std": std}
    try:
        old = read_manifest(model_dir)
    except PFError:
        old = None
    if old is not None:
        if old.bench == recipe and all((model_dir / f"{STEP_DIR_PREFIX}{s}" / "model.safetensors").exists()
                                       for s in steps):
            return model_dir
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model = random_model(shape, seed=seed, std=std)
    for k, step in enumerate(tqdm(steps, desc=f"build {shape.name}", unit="rev", disable=not progress)):
        randomise(model, seed + k, std)
        out = model_dir / f"{STEP_DIR_PREFIX}{step}"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    write_manifest(model_dir, Manifest(  # last: marks the suite complete
        model=shape.name, params_total=shape.params_total, params_nonembedding=shape.params_nonembedding,
        layers=shape.layers, d_model=shape.d_model, heads=shape.heads, vocab_size=shape.vocab_size,
        seed=seed, steps=tuple(steps), precision="float32", bench=recipe,
    ))
    return model_dir


def revision_dirs(model_dir: Path) -> list[Path]:
    """The `step<N>` folders of a model, in step order."""
    from pythia_forensics.checkpoints.registry import checkpoint_folders

    return [Path(model_dir) / name for name in checkpoint_folders(model_dir)]
