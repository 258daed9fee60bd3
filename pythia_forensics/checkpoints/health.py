"""Checkpoint forensics: prove each revision is what its name says before a curve uses it.

Two levels of checking, both ending in one table (revision, step, status, reasons):

* **Census** (no weight bytes downloaded): the revisions a source lists, each with its
  weight files' names, sizes and sha256 (LFS metadata on the hub, file hashes locally).
  Reports revisions missing from the expected grid, revisions without a complete weight
  set, weight files whose size disagrees with the same file in other revisions (a truncated
  upload), clusters of revisions sharing weight blobs (a stale copy of the final model under
  a mid-training name; `step0 == step1` is a known upstream fault and is reported as such),
  and `step<final>` differing from `main`.
* **Deep** (`deep=True`, loads tensors): each revision differs from its neighbours; the
  parameter distance from step0, the distance to the final model and the input-embedding
  norm along the grid, with spikes that break the trend flagged (a stale or swapped
  checkpoint shows as a jump back toward the final model); `.bin` and safetensors on one
  branch holding the same tensors; lineage (the first trained revision is closer to its own
  step0 than to a peer seed's step0).

Statuses: ``bad`` (do not use), ``flagged`` (use only marked), ``ok``. A finding on a known
upstream fault is reported but does not fail the check (`HealthReport.failed`).

The pure checks (`census_findings`, `trend_breaks`, `cluster_blobs`, ...) take plain
records and are tested on synthetic inputs; `check_health` wires them to `sources`.
"""
from __future__ import annotations

import json
import re
import struct
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pythia_forensics.checkpoints.registry import step_of_revision
from pythia_forensics.checkpoints.architecture import Architecture
from pythia_forensics.checkpoints.sources import WeightFile
from pythia_forensics.constants import (
    EMBEDDING_TENSOR_KEYS,
    HEALTH_SIZE_MIN_PEERS,
    HEALTH_SIZE_TOLERANCE,
    HEALTH_SPIKE_FACTOR,
    HEALTH_SPIKE_REL_FLOOR,
    HEALTH_STATUSES,
    IGNORED_TENSOR_SUFFIXES,
    KNOWN_IDENTICAL,
    MAIN_REVISION,
    WEIGHT_SUFFIXES,
)

__all__ = [
    "Finding",
    "RevisionHealth",
    "RevisionStats",
    "HealthReport",
    "RevisionFiles",
    "ListedFile",
    "check_health",
    "census_findings",
    "cluster_blobs",
    "trend_breaks",
    "deep_findings",
    "compare_states",
    "load_state",
    "tensor_distance",
    "safetensors_problem",
]

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


# --- small helpers -----------------------------------------------------------------------
def _order_key(step: int | None, revision: str) -> tuple[float, str]:
    # `main` (no step) sorts after every step branch: it is the final model.
    return (float("inf") if step is None else float(step), revision)


def _format_of(name: str) -> str | None:
    for suffix, fmt in WEIGHT_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def weight_sets(files: Iterable[ListedFile]) -> dict[str, tuple[ListedFile, ...]]:
    """Group weight files by format ("safetensors", "bin"); other files are dropped."""
    groups: dict[str, list[ListedFile]] = defaultdict(list)
    for f in files:
        fmt = _format_of(Path(f.name).name)
        if fmt is not None:
            groups[fmt].append(f)
    return {fmt: tuple(sorted(fs, key=lambda f: f.name)) for fmt, fs in groups.items()}


def _fingerprints(files: Iterable[ListedFile]) -> dict[str, tuple[str, ...]]:
    """Per format, the sorted sha256s of its files: equal fingerprints = byte-identical set."""
    return {fmt: tuple(sorted(f.sha256 for f in fs)) for fmt, fs in weight_sets(files).items()}


def _missing_shards(files: Sequence[ListedFile]) -> list[str]:
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


def safetensors_problem(path: Path) -> str | None:
    """Read a safetensors header (a few KB) and check the file holds every byte it promises.

    Returns:
        None when the file is whole, else a one-line description (truncated, bad header).
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return f"{path.name} has {size} bytes, too few for a safetensors header"
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                return f"{path.name} has {size} bytes but its header alone claims {n + 8}"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        return f"{path.name} has an unreadable safetensors header ({exc})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + (max(ends) if ends else 0)
    if size != expected:
        return f"{path.name} has {size} bytes but its header promises {expected}"
    return None


def _bin_problem(path: Path) -> str | None:
    """A torch `.bin` is a zip archive (torch >= 1.6); a truncated one loses its directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{path.name} is not a readable torch zip archive ({exc})"
    return None


# --- census (pure) -----------------------------------------------------------------------
def cluster_blobs(listings: Sequence[RevisionFiles]) -> list[tuple[str, ...]]:
    """Group revisions that share at least one weight blob (same sha256), transitively.

    Returns:
        Clusters with two or more revisions, members in step order, clusters in order of
        their first member.
    """
    parent: dict[str, str] = {x.revision: x.revision for x in listings}

    def find(r: str) -> str:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    owner: dict[str, str] = {}
    for x in listings:
        for f in x.files:
            if _format_of(Path(f.name).name) is None or not f.sha256:
                continue
            if f.sha256 in owner:
                parent[find(x.revision)] = find(owner[f.sha256])
            else:
                owner[f.sha256] = x.revision
    groups: dict[str, list[RevisionFiles]] = defaultdict(list)
    for x in listings:
        groups[find(x.revision)].append(x)
    clusters = [tuple(m.revision for m in sorted(g, key=lambda m: _order_key(m.step, m.revision)))
                for g in groups.values() if len(g) > 1]
    order = {x.revision: _order_key(x.step, x.revision) for x in listings}
    return sorted(clusters, key=lambda c: order[c[0]])


def _relation(a: RevisionFiles, b: RevisionFiles) -> tuple[str, str] | None:
    """How `a` relates to `b`: ("duplicate", what) for an identical set, ("shared_blob", files)."""
    fa, fb = _fingerprints(a.files), _fingerprints(b.files)
    same = [fmt for fmt in fa if fa[fmt] == fb.get(fmt)]
    if same:
        return "duplicate", "/".join(sorted(same))
    shas_b = {f.sha256: f.name for f in b.files if f.sha256}
    shared = sorted(f.name for f in a.files if f.sha256 in shas_b and _format_of(Path(f.name).name))
    if shared:
        return "shared_blob", ", ".join(shared)
    return None


def census_findings(listings: Sequence[RevisionFiles], *, expected: Sequence[str],
                    final_revision: str | None, where: str = "the source") -> tuple[list[Finding], list[tuple[str, ...]]]:
    """Every census check on listings alone (plus safetensors headers when files are local).

    Args:
        listings: the revisions the source lists.
        expected: revision names the grid promises (registry / manifest).
        final_revision: the last step's branch (expected to equal `main`), if known.
        where: how to name the source in messages ("the hub", "/path/to/suite").

    Returns:
        (findings, clusters): clusters exclude the expected `final` == `main` pair.
    """
    findings: list[Finding] = []
    by_rev = {x.revision: x for x in listings}
    final_unit = {r for r in (final_revision, MAIN_REVISION) if r in by_rev}

    # 1. Revisions the grid promises but the source lacks.
    for rev in expected:
        if rev not in by_rev:
            findings.append(Finding(rev, step_of_revision(rev), "missing", "bad",
                                    f"{rev} is in the expected grid but {where} has no such revision"))

    # 2. Complete weight sets, and truncated files readable from disk.
    for x in listings:
        sets = weight_sets(x.files)
        if not sets:
            findings.append(Finding(x.revision, x.step, "no_weights", "bad",
                                    f"{x.revision} carries no weight file (.safetensors or .bin)"))
            continue
        complete = {fmt: not _missing_shards(fs) for fmt, fs in sets.items()}
        for fmt, fs in sets.items():
            lost = _missing_shards(fs)
            if lost:
                status = "flagged" if any(complete.values()) else "bad"
                findings.append(Finding(x.revision, x.step, "incomplete", status,
                                        f"{x.revision}'s {fmt} set lacks {', '.join(lost)}"))
        if x.path is not None:
            for f in x.files:
                local = Path(x.path) / f.name
                fmt = _format_of(local.name)
                if fmt is None or not local.exists():
                    continue
                problem = safetensors_problem(local) if fmt == "safetensors" else _bin_problem(local)
                if problem:
                    findings.append(Finding(x.revision, x.step, "truncated", "bad", problem))

    # 3. Sizes: a model's same-named weight file has the same size in every revision.
    sizes: dict[str, Counter[int]] = defaultdict(Counter)
    for x in listings:
        for f in x.files:
            if _format_of(Path(f.name).name):
                sizes[f.name][f.size] += 1
    for x in listings:
        for f in x.files:
            counts = sizes.get(f.name)
            if not counts or sum(counts.values()) < HEALTH_SIZE_MIN_PEERS:
                continue
            norm, votes = counts.most_common(1)[0]
            if votes * 2 <= sum(counts.values()) or norm == 0:
                continue  # no clear majority: nothing to compare against
            if abs(f.size - norm) > HEALTH_SIZE_TOLERANCE * norm:
                already = any(g.revision == x.revision and g.code == "truncated" for g in findings)
                if not already:
                    findings.append(Finding(x.revision, x.step, "size", "bad",
                                            f"{f.name} is {f.size} bytes where {votes} other revisions' is {norm} "
                                            "(truncated or wrong upload)"))

    # 4. Shared blobs.
    clusters = []
    for cluster in cluster_blobs(listings):
        members = [by_rev[r] for r in cluster]
        if set(cluster) <= final_unit:
            continue  # step<final> == main: expected
        clusters.append(cluster)
        anchors = [m for m in members if m.revision in final_unit]
        if anchors:
            # The final model is what it is; earlier names carrying its blobs are stale copies.
            anchor = anchors[0]
            for m in members:
                if m.revision in final_unit:
                    continue
                code, what = _relation(m, anchor) or ("shared_blob", "weight blobs (via other revisions)")
                detail = (f"byte-identical {what} weights to {', '.join(sorted(final_unit & set(cluster)))} "
                          "(a copy of the final model under a mid-training name)" if code == "duplicate"
                          else f"shares {what} with the final model {anchor.revision}")
                findings.append(Finding(m.revision, m.step, code, "bad", detail))
            continue
        origin, later = members[0], members[1:]
        unknown_later = []
        for m in later:
            known = KNOWN_IDENTICAL.get((origin.revision, m.revision))
            code, what = _relation(m, origin) or ("shared_blob", "weight blobs (via other revisions)")
            if known and code == "duplicate":
                findings.append(Finding(m.revision, m.step, "duplicate", "flagged",
                                        f"byte-identical {what} weights to {origin.revision} ({known})", known=True))
                continue
            unknown_later.append(m.revision)
            detail = (f"byte-identical {what} weights to {origin.revision}; training should have changed them"
                      if code == "duplicate" else f"shares {what} with {origin.revision}")
            findings.append(Finding(m.revision, m.step, code, "bad", detail))
        if unknown_later:
            findings.append(Finding(origin.revision, origin.step, "duplicate", "flagged",
                                    f"later revisions {', '.join(unknown_later)} carry its weight blobs "
                                    "(one of them is mislabelled)"))

    # 5. step<final> must equal main when both exist (compared where they share a format).
    if final_revision in by_rev and MAIN_REVISION in by_rev:
        fa, fb = _fingerprints(by_rev[final_revision].files), _fingerprints(by_rev[MAIN_REVISION].files)
        common = set(fa) & set(fb)
        if common and all(fa[k] != fb[k] for k in common):
            for rev in (final_revision, MAIN_REVISION):
                other = MAIN_REVISION if rev == final_revision else final_revision
                findings.append(Finding(rev, by_rev[rev].step, "final_mismatch", "flagged",
                                        f"{rev} and {other} should hold the same final model but their "
                                        f"{'/'.join(sorted(common))} weights differ"))
    return findings, clusters


# --- trend breaks (pure) -----------------------------------------------------------------
def trend_breaks(values: Sequence[float], *, factor: float = HEALTH_SPIKE_FACTOR,
                 rel_floor: float = HEALTH_SPIKE_REL_FLOOR) -> list[int]:
    """Indices of isolated spikes in an ordered series (up or down).

    A point i (not an end point) is a spike when it sits above both neighbours, or below
    both, by more than `factor` times the largest change of the adjacent steps that do not
    involve it (i-2 -> i-1 and i+1 -> i+2), and by more than `rel_floor` of the series'
    range. A smooth rise, fall or turning point never qualifies (its neighbours change as
    much as it does); a revision whose weights jump toward the final model and back does.
    A point with no adjacent step on either side (series shorter than 4) is never judged.
    Uses `scipy.signal.find_peaks`, whose `threshold` is exactly "vertical distance to both
    neighbours".

    Args:
        values: the series in grid order (NaNs are never flagged).
        factor: spike size relative to the local step size.
        rel_floor: spike size relative to the series' range.

    Returns:
        Sorted indices of spikes.
    """
    from scipy.signal import find_peaks

    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < 4 or not np.isfinite(v).any():
        return []
    span = float(np.nanmax(v) - np.nanmin(v))
    if span == 0.0:
        return []
    need = np.full(n, np.inf)
    for i in range(1, n - 1):
        local = []
        if i >= 2:
            local.append(abs(v[i - 1] - v[i - 2]))
        if i + 2 < n:
            local.append(abs(v[i + 2] - v[i + 1]))
        local = [x for x in local if np.isfinite(x)]
        if local:
            need[i] = max(factor * max(local), rel_floor * span)
    filled = np.where(np.isfinite(v), v, np.nanmean(v))
    found: set[int] = set()
    for sign in (1.0, -1.0):
        # find_peaks takes a (min, max) threshold pair, or a per-sample array for the min.
        peaks, _ = find_peaks(sign * filled, threshold=(need, None))
        found |= {int(i) for i in peaks if np.isfinite(v[i])}
    return sorted(found)


# --- tensors -----------------------------------------------------------------------------
def load_state(path: Path, files: Sequence[str]) -> dict[str, Any]:
    """Load a weight set from disk: safetensors via safetensors, `.bin` via
    `torch.load(weights_only=True)` (never a full unpickle).

    Args:
        path: the revision folder.
        files: weight file names of ONE format (all shards).

    Returns:
        name -> tensor (as stored; callers cast).

    Raises:
        OSError / ValueError / RuntimeError from the loaders on unreadable files.
    """
    import torch
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for name in files:
        full = Path(path) / name
        if _format_of(name) == "safetensors":
            state.update(load_file(str(full), device="cpu"))
        else:
            loaded = torch.load(str(full), map_location="cpu", weights_only=True)
            state.update({k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)})
    return state


def _params(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.endswith(IGNORED_TENSOR_SUFFIXES)}


def tensor_distance(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """L2 distance over the parameters both states hold (fp32 differences, fp64 sums)."""
    import torch

    total = 0.0
    for name, ta in _params(a).items():
        tb = b.get(name)
        if tb is None or tb.shape != ta.shape:
            continue
        total += float((ta.float() - tb.float()).pow(2).sum(dtype=torch.float64))
    return total ** 0.5


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of floating tensors holding NaN or inf (a checkpoint whose every score is NaN)."""
    import torch

    return [name for name, t in state.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _embedding_norm(state: Mapping[str, Any]) -> float:
    for name, t in state.items():
        if name.endswith(EMBEDDING_TENSOR_KEYS):
            return float(t.float().norm())
    return float("nan")


def compare_states(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Differences between two weight sets that should hold the same model.

    Returns:
        Human-readable problems (empty when every parameter matches exactly): names only
        one side has, shape mismatches, and the tensors whose values differ with the
        largest absolute difference.
    """
    pa, pb = _params(a), _params(b)
    problems = []
    only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
    if only_a:
        problems.append(f"{len(only_a)} tensors only in the first ({', '.join(only_a[:3])})")
    if only_b:
        problems.append(f"{len(only_b)} tensors only in the second ({', '.join(only_b[:3])})")
    differ = []
    for name in sorted(set(pa) & set(pb)):
        ta, tb = pa[name], pb[name]
        if ta.shape != tb.shape:
            problems.append(f"{name} has shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
            continue
        delta = float((ta.float() - tb.float()).abs().max()) if ta.numel() else 0.0
        if delta > 0 or ta.dtype != tb.dtype and not bool((ta.float() == tb.float()).all()):
            differ.append((delta, name))
    if differ:
        worst = max(differ)
        problems.append(f"{len(differ)} tensors differ (largest |diff| {worst[0]:.3g} in {worst[1]})")
    return problems


# --- deep checks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _DeepInput:
    """One revision for the deep pass: its name, step and loaders for each format it has."""

    revision: str
    step: int | None
    loaders: Mapping[str, Callable[[], dict[str, Any]]] = field(hash=False)


def deep_findings(revisions: Sequence[_DeepInput], *, final_revision: str | None,
                  same_blobs: Iterable[tuple[str, ...]] = (),
                  peers: Mapping[str, Callable[[], dict[str, Any]]] | None = None,
                  progress: Callable[[Iterable[Any]], Iterable[Any]] = iter) -> tuple[list[Finding], list[RevisionStats]]:
    """Tensor-level checks over a model's revisions, streamed (at most four states in memory:
    step0, final, previous, current).

    Args:
        revisions: revisions with loaders (safetensors preferred for the series).
        final_revision: the final step branch (defaults to the last step listed).
        same_blobs: census clusters; neighbours already reported byte-identical are not
            reported again as tensor-equal.
        peers: other seeds' step0 loaders, by name, for the lineage check.
        progress: wraps the revision loop (tqdm) for a progress bar.

    Returns:
        (findings, stats): stats in grid order, `main` excluded from the series.
    """
    findings: list[Finding] = []
    together = [set(c) for c in same_blobs]
    ordered = sorted(revisions, key=lambda r: _order_key(r.step, r.revision))
    series = [r for r in ordered if r.revision != MAIN_REVISION or final_revision is None]
    by_rev = {r.revision: r for r in ordered}
    if final_revision is None or final_revision not in by_rev:
        stepped = [r for r in series if r.step is not None]
        final_revision = stepped[-1].revision if stepped else None

    def load(r: _DeepInput) -> dict[str, Any] | None:
        fmt = "safetensors" if "safetensors" in r.loaders else next(iter(r.loaders), None)
        if fmt is None:
            return None
        try:
            return r.loaders[fmt]()
        except Exception as exc:  # a corrupt file is a finding, never a crash
            findings.append(Finding(r.revision, r.step, "unreadable", "bad", f"{fmt} weights fail to load ({exc})"))
            return None

    first = next((r for r in series if r.step == 0), series[0] if series else None)
    state0 = load(first) if first is not None else None
    final_state = load(by_rev[final_revision]) if final_revision else None
    stats: list[RevisionStats] = []
    prev: tuple[_DeepInput, dict[str, Any]] | None = None
    first_trained: tuple[_DeepInput, dict[str, Any]] | None = None
    nan = float("nan")
    for r in progress(ordered):
        state = state0 if r is first else (final_state if r.revision == final_revision else load(r))
        if state is None:
            continue
        if bad := nonfinite_tensors(state):
            findings.append(Finding(r.revision, r.step, "nonfinite", "bad",
                                    f"NaN or inf in {len(bad)} tensor(s), e.g. {bad[0]}"))
        # .bin and safetensors on one branch must hold the same tensors.
        if len(r.loaders) > 1:
            other_fmt = next(f for f in r.loaders if f != "safetensors")
            try:
                problems = compare_states(state, r.loaders[other_fmt]())
            except Exception as exc:
                problems = [f"{other_fmt} fails to load ({exc})"]
            if problems:
                findings.append(Finding(r.revision, r.step, "format_mismatch", "bad",
                                        f".bin and safetensors disagree: {'; '.join(problems)}"))
        if r.revision == MAIN_REVISION and r.revision != final_revision:
            if final_state is not None and (problems := compare_states(final_state, state)):
                for rev, step in ((final_revision, by_rev[final_revision].step), (r.revision, r.step)):
                    findings.append(Finding(rev, step, "final_mismatch", "flagged",
                                            f"{final_revision} and {MAIN_REVISION} tensors differ: {'; '.join(problems)}"))
            continue
        if state0 is not None:
            names0 = set(_params(state0))
            if set(_params(state)) != names0:
                findings.append(Finding(r.revision, r.step, "architecture", "bad",
                                        f"tensor names differ from {first.revision}'s"))
        d_prev = tensor_distance(state, prev[1]) if prev is not None else nan
        if prev is not None and d_prev == 0.0:
            pair = (prev[0].revision, r.revision)
            reported = any(set(pair) <= c for c in together)
            known = KNOWN_IDENTICAL.get(pair)
            if not reported:
                findings.append(Finding(r.revision, r.step, "not_distinct", "flagged" if known else "bad",
                                        f"every parameter equals {prev[0].revision}'s"
                                        + (f" ({known})" if known else "; training should have changed them"),
                                        known=bool(known)))
        d0 = tensor_distance(state, state0) if state0 is not None else nan
        if first_trained is None and r is not first and d0 > 0:
            first_trained = (r, state)
        d_final = tensor_distance(state, final_state) if final_state is not None else nan
        if d_final == 0.0 and r.revision != final_revision and d_prev != 0.0:
            # A re-saved copy of the final model (other bytes, same tensors) escapes the hash
            # census; the tensors give it away.
            if not any({r.revision, final_revision} <= c for c in together):
                findings.append(Finding(r.revision, r.step, "not_distinct", "bad",
                                        f"every parameter equals the final model's ({final_revision}): "
                                        "a copy of the final model under a mid-training name"))
        stats.append(RevisionStats(
            revision=r.revision, step=r.step, dist_from_step0=d0, dist_to_final=d_final,
            dist_to_previous=d_prev, embedding_norm=_embedding_norm(state),
        ))
        prev = (r, state)

    # Trend breaks along the grid, one finding per revision naming every series that breaks.
    labels = {"dist_from_step0": "distance from step0", "dist_to_final": "distance to the final model",
              "embedding_norm": "input-embedding norm"}
    broken: dict[int, list[str]] = defaultdict(list)
    for key, label in labels.items():
        values = [getattr(s, key) for s in stats]
        for i in trend_breaks(values):
            broken[i].append(f"{label} {values[i]:.4g} (neighbours {values[i - 1]:.4g}, {values[i + 1]:.4g})")
    for i, parts in sorted(broken.items()):
        s = stats[i]
        toward_final = s.dist_to_final < min(stats[i - 1].dist_to_final, stats[i + 1].dist_to_final)
        findings.append(Finding(s.revision, s.step, "trend_break", "flagged",
                                "spike " + ("back toward the final model" if toward_final else "off the trend")
                                + ": " + "; ".join(parts)))

    # Lineage: the first trained revision descends from its own step0, not a peer seed's.
    if peers and first_trained is not None and state0 is not None:
        r, state = first_trained
        own = tensor_distance(state, state0)
        for peer, loader in peers.items():
            try:
                d_peer = tensor_distance(state, loader())
            except Exception as exc:
                findings.append(Finding(r.revision, r.step, "lineage", "flagged",
                                        f"cannot load {peer}'s step0 to compare ({exc})"))
                continue
            if d_peer <= own:
                findings.append(Finding(r.revision, r.step, "lineage", "bad",
                                        f"{r.revision} is closer to {peer}'s step0 (distance {d_peer:.4g}) than to "
                                        f"its own {first.revision} ({own:.4g}): it does not descend from this run's init"))
    return findings, stats


# --- assembling the report -----------------------------------------------------------------
def build_rows(model: str, names: Iterable[tuple[str, int | None]], findings: Sequence[Finding]) -> tuple[RevisionHealth, ...]:
    """One row per revision: worst status of its findings, reasons worst first."""
    rank = {s: i for i, s in enumerate(HEALTH_STATUSES)}
    by_rev: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_rev[f.revision].append(f)
    steps = dict(names)
    for f in findings:
        steps.setdefault(f.revision, f.step)
    rows = []
    for rev, step in sorted(steps.items(), key=lambda kv: _order_key(kv[1], kv[0])):
        fs = sorted(by_rev.get(rev, []), key=lambda f: -rank[f.status])
        status = fs[0].status if fs else "ok"
        reasons = tuple(dict.fromkeys(f.reason for f in fs))
        rows.append(RevisionHealth(model=model, revision=rev, step=step, status=status, reasons=reasons,
                                   known=bool(fs) and all(f.known for f in fs)))
    return tuple(rows)


# --- wiring: sources -> checks -> report ------------------------------------------------------
def _expected_revisions(spec: Any) -> tuple[str, ...]:
    """The grid a model promises: the registry's for hub models; for a local model, the
    manifest's `steps` (what training meant to save; the registry reads only what is there)."""
    if getattr(spec, "source", None) == "local" and getattr(spec, "path", None) is not None:
        from pythia_forensics.checkpoints.manifest import read_manifest
        from pythia_forensics.errors import UnknownModelError

        try:
            manifest = read_manifest(spec.path)
        except UnknownModelError:  # the registry reports a bad manifest; here it promises nothing
            manifest = None
        if manifest is None:
            return ()
        # a folder named otherwise (checkpoint-<N>) keeps its name: only its step was promised
        named = {step: name for name, step in getattr(spec, "folders", {}).items()}
        return tuple(named.get(int(s), f"step{int(s)}") for s in manifest.steps)
    return tuple(getattr(spec, "revisions", ()) or ())


def _files_of(listing: Any, *, local_root: Path | None) -> RevisionFiles:
    """A `sources.RevisionListing` as the census sees it: every weight file of every format."""
    files = tuple(ListedFile(f.name, int(f.size), f.sha256 or "") for f in listing.all_weights)
    path = local_root / listing.revision if local_root is not None else None
    return RevisionFiles(revision=listing.revision, step=listing.step, files=files, path=path)


def _select(names: Sequence[tuple[str, int | None]], steps: str | Sequence[int] | None,
            final_step: int | None) -> set[str]:
    """Revision names chosen by a `--steps` spec (`main` follows the final step)."""
    from pythia_forensics.checkpoints.registry import parse_steps

    grid = sorted({s for _, s in names if s is not None})
    spec = steps if isinstance(steps, (str, type(None))) else ",".join(str(int(s)) for s in steps)
    chosen = set(parse_steps(spec, grid))
    keep = {rev for rev, s in names if s in chosen and rev != MAIN_REVISION}
    if final_step is None or final_step in chosen:
        keep.add(MAIN_REVISION)
    return keep


class _Fetcher:
    """Revision folders for the deep pass, through the one budgeted `fetch.Fetcher`.

    Local sources are read in place. Hub revisions go into the shared cache under holds in
    the cache's ledger, so the budget is shared with every other worker on that cache; when
    the next revision does not fit, this pass gives back its oldest hold (tensors already
    loaded stay in memory; the last holder evicts). Revisions the cache held before this
    pass are never evicted. With no budget nothing is evicted, so a later replay reuses the
    downloads. Peers' sources share the main pass's `_Fetcher` (`view`), one budget for all.
    """

    def __init__(self, source: Any, budget: int | None, *, shared: _Fetcher | None = None) -> None:
        from pythia_forensics.checkpoints.fetch import Fetcher

        self.source = source
        self.local = getattr(source, "source", None) == "local"
        self.folders: dict[str, Path] = {}
        self.root = shared.root if shared is not None else self
        if shared is None:
            self.fetcher = Fetcher(budget)
            self.order: list[tuple[_Fetcher, Any]] = []   # (view, hold), oldest first

    def view(self, source: Any) -> _Fetcher:
        """A fetcher for another source (a peer) sharing this one's budget and holds."""
        return _Fetcher(source, None, shared=self)

    @property
    def downloaded(self) -> int:
        return self.root.fetcher.downloaded

    @property
    def peak(self) -> int:
        return self.root.fetcher.peak

    def _give_back(self, entry: tuple[_Fetcher, Any]) -> None:
        view, hold = entry
        view.folders.pop(hold.revision, None)
        if hold.download == 0 and hold.lease is not None:   # the cache had it: keep the files
            self.root.fetcher.held.remove(hold)
            hold.released = True
            hold.lease.release()
        else:
            self.root.fetcher.release(hold)

    def folder(self, revision: str, names: Sequence[str]) -> Path:
        """The folder holding `names` of `revision` (fetching them first when needed)."""
        if self.local:
            return Path(self.source.path) / revision
        root = self.root
        if revision not in self.folders:
            # What fetch downloads plus the other format of a branch carrying both (the
            # format check reads it): a "checkpoint" here is every weight file it has.
            listing = self.source.listing(revision)
            extra = tuple(f.name for f in listing.all_weights if f.name not in listing.fetch_names)
            while True:
                hold = root.fetcher.acquire(self.source, revision, wait=not root.order, extra=extra)
                if hold is not None:
                    break
                root._give_back(root.order.pop(0))
            record = root.fetcher.fetch(hold)
            root.order.append((self, hold))
            self.folders[revision] = Path(record.path)
        folder = self.folders[revision]
        absent = [n for n in names if not (folder / n).exists()]
        if absent:
            self.source.fetch_files(revision, absent)
        return folder

    def close(self) -> None:
        """Give back every hold (the budget's evictions happen here for the last ones)."""
        root = self.root
        while root.order:
            root._give_back(root.order.pop(0))
        root.fetcher.close()


def _deep_input(entry: RevisionFiles, fetcher: _Fetcher) -> _DeepInput:
    sets = weight_sets(entry.files)

    def loader(names: tuple[str, ...]) -> Callable[[], dict[str, Any]]:
        return lambda: load_state(fetcher.folder(entry.revision, names), names)

    # An incomplete set is already reported by the census; only complete sets are loaded.
    loaders = {fmt: loader(tuple(f.name for f in fs))
               for fmt, fs in sorted(sets.items(), key=lambda kv: kv[0] != "safetensors")
               if not _missing_shards(fs)}
    return _DeepInput(revision=entry.revision, step=entry.step, loaders=loaders)


def _census_configs(src: Any, revisions: Sequence[str]) -> dict[str, Architecture]:
    """Each revision's `config.json` fields: read once per distinct config blob (a few hundred
    bytes; a hub grid of 154 revisions usually shares one), never a weight byte."""
    from pythia_forensics.checkpoints.architecture import from_config

    out: dict[str, Architecture] = {}
    by_blob: dict[str, Architecture] = {}
    for rev in revisions:
        listing = src.listing(rev)
        f = listing.file("config.json")
        if f is None:
            continue
        blob = f.blob_id or f.sha256 or f"{rev}"
        if blob not in by_blob:
            try:
                folder = Path(src.fetch_files(rev, ["config.json"]))
                by_blob[blob] = from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
            except (OSError, ValueError):   # PFErrors are OSError/ValueError subclasses too
                by_blob[blob] = Architecture()
        out[rev] = by_blob[blob]
    return out


def _census_architecture(entry: RevisionFiles, config: Architecture | None) -> Architecture:
    """Config fields plus, where the safetensors files are on disk, what their headers say."""
    from pythia_forensics.checkpoints.architecture import from_shapes, read_safetensors_shapes

    arch = Architecture()
    sets = weight_sets(entry.files)
    if entry.path is not None and "safetensors" in sets and not _missing_shards(sets["safetensors"]):
        shapes: dict[str, tuple[int, ...]] = {}
        try:
            for f in sets["safetensors"]:
                shapes.update(read_safetensors_shapes(Path(entry.path) / f.name))
            arch = from_shapes(shapes)
        except (OSError, ValueError):
            pass  # a truncated or unreadable header is the census's `truncated` finding
    return arch.merged(config or Architecture())


def architecture_findings(spec: Any, found: Mapping[str, Architecture],
                          steps: Mapping[str, int | None]) -> list[Finding]:
    """A `bad` finding for each revision whose architecture disagrees with the registry entry
    of the name it is served under (fields either side does not know are not compared)."""
    from pythia_forensics.checkpoints.architecture import mismatches

    out = []
    for rev, arch in found.items():
        diff = mismatches(arch, spec)
        if diff:
            out.append(Finding(rev, steps.get(rev), "architecture", "bad",
                               f"served as {spec.name} but the checkpoint has " + ", ".join(diff)
                               + " (checkpoint vs registry): a different model under this name"))
    return out


def _with_architecture(item: _DeepInput, spec: Any, config: Architecture | None,
                       findings: list[Finding]) -> _DeepInput:
    """Wrap a deep input's loaders: the first loaded state's tensor shapes are compared with
    the registry entry (parameter count from the tensors themselves)."""
    from pythia_forensics.checkpoints.architecture import from_shapes, mismatches

    done: set[str] = set()

    def wrap(load: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def loader() -> dict[str, Any]:
            state = load()
            if item.revision not in done:
                done.add(item.revision)
                arch = from_shapes({k: tuple(v.shape) for k, v in state.items()}).merged(config or Architecture())
                diff = mismatches(arch, spec)
                if diff:
                    findings.append(Finding(item.revision, item.step, "architecture", "bad",
                                            f"tensors served as {spec.name} have " + ", ".join(diff)
                                            + " (checkpoint vs registry): a different model under this name"))
            return state
        return loader

    return _DeepInput(revision=item.revision, step=item.step,
                      loaders={fmt: wrap(fn) for fmt, fn in item.loaders.items()})


def _is_spec(obj: Any) -> bool:
    return hasattr(obj, "steps") and hasattr(obj, "source") and hasattr(obj, "revisions")


def check_health(model: Any, *, steps: str | Sequence[int] | None = None, deep: bool = False,
                 source: Any = None, suite_dir: str | Path | None = None, disk_budget: int | None = None,
                 peers: Sequence[Any] = (), cache_dir: str | Path | None = None,
                 progress: bool = True) -> HealthReport:
    """Check that every revision of a model is what its name says.

    The census lists revisions and weight files (sizes, sha256) without downloading any
    weights; `deep=True` also loads tensors (downloading hub revisions into the shared cache
    within `disk_budget`, reusing what the cache already holds).

    Args:
        model: a registry name, hub id, local model folder, or a `registry.ModelSpec`.
        steps: a `--steps` spec ("all", "N,N", "A:B", "log") or step numbers; None = all.
        deep: load tensors for the deep checks.
        source: a `sources` object to list/fetch with (default: `sources.open_source`).
        suite_dir: a local suite folder to look model names up in.
        disk_budget: most bytes the deep pass may download and hold at once (None: no limit).
        peers: other seeds of the same model (names, folders, specs or source objects) for
            the lineage check (deep only); each peer's step0 is loaded.
        cache_dir: hub cache folder (default: huggingface_hub's, shared with the replay).
        progress: show a progress bar while listing and in the deep pass.

    Returns:
        The `HealthReport` (store it with `ResultsStore(dir).write_health(report.to_frame())`).

    Raises:
        UnknownModelError, RevisionNotFoundError, SourceError: from the registry / sources.
        StepSpecError: a malformed `steps`.
        DiskBudgetError: `disk_budget` is smaller than one revision.
    """
    from tqdm.auto import tqdm

    from pythia_forensics.checkpoints import sources as sources_mod
    from pythia_forensics.errors import DiskBudgetError
    from pythia_forensics.checkpoints.registry import resolve_model

    def open_src(spec: Any) -> Any:
        return sources_mod.open_source(spec, **({"cache_dir": str(cache_dir)} if cache_dir and spec.source != "local" else {}))

    spec = model if _is_spec(model) else resolve_model(model, suite_dir=suite_dir)
    src = source or open_src(spec)
    local_root = Path(src.path) if getattr(src, "source", None) == "local" else None
    revisions = list(src.revisions())
    expected = _expected_revisions(spec)
    names = [(r, spec.step_of(r)) for r in revisions] + [(r, spec.step_of(r)) for r in expected]
    final_step = max((s for _, s in names if s is not None), default=None)
    keep = _select(names, steps, final_step)
    revisions = [r for r in revisions if r in keep]
    expected = [r for r in expected if r in keep]
    entries = [_files_of(src.listing(r), local_root=local_root)
               for r in tqdm(revisions, desc=f"listing {spec.name}", unit="rev", disable=not progress)]
    # the final step's own branch name (`step143000`, OLMo's `step557000-tokens2464B`, ...)
    aliases = getattr(spec, "aliases", {}) or {}
    final_revision = None if final_step is None else next(
        (r for r, st in sorted(names, key=lambda n: n[0] in aliases) if st == final_step and r in revisions),
        f"step{final_step}")
    where = f"the hub repo {spec.repo}" if spec.source == "hub" else str(spec.path)
    findings, clusters = census_findings(entries, expected=expected, final_revision=final_revision, where=where)
    configs = _census_configs(src, revisions)
    findings += architecture_findings(spec, {e.revision: _census_architecture(e, configs.get(e.revision))
                                             for e in entries}, {e.revision: e.step for e in entries})

    stats: list[RevisionStats] = []
    fetcher: _Fetcher | None = None
    if deep and entries:
        if disk_budget is not None and local_root is None:   # local folders download nothing
            biggest = max(entries, key=lambda e: sum(f.size for f in e.files))
            need = sum(f.size for f in biggest.files)
            if need > disk_budget:
                raise DiskBudgetError(
                    f"disk budget {disk_budget} bytes is smaller than one checkpoint: {spec.name}@{biggest.revision} "
                    f"needs {need} bytes; raise --disk-budget to at least {need}")
        fetcher = _Fetcher(src, disk_budget)
        # Files the census proved broken would only fail to load again.
        broken = {f.revision for f in findings if f.code in ("truncated", "size", "no_weights")}
        inputs = [_with_architecture(_deep_input(e, fetcher), spec, configs.get(e.revision), findings)
                  for e in entries if e.revision not in broken]
        peer_loaders: dict[str, Callable[[], dict[str, Any]]] = {}
        for peer in peers:
            if hasattr(peer, "listing") and hasattr(peer, "spec"):   # a source object
                peer_spec, peer_src = peer.spec, peer
            else:
                peer_spec = peer if _is_spec(peer) else resolve_model(peer, suite_dir=suite_dir)
                peer_src = open_src(peer_spec)
            zero = [r for r in peer_src.revisions() if peer_spec.step_of(r) == 0]
            if not zero:
                findings.append(Finding(entries[0].revision, entries[0].step, "lineage", "flagged",
                                        f"peer {peer_spec.name} has no step0 to compare with"))
                continue
            peer_root = Path(peer_src.path) if getattr(peer_src, "source", None) == "local" else None
            peer_input = _deep_input(_files_of(peer_src.listing(zero[0]), local_root=peer_root),
                                     fetcher.view(peer_src))
            if peer_input.loaders:
                peer_loaders[peer_spec.name] = next(iter(peer_input.loaders.values()))

        def wrap(it: Iterable[Any]) -> Iterable[Any]:
            return tqdm(it, total=len(inputs), desc=f"health {spec.name}", unit="rev", disable=not progress)

        try:
            deep_f, stats = deep_findings(inputs, final_revision=final_revision, same_blobs=clusters,
                                          peers=peer_loaders, progress=wrap)
        finally:
            fetcher.close()
        findings += deep_f

    rows = build_rows(spec.name, [(e.revision, e.step) for e in entries] + [(r, spec.step_of(r)) for r in expected],
                      findings)
    return HealthReport(model=spec.name, source=spec.source, deep=deep, rows=rows, findings=tuple(findings),
                        clusters=tuple(clusters), stats=tuple(stats),
                        downloaded_bytes=fetcher.downloaded if fetcher else 0,
                        peak_bytes=fetcher.peak if fetcher else 0)
