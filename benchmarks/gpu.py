"""The device sections: items/s on the largest Pythia shape that fits the GPU, and one saved
Pythia-1.4b-shaped checkpoint loaded and scored per dtype; plus the support counter's
throughput. Each skips cleanly (a status line) where it cannot run."""
from __future__ import annotations

import math
import os
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.settings import BENCH_GPU_CHECKPOINT_DTYPES, BENCH_GPU_CHECKPOINT_SHAPE, BENCH_GPU_SHAPES
from benchmarks.suite import BenchShape, neox_tokenizer, random_model, registry_shape

if TYPE_CHECKING:
    from pythia_forensics.scoring.probes import ProbeSet

__all__ = ["checkpoint_section", "gpu_section", "support_section"]


def support_section(n_tokens: int) -> dict[str, Any]:
    """The support counter's throughput (`pythia_forensics.corpus.throughput.benchmark`)."""
    if n_tokens <= 0:
        return {"status": "skipped: support_tokens = 0"}
    from pythia_forensics.corpus import throughput

    return {**throughput.benchmark(n_tokens), "status": "ok"}


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _score_twice(model: Any, probes: ProbeSet, tokenizer: Any, *, dtype: str, device: str) -> tuple[list[float], Any]:
    """Score twice (the first call pays kernel selection and batch sizing; the second is what a
    later revision costs): both wall times and the second frame."""
    from pythia_forensics.scoring import score as scoring

    opts = scoring.ScoreOptions(dtype=dtype, device=device, batch_size="auto", vocab_rows="all")
    times, frame = [], None
    for _ in range(2):
        t0 = time.perf_counter()
        frame = scoring.score(model, probes, tokenizer=tokenizer, options=opts)
        _sync(device.startswith("cuda"))
        times.append(time.perf_counter() - t0)
    return times, frame


def _gpu_row(shape: BenchShape, probes: ProbeSet, tokenizer: Any, *, dtype: str, device: str) -> dict[str, Any]:
    import torch

    cuda = device.startswith("cuda")
    model = random_model(shape, dtype=dtype, device=device)
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, frame = _score_twice(model, probes, tokenizer, dtype=dtype, device="cuda" if cuda else "cpu")
        return {"shape": shape.name, "status": "ok", "dtype": dtype, "batch_size": frame.attrs.get("batch_size"),
                "seconds": times[1], "items_per_s": len(probes.items) / times[1],
                "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan}
    finally:
        del model
        if cuda:
            torch.cuda.empty_cache()


def gpu_section(probes: ProbeSet, *, device: str = "cuda", shapes: Sequence[BenchShape] | None = None,
                memory_bytes: int | None = None) -> dict[str, Any]:
    """Items/s on the largest Pythia shape that fits the device (random weights built on the
    device, dtype as `auto` resolves it there, batch size `auto`), plus the smallest shape for
    scale. Skipped cleanly without CUDA.

    Args:
        probes: the battery.
        device: ``cuda`` (the report's section); ``cpu`` exercises the same code in tests.
        shapes: candidate shapes, largest first (default: `BENCH_GPU_SHAPES` from the registry).
        memory_bytes: memory to fit into (default: the GPU's free memory).

    Returns:
        ``{"status", "device", "memory_gib", "rows"}``, one row per shape (ok, skipped or failed).
    """
    import torch

    from pythia_forensics.scoring import score as scoring

    if device.startswith("cuda") and not torch.cuda.is_available():
        return {"status": "skipped: no CUDA device visible to torch"}
    shapes = list(shapes) if shapes is not None else [registry_shape(n) for n in BENCH_GPU_SHAPES]
    cuda = device.startswith("cuda")
    if memory_bytes is None:
        memory_bytes = torch.cuda.mem_get_info()[0] if cuda else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tokenizer = neox_tokenizer()
    rows: list[dict[str, Any]] = []
    fitted = False
    for k, shape in enumerate(shapes):
        if fitted and k != len(shapes) - 1:
            continue  # after the largest that fits, only the smallest (for scale)
        dtype = scoring.resolve_dtype("auto", params=shape.params_total, device="cuda" if cuda else "cpu")
        need = shape.params_total * torch.finfo(getattr(torch, dtype)).bits // 8
        if need > 0.6 * memory_bytes:  # weights plus an auto-sized batch's activations must fit
            rows.append({"shape": shape.name, "status": f"skipped: needs {need / 2**30:.1f} GiB of "
                                                        f"{memory_bytes / 2**30:.1f} GiB free"})
            continue
        try:
            rows.append(_gpu_row(shape, probes, tokenizer, dtype=dtype, device=device))
            fitted = True
        except Exception as exc:  # noqa: BLE001 - an OOM at one size means: try the next
            rows.append({"shape": shape.name, "status": f"failed: {type(exc).__name__}: {str(exc)[:160]}"})
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    return {"status": "ok", "device": name, "memory_gib": memory_bytes / 2**30, "rows": rows}


def _checkpoint_row(folder: Path, probes: ProbeSet, shape: BenchShape, *, dtype: str, device: str,
                    weight_bytes: int) -> dict[str, Any]:
    import torch

    from pythia_forensics.scoring import score as scoring

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, tok = scoring.load_model(folder, dtype=dtype, device=device)
    _sync(cuda)
    load_s = time.perf_counter() - t0
    try:
        times, frame = _score_twice(model, probes, tok, dtype=dtype, device=device)
    finally:
        del model
    return {"shape": shape.name, "dtype": dtype, "status": "ok", "load_s": load_s, "first_score_s": times[0],
            "score_s": times[1], "batch_size": frame.attrs.get("batch_size"),
            "items_per_s": len(probes.items) / times[1], "weight_mb": weight_bytes / 1e6,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan}


def checkpoint_section(probes: ProbeSet, folder: str | Path, *, device: str = "cuda", shape: BenchShape | None = None,
                       dtypes: Sequence[str] = BENCH_GPU_CHECKPOINT_DTYPES) -> dict[str, Any]:
    """One saved checkpoint (default `BENCH_GPU_CHECKPOINT_SHAPE`, random weights, fp16
    safetensors as Pythia ships them) loaded from disk and scored in each dtype: load time,
    first and second scoring time, peak device memory. Skipped cleanly without CUDA.

    Loading does not overlap scoring here: replay overlaps *downloads* with scoring (its
    prefetch thread); a local checkpoint is read by the scoring thread, so load + score is
    the per-revision cost of a local replay.

    Args:
        probes: the battery.
        folder: where to write the checkpoint (removed afterwards).
        device: ``cuda``; ``cpu`` exercises the same code in tests.
        shape: the shape (default: `BENCH_GPU_CHECKPOINT_SHAPE` from the registry).
        dtypes: dtypes to load and score in.

    Returns:
        ``{"status", "rows"}``, one row per dtype (ok or failed).
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return {"status": "skipped: no CUDA device visible to torch"}
    shape = shape or registry_shape(BENCH_GPU_CHECKPOINT_SHAPE)
    folder = Path(folder)
    rows: list[dict[str, Any]] = []
    try:
        model = random_model(shape, dtype="float16", device=device)
        model.save_pretrained(folder, safe_serialization=True)
        del model
        neox_tokenizer().save_pretrained(folder)
        weight_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        for dtype in dtypes:
            try:
                rows.append(_checkpoint_row(folder, probes, shape, dtype=dtype, device=device,
                                            weight_bytes=weight_bytes))
            except Exception as exc:  # noqa: BLE001 - one dtype failing (OOM) leaves the other's row
                rows.append({"shape": shape.name, "dtype": dtype,
                             "status": f"failed: {type(exc).__name__}: {str(exc)[:160]}"})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"status": "ok", "rows": rows}
