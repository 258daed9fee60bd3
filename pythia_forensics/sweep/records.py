"""The sweep's records: what a replay did (`ReplaySummary`, with per-unit stage times), the
options it runs under, one planned revision (`Todo`), and the parsers of the values a
caller gives as text (disk budget, executor parameters)."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pythia_forensics.checkpoints.fetch import format_size
from pythia_forensics.constants import FAILURES_DIR, REPLAY_EXIT_SOME_FAILED
from pythia_forensics.scoring.options import ScoreOptions
from pythia_forensics.errors import DiskBudgetError, PFError
from pythia_forensics.sweep.itemfile import WorkKey

__all__ = ["ReplaySummary", "UnitTiming", "ReplayOptions", "Todo", "parse_size", "parse_params", "interval_overlap"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}


@dataclass(frozen=True)
class UnitTiming:
    """Wall-clock seconds of one stored unit (a revision x probe set) by stage.

    Attributes:
        model, revision, probeset: the unit.
        load_s: loading the revision's weights (model skeleton or weights into it), shared by
            the revision's units: the first unit of a revision carries it, the others 0.
        score_s: the unit's share, by items, of the revision's one scoring pass over its
            missing probe sets (`scoring.score_tables`), including building the plan the first
            time a (model, probe sets) combination is seen.
        write_s: `ResultsStore.write` (Arrow table, checksum, durable atomic write), on the
            writer thread, overlapping the next revision's load and scoring.
    """

    model: str
    revision: str
    probeset: str
    load_s: float
    score_s: float
    write_s: float


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay did. Bytes are on-disk bytes; times are wall-clock seconds.

    `score_s` is the wall time of the revisions' compute phase (load + score + write of
    each, from loading its weights to its last write); `prefetch_overlap_s` is the time
    during which a download ran meanwhile (I/O hidden behind compute), and
    `prefetch_overlap_fraction` divides it by total fetch time.

    `units` breaks the compute phase down per stored (revision, probe set), one `UnitTiming`
    each (``load_s``, ``score_s``, ``write_s``), in the order written; array tasks' units are
    concatenated by `merge`. The `load_s` and `write_s` properties sum them; the units'
    ``score_s`` sum is the scoring proper. A benchmark reads these instead of timing the
    store or the scorer from outside.
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
    # per stored unit, in the order written: where a revision's time went (`UnitTiming`)
    units: tuple[UnitTiming, ...] = ()

    @property
    def load_s(self) -> float:
        """Seconds loading weights, over every unit."""
        return sum(u.load_s for u in self.units)

    @property
    def write_s(self) -> float:
        """Seconds in store writes, over every unit."""
        return sum(u.write_s for u in self.units)

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
            units=self.units + other.units,
            **{f: add(f) for f in ("revisions_planned", "revisions_scored", "revisions_skipped",
                                   "revisions_skipped_health", "revisions_elsewhere", "units_scored", "downloaded_bytes",
                                   "reused_bytes", "evicted_bytes", "fetch_s", "score_s",
                                   "prefetch_overlap_s", "jobs")},
        )

    @property
    def nothing_to_do(self) -> bool:
        """Every planned revision was already stored (nothing scored, failed or left to others)."""
        return (self.revisions_scored == 0 and not self.revisions_failed and self.revisions_elsewhere == 0
                and self.revisions_planned == self.revisions_skipped + self.revisions_skipped_health)

    def render(self) -> str:
        """A short human-readable summary (the CLI prints it); one line when there was
        nothing to do."""
        if self.nothing_to_do:
            health = f", {self.revisions_skipped_health} skipped (health)" if self.revisions_skipped_health else ""
            flagged = f", {len(self.revisions_flagged)} flagged by health" if self.revisions_flagged else ""
            return f"nothing to do: {self.revisions_skipped} revisions already stored{health}{flagged}"
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
class Todo:
    """One revision to score: where it comes from and the keys still missing."""

    spec: Any                  # registry.ModelSpec
    source: Any                # sources.HubSource | sources.LocalSource (one per model, shared)
    revision: str
    step: int | None
    keys: list[tuple[WorkKey, Any]]   # (key, ProbeSet)
    download: int = 0          # bytes its fetch adds to disk (sized just before fetching)
    reused: int = 0            # bytes of it the cache already held


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
        raise DiskBudgetError(f"malformed disk budget {text!r}: use a size such as 50GB, 800MiB or 123456 (bytes)",
                              param="disk_budget")
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
            raise PFError(f"malformed executor parameter {pair!r}: use KEY=VALUE, e.g. slurm_partition=gpu",
                          param="slurm")
        value = value.strip()
        out[key.strip()] = int(value) if value.isascii() and value.isdigit() else value
    return out


def interval_overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Total length of the intersection of two sets of [start, end) intervals."""
    total = 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


@dataclass(frozen=True)
class ReplayOptions:
    """The options of one replay (picklable: array tasks get a copy).

    Attributes:
        score: how to score, the scorer's own options (validated there); `threads` and
            `batch_size` are used as given, `dtype` is resolved per model before planning
            (it is part of the work key) and `device` per rank.
        health: ``off``, ``flag`` or ``skip`` (`HEALTH_MODES`).
        disk_budget: bytes the fetch cache may hold (None: no budget, keep everything).
        cache_dir: the hub cache.
        hub_options: extra `HubSource` options (endpoint, token, retries), as sorted pairs.
        progress: show progress bars.
    """

    score: ScoreOptions = field(default_factory=ScoreOptions)
    health: str = "off"
    disk_budget: int | None = None
    cache_dir: str | None = None
    hub_options: tuple[tuple[str, Any], ...] = ()
    progress: bool = True

    def source_options(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, **dict(self.hub_options)}
