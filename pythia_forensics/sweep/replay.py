"""The sweep: checkpoint sources x scorer -> results store, within a disk budget, resumable.

`replay` plans the work (list every selected revision of every model without downloading,
key each (revision, probe set) by content, drop keys already stored), then runs it:

- one revision is scored while the next one downloads in a background thread (prefetch);
- before a revision is fetched it is sized, and it is fetched only while the bytes this run
  holds stay within the disk budget (peak <= budget + one checkpoint, the revision being
  scored); finished revisions are evicted through the source (the hub cache API, which keeps
  blobs other revisions still use);
- one model skeleton is loaded per model and later revisions' weights are loaded into it;
- each finished (revision, probe set) is written atomically, so a killed run loses nothing it
  finished and a rerun skips exactly that.

The unit of work is one (model, chunk of revisions); it is idempotent, so executors only
decide where units run: in-process (`local`; under `accelerate launch`/`torchrun` each rank
takes a disjoint slice), or as one submitit job array (`slurm`, `submitit-local`).
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from pythia_forensics import __version__
from pythia_forensics.constants import (
    CLAIMS_DIR,
    DEFAULT_ARRAY_TIMEOUT_MIN,
    DEFAULT_REPLAY_CHUNK,
    DEFAULT_RESULTS_DIR,
    FAILURES_DIR,
    HEALTH_FILE,
    REPLAY_EXIT_SOME_FAILED,
    HEALTH_SKIP_STATUSES,
)
from pythia_forensics.errors import DiskBudgetError, PFError
from pythia_forensics.scoring.options import DEFAULT_VOCAB_ROWS
from pythia_forensics.checkpoints.fetch import check_fits, format_size, select_revisions
from pythia_forensics.sweep.store import ResultsStore, WorkKey

__all__ = ["replay", "run_unit", "read_failures", "ReplaySummary", "parse_size", "parse_params", "EXECUTORS", "HEALTH_MODES"]

EXECUTORS = ("local", "slurm", "submitit-local")
HEALTH_MODES = ("off", "skip", "flag")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}


# --- records -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplaySummary:
    """What a replay did. Bytes are on-disk bytes; times are wall-clock seconds.

    `prefetch_overlap_s` is the time during which a download ran while a revision was being
    scored (I/O hidden behind compute); `prefetch_overlap_fraction` divides it by total
    fetch time.
    """

    models: tuple[str, ...] = ()
    probe_sets: tuple[str, ...] = ()
    revisions_planned: int = 0
    revisions_scored: int = 0
    revisions_skipped: int = 0          # every key already stored
    revisions_skipped_health: int = 0   # --health skip and health.parquet says bad
    revisions_flagged: tuple[str, ...] = ()
    revisions_failed: tuple[str, ...] = ()   # model@revision recorded in RESULTS/failures/
    revisions_elsewhere: int = 0        # claimed by another live worker on the same results
    units_scored: int = 0               # (revision, probe set) results written
    downloaded_bytes: int = 0
    reused_bytes: int = 0
    evicted_bytes: int = 0
    peak_held_bytes: int = 0
    fetch_s: float = 0.0
    score_s: float = 0.0
    prefetch_overlap_s: float = 0.0
    wall_s: float = 0.0
    jobs: int = 1

    @property
    def prefetch_overlap_fraction(self) -> float:
        return self.prefetch_overlap_s / self.fetch_s if self.fetch_s > 0 else 0.0

    def merge(self, other: ReplaySummary) -> ReplaySummary:
        """Combine two partial summaries (array tasks, ranks)."""
        add = lambda f: getattr(self, f) + getattr(other, f)  # noqa: E731
        return ReplaySummary(
            models=tuple(dict.fromkeys(self.models + other.models)),
            probe_sets=tuple(dict.fromkeys(self.probe_sets + other.probe_sets)),
            revisions_flagged=self.revisions_flagged + other.revisions_flagged,
            revisions_failed=self.revisions_failed + other.revisions_failed,
            peak_held_bytes=max(self.peak_held_bytes, other.peak_held_bytes),
            wall_s=max(self.wall_s, other.wall_s),
            **{f: add(f) for f in ("revisions_planned", "revisions_scored", "revisions_skipped",
                                   "revisions_skipped_health", "revisions_elsewhere", "units_scored", "downloaded_bytes",
                                   "reused_bytes", "evicted_bytes", "fetch_s", "score_s",
                                   "prefetch_overlap_s", "jobs")},
        )

    def render(self) -> str:
        """A short human-readable summary (the CLI prints it)."""
        lines = [
            f"models: {', '.join(self.models)}   probe sets: {', '.join(self.probe_sets)}",
            f"revisions: {self.revisions_planned} planned, {self.revisions_scored} scored, "
            f"{self.revisions_skipped} already stored, {self.revisions_skipped_health} skipped (health), "
            f"{len(self.revisions_flagged)} flagged, {len(self.revisions_failed)} failed"
            + (f", {self.revisions_elsewhere} left to other workers" if self.revisions_elsewhere else "")
            + f"; {self.units_scored} results written",
            f"disk: {format_size(self.downloaded_bytes)} downloaded, {format_size(self.reused_bytes)} reused, "
            f"{format_size(self.evicted_bytes)} evicted, peak held {format_size(self.peak_held_bytes)}",
            f"time: {self.wall_s:.1f}s wall, {self.fetch_s:.1f}s fetching, {self.score_s:.1f}s scoring"
            + (f", {self.prefetch_overlap_s:.1f}s of fetching overlapped scoring "
               f"({100 * self.prefetch_overlap_fraction:.0f}%)" if self.downloaded_bytes else "")
            + (f"; {self.jobs} jobs" if self.jobs > 1 else ""),
        ]
        if self.revisions_flagged:
            lines.append("flagged by health: " + ", ".join(self.revisions_flagged))
        if self.revisions_failed:
            lines.append(f"failed (see {FAILURES_DIR}/, exit status {REPLAY_EXIT_SOME_FAILED}): "
                         + ", ".join(self.revisions_failed))
        return "\n".join(lines)


@dataclass
class _Todo:
    """One revision to score: where it comes from and the keys still missing."""

    spec: Any                  # registry.ModelSpec
    source: Any                # sources.HubSource | sources.LocalSource (one per model, shared)
    revision: str
    step: int | None
    keys: list[tuple[WorkKey, Any]]   # (key, ProbeSet)
    download: int = 0          # bytes its fetch adds to disk (sized just before fetching)
    reused: int = 0            # bytes of it the cache already held


# --- parsing -----------------------------------------------------------------------------
def parse_size(text: str | int | None) -> int | None:
    """`50GB` -> 50_000_000_000, `1.5GiB` -> 1_610_612_736; None/"" -> None (no budget).

    Raises:
        DiskBudgetError: not a size.
    """
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise DiskBudgetError(f"malformed disk budget {text!r}: use a size such as 50GB, 800MiB or 123456 (bytes)")
    unit = (match.group(2) or "").lower().rstrip("b")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`["slurm_partition=gpu", "gpus_per_node=1"]` -> `{"slurm_partition": "gpu", "gpus_per_node": 1}`.

    Raises:
        PFError: an entry is not KEY=VALUE.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PFError(f"malformed --slurm {pair!r}: use KEY=VALUE, e.g. slurm_partition=gpu")
        value = value.strip()
        out[key.strip()] = int(value) if value.isascii() and value.isdigit() else value
    return out


def _interval_overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Total length of the intersection of two sets of [start, end) intervals."""
    total = 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


# --- adapters to earlier stages ------------------------------------------------------------
def _load_probe_sets(probes: Any) -> tuple[Any, ...]:
    """One ProbeSet per entry (each keyed on its own, so editing one re-scores only it)."""
    from pythia_forensics.scoring.probes import ProbeSet, load_probes, shipped_probe_sets

    if isinstance(probes, ProbeSet):
        return (probes,)
    if isinstance(probes, (str, Path)):
        probes = [probes]
    expanded: list[Any] = []
    for p in probes:
        # `all` = every shipped set, each keyed on its own
        expanded.extend(shipped_probe_sets().values() if str(p) == "all" else [p])
    out = tuple(p if isinstance(p, ProbeSet) else load_probes(p) for p in expanded)
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise PFError(f"probe sets share a name ({names}); results are stored per probe-set name, rename one")
    return out


def _code_version() -> str:
    from pythia_forensics.scoring import score as scoring

    return str(getattr(scoring, "SCORING_VERSION", None) or __version__)


def _resolve_dtype(dtype: str, params: int | None, device: str) -> str:
    """The dtype `auto` will mean, known before loading so it can be part of the work key."""
    from pythia_forensics.scoring import score as scoring

    return str(scoring.resolve_dtype(dtype, params=params, device=scoring.resolve_device(device)))


# --- planning -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int | str = "auto"
    bos: bool = False
    vocab_rows: str = DEFAULT_VOCAB_ROWS
    threads: int | str = "auto"
    health: str = "off"
    disk_budget: int | None = None
    cache_dir: str | None = None
    hub_options: tuple[tuple[str, Any], ...] = ()   # extra HubSource options (endpoint, token, retries)
    progress: bool = True

    def source_options(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, **dict(self.hub_options)}


def _plan(specs: Sequence[Any], steps: str | Sequence[int] | None, probe_sets: Sequence[Any],
          store: ResultsStore, opts: _Options, *, revisions: dict[str, Sequence[str]] | None = None,
          rank: int = 0, world: int = 1) -> tuple[list[_Todo], ReplaySummary]:
    """List every selected checkpoint (no download), key it, keep what is not stored."""
    from pythia_forensics.checkpoints import sources
    code_version = _code_version()
    health = store.health() if opts.health != "off" else pd.DataFrame()
    status_of: dict[tuple[str, str], str] = {}
    if not health.empty:
        for row in health.itertuples():
            status_of[(row.model, row.revision)] = row.status
    todo: list[_Todo] = []
    index = planned = skipped = skipped_health = 0
    flagged: list[str] = []
    for spec in specs:
        source = sources.open_source(spec, **opts.source_options())
        names = source.revisions()
        if revisions is not None:
            wanted = set(revisions.get(spec.name, ()))
            chosen_names = [r for r in names if r in wanted]
        else:
            chosen_names = select_revisions(spec, names, steps)
        dtype = _resolve_dtype(opts.dtype, spec.params_total, opts.device)
        for revision in chosen_names:
            index += 1
            # Ranks split the whole planned grid, not what is left of it, so every rank
            # agrees on the partition whatever the others have finished.
            if (index - 1) % world != rank:
                continue
            planned += 1
            status = status_of.get((spec.name, revision), "ok")
            if opts.health == "skip" and status in HEALTH_SKIP_STATUSES:
                skipped_health += 1
                continue
            if status != "ok":
                flagged.append(f"{spec.name}@{revision} ({status})")
            # hub: the commit sha (from the branch list, no download); local: weight hashes
            content_key = source.resolve(revision) or source.record(revision).content_key
            keys = []
            for probe_set in probe_sets:
                key = WorkKey(
                    model=spec.name, revision=revision, content_key=content_key,
                    probeset=probe_set.name, probeset_sha256=probe_set.sha256, dtype=dtype,
                    bos=bool(opts.bos), vocab_rows=opts.vocab_rows, code_version=code_version,
                )
                if not store.has(key):
                    keys.append((key, probe_set))
            if not keys:
                skipped += 1
                continue
            todo.append(_Todo(spec=spec, source=source, revision=revision, step=spec.step_of(revision), keys=keys))
    if opts.disk_budget is not None:
        # Dry run before anything downloads: one revision per hub model (a model's checkpoints
        # are one size; each is sized again just before its own fetch), so a budget below one
        # checkpoint fails now rather than after hours of work, at one listing call per model.
        first: dict[str, _Todo] = {}
        for t in todo:
            if t.source.source == "hub":
                first.setdefault(t.spec.name, t)
        for t in first.values():
            check_fits(t.spec.name, t.revision, t.source.size(t.revision).total_bytes, opts.disk_budget)
    summary = ReplaySummary(
        models=tuple(s.name for s in specs), probe_sets=tuple(p.name for p in probe_sets),
        revisions_planned=planned, revisions_skipped=skipped, revisions_skipped_health=skipped_health,
        revisions_flagged=tuple(flagged),
    )
    return todo, summary


def _provenance(record: Any, frame: pd.DataFrame, spec: Any = None) -> dict[str, Any]:
    import torch
    import transformers

    # tokens seen: from the branch name where the suite's grammar encodes them (OLMo), else
    # step x tokens per step; None where neither is known
    tokens = spec.tokens_seen(record.step, record.revision) if spec is not None else None
    return {
        "repo": record.repo, "step": record.step, "tokens": tokens, "commit": record.commit,
        "weights_sha256": record.weights_sha256,
        # what actually ran (an `auto` batch size halves itself on out-of-memory)
        "batch_size": int(frame.attrs.get("batch_size", 0)), "device": str(frame.attrs.get("device", "")),
        # CPU kernels block by thread count (ulp-level differences), and a busy machine's speed
        # depends on the wait policy: both recorded with the numbers
        "threads": int(frame.attrs.get("threads", 0)), "omp_wait_policy": str(frame.attrs.get("omp_wait_policy", "")),
        "pf_version": __version__,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
    }


# --- running ------------------------------------------------------------------------------
# Errors that are the user's to fix for every revision alike: they stop the sweep. Anything
# else going wrong with one revision (unreadable, truncated, mismatched, non-finite, corrupt
# on the hub) is recorded and the sweep goes on.
def _fatal(exc: BaseException) -> bool:
    from pythia_forensics.errors import ProbeFormatError, StoreError, TokenizationError, UnknownProbeSetError

    return not isinstance(exc, Exception) or isinstance(
        exc, (MemoryError, DiskBudgetError, ProbeFormatError, StoreError, TokenizationError, UnknownProbeSetError))


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"


def _failure_path(store: ResultsStore, model: str, revision: str) -> Path:
    safe = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "_", s)  # noqa: E731
    return Path(store.root) / FAILURES_DIR / safe(model) / f"{safe(revision)}.json"


def _record_failure(store: ResultsStore, item: _Todo, stage: str, exc: BaseException) -> str:
    from pythia_forensics.atomic import write_json
    from pythia_forensics.checkpoints.lease import worker_id

    reason = _one_line(exc)
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


def read_failures(results: str | Path) -> pd.DataFrame:
    """Revisions a sweep could not use: model, revision, step, content_key, stage, reason, ...

    One JSON record per revision under RESULTS/failures/ (so concurrent workers never write
    one file together); a later successful score of the revision removes its record.
    """
    import json

    rows = []
    for p in sorted((Path(results) / FAILURES_DIR).glob("*/*.json")):
        try:
            rows.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    cols = ["model", "revision", "step", "content_key", "stage", "reason", "error", "worker", "failed_at", "pf_version"]
    frame = pd.DataFrame(rows, columns=cols)
    frame["step"] = pd.array(frame["step"], dtype="Int64")
    return frame


def _check_finite(model: Any) -> None:
    import torch

    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise PFError(f"non-finite weights (NaN/inf) in {len(bad)} tensors, first {bad[0]}: refusing to score")


def _claim_key(item: _Todo) -> str:
    content = item.keys[0][0].content_key if item.keys else ""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{item.spec.name}--{item.revision}--{content[:16]}")


def _run_todo(todo: list[_Todo], store: ResultsStore, opts: _Options, summary: ReplaySummary) -> ReplaySummary:
    """Score planned revisions with prefetch, the shared budget and eviction; write each result.

    Each revision is claimed first (a lease in RESULTS/.pf-claims/), so workers started on
    one results folder score every revision once; one claimed by a live worker is left to it.
    """
    from pythia_forensics.scoring import score as scoring
    from pythia_forensics.checkpoints.fetch import Fetcher, Hold
    from pythia_forensics.checkpoints.lease import Claim, Lease

    started = time.perf_counter()
    # A budget makes the cache working space: evict each revision once scored. Without one,
    # the cache is the user's and keeps everything (a rerun then downloads nothing).
    fetcher = Fetcher(opts.disk_budget)
    claims_dir = Path(store.root) / CLAIMS_DIR
    score_intervals: list[tuple[float, float]] = []
    skeleton: tuple[str, Any, Any] | None = None      # (model name, model, tokenizer)
    # tokenization and forward plan depend on the tokenizer, the probe set and bos only: built
    # once per (model, probe set) and reused by every revision (issue #17)
    prepared: dict[tuple[str, str, bool], Any] = {}
    threads = scoring.resolve_threads(opts.threads)
    pinned = _pin_threads(threads)  # once for the run, so each score() call finds them set
    inflight: deque[tuple[_Todo, Hold, Future]] = deque()
    claims: dict[int, Lease] = {}
    queue = deque(todo)
    failed: list[str] = []
    scored = written = elsewhere = done_elsewhere = 0
    total_units = sum(len(t.keys) for t in todo)
    bar = tqdm(total=total_units, desc="replay", unit="result", disable=not opts.progress or not todo)

    def drop(item: _Todo) -> None:
        claim = claims.pop(id(item), None)
        if claim is not None:
            claim.release()

    def admit(wait: bool) -> None:
        """Claim, size and hold the next revision; fetch it in the background."""
        nonlocal elsewhere, done_elsewhere
        while queue:
            item = queue[0]
            if id(item) not in claims:
                claim = Claim.take(claims_dir, _claim_key(item))
                if claim is None:       # a live worker is on it
                    queue.popleft()
                    elsewhere += 1
                    bar.update(len(item.keys))
                    continue
                claims[id(item)] = claim
                item.keys = [(k, p) for k, p in item.keys if not store.has(k)]
                if not item.keys:       # another worker finished it since we planned
                    queue.popleft()
                    drop(item)
                    done_elsewhere += 1
                    continue
            try:
                hold = fetcher.acquire(item.source, item.revision, wait=wait)
            except BaseException as exc:
                if _fatal(exc):
                    raise
                queue.popleft()
                failed.append(_record_failure(store, item, "sizing", exc))
                drop(item)
                continue
            if hold is None:
                return
            queue.popleft()
            inflight.append((item, hold, fetcher.submit(hold)))
            return

    try:
        while True:
            if not inflight:
                admit(wait=True)
                if not inflight:
                    break
            item, hold, future = inflight.popleft()
            stage = "fetch"
            try:
                fetched = future.result()
                admit(wait=False)  # prefetch the next revision while this one scores
                stage = "load"
                t0 = time.perf_counter()
                path = fetched.path
                if skeleton is None or skeleton[0] != item.spec.name:
                    skeleton = None  # free the previous model before loading the next
                    prepared.clear()  # plans are checked against the tokenizer object
                    model, tokenizer = scoring.load_model(path, dtype=item.keys[0][0].dtype, device=opts.device)
                    skeleton = (item.spec.name, model, tokenizer)
                else:
                    try:
                        scoring.load_weights_into(skeleton[1], path)
                    except BaseException:
                        skeleton = None  # half-loaded weights: never reuse this skeleton
                        raise
                _, model, tokenizer = skeleton
                _check_finite(model)
                stage = "scoring"
                for key, probe_set in item.keys:
                    bar.set_postfix_str(f"{key.model}@{key.revision} {key.probeset}", refresh=False)
                    plan_key = (key.model, probe_set.sha256, key.bos)
                    if plan_key not in prepared:
                        prepared[plan_key] = scoring.prepare(model, probe_set, tokenizer=tokenizer, bos=key.bos)
                    frame = scoring.score(model, probe_set, tokenizer=tokenizer, revision=key.revision,
                                          options=scoring.ScoreOptions(dtype=key.dtype, device=opts.device,
                                                                       batch_size=opts.batch_size, bos=key.bos,
                                                                       vocab_rows=key.vocab_rows, threads=threads),
                                          prepared=prepared[plan_key])
                    store.write(key, frame, provenance=_provenance(fetched, frame, item.spec))
                    written += 1
                    bar.update(1)
                score_intervals.append((t0, time.perf_counter()))
                scored += 1
                _failure_path(store, item.spec.name, item.revision).unlink(missing_ok=True)
            except BaseException as exc:
                if _fatal(exc):
                    raise
                failed.append(_record_failure(store, item, stage, exc))
            finally:
                if not hold.released:
                    fetcher.release(hold)
                drop(item)
    except BaseException:
        fetcher.close(wait=False)
        for claim in claims.values():
            claim.release()
        raise
    finally:
        bar.close()
        pinned()
    fetcher.close()
    fetch_s = sum(e - s for s, e in fetcher.intervals)
    return replace(
        summary,
        revisions_scored=scored, units_scored=written, revisions_failed=tuple(failed),
        revisions_elsewhere=elsewhere, revisions_skipped=summary.revisions_skipped + done_elsewhere,
        downloaded_bytes=fetcher.downloaded, reused_bytes=fetcher.reused, evicted_bytes=fetcher.evicted,
        peak_held_bytes=fetcher.peak, fetch_s=fetch_s, score_s=sum(e - s for s, e in score_intervals),
        prefetch_overlap_s=_interval_overlap(fetcher.intervals, score_intervals),
        wall_s=time.perf_counter() - started,
    )


def _pin_threads(threads: int) -> Any:
    """Set torch's intra-op threads for the run; returns the function that restores them."""
    import torch

    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(before) if torch.get_num_threads() != before else None


def _rank_slice() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / `torchrun` (env vars both set), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    return (rank, world) if world > 1 else (0, 1)


def _rank_device(device: str) -> str:
    # one GPU per rank: rank i of a node uses cuda:LOCAL_RANK
    if device == "auto" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def run_unit(unit: dict[str, Any]) -> ReplaySummary:
    """Run one idempotent work unit (a model and a chunk of its revisions); array tasks call this.

    Args:
        unit: ``{"model", "suite_dir", "step_pattern", "revisions", "probes", "results", "options"}``
            (picklable).

    Returns:
        The unit's partial summary.
    """
    from pythia_forensics.checkpoints.registry import resolve_model

    opts = _Options(**unit["options"])
    store = ResultsStore(unit["results"])
    spec = resolve_model(unit["model"], suite_dir=unit["suite_dir"], step_pattern=unit.get("step_pattern"))
    todo, summary = _plan([spec], None, unit["probes"], store, opts, revisions={spec.name: unit["revisions"]})
    return _run_todo(todo, store, opts, summary)


def _run_array(todo: list[_Todo], *, specs_by_name: dict[str, str], suite_dir: Any, probe_sets: Sequence[Any],
               results: Path, opts: _Options, executor: str, chunk: int, slurm: dict[str, Any] | None,
               summary: ReplaySummary, step_pattern: str | None = None) -> ReplaySummary:
    """Submit one submitit job array, one task per (model, revision chunk); wait; merge."""
    import submitit

    units = []
    by_model: dict[str, list[str]] = {}
    for t in todo:
        by_model.setdefault(t.spec.name, []).append(t.revision)
    unit_opts = {**opts.__dict__, "progress": False}
    for name, revs in by_model.items():
        for i in range(0, len(revs), chunk):
            units.append({"model": specs_by_name[name], "suite_dir": None if suite_dir is None else str(suite_dir),
                          "step_pattern": step_pattern,
                          "revisions": revs[i:i + chunk], "probes": tuple(probe_sets), "results": str(results),
                          "options": unit_opts})
    if not units:
        return summary
    started = time.perf_counter()
    folder = Path(results) / ".submitit" / "%j"
    params = {"timeout_min": DEFAULT_ARRAY_TIMEOUT_MIN, **(slurm or {})}
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="local" if executor == "submitit-local" else "slurm")
        ex.update_parameters(**params)
        jobs = ex.map_array(run_unit, units)
    except (ValueError, TypeError) as exc:
        raise PFError(f"submitit rejected the job parameters {params}: {str(exc).splitlines()[0]}; "
                      "fix the --slurm KEY=VALUE options") from exc
    except (OSError, RuntimeError) as exc:  # no sbatch on this machine, or it refused the array
        raise PFError(f"could not submit the {executor} job array ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); on a machine without Slurm use "
                      "--executor submitit-local or local") from exc
    merged = replace(summary, jobs=0)
    failed: list[str] = []
    for job in tqdm(jobs, desc="jobs", disable=not opts.progress):
        try:
            part = job.result()
        except Exception as exc:  # noqa: BLE001 - a failed task must not hide the others' results
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            failed.append(f"task {job.job_id}: {lines[-1] if lines else type(exc).__name__}")
            continue
        merged = merged.merge(replace(part, models=(), probe_sets=(), revisions_planned=0,
                                      revisions_skipped=0, revisions_skipped_health=0, revisions_flagged=()))
    if failed:
        raise PFError(f"{len(failed)} of {len(jobs)} array tasks failed ({failed[0]}); their finished work is "
                      f"stored: rerun the same command to redo only what is missing (logs in {folder.parent})")
    return replace(merged, wall_s=time.perf_counter() - started)


def replay(
    models: str | Sequence[str],
    probes: Any,
    *,
    steps: str | Sequence[int] | None = "all",
    suite_dir: str | Path | None = None,
    results: str | Path = DEFAULT_RESULTS_DIR,
    disk_budget: str | int | None = None,
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int | str = "auto",
    bos: bool = False,
    vocab_rows: str = DEFAULT_VOCAB_ROWS,
    threads: int | str = "auto",
    step_pattern: str | None = None,
    executor: str = "local",
    health: str | None = None,
    cache_dir: str | Path | None = None,
    hub_options: dict[str, Any] | None = None,
    chunk: int = DEFAULT_REPLAY_CHUNK,
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
) -> ReplaySummary:
    """Score every selected checkpoint of every model on the probe sets, into a results store.

    Args:
        models: registry names (`pythia-160m`), hub ids, or local model folders.
        probes: a ProbeSet, a probe-set name/path, or several (each is keyed on its own).
        steps: `all`, `N,N,...`, `A:B`, `log`, or a list of steps.
        suite_dir: a local suite folder to look model names up in.
        results: the results folder.
        disk_budget: most bytes of checkpoints held at once (`50GB`); None = unlimited.
        dtype, device, batch_size, bos, vocab_rows, threads: scoring options (see ScoreOptions;
            ``threads`` is set once for the whole run and recorded in each row's provenance).
        step_pattern: checkpoint folder names of local models (`registry.checkpoint_folders`;
            default `$PF_STEP_PATTERN`, else step<N> and checkpoint-<N>).
        executor: `local`, `slurm` or `submitit-local` (a job array on this machine).
        health: `off` (default), `skip` (leave out revisions health.parquet marks bad) or
            `flag` (score them, list them in the summary).
        cache_dir: the hub cache (default: huggingface_hub's).
        hub_options: extra `HubSource` options: endpoint, token, max_retries, backoff_base_s.
        chunk: revisions per array task.
        slurm: extra submitit parameters for `slurm` (partition, gpus_per_node, timeout_min...).
        progress: show progress bars.

    Returns:
        A ReplaySummary.

    Raises:
        UnknownModelError, StepSpecError, SourceError, DiskBudgetError: bad input, one line each.
    """
    from pythia_forensics.checkpoints.registry import resolve_model

    started = time.perf_counter()
    health = health or "off"
    if executor not in EXECUTORS:
        raise PFError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if health not in HEALTH_MODES:
        raise PFError(f"unknown health mode {health!r}; use one of {', '.join(HEALTH_MODES)}")
    if chunk < 1:
        raise PFError(f"--chunk must be at least 1 revision per array task, got {chunk}")
    from pythia_forensics.scoring.score import resolve_threads

    resolve_threads(threads)  # a bad --threads / $PF_THREADS fails before any work
    budget = parse_size(disk_budget)
    if budget is not None and budget <= 0:
        raise DiskBudgetError(f"disk budget must be positive, got {disk_budget!r}")
    names = list(dict.fromkeys([str(models)] if isinstance(models, (str, Path)) else [str(m) for m in models]))
    if not names:
        raise PFError("no model given; pass a registry name (pythia-160m), a hub id or a local model folder")
    specs = [resolve_model(m, suite_dir=suite_dir, step_pattern=step_pattern) for m in names]
    probe_sets = _load_probe_sets(probes)
    store = ResultsStore(results)
    store.clean_temporaries()
    opts = _Options(dtype=dtype, device=_rank_device(device), batch_size=batch_size, bos=bos,
                    vocab_rows=vocab_rows, threads=threads, health=health, disk_budget=budget,
                    cache_dir=None if cache_dir is None else str(cache_dir),
                    hub_options=tuple(sorted((hub_options or {}).items())), progress=progress)
    rank, world = _rank_slice() if executor == "local" else (0, 1)
    if health != "off":
        _ensure_health(store, specs, steps, opts, progress=progress)
    todo, summary = _plan(specs, steps, probe_sets, store, opts, rank=rank, world=world)
    _write_models(store, specs, _sizes(todo, specs, opts))
    if executor == "local":
        summary = _run_todo(todo, store, opts, summary)
    else:
        # absolute paths: a relative model folder or the default ./results mean this working
        # directory, not an array task's
        summary = _run_array(todo, specs_by_name={s.name: str(s.path or n) for s, n in zip(specs, names)},
                             suite_dir=suite_dir, probe_sets=probe_sets, results=Path(results).resolve(), opts=opts,
                             executor=executor, chunk=chunk, slurm=slurm, summary=summary, step_pattern=step_pattern)
    store.refresh_summary()
    return replace(summary, wall_s=time.perf_counter() - started)


def _ensure_health(store: ResultsStore, specs: Sequence[Any], steps: Any, opts: _Options, *,
                   progress: bool) -> None:
    """`--health skip|flag` with no health rows for a model: run its census first (listings
    only, no weights downloaded) and store it, saying so in one line."""
    from pythia_forensics.checkpoints.health import check_health

    table = store.health()
    have = set(table["model"]) if not table.empty else set()
    missing = [s for s in specs if s.name not in have]
    if not missing:
        return
    tqdm.write(f"health: no rows in {Path(store.root) / HEALTH_FILE} for {', '.join(s.name for s in missing)}; "
               f"running the census first (--health {opts.health})", file=sys.stderr)
    for spec in missing:
        report = check_health(spec, steps=steps if isinstance(steps, str) or steps is None else list(steps),
                              cache_dir=opts.cache_dir, progress=False,
                              source=_health_source(spec, opts))
        store.write_health(report.to_frame())


def _health_source(spec: Any, opts: _Options) -> Any:
    from pythia_forensics.checkpoints import sources

    return sources.open_source(spec, **opts.source_options())


def _checkpoint_architecture(spec: Any, source: Any, revision: str) -> Any:
    """What one checkpoint of the model really is (tensor shapes + config.json), or None
    when it cannot be read (the sweep then says so and records the registry's sizes)."""
    import json

    from pythia_forensics.checkpoints import architecture as arch

    if source.source == "local":
        return arch.of_folder(Path(source.path) / revision)
    found = arch.from_shapes(source.weight_shapes(revision))
    if source.listing(revision).file("config.json") is not None:
        folder = Path(source.fetch_files(revision, ["config.json"]))
        found = found.merged(arch.from_config(json.loads((folder / "config.json").read_text(encoding="utf-8"))))
    return found


def _sizes(todo: Sequence[_Todo], specs: Sequence[Any], opts: _Options) -> dict[str, Any]:
    """Model name -> its `Architecture` read from one of its checkpoints (the first planned,
    else the first listed), so a scale analysis never uses the size of the name alone."""
    from pythia_forensics.checkpoints import sources

    first = {}
    for t in todo:
        first.setdefault(t.spec.name, (t.source, t.revision))
    out: dict[str, Any] = {}
    for spec in specs:
        try:
            if spec.name in first:
                source, revision = first[spec.name]
            else:
                source = sources.open_source(spec, **opts.source_options())
                revision = next(iter(source.revisions()))
            out[spec.name] = _checkpoint_architecture(spec, source, revision)
        except (PFError, OSError, ValueError, StopIteration) as exc:
            tqdm.write(f"warning: cannot read {spec.name}'s size from a checkpoint ({_one_line(exc)}); "
                       "models.parquet records the registry's, marked size_source=registry", file=sys.stderr)
    return out


def _write_models(store: ResultsStore, specs: Iterable[Any], sizes: dict[str, Any] | None = None) -> None:
    """models.parquet: one row per model; sizes from the checkpoint (`size_source` says so),
    the registry's only where no checkpoint could be read. A checkpoint that disagrees with
    its registry entry is reported by `health` (code `architecture`)."""
    sizes = sizes or {}
    fields = ("params_total", "params_nonembedding", "layers", "d_model")
    rows = []
    for s in specs:
        found = sizes.get(s.name)
        row = {"model": s.name, "repo": s.repo, "source": s.source, "tokens_per_step": s.tokens_per_step}
        for f in fields:
            have = getattr(found, f, None) if found is not None else None
            row[f] = have if have is not None else getattr(s, f)
        row["size_source"] = "checkpoint" if found is not None and found.params_total is not None else "registry"
        rows.append(row)
    rows = pd.DataFrame(rows, columns=["model", "repo", "source", "params_total", "params_nonembedding",
                                       "tokens_per_step", "layers", "d_model", "size_source"])
    for col in ("params_total", "params_nonembedding", "tokens_per_step", "layers", "d_model"):
        rows[col] = pd.array(rows[col], dtype="Int64")
    store.write_models(rows)
