"""Running a planned sweep in this process: claim, fetch (with prefetch and a disk budget),
load, score, store; a revision that cannot be used is recorded and the sweep goes on.

Each revision is claimed first (a lease in RESULTS/.pf-claims/), so workers started on one
results folder score every revision once; one claimed by a live worker is left to it. One
model skeleton is loaded per model and later revisions' weights are loaded into it; the
tokenization and forward plan of each (model, probe set) are built once and reused.
"""
from __future__ import annotations

import re
import sys
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from tqdm.auto import tqdm

from pythia_forensics import __version__
from pythia_forensics.constants import CLAIMS_DIR, FAILURES_DIR
from pythia_forensics.errors import DiskBudgetError
from pythia_forensics.sweep.records import ReplayOptions, ReplaySummary, Todo, UnitTiming, interval_overlap
from pythia_forensics.sweep.maintenance import read_failures
from pythia_forensics.sweep.store import ResultsStore

__all__ = ["run_todo", "provenance", "read_failures", "one_line"]


def provenance(record: Any, attrs: Mapping[str, Any], spec: Any = None) -> dict[str, Any]:
    """The provenance columns of one scored unit (`ResultsStore.write(provenance=)`).

    Args:
        record: the checkpoint's record (repo, step, revision, commit, weights_sha256).
        attrs: the score frame's ``attrs`` (or a `ScoredTable`'s): what actually ran.
        spec: the model's `registry.ModelSpec`, for tokens seen; None where unknown.

    Returns:
        Column name -> value.
    """
    import torch
    import transformers

    # tokens seen: from the branch name where the suite's grammar encodes them (OLMo), else
    # step x tokens per step; None where neither is known
    tokens = spec.tokens_seen(record.step, record.revision) if spec is not None else None
    return {
        "repo": record.repo, "step": record.step, "tokens": tokens, "commit": record.commit,
        "weights_sha256": record.weights_sha256,
        # what actually ran (an `auto` batch size halves itself on out-of-memory)
        "batch_size": int(attrs.get("batch_size", 0)), "device": str(attrs.get("device", "")),
        # CPU kernels block by thread count (ulp-level differences), and a busy machine's speed
        # depends on the wait policy: both recorded with the numbers
        "threads": int(attrs.get("threads", 0)), "omp_wait_policy": str(attrs.get("omp_wait_policy", "")),
        "pf_version": __version__,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
    }


# Errors that are the user's to fix for every revision alike: they stop the sweep. Anything
# else going wrong with one revision (unreadable, truncated, mismatched, non-finite, corrupt
# on the hub) is recorded and the sweep goes on.
def _fatal(exc: BaseException) -> bool:
    from pythia_forensics.errors import ProbeFormatError, StoreError, TokenizationError, UnknownProbeSetError

    return not isinstance(exc, Exception) or isinstance(
        exc, (MemoryError, DiskBudgetError, ProbeFormatError, StoreError, TokenizationError, UnknownProbeSetError))


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (a failure record's reason, a warning line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _failure_path(store: ResultsStore, model: str, revision: str) -> Path:
    return Path(store.root) / FAILURES_DIR / _safe(model) / f"{_safe(revision)}.json"


def _record_failure(store: ResultsStore, item: Todo, stage: str, exc: BaseException) -> str:
    from pythia_forensics.atomic import write_json
    from pythia_forensics.checkpoints.lease import worker_id

    reason = one_line(exc)
    target = _failure_path(store, item.spec.name, item.revision)
    target.parent.mkdir(parents=True, exist_ok=True)
    content_key = item.keys[0][0].content_key if item.keys else None
    write_json(target, {
        "model": item.spec.name, "revision": item.revision, "step": item.step, "content_key": content_key,
        "stage": stage, "reason": reason, "error": type(exc).__name__, "worker": worker_id(),
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pf_version": __version__,
    })
    tqdm.write(f"warning: {item.spec.name}@{item.revision} skipped ({stage} failed: {reason}); "
               f"recorded in {Path(store.root) / FAILURES_DIR}", file=sys.stderr)
    return f"{item.spec.name}@{item.revision}"


def _claim_key(item: Todo) -> str:
    content = item.keys[0][0].content_key if item.keys else ""
    return _safe(f"{item.spec.name}--{item.revision}--{content[:16]}")


def _pin_threads(threads: int) -> Callable[[], None]:
    """Set torch's intra-op threads for the run; returns the function that restores them."""
    import torch

    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)

    def restore() -> None:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

    return restore


class _Run:
    """The state of one in-process sweep: the queue, the fetcher, the claims, the loaded model."""

    def __init__(self, todo: list[Todo], store: ResultsStore, opts: ReplayOptions) -> None:
        from pythia_forensics.checkpoints.fetch import Fetcher
        from pythia_forensics.scoring import score as scoring

        self.store, self.opts = store, opts
        # A budget makes the cache working space: evict each revision once scored. Without one,
        # the cache is the user's and keeps everything (a rerun then downloads nothing).
        self.fetcher = Fetcher(opts.disk_budget)
        self.claims_dir = Path(store.root) / CLAIMS_DIR
        self.queue: deque[Todo] = deque(todo)
        self.inflight: deque[tuple[Todo, Any, Future]] = deque()
        self.claims: dict[int, Any] = {}
        self.skeleton: tuple[str, Any, Any] | None = None      # (model name, model, tokenizer)
        # tokenization and forward plan depend on the tokenizer, the probe set and bos only: built
        # once per (model, probe set) and reused by every revision (issue #17)
        self.prepared: dict[tuple[str, str, bool], Any] = {}
        self.threads = scoring.resolve_threads(opts.score.threads)
        self.score_intervals: list[tuple[float, float]] = []
        self.units: list[UnitTiming] = []
        self.failed: list[str] = []
        self.scored = self.written = self.elsewhere = self.done_elsewhere = 0
        # store writes overlap the next revision's load and scoring (one writer, so one
        # revision's writes at a time, in order)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="pf-store")
        self.writing: tuple[Todo, list, float, float, Future] | None = None
        self.bar = tqdm(total=sum(len(t.keys) for t in todo), desc="replay", unit="result",
                        disable=not opts.progress or not todo)

    def drop(self, item: Todo) -> None:
        claim = self.claims.pop(id(item), None)
        if claim is not None:
            claim.release()

    def _claim(self, item: Todo) -> bool:
        """Claim the revision and drop its keys stored since planning; False: leave it."""
        from pythia_forensics.checkpoints.lease import Claim

        claim = Claim.take(self.claims_dir, _claim_key(item))
        if claim is None:       # a live worker is on it
            self.queue.popleft()
            self.elsewhere += 1
            self.bar.update(len(item.keys))
            return False
        self.claims[id(item)] = claim
        item.keys = [(k, p) for k, p in item.keys if not self.store.has(k)]
        if not item.keys:       # another worker finished it since we planned
            self.queue.popleft()
            self.drop(item)
            self.done_elsewhere += 1
            return False
        return True

    def admit(self, wait: bool) -> None:
        """Claim, size and hold the next revision; fetch it in the background."""
        while self.queue:
            item = self.queue[0]
            if id(item) not in self.claims and not self._claim(item):
                continue
            try:
                hold = self.fetcher.acquire(item.source, item.revision, wait=wait)
            except BaseException as exc:
                if _fatal(exc):
                    raise
                self.queue.popleft()
                self.failed.append(_record_failure(self.store, item, "sizing", exc))
                self.drop(item)
                continue
            if hold is None:
                return
            self.queue.popleft()
            self.inflight.append((item, hold, self.fetcher.submit(hold)))
            return

    def load(self, item: Todo, path: Path) -> tuple[Any, Any]:
        """The model with this revision's weights: a new skeleton per model, else weights into it."""
        from pythia_forensics.scoring import score as scoring

        if self.skeleton is None or self.skeleton[0] != item.spec.name:
            self.skeleton = None  # free the previous model before loading the next
            self.prepared.clear()  # plans are checked against the tokenizer object
            model, tokenizer = scoring.load_model(path, dtype=item.keys[0][0].dtype, device=self.opts.score.device)
            self.skeleton = (item.spec.name, model, tokenizer)
        else:
            try:
                scoring.load_weights_into(self.skeleton[1], path)
            except BaseException:
                self.skeleton = None  # half-loaded weights: never reuse this skeleton
                raise
        # load_model and load_weights_into refuse non-finite weights themselves (validation.check_finite)
        _, model, tokenizer = self.skeleton
        return model, tokenizer

    def score_units(self, item: Todo, fetched: Any, model: Any, tokenizer: Any) -> list[tuple[Any, Any, dict]]:
        """Score the revision's missing probe sets in one pass (`scoring.score_tables`: shared
        prefixes once, fuller batches): (key, frame, provenance) per set, each stored as its
        own unit by `_store_units`."""
        from pythia_forensics.scoring import score as scoring

        key0 = item.keys[0][0]
        sets = [probe_set for _, probe_set in item.keys]
        self.bar.set_postfix_str(f"{key0.model}@{key0.revision} {'+'.join(p.name for p in sets)}", refresh=False)
        # keyed by the sets in order: a resumed revision missing fewer sets gets its own plan
        plan_key = (key0.model, tuple(p.sha256 for p in sets), key0.bos)
        if plan_key not in self.prepared:
            self.prepared[plan_key] = scoring.prepare(model, scoring.merged_probe_set(sets), tokenizer=tokenizer,
                                                      bos=key0.bos)
        # the run's options with what the key fixed: `auto` dtype resolved per model, threads once
        options = replace(self.opts.score, dtype=key0.dtype, bos=key0.bos, vocab_rows=key0.vocab_rows,
                          threads=self.threads)
        # Arrow tables, not frames: the store writes them as they are (no pandas round trip)
        scored = scoring.score_tables(model, sets, tokenizer=tokenizer, options=options,
                                      prepared=self.prepared[plan_key])
        return [(key, s.table, provenance(fetched, s.attrs, item.spec)) for (key, _), s in zip(item.keys, scored)]

    def _store_units(self, units: list[tuple[Any, Any, dict]]) -> list[float]:
        """Write each unit durably (the writer thread); seconds per write."""
        seconds = []
        for key, frame, prov in units:
            t0 = time.perf_counter()
            self.store.write(key, frame, provenance=prov)
            seconds.append(time.perf_counter() - t0)
        return seconds

    def finish_writes(self) -> None:
        """Wait for the previous revision's writes; then, and only then, count it done,
        clear its failure record and release its claim. A failed write is that revision's
        failure (or stops the sweep, if it is the user's to fix)."""
        if self.writing is None:
            return
        item, units, load_s, score_s, future = self.writing
        self.writing = None
        try:
            seconds = future.result()
        except BaseException as exc:
            self.drop(item)
            if _fatal(exc):
                raise
            self.failed.append(_record_failure(self.store, item, "store", exc))
            return
        n_items = sum(len(p.items) for _, p in item.keys)
        for (key, probe_set), write_s in zip(item.keys, seconds):
            # the pass's time is shared by its units in proportion to their items; the
            # revision's load is carried by its first unit
            self.units.append(UnitTiming(model=key.model, revision=key.revision, probeset=key.probeset,
                                         load_s=load_s, score_s=score_s * len(probe_set.items) / n_items,
                                         write_s=write_s))
            load_s = 0.0
            self.written += 1
            self.bar.update(1)
        self.scored += 1
        _failure_path(self.store, item.spec.name, item.revision).unlink(missing_ok=True)
        self.drop(item)

    def one_revision(self) -> None:
        """Take the next fetched revision: load, score; its store writes run on the writer
        thread while the next revision loads and scores (at most one revision's writes in
        flight); record the revision if it cannot be used."""
        item, hold, future = self.inflight.popleft()
        stage, handed_over = "fetch", False
        try:
            fetched = future.result()
            self.admit(wait=False)  # prefetch the next revision while this one scores
            stage = "load"
            t0 = time.perf_counter()
            model, tokenizer = self.load(item, Path(fetched.path))
            stage = "scoring"
            t1 = time.perf_counter()
            units = self.score_units(item, fetched, model, tokenizer)
            t2 = time.perf_counter()
            self.score_intervals.append((t0, t2))
            self.finish_writes()
            self.writing = (item, units, t1 - t0, t2 - t1, self.writer.submit(self._store_units, units))
            handed_over = True
        except BaseException as exc:
            if _fatal(exc):
                raise
            self.failed.append(_record_failure(self.store, item, stage, exc))
        finally:
            if not hold.released:
                self.fetcher.release(hold)  # the writes need the scores, not the checkpoint
            if not handed_over:
                self.drop(item)

    def abort(self) -> None:
        """Stop: the writes in flight finish first (a Ctrl-C loses nothing already scored)."""
        try:
            self.finish_writes()
        except BaseException:  # noqa: BLE001 - stopping anyway; the interrupt is what propagates
            pass
        self.writer.shutdown(wait=True)
        self.fetcher.close(wait=False)
        for claim in self.claims.values():
            claim.release()

    def summary(self, summary: ReplaySummary, started: float) -> ReplaySummary:
        fetch_s = sum(e - s for s, e in self.fetcher.intervals)
        f = self.fetcher
        return replace(
            summary,
            revisions_scored=self.scored, units_scored=self.written, revisions_failed=tuple(self.failed),
            revisions_elsewhere=self.elsewhere, revisions_skipped=summary.revisions_skipped + self.done_elsewhere,
            downloaded_bytes=f.downloaded, reused_bytes=f.reused, evicted_bytes=f.evicted, peak_held_bytes=f.peak,
            fetch_s=fetch_s, score_s=sum(e - s for s, e in self.score_intervals),
            prefetch_overlap_s=interval_overlap(f.intervals, self.score_intervals),
            wall_s=time.perf_counter() - started, units=tuple(self.units),
        )


def run_todo(todo: list[Todo], store: ResultsStore, opts: ReplayOptions, summary: ReplaySummary) -> ReplaySummary:
    """Score planned revisions with prefetch, the shared budget and eviction; write each result.

    Args:
        todo: the planned revisions (`plan.plan`).
        store: the results store.
        opts: the replay's options.
        summary: the plan's summary, completed here.

    Returns:
        The summary with what was scored, failed, fetched and evicted, and per-unit stage times.

    Raises:
        Whatever `_fatal` calls the user's to fix (disk budget, probe format, store errors);
        any other failure of one revision is recorded in RESULTS/failures/ instead.
    """
    started = time.perf_counter()
    run = _Run(todo, store, opts)
    restore = _pin_threads(run.threads)  # once for the run, so each score() call finds them set
    try:
        while True:
            if not run.inflight:
                run.admit(wait=True)
                if not run.inflight:
                    break
            run.one_revision()
        run.finish_writes()
    except BaseException:
        run.abort()
        raise
    finally:
        run.bar.close()
        restore()
    run.writer.shutdown(wait=True)
    run.fetcher.close()
    return run.summary(summary, started)
