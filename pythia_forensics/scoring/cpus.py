"""How many CPUs this process may really use, and the OpenMP wait policy scoring runs under.

Why this matters (issue #17, measured on 2 cores at load average 11-19): torch's OpenMP
threads (libgomp) spin-wait between parallel regions by default. A scorer of a small model runs
thousands of short regions, so on a machine where other jobs want the cores its idle threads
burn the CPU that its working thread, and the other jobs, need: two threads then scored the four
shipped batteries 8-17x slower than one. With ``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep,
and two threads cost the same as one on the busy machine. libgomp reads the policy once, when
torch is first imported, so `set_wait_policy` runs when `pythia_forensics` is imported.

Pure functions take what they read as arguments, so tests inject quotas and affinities.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pythia_forensics.constants import THREADS_ENV
from pythia_forensics.errors import ScoringError
from pythia_forensics.scoring.options import check_count

__all__ = ["available_cpus", "cgroup_cpu_limit", "pinned_kernels", "resolve_threads", "set_wait_policy",
           "split_threads", "threads_from_env", "wait_policy"]

# libgomp's default spin-wait made 2 threads 8-17x slower than 1 beside other jobs (2 cores,
# load 11-19); PASSIVE idle threads sleep instead. Set when pythia_forensics is imported
# (before torch), unless the user set OMP_WAIT_POLICY.
OMP_WAIT_POLICY_DEFAULT = "PASSIVE"

_CGROUP_ROOT = Path("/sys/fs/cgroup")
# what `set_wait_policy` found: the policy libgomp read, or None when torch came first and
# the policy it read is not known from here
_policy_at_import: str | None = None


def set_wait_policy(environ: dict[str, str] | None = None, modules: dict | None = None) -> str | None:
    """Set ``OMP_WAIT_POLICY`` to `OMP_WAIT_POLICY_DEFAULT` unless the user chose one.

    Only before torch is imported (afterwards libgomp has read its environment and a changed
    variable would be recorded without having taken effect).

    Args:
        environ: the environment to edit (default ``os.environ``).
        modules: the imported modules (default ``sys.modules``).

    Returns:
        The policy in force (``"PASSIVE"``, the user's value, or ``"default"`` when unset), or
        None when torch was imported first and the policy is unknown.
    """
    global _policy_at_import
    env = os.environ if environ is None else environ
    mods = sys.modules if modules is None else modules
    if "torch" in mods:
        value = env.get("OMP_WAIT_POLICY")
        _policy_at_import = None if value is None else value
        return _policy_at_import
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY_DEFAULT)
    _policy_at_import = env["OMP_WAIT_POLICY"]
    return _policy_at_import


def wait_policy() -> str:
    """The OpenMP wait policy this process's torch threads run under, for the records:
    ``PASSIVE``/``ACTIVE`` (or the user's spelling), ``default`` (libgomp spins, then sleeps),
    or ``unknown`` (torch was imported before pythia_forensics, with the variable unset)."""
    if _policy_at_import is not None:
        return _policy_at_import
    return "unknown"


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT) -> int | None:
    """CPUs the cgroup CPU quota allows (rounded up), None when there is no quota.

    Reads cgroup v2 ``cpu.max`` (``"200000 100000"`` or ``"max 100000"``), else cgroup v1
    ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none). Unreadable files count
    as no quota.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def available_cpus(affinity: int | None = None, quota: int | None = -1) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup CPU quota.

    Args:
        affinity: CPUs in the affinity mask (default: read it; ``os.cpu_count()`` where the
            platform has no affinity call).
        quota: the cgroup limit (`cgroup_cpu_limit`); -1 (default) reads it, None = no quota.

    Returns:
        At least 1.
    """
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            affinity = os.cpu_count() or 1
    if quota == -1:
        quota = cgroup_cpu_limit()
    return max(1, min(affinity, quota) if quota is not None else affinity)


def threads_from_env(environ: dict[str, str] | None = None) -> tuple[int, str] | None:
    """The thread count the environment asks for: ``$PF_THREADS``, else ``$OMP_NUM_THREADS``
    (a positive integer each), as ``(count, variable name)``; None when neither is set.

    Raises:
        ValueError: ``$PF_THREADS`` is set but is not a positive integer (names the value).
    """
    env = os.environ if environ is None else environ
    text = env.get(THREADS_ENV, "").strip()
    if text:
        if not (text.isascii() and text.isdigit() and int(text) >= 1):
            raise ValueError(f"{THREADS_ENV}={text!r} is not a positive integer")
        return int(text), THREADS_ENV
    text = env.get("OMP_NUM_THREADS", "").strip()
    if text.isascii() and text.isdigit() and int(text) >= 1:
        return int(text), "OMP_NUM_THREADS"
    return None


def resolve_threads(threads: int | str = "auto") -> int:
    """The intra-op thread count ``auto`` means: ``$PF_THREADS``, else ``$OMP_NUM_THREADS`` if
    it is a positive integer, else the CPUs this process may run on (its affinity mask, capped
    by a cgroup CPU quota: `available_cpus`).

    A function of the environment only, never of what ran earlier in the process (a test or a
    trainer calling ``torch.set_num_threads``) nor of the machine's momentary load, so every
    process started the same way on the same machine scores with the same kernels. A busy
    machine is handled by the OpenMP wait policy instead (idle threads sleep).

    Raises:
        ScoringError: ``threads`` is neither ``auto`` nor a positive integer, or
            ``$PF_THREADS`` is set to something else.
    """
    check_count(threads, what="threads", param="threads")
    if threads != "auto":
        return int(threads)
    try:
        env = threads_from_env()
    except ValueError as exc:
        raise ScoringError(f"{exc}; set it to a thread count such as 2, or unset it") from exc
    return env[0] if env is not None else available_cpus()


def split_threads(threads: int, batches: int, device_type: str) -> tuple[int, int]:
    """(workers, kernel threads): how a scoring call spends its `threads` CPUs.

    On CPU the batches of a plan are independent, so they run side by side on ``workers``
    threads, each batch with single-threaded kernels, rather than one at a time with
    ``threads``-way kernels. Why (issue #17, 2 cores): a small model's batch is thousands of
    short kernels, and each multi-threaded one wakes and joins a thread team; under the
    passive wait policy that join costs about as much as the kernel itself. Side by side, the
    body ran 1.2-1.9x and the LM head 1.3-2.3x faster (mini-s to Pythia-70m shapes), with
    nothing to synchronise when another job takes a core. Kernel threads are used only where
    there are fewer batches than threads. On CUDA one worker drives the device.

    A function of its arguments only (the plan's batch count, not the load), so a unit's
    kernels, hence its numbers, are fixed by its options.
    """
    if device_type == "cuda" or threads <= 1:
        return 1, max(1, threads)
    workers = max(1, min(threads, batches))
    return workers, max(1, threads // workers)


@contextmanager
def pinned_kernels(threads: int, device_type: str) -> Iterator[dict[str, Any]]:
    """Fix the process-wide torch settings that change scores, restore them afterwards.

    Deterministic algorithms are enabled on CPU, and on CUDA only when
    ``CUBLAS_WORKSPACE_CONFIG`` is set (cuBLAS needs it before its first call; without it
    torch would warn on every matmul).

    Args:
        threads: torch intra-op threads for the block.
        device_type: ``cpu`` or ``cuda``.

    Yields:
        The settings that ran (for ``frame.attrs``): ``threads, deterministic_algorithms,
        float32_matmul_precision, interop_threads, omp_wait_policy``.
    """
    import torch

    deterministic = device_type != "cuda" or bool(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_float32_matmul_precision())
    if before[0] != threads:
        torch.set_num_threads(threads)
    # warn_only: an op without a deterministic kernel warns instead of failing a long sweep
    torch.use_deterministic_algorithms(deterministic or before[1], warn_only=True if deterministic else before[2])
    torch.set_float32_matmul_precision("highest")
    try:
        yield {"threads": threads, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
               "float32_matmul_precision": "highest", "interop_threads": torch.get_num_interop_threads(),
               "omp_wait_policy": wait_policy()}
    finally:
        if torch.get_num_threads() != before[0]:
            torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.set_float32_matmul_precision(before[3])
