"""The health check's records: a finding, a revision's listed files, a table row, the report.

Shared by the census (`health_census`), the deep pass (`health_deep`) and the wiring
(`health`); nothing here reads a file or a tensor.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pythia_forensics.checkpoints.source_records import WeightFile
from pythia_forensics.constants import HEALTH_STATUSES, WEIGHT_SUFFIXES

__all__ = [
    "Finding",
    "HealthReport",
    "KNOWN_IDENTICAL",
    "ListedFile",
    "RevisionFiles",
    "RevisionHealth",
    "RevisionStats",
    "build_rows",
    "order_key",
    "format_of",
    "missing_shards",
    "weight_sets",
]

# Pairs of revisions expected to hold the same weights because of a documented upstream
# fault: reported and flagged, but not counted as a failure (exit status 0).
KNOWN_IDENTICAL = {("step0", "step1"): "known upstream fault EleutherAI/pythia#83"}

_SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<i>\d+)-of-(?P<n>\d+)$")

# --- records -----------------------------------------------------------------------------
# One weight file as a listing shows it (no bytes fetched): the sources' record, reused.
ListedFile = WeightFile


@dataclass(frozen=True)
class RevisionFiles:
    """What the census knows about one revision: its name, step and weight files.

    `path` is the local folder when the files are on disk (local suites, fetched hub
    snapshots); the census then also reads safetensors headers (a few KB) for truncation.
    """

    revision: str
    step: int | None
    files: tuple[ListedFile, ...]
    path: Path | None = None


@dataclass(frozen=True)
class Finding:
    """One problem with one revision.

    Attributes:
        revision: the branch / folder the finding is about.
        step: its named step (None for `main` or a non-step name).
        code: short machine-readable kind (`missing`, `no_weights`, `incomplete`, `size`,
            `truncated`, `unreadable`, `duplicate`, `shared_blob`, `final_mismatch`,
            `not_distinct`, `format_mismatch`, `trend_break`, `lineage`, `architecture`).
        status: "flagged" or "bad".
        detail: the human explanation (names the other revision / file / numbers).
        known: True for a documented upstream fault (reported, never fails the check).
    """

    revision: str
    step: int | None
    code: str
    status: str
    detail: str
    known: bool = False

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass(frozen=True)
class RevisionHealth:
    """One row of the health table (ARCHITECTURE.md, RESULTS/health.parquet)."""

    model: str
    revision: str
    step: int | None
    status: str                # "ok" | "flagged" | "bad"
    reasons: tuple[str, ...]   # "code: detail", worst first
    known: bool                # every reason is a known upstream fault


@dataclass(frozen=True)
class RevisionStats:
    """Deep-mode measurements of one revision (L2 over all parameters, fp32/fp64 maths)."""

    revision: str
    step: int | None
    dist_from_step0: float
    dist_to_final: float
    dist_to_previous: float
    embedding_norm: float


@dataclass(frozen=True)
class HealthReport:
    """The result of `check_health`: one row per revision plus the evidence.

    Attributes:
        model: the model checked.
        source: "hub" or "local".
        deep: whether tensors were loaded.
        rows: one `RevisionHealth` per revision listed or expected, in step order.
        findings: every finding (a revision may have several).
        clusters: groups of revisions sharing weight blobs, beyond the expected
            `step<final>` == `main` pair.
        stats: deep-mode series (empty for a census).
        downloaded_bytes: weight bytes the deep pass downloaded (0 for a census).
        peak_bytes: most downloaded bytes held in the cache at once (the disk budget's measure).
    """

    model: str
    source: str
    deep: bool
    rows: tuple[RevisionHealth, ...]
    findings: tuple[Finding, ...]
    clusters: tuple[tuple[str, ...], ...] = ()
    stats: tuple[RevisionStats, ...] = ()
    downloaded_bytes: int = 0
    peak_bytes: int = 0

    @property
    def failed(self) -> bool:
        """True when any finding is not a known upstream fault (CLI exit status 1)."""
        return any(not f.known for f in self.findings)

    def status_of(self, revision: str) -> str:
        for row in self.rows:
            if row.revision == revision:
                return row.status
        raise KeyError(f"revision {revision!r} is not in the health report of {self.model}")

    def to_frame(self):
        """The health table: columns model, revision, step, status, reasons (+ known).

        `reasons` is one string, the reasons joined by "; " (empty when ok), which is the
        RESULTS/health.parquet contract.
        """
        import pandas as pd

        frame = pd.DataFrame(
            [{"model": r.model, "revision": r.revision, "step": r.step, "status": r.status,
              "reasons": "; ".join(r.reasons), "known": r.known} for r in self.rows],
            columns=["model", "revision", "step", "status", "reasons", "known"],
        )
        frame["step"] = pd.array(frame["step"], dtype="Int64")
        return frame

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: summary, rows, findings, clusters and deep stats."""
        counts = Counter(r.status for r in self.rows)
        return {
            "model": self.model,
            "source": self.source,
            "deep": self.deep,
            "failed": self.failed,
            "counts": {s: counts.get(s, 0) for s in HEALTH_STATUSES},
            "rows": [asdict(r) | {"reasons": list(r.reasons)} for r in self.rows],
            "findings": [asdict(f) for f in self.findings],
            "clusters": [list(c) for c in self.clusters],
            "stats": [asdict(s) for s in self.stats],
            "downloaded_bytes": self.downloaded_bytes,
            "peak_bytes": self.peak_bytes,
        }


def build_rows(model: str, names: Iterable[tuple[str, int | None]], findings: Sequence[Finding]) -> tuple[RevisionHealth, ...]:
    """One row per revision: worst status of its findings, reasons worst first.

    Args:
        model: the model name every row carries.
        names: (revision, step) of every revision listed or expected.
        findings: every finding; a revision only findings name still gets a row.

    Returns:
        The rows in step order (`main` last).
    """
    rank = {s: i for i, s in enumerate(HEALTH_STATUSES)}
    by_rev: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_rev[f.revision].append(f)
    steps = dict(names)
    for f in findings:
        steps.setdefault(f.revision, f.step)
    rows = []
    for rev, step in sorted(steps.items(), key=lambda kv: order_key(kv[1], kv[0])):
        fs = sorted(by_rev.get(rev, []), key=lambda f: -rank[f.status])
        status = fs[0].status if fs else "ok"
        reasons = tuple(dict.fromkeys(f.reason for f in fs))
        rows.append(RevisionHealth(model=model, revision=rev, step=step, status=status, reasons=reasons,
                                   known=bool(fs) and all(f.known for f in fs)))
    return tuple(rows)


# --- small helpers -----------------------------------------------------------------------
def order_key(step: int | None, revision: str) -> tuple[float, str]:
    """Sort key of a revision in grid order."""
    # `main` (no step) sorts after every step branch: it is the final model.
    return (float("inf") if step is None else float(step), revision)


def format_of(name: str) -> str | None:
    """"safetensors" or "bin" for a weight file's name, None for any other file."""
    for suffix, fmt in WEIGHT_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def weight_sets(files: Iterable[ListedFile]) -> dict[str, tuple[ListedFile, ...]]:
    """Group weight files by format ("safetensors", "bin"); other files are dropped."""
    groups: dict[str, list[ListedFile]] = defaultdict(list)
    for f in files:
        fmt = format_of(Path(f.name).name)
        if fmt is not None:
            groups[fmt].append(f)
    return {fmt: tuple(sorted(fs, key=lambda f: f.name)) for fmt, fs in groups.items()}


def missing_shards(files: Sequence[ListedFile]) -> list[str]:
    """Names of shards a sharded set announces (`-0000i-of-0000n`) but lacks."""
    announced: dict[tuple[str, str, int, int], set[int]] = defaultdict(set)
    for f in files:
        path = Path(f.name)
        match = _SHARD_RE.match(path.stem)
        if match:
            n = int(match.group("n"))
            key = (match.group("stem"), path.suffix, n, len(match.group("n")))
            announced[key].add(int(match.group("i")))
    missing = []
    for (stem, suffix, n, width), present in announced.items():
        missing += [f"{stem}-{i:0{width}d}-of-{n:0{width}d}{suffix}" for i in range(1, n + 1) if i not in present]
    return sorted(missing)
