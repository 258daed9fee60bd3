"""This machine's floor for scoring one revision: forward FLOPs over the battery's distinct
trie tokens plus the LM-head rows read, over the measured matmul rate, plus the one exp per
vocabulary row that each read row's exact log-sum-exp needs, over the measured exp rate;
weight bytes over the measured disk read rate."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from benchmarks.battery import BatteryStats
from benchmarks.suite import BenchShape

__all__ = ["lower_bound", "measure_disk_read", "measure_exp_rate", "measure_matmul_flops"]


def measure_matmul_flops(*, size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 matmul FLOP/s of this process's torch threads (size^3 products)."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def measure_exp_rate(*, rows: int = 256, cols: int = 2048, repeats: int = 20) -> float:
    """Best fp32 exp/s of this process's torch threads, in place on a block that stays in
    cache (2 MiB: the most favourable case for the log-sum-exp's exps)."""
    import torch

    block = torch.randn(rows, cols)
    block.exp_().log_()  # warm-up, and keeps the values in range for the repeats
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        block.exp_()
        best = min(best, time.perf_counter() - t0)
        block.log_()
    return rows * cols / best


def measure_disk_read(path: str | Path, *, chunk: int = 16 << 20) -> float:
    """Bytes/s reading a file after asking the kernel to drop it from the page cache
    (posix_fadvise DONTNEED; a VM's host may still cache it, so this is an upper bound)."""
    path = Path(path)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        while os.read(fd, chunk):
            pass
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    return size / max(dt, 1e-9)


def lower_bound(shape: BenchShape, stats: BatteryStats, *, flops_per_s: float, read_bytes_per_s: float,
                weight_bytes: int, exps_per_s: float = math.inf) -> dict[str, float]:
    """This machine's floor for scoring one revision of `shape` on the battery.

    Compute: 2 x non-embedding params per distinct trie token (QKV, output, MLP matmuls),
    plus 4 x layers x d_model x depth per token for attention scores and values, plus
    2 x d_model x vocab rows per distinct context (the LM-head rows actually read), over the
    matmul rate; plus vocab exps per distinct context (an exact log-prob needs the row's
    log-sum-exp over the whole vocabulary) over the exp rate. Loading: the revision's weight
    bytes over the measured disk read speed.

    Args:
        shape: the layer shape.
        stats: the battery's distinct work (`battery_stats`).
        flops_per_s: the measured matmul rate.
        exps_per_s: the measured exp rate (inf: leave the exps out).
        read_bytes_per_s: the measured disk read rate.
        weight_bytes: one revision's weight file size.

    Returns:
        ``{"body_flops", "head_flops", "flops", "exps", "exp_s", "compute_s", "load_s",
        "floor_s"}`` per revision; ``compute_s`` = FLOPs over the matmul rate + ``exp_s``;
        `floor_s` assumes loading overlaps compute (the max of the two).
    """
    body = (2.0 * shape.params_nonembedding * stats.distinct_tokens
            + 4.0 * shape.layers * shape.d_model * stats.attention_positions)
    head = 2.0 * shape.d_model * shape.vocab_size * stats.distinct_contexts
    exps = float(shape.vocab_size) * stats.distinct_contexts
    exp_s = exps / exps_per_s
    compute_s = (body + head) / flops_per_s + exp_s
    load_s = weight_bytes / read_bytes_per_s
    return {"body_flops": body, "head_flops": head, "flops": body + head, "exps": exps, "exp_s": exp_s,
            "compute_s": compute_s, "load_s": load_s, "floor_s": max(compute_s, load_s)}
