"""One budgeted fetcher for replay, health --deep, audit and `pythia-forensics fetch`.

`Fetcher` turns "I need revision R of model M" into a *hold*: sized first (a dry run, no
download), admitted by the ledger beside the hub cache (`lease.Ledger`) only while the bytes
of every live hold of every worker on that cache stay within the disk budget, then fetched
(in a background thread for prefetch) and finally released: the last worker holding a
revision evicts it (`scan_cache_dir().delete_revisions`, shared blobs stay), others leave it.
So N workers sharing one cache and one `--disk-budget` hold at most the budget plus the one
revision a waiting worker may always take when nothing at all is held (planning checks that
one checkpoint fits), and no worker ever evicts what another is reading. A killed worker's
holds expire after `lease.timeout_s()` and the next worker to ask reaps them.

Local sources are read in place: holds on them cost nothing and are never evicted.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pythia_forensics.checkpoints.lease import LEASE_POLL_MAX_S, Lease, Ledger
from pythia_forensics.constants import ENV_KILL_AFTER_FETCHES, LEDGER_DIR
from pythia_forensics.errors import DiskBudgetError

if TYPE_CHECKING:
    from pythia_forensics.checkpoints.registry import ModelSpec
    from pythia_forensics.checkpoints.source_records import CheckpointRecord, CheckpointSource
    from pythia_forensics.checkpoints.sources_hub import HubSource

__all__ = ["Fetcher", "Hold", "StageSummary", "stage", "select_revisions", "format_size", "check_fits", "ledger_for"]


def format_size(n: int) -> str:
    """`1234567` -> `1.23 MB` (decimal units, as disk budgets are written)."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def check_fits(model: str, revision: str, need: int, budget: int | None) -> None:
    """Raise DiskBudgetError when one checkpoint alone exceeds the budget.

    Raises:
        DiskBudgetError: `need` > `budget`.
    """
    if budget is not None and need > budget:
        raise DiskBudgetError(
            f"disk budget {format_size(budget)} is smaller than one checkpoint: {model}@{revision} "
            f"needs {format_size(need)}; the disk budget must be at least {format_size(need)}",
            param="disk_budget",
        )


def ledger_for(cache_dir: str | Path) -> Ledger:
    """The ledger beside a hub cache (`CACHE/.pf-ledger/`)."""
    return Ledger(Path(cache_dir) / LEDGER_DIR)


@dataclass
class Hold:
    """A revision this worker holds: admitted by the ledger, fetched or being fetched."""

    source: CheckpointSource
    revision: str
    total: int = 0             # bytes of the revision's files
    download: int = 0          # of which the cache lacked when sized
    lease: Lease | None = None
    extra: tuple[str, ...] = ()    # further files (health: the other weight format)
    record: CheckpointRecord | None = None
    released: bool = False
    started: float = field(default=0.0, repr=False)

    @property
    def hub(self) -> bool:
        return getattr(self.source, "source", None) == "hub"


class Fetcher:
    """Fetch revisions within one disk budget shared by every worker on the cache.

    Args:
        budget: most bytes held at once by all workers on a cache (None: no limit).
        evict: evict released revisions (nobody else holding them). Default: when a budget
            is set (the cache is then working space); without one the cache is the user's.
        prefetch: background download threads (1: one revision downloads while one scores).
    """

    def __init__(self, budget: int | None, *, evict: bool | None = None, prefetch: int = 1) -> None:
        self.budget = budget
        self.evict = budget is not None if evict is None else evict
        self.pool = ThreadPoolExecutor(max_workers=max(1, prefetch), thread_name_prefix="pf-prefetch")
        self.held: list[Hold] = []
        self.peak = 0              # most bytes this worker held at once
        self.downloaded = 0
        self.reused = 0
        self.evicted = 0
        self.fetches = 0
        self.intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._ledgers: dict[Path, Ledger] = {}
        self._kill_after = int(os.environ.get(ENV_KILL_AFTER_FETCHES) or 0)

    # -- admission
    def _ledger(self, source: HubSource) -> Ledger:
        root = Path(source.cache_dir)
        if root not in self._ledgers:
            self._ledgers[root] = ledger_for(root)
        return self._ledgers[root]

    def _evictor(self, source: HubSource):
        from pythia_forensics.checkpoints.sources import evict_cached

        def evict(repo: str, commit: str, keep: frozenset[str] = frozenset()) -> int:
            freed = int(evict_cached(source.cache_dir, repo, commit, keep_blobs=keep) or 0)
            with self._lock:
                self.evicted += freed
            return freed

        return evict

    def acquire(self, source: CheckpointSource, revision: str, *, wait: bool = True, extra: Sequence[str] = ()) -> Hold | None:
        """Size `revision` and take a hold on it once the shared budget has room.

        Args:
            wait: block until admitted; False returns None when the budget is full now.
            extra: more file names of the revision to fetch with it (counted in the size).

        Returns:
            The hold, or None (only with `wait=False`).

        Raises:
            DiskBudgetError: the revision alone exceeds the budget.
            SourceError, RevisionNotFoundError: from the source.
        """
        hold = Hold(source=source, revision=revision, extra=tuple(extra))
        if not hold.hub:
            self.held.append(hold)
            return hold
        size = source.size(revision)
        listing = source.listing(revision)
        extra_bytes = sum(f.size for f in listing.files if f.name in hold.extra and f.name not in listing.fetch_names)
        hold.total, hold.download = size.total_bytes + extra_bytes, size.download_bytes + extra_bytes
        check_fits(source.model, revision, hold.total, self.budget)
        ledger = self._ledger(source)
        # the cache names a blob after its ETag: the sha256 of LFS files, the git blob id of others
        names = set(listing.fetch_names) | set(hold.extra)
        blobs = [f.sha256 if f.lfs else f.blob_id for f in listing.files
                 if f.name in names and (f.sha256 if f.lfs else f.blob_id)]
        delay = 0.05
        while True:
            lease = ledger.reserve(source.repo, str(listing.commit), hold.total, self.budget,
                                   self._evictor(source), blobs=blobs)
            if lease is not None or not wait:
                break
            time.sleep(delay)
            delay = min(LEASE_POLL_MAX_S, delay * 1.5)
        if lease is None:
            return None
        hold.lease = lease
        self.held.append(hold)
        self.peak = max(self.peak, sum(h.total for h in self.held if h.hub))
        return hold

    # -- fetching
    def fetch(self, hold: Hold) -> CheckpointRecord:
        """Fetch a held revision now (in this thread). Returns its `CheckpointRecord`."""
        start = time.perf_counter()
        try:
            record = hold.source.fetch(hold.revision)
            if hold.extra:
                hold.source.fetch_files(hold.revision, [n for n in hold.extra])
        finally:
            with self._lock:
                self.intervals.append((start, time.perf_counter()))
        with self._lock:
            if hold.hub:
                self.downloaded += hold.download
                self.reused += hold.total - hold.download
            self.fetches += 1
            fetches = self.fetches
        hold.record = record
        if self._kill_after and fetches >= self._kill_after:
            # test fault hook: die like a preempted node, with holds and claims on disk
            os.kill(os.getpid(), signal.SIGKILL)
        return record

    def submit(self, hold: Hold) -> Future:
        """Fetch a held revision in the background (prefetch)."""
        return self.pool.submit(self.fetch, hold)

    # -- release
    def release(self, hold: Hold) -> int:
        """Give a hold back; the last holder evicts the revision (when evicting).

        Returns:
            Bytes freed on disk.
        """
        if hold.released:
            return 0
        hold.released = True
        if hold in self.held:
            self.held.remove(hold)
        if not hold.hub or hold.lease is None:
            return 0
        source = hold.source
        evict = self._evictor(source) if self.evict else None
        before = self.evicted
        self._ledger(source).release(hold.lease, evict)
        return self.evicted - before

    def release_all(self) -> None:
        for hold in list(self.held):
            try:
                self.release(hold)
            except Exception:  # noqa: BLE001 - best effort on the way out; leases expire anyway
                if hold.lease is not None:
                    hold.lease.release()

    def close(self, *, wait: bool = True) -> None:
        """Stop the prefetch thread and drop every hold. On an error or Ctrl-C do not wait
        for an in-flight download: huggingface_hub resumes its partial file next time."""
        self.pool.shutdown(wait=wait, cancel_futures=True)
        self.release_all()

    def fetch_all(self, items: Iterable[tuple[CheckpointSource, str]]) -> list[CheckpointRecord]:
        """Fetch each (source, revision) in turn, keeping them (no eviction): staging."""
        out = []
        for source, revision in items:
            hold = self.acquire(source, revision)
            assert hold is not None
            out.append(self.fetch(hold))
            if hold.lease is not None:
                hold.lease.release()   # staged files stay; the hold only guarded the download
            hold.released = True
            self.held.remove(hold)
        return out


# --- choosing revisions and staging them ------------------------------------------------------
def select_revisions(spec: ModelSpec, names: Sequence[str], steps: str | Sequence[int] | None) -> list[str]:
    """The revision names a `--steps` spec picks from what a source lists (one per step: the
    grid's own branch -- `step<N>`, `step<N>-tokens<T>B`, `ckpt_359` -- wins over an alias of
    it such as `main`).

    Raises:
        StepSpecError: a malformed spec, or steps the source lacks (names the model; offline,
            says that only staged revisions are visible).
    """
    from pythia_forensics.errors import StepSpecError
    from pythia_forensics.checkpoints.registry import parse_steps
    from pythia_forensics.checkpoints.sources import offline

    by_step: dict[int, str] = {}
    for name in names:
        step = spec.step_of(name)
        aliases = spec.aliases or {}
        if step is not None and (step not in by_step or (by_step[step] in aliases and name not in aliases)):
            by_step[step] = name
    text = steps if isinstance(steps, (str, type(None))) else ",".join(str(int(x)) for x in steps)
    try:
        chosen = parse_steps(text, sorted(by_step))
    except StepSpecError as exc:  # say which model, the grid differs between models
        hint = ("; HF_HUB_OFFLINE is set, so only staged revisions exist here: stage the others on a node with "
                f"network with `pythia-forensics fetch {spec.repo if spec.suite == 'hub' else spec.name} --steps ...`") if spec.source == "hub" and offline() else ""
        raise StepSpecError(f"{spec.name} ({spec.repo or spec.path}): {exc}{hint}", param=exc.param) from exc
    return [by_step[x] for x in chosen]


@dataclass(frozen=True)
class StageSummary:
    """What `stage` put in the cache: per model, the revisions and their bytes."""

    cache_dir: str
    revisions: tuple[tuple[str, str, str], ...]   # (model, revision, commit)
    total_bytes: int
    downloaded_bytes: int

    def render(self) -> str:
        models = sorted({m for m, _, _ in self.revisions})
        return (f"staged {len(self.revisions)} revisions of {len(models)} models ({', '.join(models)}) in "
                f"{self.cache_dir}: {format_size(self.total_bytes)} in all, {format_size(self.downloaded_bytes)} "
                "downloaded now; on the compute nodes set HF_HUB_OFFLINE=1 and pass the same --cache-dir")


def stage(models: Sequence[str], *, steps: str | Sequence[int] | None = "all", suite_dir: str | Path | None = None,
          cache_dir: str | Path | None = None, disk_budget: int | None = None,
          hub_options: dict[str, Any] | None = None, progress: bool = True) -> StageSummary:
    """Download exactly what a replay of `steps` needs (weights, config, tokenizer, and the
    branch refs that make names resolve offline) into one hub cache, and keep it.

    Args:
        models: registry names or hub ids.
        steps: as for replay.
        cache_dir: the cache the compute nodes will read (default: huggingface_hub's).
        disk_budget: refuse, before downloading anything, when the staged revisions would
            exceed this many bytes in the cache.
        hub_options: extra `HubSource` options (endpoint, token, retries).

    Returns:
        A `StageSummary`.

    Raises:
        PFError: a local model (nothing to stage), HF_HUB_OFFLINE set; DiskBudgetError:
            the staging does not fit; UnknownModelError, StepSpecError, SourceError.
    """
    from tqdm.auto import tqdm

    from pythia_forensics.errors import PFError
    from pythia_forensics.checkpoints.registry import resolve_model
    from pythia_forensics.checkpoints.sources import HubSource, offline

    if offline():
        raise PFError("HF_HUB_OFFLINE is set: `fetch` stages revisions from the hub, so run it where the hub is "
                      "reachable (a login node) without HF_HUB_OFFLINE")
    plan: list[tuple[HubSource, str]] = []
    for name in dict.fromkeys(models):
        spec = resolve_model(name, suite_dir=suite_dir)
        if spec.source == "local":
            raise PFError(f"{spec.name} is a local folder ({spec.path}): nothing to stage, compute nodes read it in place")
        source = HubSource(spec, cache_dir=cache_dir, **(hub_options or {}))
        plan += [(source, rev) for rev in select_revisions(spec, source.revisions(), steps)]
    sources_of = {id(src): src for src, _ in plan}
    sizes = [src.size(rev) for src, rev in plan]
    total = sum(s.total_bytes for s in sizes)
    download = sum(s.download_bytes for s in sizes)
    if disk_budget is not None and total > disk_budget:
        raise DiskBudgetError(f"staging {len(plan)} revisions needs {format_size(total)} in the cache, more than the "
                              f"disk budget {format_size(disk_budget)}; stage fewer steps or allow a larger disk budget",
                              param="disk_budget")
    fetcher = Fetcher(None, evict=False)
    try:
        records = fetcher.fetch_all(tqdm(plan, desc="fetch", unit="rev", disable=not progress))
    finally:
        fetcher.close()
    # the staged plan beside the cache: with the hub's branch list, what an offline node may
    # expect to find (and, once evicted, names the command that stages it again)
    for src in sources_of.values():
        src.remember(src.branches(), staged=[rev for s2, rev in plan if s2 is src])
    root = str(plan[0][0].cache_dir) if plan else str(cache_dir or "")
    return StageSummary(cache_dir=root, revisions=tuple((r.model, r.revision, str(r.commit)) for r in records),
                        total_bytes=total, downloaded_bytes=download)
