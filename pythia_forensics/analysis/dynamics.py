"""Trajectory metrics and verdicts: pure functions over tidy frames; `analyze` runs the stage.

Input is the step table (`frames.step_table`, built from the results store's item rows). For
every (model, probeset, rule, split) the per-checkpoint accuracy of the *conflict* items (rule and corpus prior
disagree) and the *agree* control is computed, smoothed, and reduced to the paper's
metrics: emergence, peak, collapse onset, final value, collapse depth, the contrast margin
(CM = mean logp(target) - logp(foil) over conflict items) and its zero crossing, and the lag
between the two. A classifier turns the metrics into RECOVERED / UNSTABLE / DISPLACED /
PARTIAL / NEVER, void when the agree control is invalid. Every threshold comes from
`analysis.yaml` (`config.load_config`); every output row records the config's hash. Scale
statistics over models live in `scale.py`.

Definitions (thresholds named as in analysis.yaml):

- Steps below ``steps.min_step`` are dropped before smoothing, and so are checkpoints whose
  health status is in ``analysis.health_exclude`` (kept in the trajectory frame, marked, so
  figures show them; never silently used).
- Smoothing: centred moving average over ``smoothing.window`` checkpoints; at the edges the
  window is truncated to the points that exist.
- Emergence: the first step whose smoothed conflict accuracy is >= ``emergence.conflict_min``
  while the smoothed agree accuracy is >= ``emergence.agree_min`` (an early global bias
  toward one candidate gives conflict 1.0 with agree 0: that is not emergence).
- Peak: the maximum smoothed conflict accuracy over steps where the agree control holds
  (over all steps when it never holds); the first such step on ties. Gating the peak like
  emergence keeps the global-bias phase out of collapse depth.
- Collapse onset: the last step whose smoothed conflict accuracy is >= ``collapse.onset_max_acc``,
  defined only for emerged rules that fall below it afterwards.
- Final: the mean raw accuracy over the last max(``final.min_points``, ceil(``final.fraction`` x n))
  checkpoints.
- Depth (collapse depth) = peak - final, defined only for a rule that collapsed: it emerged
  and its final accuracy ended below ``verdicts.recovered_final_min``. It is undefined (None in
  the metrics, NaN in dynamics.parquet), never 0, for a rule that never emerged (nothing was
  learned to lose) or that ended recovered (its peak - final is the noise of a rule it kept;
  ranking those numbers against model size would rank noise).
- CM zero crossing (one definition, used by dynamics.csv, the lag, the `b_cm` figure's diamond
  and report.md): the last checkpoint whose smoothed CM is >= ``contrast_margin.zero``, defined
  only when the rule emerged, that checkpoint is at or after emergence, CM falls below zero
  afterwards, and the smoothed CM maximum reaches ``contrast_margin.valid_max_min`` nats.
  Lag = crossing - collapse onset, in steps and in checkpoints (positive: CM crosses after the
  behaviour collapses); both events are "last checkpoint still standing", so a lag of 0 means
  they fell between the same two checkpoints.
- Agree control valid iff agree final >= ``agree_control.final_min`` and smoothed agree max -
  agree final < ``agree_control.max_drop``.

Every comparison allows ``analysis.tolerance`` of float slack, so a smoothed 0.8 that comes
out as 0.7999999999999999 still counts as 0.8.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pythia_forensics.analysis.config import VERDICTS, AnalysisConfig, load_config, read_yaml
from pythia_forensics.analysis.frames import GROUP_KEYS, item_matrix, load_items, prepare_items, step_table
from pythia_forensics.analysis.scale import SCALE_METRICS, SIZE_COLUMNS, scale_analysis, snap_ties
from pythia_forensics.atomic import atomic_write
from pythia_forensics.constants import DYNAMICS_CSV, DYNAMICS_FILE, SCALE_FILE, TRAJECTORIES_FILE
from pythia_forensics.errors import StoreError

# The names other stages import from here; config, frames and scale define some of them.
__all__ = [
    "AnalysisConfig", "Analysis", "TrajectoryMetrics", "VERDICTS", "VERDICT_LETTERS", "GROUP_KEYS",
    "SIZE_COLUMNS", "SCALE_METRICS", "load_config", "read_yaml", "smooth", "final_window_size",
    "trajectory_metrics", "classify", "step_table", "analyze", "scale_analysis", "snap_ties", "write_dynamics",
    "load_items", "primary",
]

VERDICT_LETTERS = {"RECOVERED": "R", "UNSTABLE": "U", "DISPLACED": "D", "PARTIAL": "P", "NEVER": "N"}
VOID = "VOID"


# --- small pure helpers -------------------------------------------------------------------
def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along the last axis, edges truncated, NaNs ignored.

    Args:
        values: 1-D or 2-D array (rows are independent series).
        window: odd number of points averaged.

    Returns:
        An array of the same shape; point i is the mean of the non-NaN values in
        [i - window//2, i + window//2] that exist.
    """
    arr = np.asarray(values, dtype=float)
    half = window // 2
    valid = ~np.isnan(arr)
    filled = np.where(valid, arr, 0.0)
    # cumulative sums make every window O(1); pad so index arithmetic needs no branches
    pad = [(0, 0)] * (arr.ndim - 1) + [(1, 0)]
    csum = np.pad(np.cumsum(filled, axis=-1), pad)
    ccount = np.pad(np.cumsum(valid, axis=-1), pad)
    n = arr.shape[-1]
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    total = csum[..., hi] - csum[..., lo]
    count = ccount[..., hi] - ccount[..., lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def final_window_size(n: int, config: AnalysisConfig) -> int:
    """How many trailing checkpoints the final value averages (never more than `n`)."""
    # round first: 0.1 * 30 is 3.0000000000000004, whose ceiling would be 4
    share = math.ceil(round(config.final_fraction * n, 9))
    return min(n, max(config.final_min_points, share))


def _ge(value: float, threshold: float, tol: float) -> bool:
    return bool(value >= threshold - tol)


def _le(value: float, threshold: float, tol: float) -> bool:
    return bool(value <= threshold + tol)


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


# --- trajectory metrics -------------------------------------------------------------------
def _gate(agree_s: np.ndarray, config: AnalysisConfig) -> np.ndarray:
    """Checkpoints where the agree control holds (smoothed agree accuracy high enough)."""
    with np.errstate(invalid="ignore"):
        return agree_s >= config.emergence_agree_min - config.tolerance


def _peak(conflict_s: np.ndarray, gate: np.ndarray, tol: float) -> tuple[float, int]:
    """(peak value, index) over gated checkpoints, or all when none is gated; first on ties.

    Ties are judged with `tol`: cumulative-sum smoothing gives three 0.9s slightly different
    means, and float noise must not move the peak to a later checkpoint.
    """
    finite = np.where(np.isnan(conflict_s), -np.inf, conflict_s)
    # A checkpoint with no conflict value (a split or probe set without conflict items there)
    # can be gated by its agree control; it must not count as the peak, nor leave no peak at all.
    pool = np.where(gate, finite, -np.inf) if (gate & ~np.isnan(conflict_s)).any() else finite
    best = pool.max()
    if not np.isfinite(best):
        return float("nan"), 0
    idx = int(np.flatnonzero(pool >= best - tol)[0])
    return float(best), idx


@dataclass(frozen=True)
class TrajectoryMetrics:
    """The metrics of one trajectory (`trajectory_metrics`); the analysis's typed hand-off.

    Step fields are training steps (None: the event did not happen); accuracy fields are
    fractions of items correct (None: not computable, e.g. no checkpoints); CM fields are in
    nats. `to_row` gives the scalar fields as the columns of dynamics.parquet, in that file's
    order; the smoothed series travel alongside for trajectories.parquet and the monitor.

    Attributes:
        n_checkpoints: checkpoints used (after min_step and health exclusion).
        emerged, emergence_step: whether / where the rule emerged (agree control holding).
        peak_acc, peak_step: maximum smoothed conflict accuracy over gated checkpoints.
        collapse_step: last step at or above collapse.onset_max_acc before the fall.
        final_points, final_acc, final_range: the final window's size, mean raw conflict
            accuracy and smoothed range.
        depth: peak_acc - final_acc for a rule that collapsed (emerged, final below
            verdicts.recovered_final_min); None when it never emerged or ended recovered.
        agree_final, agree_max, agree_valid: the agree control's final value, smoothed maximum
            and validity.
        cm_max, cm_valid, cm_cross_step: smoothed CM maximum, whether it reaches the valid
            minimum, the step of its downward zero crossing (the last checkpoint at or above
            zero, at or after emergence; None for a rule that never emerged).
        lag_steps, lag_checkpoints, cm_within_lag: CM crossing - collapse onset, and whether
            it lies within contrast_margin.lag_max_checkpoints.
        conflict_smooth, agree_smooth, cm_smooth: the smoothed series, one value per checkpoint.
    """

    n_checkpoints: int
    emerged: bool = False
    emergence_step: int | None = None
    peak_acc: float | None = None
    peak_step: int | None = None
    collapse_step: int | None = None
    final_points: int = 0
    final_acc: float | None = None
    final_range: float | None = None
    depth: float | None = None
    agree_final: float | None = None
    agree_max: float | None = None
    agree_valid: bool = False
    cm_max: float | None = None
    cm_valid: bool = False
    cm_cross_step: int | None = None
    lag_steps: int | None = None
    lag_checkpoints: int | None = None
    cm_within_lag: bool | None = None
    conflict_smooth: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    agree_smooth: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    cm_smooth: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    SERIES: ClassVar[tuple[str, ...]] = ("conflict_smooth", "agree_smooth", "cm_smooth")

    @classmethod
    def row_columns(cls) -> tuple[str, ...]:
        """The scalar fields, in dynamics.parquet's column order."""
        return tuple(f.name for f in fields(cls) if f.name not in cls.SERIES)

    def to_row(self) -> dict[str, Any]:
        """The scalar fields as one dynamics.parquet row (column -> value, file order)."""
        return {name: getattr(self, name) for name in self.row_columns()}


def _collapse_index(cs: np.ndarray, emerged: bool, config: AnalysisConfig) -> int | None:
    """Last checkpoint at or above the collapse threshold, when the rule emerged and fell below it after."""
    if not emerged:
        return None
    with np.errstate(invalid="ignore"):
        above = np.flatnonzero(cs >= config.collapse_onset - config.tolerance)
    return int(above[-1]) if above.size and above[-1] < len(cs) - 1 else None


def _agree_control(a: np.ndarray, as_: np.ndarray, m: int, config: AnalysisConfig) -> dict[str, Any]:
    if np.isnan(a).all():
        return dict(agree_final=None, agree_max=None, agree_valid=False)
    agree_final, agree_max = float(np.nanmean(a[-m:])), float(np.nanmax(as_))
    valid = (_ge(agree_final, config.agree_final_min, config.tolerance)
             and agree_max - agree_final < config.agree_max_drop - config.tolerance)
    return dict(agree_final=agree_final, agree_max=agree_max, agree_valid=valid)


def _cm_crossing(cm: np.ndarray, cms: np.ndarray, emerged_idx: int | None,
                 config: AnalysisConfig) -> tuple[dict[str, Any], int | None]:
    """(cm_max, cm_valid) and the index of the downward zero crossing of a valid CM, if any.

    The crossing is the last checkpoint with smoothed CM >= zero (the module docstring's one
    definition); a rule that never emerged has none, and neither has one whose last such
    checkpoint comes before its emergence (the margin then never stood while the rule did).
    """
    if np.isnan(cm).all():
        return dict(cm_max=None, cm_valid=False), None
    cm_max = float(np.nanmax(cms))
    valid = _ge(cm_max, config.cm_valid_max_min, config.tolerance)
    cross = None
    if valid and emerged_idx is not None:
        with np.errstate(invalid="ignore"):
            nonneg = np.flatnonzero(cms >= config.cm_zero - config.tolerance)
        if nonneg.size and emerged_idx <= nonneg[-1] < len(cms) - 1:
            cross = int(nonneg[-1])
    return dict(cm_max=cm_max, cm_valid=valid), cross


def _depth(peak: float, final: float, emerged: bool, config: AnalysisConfig) -> float | None:
    """Collapse depth peak - final, or None when the rule never emerged or ended recovered."""
    if not emerged or not np.isfinite(final) or _ge(final, config.recovered_final_min, config.tolerance):
        return None
    return float(peak - final)


def trajectory_metrics(
    steps: np.ndarray,
    conflict_acc: np.ndarray,
    agree_acc: np.ndarray,
    conflict_cm: np.ndarray,
    *,
    config: AnalysisConfig,
) -> TrajectoryMetrics:
    """Metrics of one trajectory (already filtered: steps >= min_step, healthy checkpoints).

    Args:
        steps: increasing training steps of the checkpoints used.
        conflict_acc: raw conflict accuracy per checkpoint.
        agree_acc: raw agree accuracy per checkpoint (NaN where no agree items).
        conflict_cm: mean contrast margin (nats) of the conflict items per checkpoint.
        config: thresholds.

    Returns:
        The `TrajectoryMetrics` (definitions in this module's docstring); with no checkpoints,
        every metric is None / False and the series are empty.
    """
    tol = config.tolerance
    steps = np.asarray(steps, dtype=np.int64)
    c, a, cm = (np.asarray(v, dtype=float) for v in (conflict_acc, agree_acc, conflict_cm))
    n = len(steps)
    cs, as_, cms = (smooth(v, config.smoothing_window) for v in (c, a, cm))
    series = dict(conflict_smooth=cs, agree_smooth=as_, cm_smooth=cms)
    if n == 0:
        return TrajectoryMetrics(n_checkpoints=0, **series)
    gate = _gate(as_, config)
    with np.errstate(invalid="ignore"):
        emerged_at = np.flatnonzero((cs >= config.emergence_conflict_min - tol) & gate)
    emerged = emerged_at.size > 0
    peak, peak_idx = _peak(cs, gate, tol)
    collapse_idx = _collapse_index(cs, emerged, config)
    m = final_window_size(n, config)
    final = float(np.nanmean(c[-m:]))
    cm_part, cross_idx = _cm_crossing(cm, cms, int(emerged_at[0]) if emerged else None, config)
    lag = {}
    if cross_idx is not None and collapse_idx is not None:
        lag = dict(lag_steps=int(steps[cross_idx] - steps[collapse_idx]), lag_checkpoints=int(cross_idx - collapse_idx),
                   cm_within_lag=abs(cross_idx - collapse_idx) <= config.cm_lag_max_checkpoints)
    step_at = lambda i: None if i is None else int(steps[i])  # noqa: E731
    return TrajectoryMetrics(
        n_checkpoints=n, emerged=emerged, emergence_step=step_at(emerged_at[0]) if emerged else None,
        peak_acc=peak, peak_step=int(steps[peak_idx]), collapse_step=step_at(collapse_idx),
        final_points=m, final_acc=final, final_range=float(np.nanmax(cs[-m:]) - np.nanmin(cs[-m:])),
        depth=_depth(peak, final, emerged, config), **_agree_control(a, as_, m, config), **cm_part,
        cm_cross_step=step_at(cross_idx), **lag, **series)


def classify(metrics: TrajectoryMetrics, config: AnalysisConfig) -> tuple[str | None, bool, str]:
    """Verdict of one trajectory's metrics.

    Checks run in ``verdicts.order``; the first that holds wins: UNSTABLE (smoothed range over
    the final window >= unstable_range_min), RECOVERED (final >= recovered_final_min),
    DISPLACED (emerged and final <= displaced_final_max), PARTIAL (emerged), NEVER.

    Args:
        metrics: `trajectory_metrics` output.
        config: thresholds.

    Returns:
        (verdict, void, void_reason): the verdict is computed even when void, so a reader
        sees what the invalid control would have allowed; void_reason is "" when valid.
    """
    tol = config.tolerance
    n = metrics.n_checkpoints
    if n == 0 or metrics.final_acc is None:
        return None, True, "no checkpoints at or above the minimum step"
    checks = {
        "UNSTABLE": _ge(metrics.final_range, config.unstable_range_min, tol),
        "RECOVERED": _ge(metrics.final_acc, config.recovered_final_min, tol),
        "DISPLACED": bool(metrics.emerged) and _le(metrics.final_acc, config.displaced_final_max, tol),
        "PARTIAL": bool(metrics.emerged),
        "NEVER": not metrics.emerged,
    }
    verdict = next(v for v in config.verdict_order if checks[v])
    reasons = []
    if n < config.final_min_points:
        reasons.append(f"only {n} checkpoints (final needs {config.final_min_points})")
    if metrics.agree_final is None:
        reasons.append("no agree-control items")
    elif not metrics.agree_valid:
        reasons.append(f"agree control invalid (final {metrics.agree_final:.3f}, "
                       f"max - final {metrics.agree_max - metrics.agree_final:.3f})")
    return verdict, bool(reasons), "; ".join(reasons)


# --- bootstrap and the whole analysis ----------------------------------------------------
def _resampled_accuracy(matrix: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """n_boot x steps accuracies over items resampled with replacement (multinomial weights)."""
    n_items = matrix.shape[0]
    weights = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot).astype(float)
    valid = ~np.isnan(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(valid, matrix, 0.0)) / (weights @ valid)


def _group_seed(config: AnalysisConfig, key: tuple) -> np.random.Generator:
    # per-group stream: a group's CI never depends on which other groups are in the store
    digest = int(hashlib.sha256("\x1f".join(map(str, key)).encode()).hexdigest()[:8], 16)
    return np.random.default_rng([config.bootstrap_seed, digest])


def _bootstrap(conflict: np.ndarray, agree: np.ndarray, gate: np.ndarray, config: AnalysisConfig,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Percentile CIs over items for per-step accuracy (both conditions), final and depth."""
    alpha = (1 - config.bootstrap_confidence) / 2
    q = [alpha, 1 - alpha]
    out: dict[str, np.ndarray] = {}
    n_steps = conflict.shape[1]
    if conflict.shape[0]:
        acc = _resampled_accuracy(conflict, rng, config.bootstrap_n)
        out["conflict_ci"] = np.nanquantile(acc, q, axis=0)
        sm = smooth(acc, config.smoothing_window)
        pool = np.where(gate, sm, -np.inf) if gate.any() else np.where(np.isnan(sm), -np.inf, sm)
        peak = pool.max(axis=1)
        m = final_window_size(n_steps, config)
        final = np.nanmean(acc[:, -m:], axis=1)
        out["final_ci"] = np.nanquantile(final, q)
        out["depth_ci"] = np.nanquantile(peak - final, q)
    if agree.shape[0]:
        out["agree_ci"] = np.nanquantile(_resampled_accuracy(agree, rng, config.bootstrap_n), q, axis=0)
    return out


@dataclass(frozen=True)
class Analysis:
    """Everything `analyze` computes.

    Attributes:
        metrics: one row per (model, probeset, rule, split): metrics, CIs, verdict, config hash.
        trajectories: one row per (group, step): raw/smoothed accuracy, CM, CIs, used flag.
        scale: Spearman rho of depth/final vs parameter count per (probeset, rule, split).
        config: the thresholds used.
    """

    metrics: pd.DataFrame
    trajectories: pd.DataFrame
    scale: pd.DataFrame
    config: AnalysisConfig

    @property
    def verdicts(self) -> pd.DataFrame:
        """The primary split's verdict table: model, probeset, rule, verdict, void, label."""
        cols = ["model", "probeset", "rule", "split", "verdict", "void", "void_reason", "verdict_label"]
        return primary(self.metrics, self.config)[cols].reset_index(drop=True)


def primary(frame: pd.DataFrame, config: AnalysisConfig) -> pd.DataFrame:
    """Rows of the configured primary split, or of every split when it is absent."""
    if frame.empty or "split" not in frame:
        return frame
    sub = frame[frame["split"] == config.primary_split]
    return sub if not sub.empty else frame


# dynamics.parquet columns after the TrajectoryMetrics fields, and their frame dtypes
_FLOAT_COLUMNS = ("peak_acc", "final_acc", "final_range", "depth", "agree_final", "agree_max", "cm_max", "final_lo",
                  "final_hi", "depth_lo", "depth_hi")
_STEP_COLUMNS = ("emergence_step", "peak_step", "collapse_step", "cm_cross_step", "lag_steps", "lag_checkpoints")
_TRAJECTORY_BANDS = ("conflict_lo", "conflict_hi", "agree_lo", "agree_hi")


def _verdict_row(key: tuple, res: TrajectoryMetrics, boot: Mapping[str, np.ndarray], n_items: tuple[int, int],
                 excluded: pd.DataFrame, config: AnalysisConfig) -> dict[str, Any]:
    """One dynamics.parquet row: group keys, `TrajectoryMetrics.to_row`, CIs, verdict, provenance."""
    verdict, void, reason = classify(res, config)
    ci = lambda name, i: _none_if_nan(boot[name][i]) if name in boot else None  # noqa: E731
    return {**dict(zip(GROUP_KEYS, key)), **res.to_row(),
            "final_lo": ci("final_ci", 0), "final_hi": ci("final_ci", 1),
            # no interval around a depth that is undefined
            "depth_lo": ci("depth_ci", 0) if res.depth is not None else None,
            "depth_hi": ci("depth_ci", 1) if res.depth is not None else None,
            "verdict": verdict, "void": void, "void_reason": reason,
            "verdict_label": VOID if void or verdict is None else verdict,
            "n_items_conflict": n_items[0], "n_items_agree": n_items[1],
            "n_excluded_health": int(len(excluded)), "excluded_steps": ",".join(str(s) for s in excluded["step"]),
            "config_sha256": config.sha256}


def _trajectory_rows(group: pd.DataFrame, res: TrajectoryMetrics, boot: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """trajectories.parquet rows of one group: the step table plus smoothed series and CI bands."""
    traj = group.copy()
    for name in (*TrajectoryMetrics.SERIES, *_TRAJECTORY_BANDS):
        traj[name] = np.nan
    traj["checkpoint"] = pd.array([pd.NA] * len(traj), dtype="Int64")
    mask = traj["used"].to_numpy()
    traj.loc[mask, "checkpoint"] = np.arange(mask.sum())
    for name in TrajectoryMetrics.SERIES:
        traj.loc[mask, name] = getattr(res, name)
    for cond in ("conflict", "agree"):
        if f"{cond}_ci" in boot:
            traj.loc[mask, f"{cond}_lo"] = boot[f"{cond}_ci"][0]
            traj.loc[mask, f"{cond}_hi"] = boot[f"{cond}_ci"][1]
    return traj


def _analyze_group(key: tuple, group: pd.DataFrame, items: pd.DataFrame,
                   config: AnalysisConfig) -> tuple[dict[str, Any], pd.DataFrame]:
    """(dynamics row, trajectory rows) of one (model, probeset, rule, split) group of the step table."""
    used = group[group["used"]].sort_values("step")
    steps = used["step"].to_numpy()
    res = trajectory_metrics(steps, used["conflict_acc"].to_numpy(), used["agree_acc"].to_numpy(),
                             used["conflict_cm"].to_numpy(), config=config)
    sel = items[items["step"].isin(steps)]
    conflict_m = item_matrix(sel[sel["condition"] == "conflict"], steps, "correct")
    agree_m = item_matrix(sel[sel["condition"] == "agree"], steps, "correct")
    boot = _bootstrap(conflict_m, agree_m, _gate(res.agree_smooth, config), config, _group_seed(config, key)) \
        if len(steps) else {}
    excluded = group[~group["used"] & group["drop_reason"].str.startswith("health")]
    row = _verdict_row(key, res, boot, (int(conflict_m.shape[0]), int(agree_m.shape[0])), excluded, config)
    return row, _trajectory_rows(group, res, boot)


def _metrics_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    metrics = pd.DataFrame(rows)
    for col in _FLOAT_COLUMNS:
        metrics[col] = pd.to_numeric(metrics[col]).astype(float)  # None (no checkpoints) -> NaN
    for col in _STEP_COLUMNS:
        metrics[col] = pd.array(metrics[col], dtype="Int64")
    metrics["cm_within_lag"] = pd.array(metrics["cm_within_lag"], dtype="boolean")
    return metrics


def analyze(
    source: str | Path | pd.DataFrame,
    *,
    config: AnalysisConfig | str | Path | None = None,
    models: pd.DataFrame | None = None,
    health: pd.DataFrame | None = None,
) -> Analysis:
    """Trajectory metrics, verdicts and scale statistics for every stored trajectory.

    Args:
        source: a results folder, or an item-rows frame.
        config: an `AnalysisConfig`, a YAML override file, or None for the shipped thresholds.
        models: per-model sizes (models.parquet); read from the folder when `source` is one.
        health: checkpoint health rows (health.parquet); read from the folder likewise.

    Returns:
        An `Analysis` (metrics, trajectories, scale, config).

    Raises:
        StoreError: the folder is missing or holds no item rows, or rows lack columns.
        ConfigError: the config is invalid.
    """
    if not isinstance(config, AnalysisConfig):
        config = load_config(config)
    if isinstance(source, pd.DataFrame):
        items = source
        if items.empty:
            raise StoreError("the item frame is empty; nothing to analyse", param="source")
    else:
        items, stored_models, stored_health = load_items(source)
        models = stored_models if models is None else models
        health = stored_health if health is None else health
    prepared = prepare_items(items)
    table = step_table(prepared, health=health, config=config, prepared=True)
    by_group = dict(iter(prepared.groupby(list(GROUP_KEYS), sort=True)))
    results = [_analyze_group(key, group, by_group[key], config)
               for key, group in table.groupby(list(GROUP_KEYS), sort=True)]
    metrics = _metrics_frame([row for row, _ in results])
    traj_frame = pd.concat([t for _, t in results], ignore_index=True) if results else pd.DataFrame()
    if not traj_frame.empty:
        traj_frame["config_sha256"] = config.sha256
    return Analysis(metrics=metrics, trajectories=traj_frame, scale=scale_analysis(metrics, models, config=config),
                    config=config)


def write_dynamics(analysis: Analysis, results_dir: str | Path) -> list[Path]:
    """Write dynamics.parquet/.csv, trajectories.parquet and scale.csv into `results_dir`.

    Each file carries a ``config_sha256`` column and is written atomically (`atomic_write`).

    Returns:
        The paths written.
    """
    root = Path(results_dir)
    root.mkdir(parents=True, exist_ok=True)
    writes = [(DYNAMICS_FILE, lambda p: analysis.metrics.to_parquet(p, index=False)),
              (DYNAMICS_CSV, lambda p: analysis.metrics.to_csv(p, index=False))]
    if not analysis.trajectories.empty:
        writes.append((TRAJECTORIES_FILE, lambda p: analysis.trajectories.to_parquet(p, index=False)))
    writes.append((SCALE_FILE, lambda p: analysis.scale.to_csv(p, index=False)))
    return [atomic_write(root / name, write) for name, write in writes]
