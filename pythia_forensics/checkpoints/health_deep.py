"""The deep pass: tensor-level checks over a model's revisions, streamed in grid order.

Per-revision checks (`REVISION_CHECKS`) see one loaded state beside the pass's anchors
(step0, the final model, the previous revision); series checks (`SERIES_CHECKS`) see the
whole `RevisionStats` series once the loop is done. Each is a small function returning
findings; `deep_findings` loads states and loops over the two tables. At most four states
are in memory at once: step0, final, previous, current.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pythia_forensics.checkpoints.health_records import (
    KNOWN_IDENTICAL,
    Finding,
    RevisionStats,
    format_of,
    order_key,
)
from pythia_forensics.constants import EMBEDDING_TENSOR_KEYS, IGNORED_TENSOR_SUFFIXES, MAIN_REVISION

__all__ = [
    "DeepInput",
    "DeepPass",
    "REVISION_CHECKS",
    "SERIES_CHECKS",
    "Seen",
    "compare_states",
    "deep_findings",
    "load_state",
    "nonfinite_tensors",
    "tensor_distance",
    "trend_breaks",
]

# Trend breaks: a point is a spike when it sits above (or below) BOTH neighbours by more than
# SPIKE_FACTOR times the larger of the adjacent steps' own changes, and by more than
# SPIKE_REL_FLOOR of the series' range (so float noise on a flat series never fires).
SPIKE_FACTOR = 3.0
SPIKE_REL_FLOOR = 0.05

State = dict[str, Any]


# --- trend breaks (pure) -----------------------------------------------------------------
def trend_breaks(values: Sequence[float], *, factor: float = SPIKE_FACTOR,
                 rel_floor: float = SPIKE_REL_FLOOR) -> list[int]:
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
        if format_of(name) == "safetensors":
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



# --- the pass --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeepInput:
    """One revision for the deep pass: its name, step and loaders for each format it has."""

    revision: str
    step: int | None
    loaders: Mapping[str, Callable[[], State]] = field(hash=False)


@dataclass(frozen=True)
class Seen:
    """One loaded revision as the per-revision checks see it.

    `stats` is None for a `main` that is not the final step branch: it is compared with the
    final model, not placed on the series. `d_prev`, `d0`, `d_final` are NaN where the
    anchor is missing."""

    item: DeepInput
    state: State
    stats: RevisionStats | None


@dataclass
class DeepPass:
    """The anchors and running state of one deep pass (built by `deep_findings`).

    Attributes:
        final_revision: the final step branch.
        by_rev: every input by revision name.
        together: census clusters (sets): pairs already reported byte-identical.
        peers: other seeds' step0 loaders, by name.
        findings: where loads report `unreadable` (shared with the checks' output).
        first, state0: the step0 (or first) revision and its state.
        final_state: the final model's state.
        prev: the previous revision on the series and its state.
        first_trained: the first revision that differs from step0, and its state.
    """

    final_revision: str | None
    by_rev: dict[str, DeepInput]
    together: list[set[str]]
    peers: Mapping[str, Callable[[], State]]
    findings: list[Finding] = field(default_factory=list)
    first: DeepInput | None = None
    state0: State | None = None
    final_state: State | None = None
    prev: tuple[DeepInput, State] | None = None
    first_trained: tuple[DeepInput, State] | None = None

    def load(self, r: DeepInput) -> State | None:
        """The revision's state (safetensors preferred); a failed load is an `unreadable`
        finding, never a crash."""
        fmt = "safetensors" if "safetensors" in r.loaders else next(iter(r.loaders), None)
        if fmt is None:
            return None
        try:
            return r.loaders[fmt]()
        except Exception as exc:  # a corrupt file is a finding, never a crash
            self.findings.append(Finding(r.revision, r.step, "unreadable", "bad", f"{fmt} weights fail to load ({exc})"))
            return None

    def state_of(self, r: DeepInput) -> State | None:
        if r is self.first:
            return self.state0
        if r.revision == self.final_revision:
            return self.final_state
        return self.load(r)

    def see(self, r: DeepInput, state: State) -> Seen:
        """Measure one revision against the anchors (no stats for a non-final `main`)."""
        if r.revision == MAIN_REVISION and r.revision != self.final_revision:
            return Seen(r, state, None)
        nan = float("nan")
        d0 = tensor_distance(state, self.state0) if self.state0 is not None else nan
        if self.first_trained is None and r is not self.first and d0 > 0:
            self.first_trained = (r, state)
        return Seen(r, state, RevisionStats(
            revision=r.revision, step=r.step, dist_from_step0=d0,
            dist_to_final=tensor_distance(state, self.final_state) if self.final_state is not None else nan,
            dist_to_previous=tensor_distance(state, self.prev[1]) if self.prev is not None else nan,
            embedding_norm=_embedding_norm(state),
        ))


# A per-revision check: (the pass, one revision seen) -> findings.
RevisionCheck = Callable[[DeepPass, Seen], list[Finding]]
# A series check: (the pass, the stats series in grid order) -> findings.
SeriesCheck = Callable[[DeepPass, Sequence[RevisionStats]], list[Finding]]


def nonfinite(p: DeepPass, seen: Seen) -> list[Finding]:
    """`nonfinite` (bad): NaN or inf in a floating tensor (every score would be NaN)."""
    bad = nonfinite_tensors(seen.state)
    r = seen.item
    return [Finding(r.revision, r.step, "nonfinite", "bad", f"NaN or inf in {len(bad)} tensor(s), e.g. {bad[0]}")] if bad else []


def formats_disagree(p: DeepPass, seen: Seen) -> list[Finding]:
    """`format_mismatch` (bad): `.bin` and safetensors on one branch hold different tensors."""
    r = seen.item
    if len(r.loaders) < 2:
        return []
    other_fmt = next(f for f in r.loaders if f != "safetensors")
    try:
        problems = compare_states(seen.state, r.loaders[other_fmt]())
    except Exception as exc:
        problems = [f"{other_fmt} fails to load ({exc})"]
    if not problems:
        return []
    return [Finding(r.revision, r.step, "format_mismatch", "bad", f".bin and safetensors disagree: {'; '.join(problems)}")]


def main_differs_from_final(p: DeepPass, seen: Seen) -> list[Finding]:
    """`final_mismatch` (flagged, on both): `main`'s tensors differ from the final step's."""
    r = seen.item
    if seen.stats is not None or p.final_state is None or p.final_revision is None:
        return []
    problems = compare_states(p.final_state, seen.state)
    if not problems:
        return []
    final = p.final_revision
    return [Finding(rev, step, "final_mismatch", "flagged",
                    f"{final} and {MAIN_REVISION} tensors differ: {'; '.join(problems)}")
            for rev, step in ((final, p.by_rev[final].step), (r.revision, r.step))]


def tensor_names_differ(p: DeepPass, seen: Seen) -> list[Finding]:
    """`architecture` (bad): the revision's parameter names differ from step0's."""
    if seen.stats is None or p.state0 is None or p.first is None:
        return []
    if set(_params(seen.state)) == set(_params(p.state0)):
        return []
    r = seen.item
    return [Finding(r.revision, r.step, "architecture", "bad", f"tensor names differ from {p.first.revision}'s")]


def equals_previous(p: DeepPass, seen: Seen) -> list[Finding]:
    """`not_distinct`: every parameter equals the previous revision's (bad; flagged for a
    known upstream fault); silent when the census already reported the pair byte-identical."""
    if seen.stats is None or p.prev is None or seen.stats.dist_to_previous != 0.0:
        return []
    r, pair = seen.item, (p.prev[0].revision, seen.item.revision)
    if any(set(pair) <= c for c in p.together):
        return []
    known = KNOWN_IDENTICAL.get(pair)
    return [Finding(r.revision, r.step, "not_distinct", "flagged" if known else "bad",
                    f"every parameter equals {pair[0]}'s"
                    + (f" ({known})" if known else "; training should have changed them"), known=bool(known))]


def equals_final(p: DeepPass, seen: Seen) -> list[Finding]:
    """`not_distinct` (bad): a mid-training name holding the final model's tensors.

    A re-saved copy of the final model (other bytes, same tensors) escapes the hash census;
    the tensors give it away."""
    s, r = seen.stats, seen.item
    if s is None or s.dist_to_final != 0.0 or r.revision == p.final_revision or s.dist_to_previous == 0.0:
        return []
    if any({r.revision, p.final_revision} <= c for c in p.together):
        return []
    return [Finding(r.revision, r.step, "not_distinct", "bad",
                    f"every parameter equals the final model's ({p.final_revision}): "
                    "a copy of the final model under a mid-training name")]


def trend_break_findings(p: DeepPass, stats: Sequence[RevisionStats]) -> list[Finding]:
    """`trend_break` (flagged): one finding per revision naming every series that spikes there."""
    labels = {"dist_from_step0": "distance from step0", "dist_to_final": "distance to the final model",
              "embedding_norm": "input-embedding norm"}
    broken: dict[int, list[str]] = defaultdict(list)
    for key, label in labels.items():
        values = [getattr(s, key) for s in stats]
        for i in trend_breaks(values):
            broken[i].append(f"{label} {values[i]:.4g} (neighbours {values[i - 1]:.4g}, {values[i + 1]:.4g})")
    out = []
    for i, parts in sorted(broken.items()):
        s = stats[i]
        toward_final = s.dist_to_final < min(stats[i - 1].dist_to_final, stats[i + 1].dist_to_final)
        out.append(Finding(s.revision, s.step, "trend_break", "flagged",
                           "spike " + ("back toward the final model" if toward_final else "off the trend")
                           + ": " + "; ".join(parts)))
    return out


def lineage(p: DeepPass, stats: Sequence[RevisionStats]) -> list[Finding]:
    """`lineage`: the first trained revision must be closer to its own step0 than to any
    peer seed's (bad when not; flagged when a peer's step0 cannot be loaded)."""
    if not p.peers or p.first_trained is None or p.state0 is None or p.first is None:
        return []
    r, state = p.first_trained
    own = tensor_distance(state, p.state0)
    out = []
    for peer, loader in p.peers.items():
        try:
            d_peer = tensor_distance(state, loader())
        except Exception as exc:
            out.append(Finding(r.revision, r.step, "lineage", "flagged", f"cannot load {peer}'s step0 to compare ({exc})"))
            continue
        if d_peer <= own:
            out.append(Finding(r.revision, r.step, "lineage", "bad",
                               f"{r.revision} is closer to {peer}'s step0 (distance {d_peer:.4g}) than to "
                               f"its own {p.first.revision} ({own:.4g}): it does not descend from this run's init"))
    return out


REVISION_CHECKS: tuple[RevisionCheck, ...] = (
    nonfinite, formats_disagree, main_differs_from_final, tensor_names_differ, equals_previous, equals_final,
)
SERIES_CHECKS: tuple[SeriesCheck, ...] = (trend_break_findings, lineage)


def deep_findings(revisions: Sequence[DeepInput], *, final_revision: str | None,
                  same_blobs: Iterable[tuple[str, ...]] = (),
                  peers: Mapping[str, Callable[[], State]] | None = None,
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
    ordered = sorted(revisions, key=lambda r: order_key(r.step, r.revision))
    series = [r for r in ordered if r.revision != MAIN_REVISION or final_revision is None]
    by_rev = {r.revision: r for r in ordered}
    if final_revision is None or final_revision not in by_rev:
        stepped = [r for r in series if r.step is not None]
        final_revision = stepped[-1].revision if stepped else None
    p = DeepPass(final_revision=final_revision, by_rev=by_rev, together=[set(c) for c in same_blobs],
                 peers=peers or {})
    p.first = next((r for r in series if r.step == 0), series[0] if series else None)
    p.state0 = p.load(p.first) if p.first is not None else None
    p.final_state = p.load(by_rev[final_revision]) if final_revision else None
    stats: list[RevisionStats] = []
    for r in progress(ordered):
        state = p.state_of(r)
        if state is None:
            continue
        seen = p.see(r, state)
        for check in REVISION_CHECKS:
            p.findings.extend(check(p, seen))
        if seen.stats is not None:
            stats.append(seen.stats)
            p.prev = (r, state)
    for series_check in SERIES_CHECKS:
        p.findings.extend(series_check(p, stats))
    return p.findings, stats
