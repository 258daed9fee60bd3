"""Trajectory metrics, verdicts and scale statistics: pure functions over tidy frames.

Input is the results store's item rows (model, revision, step, rule, condition, split,
item_id, margin, correct; ARCHITECTURE.md "Results store"). For every (model, probeset,
rule, split) the per-checkpoint accuracy of the *conflict* items (rule and corpus prior
disagree) and the *agree* control is computed, smoothed, and reduced to the paper's
metrics: emergence, peak, collapse onset, final value, collapse depth, the contrast margin
(CM = mean logp(target) - logp(foil) over conflict items) and its zero crossing, and the lag
between the two. A classifier turns the metrics into RECOVERED / UNSTABLE / DISPLACED /
PARTIAL / NEVER, void when the agree control is invalid. Every threshold comes from
`analysis.yaml` (`load_config`); every output row records the config's hash.

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
  checkpoints. Depth = peak - final.
- CM zero crossing: the last step whose smoothed CM is >= ``contrast_margin.zero``, defined
  only when CM falls below it afterwards and the smoothed CM maximum reaches
  ``contrast_margin.valid_max_min`` nats. Lag = crossing - collapse onset, in steps and in
  checkpoints (positive: CM crosses after the behaviour collapses).
- Agree control valid iff agree final >= ``agree_control.final_min`` and smoothed agree max -
  agree final < ``agree_control.max_drop``.

Every comparison allows ``analysis.tolerance`` of float slack, so a smoothed 0.8 that comes
out as 0.7999999999999999 still counts as 0.8.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from pythia_forensics.constants import (
    ANALYSIS_CONFIG,
    DYNAMICS_CSV,
    DYNAMICS_FILE,
    SCALE_FILE,
    STEP_DIR_PREFIX,
    TRAJECTORIES_FILE,
    package_file,
)
from pythia_forensics.errors import ConfigError, StoreError

__all__ = [
    "AnalysisConfig", "Analysis", "VERDICTS", "VERDICT_LETTERS", "GROUP_KEYS",
    "load_config", "smooth", "final_window_size", "trajectory_metrics", "classify",
    "step_table", "analyze", "scale_analysis", "snap_ties", "write_dynamics", "load_items",
]

VERDICTS = ("RECOVERED", "UNSTABLE", "DISPLACED", "PARTIAL", "NEVER")
VERDICT_LETTERS = {"RECOVERED": "R", "UNSTABLE": "U", "DISPLACED": "D", "PARTIAL": "P", "NEVER": "N"}
VOID = "VOID"
# One trajectory per (model, probe set, rule, split): two batteries of one rule never mix.
GROUP_KEYS = ("model", "probeset", "rule", "split")
SIZE_COLUMNS = ("params_total", "params_nonembedding")
SCALE_METRICS = ("depth", "final_acc")
_REQUIRED_ITEM_COLUMNS = ("model", "revision", "step", "rule", "condition", "split", "item_id", "margin", "correct")

# (section, key) in analysis.yaml -> AnalysisConfig field
_CONFIG_FIELDS = {
    ("smoothing", "window"): "smoothing_window",
    ("steps", "min_step"): "min_step",
    ("emergence", "conflict_min"): "emergence_conflict_min",
    ("emergence", "agree_min"): "emergence_agree_min",
    ("collapse", "onset_max_acc"): "collapse_onset",
    ("final", "fraction"): "final_fraction",
    ("final", "min_points"): "final_min_points",
    ("verdicts", "recovered_final_min"): "recovered_final_min",
    ("verdicts", "displaced_final_max"): "displaced_final_max",
    ("verdicts", "unstable_range_min"): "unstable_range_min",
    ("verdicts", "order"): "verdict_order",
    ("agree_control", "final_min"): "agree_final_min",
    ("agree_control", "max_drop"): "agree_max_drop",
    ("contrast_margin", "zero"): "cm_zero",
    ("contrast_margin", "valid_max_min"): "cm_valid_max_min",
    ("contrast_margin", "lag_max_checkpoints"): "cm_lag_max_checkpoints",
    ("scale", "min_models"): "scale_min_models",
    ("scale", "permutations"): "scale_permutations",
    ("bootstrap", "n"): "bootstrap_n",
    ("bootstrap", "seed"): "bootstrap_seed",
    ("bootstrap", "confidence"): "bootstrap_confidence",
    ("analysis", "primary_split"): "primary_split",
    ("analysis", "health_exclude"): "health_exclude",
    ("analysis", "tolerance"): "tolerance",
}


# --- configuration ------------------------------------------------------------------------
@dataclass(frozen=True)
class AnalysisConfig:
    """The effective analysis thresholds (analysis.yaml merged with user overrides).

    Field meanings are documented in analysis.yaml; `sha256` hashes the canonical JSON of
    `values` (the nested mapping), so formatting and key order never change it.
    """

    smoothing_window: int
    min_step: int
    emergence_conflict_min: float
    emergence_agree_min: float
    collapse_onset: float
    final_fraction: float
    final_min_points: int
    recovered_final_min: float
    displaced_final_max: float
    unstable_range_min: float
    verdict_order: tuple[str, ...]
    agree_final_min: float
    agree_max_drop: float
    cm_zero: float
    cm_valid_max_min: float
    cm_lag_max_checkpoints: int
    scale_min_models: int
    scale_permutations: int
    bootstrap_n: int
    bootstrap_seed: int
    bootstrap_confidence: float
    primary_split: str
    health_exclude: tuple[str, ...]
    tolerance: float
    values: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)
    sha256: str = ""
    source: str = ""


def read_yaml(path: Path, *, what: str = "analysis config",
              missing_hint: str = "pass an existing YAML file to --config") -> Any:
    """Parse a user's YAML file; a missing or malformed file is a one-line ConfigError."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; {missing_hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML ({exc}); fix the file") from None


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"analysis config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None) -> AnalysisConfig:
    """The shipped thresholds, with the sections of `path` (if given) overriding them.

    Args:
        path: a YAML file with any subset of analysis.yaml's sections/keys.

    Returns:
        The effective `AnalysisConfig`, with `sha256` of its canonical JSON.

    Raises:
        ConfigError: the file is missing, not YAML, names an unknown key, or a value is invalid.
    """
    shipped = package_file(*ANALYSIS_CONFIG)
    values = _read_yaml(shipped)
    source = str(shipped)
    if path is not None:
        user = _read_yaml(Path(path))
        problems = []
        for section, entries in user.items():
            if section not in values or not isinstance(entries, dict):
                problems.append(f"section {section!r}")
                continue
            for key, value in entries.items():
                if (section, key) not in _CONFIG_FIELDS:
                    problems.append(f"key {section}.{key}")
                else:
                    values[section][key] = value
        if problems:
            known = sorted(f"{s}.{k}" for s, k in _CONFIG_FIELDS)
            raise ConfigError(f"analysis config {path}: unknown {', '.join(problems)}; known keys: {', '.join(known)}")
        source = f"{shipped} + {path}"
    kwargs: dict[str, Any] = {}
    for (section, key), name in _CONFIG_FIELDS.items():
        try:
            kwargs[name] = values[section][key]
        except (KeyError, TypeError):
            raise ConfigError(f"analysis config lacks {section}.{key}; restore it from the shipped analysis.yaml") from None
    kwargs["verdict_order"] = tuple(str(v).upper() for v in kwargs["verdict_order"])
    kwargs["health_exclude"] = tuple(kwargs["health_exclude"] or ())
    if sorted(kwargs["verdict_order"]) != sorted(VERDICTS):
        raise ConfigError(f"verdicts.order must list each of {list(VERDICTS)} once, got {list(kwargs['verdict_order'])}")
    window = kwargs["smoothing_window"]
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ConfigError(f"smoothing.window must be an odd positive integer (centred window), got {window!r}")
    for name in ("final_min_points", "bootstrap_n", "scale_min_models", "scale_permutations"):
        if not isinstance(kwargs[name], int) or kwargs[name] < 1:
            raise ConfigError(f"{name} must be a positive integer, got {kwargs[name]!r}")
    if not 0 < float(kwargs["bootstrap_confidence"]) < 1:
        raise ConfigError(f"bootstrap.confidence must lie in (0, 1), got {kwargs['bootstrap_confidence']!r}")
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return AnalysisConfig(**kwargs, values=values, sha256=hashlib.sha256(canonical.encode()).hexdigest(), source=source)


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


def trajectory_metrics(
    steps: np.ndarray,
    conflict_acc: np.ndarray,
    agree_acc: np.ndarray,
    conflict_cm: np.ndarray,
    *,
    config: AnalysisConfig,
) -> dict[str, Any]:
    """Metrics of one trajectory (already filtered: steps >= min_step, healthy checkpoints).

    Args:
        steps: increasing training steps of the checkpoints used.
        conflict_acc: raw conflict accuracy per checkpoint.
        agree_acc: raw agree accuracy per checkpoint (NaN where no agree items).
        conflict_cm: mean contrast margin (nats) of the conflict items per checkpoint.
        config: thresholds.

    Returns:
        A dict: n_checkpoints, emerged, emergence_step, peak_acc, peak_step, collapse_step,
        final_acc, final_points, final_range, depth, agree_final, agree_max, agree_valid,
        cm_max, cm_valid, cm_cross_step, lag_steps, lag_checkpoints, cm_within_lag, and the
        smoothed series (conflict_smooth, agree_smooth, cm_smooth) as arrays.
    """
    tol = config.tolerance
    steps = np.asarray(steps, dtype=np.int64)
    c = np.asarray(conflict_acc, dtype=float)
    a = np.asarray(agree_acc, dtype=float)
    cm = np.asarray(conflict_cm, dtype=float)
    n = len(steps)
    out: dict[str, Any] = dict(n_checkpoints=n)
    cs, as_, cms = smooth(c, config.smoothing_window), smooth(a, config.smoothing_window), smooth(cm, config.smoothing_window)
    out.update(conflict_smooth=cs, agree_smooth=as_, cm_smooth=cms)
    if n == 0:
        return out | dict(emerged=False, emergence_step=None, peak_acc=None, peak_step=None, collapse_step=None,
                          final_acc=None, final_points=0, final_range=None, depth=None, agree_final=None,
                          agree_max=None, agree_valid=False, cm_max=None, cm_valid=False, cm_cross_step=None,
                          lag_steps=None, lag_checkpoints=None, cm_within_lag=None)
    gate = _gate(as_, config)
    with np.errstate(invalid="ignore"):
        emerged_at = np.flatnonzero((cs >= config.emergence_conflict_min - tol) & gate)
    emerged = emerged_at.size > 0
    out["emerged"] = emerged
    out["emergence_step"] = int(steps[emerged_at[0]]) if emerged else None
    peak, peak_idx = _peak(cs, gate, tol)
    out["peak_acc"], out["peak_step"] = peak, int(steps[peak_idx])

    collapse_idx = None
    if emerged:
        with np.errstate(invalid="ignore"):
            above = np.flatnonzero(cs >= config.collapse_onset - tol)
        if above.size and above[-1] < n - 1:  # it must fall below afterwards to have collapsed
            collapse_idx = int(above[-1])
    out["collapse_step"] = None if collapse_idx is None else int(steps[collapse_idx])

    m = final_window_size(n, config)
    out["final_points"] = m
    out["final_acc"] = float(np.nanmean(c[-m:]))
    out["final_range"] = float(np.nanmax(cs[-m:]) - np.nanmin(cs[-m:]))
    out["depth"] = float(peak - out["final_acc"])

    if np.isnan(a).all():
        out.update(agree_final=None, agree_max=None, agree_valid=False)
    else:
        agree_final = float(np.nanmean(a[-m:]))
        agree_max = float(np.nanmax(as_))
        out.update(agree_final=agree_final, agree_max=agree_max,
                   agree_valid=_ge(agree_final, config.agree_final_min, tol)
                   and agree_max - agree_final < config.agree_max_drop - tol)

    cross_idx = None
    if np.isnan(cm).all():
        out.update(cm_max=None, cm_valid=False)
    else:
        out["cm_max"] = float(np.nanmax(cms))
        out["cm_valid"] = _ge(out["cm_max"], config.cm_valid_max_min, tol)
        if out["cm_valid"]:
            with np.errstate(invalid="ignore"):
                nonneg = np.flatnonzero(cms >= config.cm_zero - tol)
            if nonneg.size and nonneg[-1] < n - 1:
                cross_idx = int(nonneg[-1])
    out["cm_cross_step"] = None if cross_idx is None else int(steps[cross_idx])
    if cross_idx is not None and collapse_idx is not None:
        out["lag_steps"] = int(steps[cross_idx] - steps[collapse_idx])
        out["lag_checkpoints"] = int(cross_idx - collapse_idx)
        out["cm_within_lag"] = abs(out["lag_checkpoints"]) <= config.cm_lag_max_checkpoints
    else:
        out.update(lag_steps=None, lag_checkpoints=None, cm_within_lag=None)
    return out


def classify(metrics: Mapping[str, Any], config: AnalysisConfig) -> tuple[str | None, bool, str]:
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
    n = metrics.get("n_checkpoints", 0)
    if n == 0 or metrics.get("final_acc") is None:
        return None, True, "no checkpoints at or above the minimum step"
    checks = {
        "UNSTABLE": _ge(metrics["final_range"], config.unstable_range_min, tol),
        "RECOVERED": _ge(metrics["final_acc"], config.recovered_final_min, tol),
        "DISPLACED": bool(metrics["emerged"]) and _le(metrics["final_acc"], config.displaced_final_max, tol),
        "PARTIAL": bool(metrics["emerged"]),
        "NEVER": not metrics["emerged"],
    }
    verdict = next(v for v in config.verdict_order if checks[v])
    reasons = []
    if n < config.final_min_points:
        reasons.append(f"only {n} checkpoints (final needs {config.final_min_points})")
    if metrics.get("agree_final") is None:
        reasons.append("no agree-control items")
    elif not metrics["agree_valid"]:
        reasons.append(f"agree control invalid (final {metrics['agree_final']:.3f}, "
                       f"max - final {metrics['agree_max'] - metrics['agree_final']:.3f})")
    return verdict, bool(reasons), "; ".join(reasons)


# --- frames -------------------------------------------------------------------------------
def _prepare_items(items: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in _REQUIRED_ITEM_COLUMNS if c not in items]
    if missing:
        raise StoreError(f"item rows lack column(s) {missing}; analysis needs {list(_REQUIRED_ITEM_COLUMNS)} "
                         "(score with `pythia-forensics replay`)")
    frame = items.copy()
    if "probeset" not in frame:
        frame["probeset"] = ""
    frame["probeset"] = frame["probeset"].fillna("").astype(str)
    frame = frame[frame["step"].notna()].copy()
    frame["step"] = frame["step"].astype(np.int64)
    frame["correct"] = frame["correct"].astype(float)
    frame["margin"] = frame["margin"].astype(float)
    # One revision per (model, step): `main` duplicates the final step branch; prefer the
    # step branch's own name so a step is never counted twice.
    revs = frame[["model", "step", "revision"]].drop_duplicates()
    revs = revs.assign(_own=revs["revision"] != STEP_DIR_PREFIX + revs["step"].astype(str))
    keep = revs.sort_values(["model", "step", "_own", "revision"]).drop_duplicates(["model", "step"])
    return frame.merge(keep[["model", "step", "revision"]], on=["model", "step", "revision"])


def step_table(items: pd.DataFrame, *, health: pd.DataFrame | None = None,
               config: AnalysisConfig | None = None) -> pd.DataFrame:
    """Per (model, probeset, rule, split, step): raw accuracy and CM of both conditions.

    Args:
        items: item rows.
        health: optional health.parquet rows (model, revision, status).
        config: thresholds (min_step, health_exclude).

    Returns:
        Columns GROUP_KEYS + step, revision, conflict_acc, agree_acc, conflict_cm, agree_cm,
        n_conflict, n_agree, health_status, used (bool), drop_reason.
    """
    config = config or load_config()
    frame = _prepare_items(items)
    keys = [*GROUP_KEYS, "step", "revision"]
    parts = []
    for cond in ("conflict", "agree"):
        sub = frame[frame["condition"] == cond]
        agg = sub.groupby(keys, sort=True).agg(**{f"{cond}_acc": ("correct", "mean"), f"{cond}_cm": ("margin", "mean"),
                                                  f"n_{cond}": ("item_id", "size")})
        parts.append(agg)
    table = pd.concat(parts, axis=1).reset_index()
    for cond in ("conflict", "agree"):
        table[f"n_{cond}"] = table[f"n_{cond}"].fillna(0).astype(np.int64)
    table["health_status"] = "ok"
    if health is not None and not health.empty and {"model", "revision", "status"} <= set(health):
        status = health[["model", "revision", "status"]].drop_duplicates(["model", "revision"], keep="last")
        table = table.drop(columns="health_status").merge(status.rename(columns={"status": "health_status"}),
                                                          on=["model", "revision"], how="left")
        table["health_status"] = table["health_status"].fillna("ok")
    reason = np.where(table["step"] < config.min_step, f"step < {config.min_step}", "")
    reason = np.where(table["health_status"].isin(config.health_exclude), "health: " + table["health_status"], reason)
    table["drop_reason"] = reason
    table["used"] = table["drop_reason"] == ""
    return table.sort_values(list(keys)).reset_index(drop=True)


def _item_matrix(frame: pd.DataFrame, steps: np.ndarray, value: str) -> np.ndarray:
    """items x steps matrix of `value` (NaN where an item was not scored at a step)."""
    if frame.empty:
        return np.empty((0, len(steps)))
    codes, uniques = pd.factorize(frame["item_id"], sort=True)
    cols = np.searchsorted(steps, frame["step"].to_numpy())
    total = np.zeros((len(uniques), len(steps)))
    count = np.zeros((len(uniques), len(steps)))
    np.add.at(total, (codes, cols), frame[value].to_numpy(dtype=float))
    np.add.at(count, (codes, cols), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


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


def load_items(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(items, models, health) frames of a results folder, via the results store."""
    from pythia_forensics.sweep.store import ResultsStore

    root = Path(results_dir)
    if not root.is_dir():
        raise StoreError(f"results folder {root} does not exist; pass the --results folder replay wrote")
    store = ResultsStore(root)
    return store.require_items(), store.models(), store.health()


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
            raise StoreError("the item frame is empty; nothing to analyse")
    else:
        items, stored_models, stored_health = load_items(source)
        models = stored_models if models is None else models
        health = stored_health if health is None else health
    prepared = _prepare_items(items)
    table = step_table(prepared, health=health, config=config)
    rows, trajectories = [], []
    by_group = dict(iter(prepared.groupby(list(GROUP_KEYS), sort=True)))
    for key, group in table.groupby(list(GROUP_KEYS), sort=True):
        used = group[group["used"]].sort_values("step")
        steps = used["step"].to_numpy()
        res = trajectory_metrics(steps, used["conflict_acc"].to_numpy(), used["agree_acc"].to_numpy(),
                                 used["conflict_cm"].to_numpy(), config=config)
        verdict, void, reason = classify(res, config)
        sel = by_group[key]
        sel = sel[sel["step"].isin(steps)]
        conflict_m = _item_matrix(sel[sel["condition"] == "conflict"], steps, "correct")
        agree_m = _item_matrix(sel[sel["condition"] == "agree"], steps, "correct")
        boot = _bootstrap(conflict_m, agree_m, _gate(res["agree_smooth"], config), config, _group_seed(config, key)) \
            if len(steps) else {}
        excluded = group[~group["used"] & group["drop_reason"].str.startswith("health")]
        row = dict(zip(GROUP_KEYS, key))
        row.update({k: v for k, v in res.items() if not k.endswith("_smooth")})
        row.update(
            final_lo=_none_if_nan(boot["final_ci"][0]) if "final_ci" in boot else None,
            final_hi=_none_if_nan(boot["final_ci"][1]) if "final_ci" in boot else None,
            depth_lo=_none_if_nan(boot["depth_ci"][0]) if "depth_ci" in boot else None,
            depth_hi=_none_if_nan(boot["depth_ci"][1]) if "depth_ci" in boot else None,
            verdict=verdict, void=void, void_reason=reason,
            verdict_label=VOID if void or verdict is None else verdict,
            n_items_conflict=int(conflict_m.shape[0]), n_items_agree=int(agree_m.shape[0]),
            n_excluded_health=int(len(excluded)),
            excluded_steps=",".join(str(s) for s in excluded["step"]),
            config_sha256=config.sha256,
        )
        rows.append(row)
        traj = group.copy()
        for name in ("conflict_smooth", "agree_smooth", "cm_smooth", "conflict_lo", "conflict_hi", "agree_lo", "agree_hi"):
            traj[name] = np.nan
        traj["checkpoint"] = pd.array([pd.NA] * len(traj), dtype="Int64")
        mask = traj["used"].to_numpy()
        traj.loc[mask, "checkpoint"] = np.arange(mask.sum())
        for name in ("conflict_smooth", "agree_smooth", "cm_smooth"):
            traj.loc[mask, name] = res[name]
        for cond in ("conflict", "agree"):
            if f"{cond}_ci" in boot:
                traj.loc[mask, f"{cond}_lo"] = boot[f"{cond}_ci"][0]
                traj.loc[mask, f"{cond}_hi"] = boot[f"{cond}_ci"][1]
        trajectories.append(traj)
    metrics = pd.DataFrame(rows)
    for col in ("peak_acc", "final_acc", "final_range", "depth", "agree_final", "agree_max", "cm_max", "final_lo",
                "final_hi", "depth_lo", "depth_hi"):
        metrics[col] = pd.to_numeric(metrics[col]).astype(float)  # None (no checkpoints) -> NaN
    for col in ("emergence_step", "peak_step", "collapse_step", "cm_cross_step", "lag_steps", "lag_checkpoints"):
        metrics[col] = pd.array(metrics[col], dtype="Int64")
    metrics["cm_within_lag"] = pd.array(metrics["cm_within_lag"], dtype="boolean")
    traj_frame = pd.concat(trajectories, ignore_index=True) if trajectories else pd.DataFrame()
    if not traj_frame.empty:
        traj_frame["config_sha256"] = config.sha256
    return Analysis(metrics=metrics, trajectories=traj_frame, scale=scale_analysis(metrics, models, config=config),
                    config=config)


# --- scale --------------------------------------------------------------------------------
# Plural words for a scale note ("rho undefined: all depths equal").
_SCALE_WORDS = {"depth": "depths", "final_acc": "final accuracies", "params_total": "total parameter counts",
                "params_nonembedding": "non-embedding parameter counts"}


def snap_ties(values: np.ndarray, tol: float) -> np.ndarray:
    """Values equal within ``tol`` made exactly equal, so ranks see ties, not rounding noise.

    Sorted values whose gap to their neighbour is <= ``tol`` form one tie group (a chain) and
    all take the group's smallest value: three depths stored as 1.0, 1.0 and
    1.0000000000000002 after smoothing are one tie, not a ranking.

    Args:
        values: 1-D array (NaN-free).
        tol: the analysis tolerance (``analysis.tolerance``).

    Returns:
        A new array, same order as ``values``.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return v.copy()
    order = np.argsort(v, kind="stable")
    ordered = v[order]
    starts = np.concatenate([[True], np.diff(ordered) > tol])
    out = np.empty_like(v)
    out[order] = ordered[starts][np.cumsum(starts) - 1]
    return out


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho along the last axis (ties get average ranks), NaN where a side is constant."""
    rx = stats.rankdata(x, axis=-1)
    ry = stats.rankdata(y, axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=-1) / np.where(den > 0, den, 1), np.nan)


def _known_sizes(models: pd.DataFrame, sizes: list[str]) -> pd.DataFrame:
    """models.parquet's size columns as floats; NA, non-numeric or non-positive -> NaN (unknown)."""
    out = models[["model", *sizes]].drop_duplicates("model", keep="last").copy()
    for size in sizes:
        col = pd.to_numeric(out[size], errors="coerce").astype(float)
        out[size] = col.where(col > 0)
    return out


def _names(frame: pd.DataFrame) -> str:
    return ", ".join(sorted(frame["model"].astype(str)))


def scale_analysis(metrics: pd.DataFrame, models: pd.DataFrame | None, *, config: AnalysisConfig) -> pd.DataFrame:
    """Spearman rho of collapse depth and final accuracy against parameter count.

    Per (probeset, rule, split) and per size column (total, non-embedding): rho, a two-sided
    permutation p-value (`scipy.stats.permutation_test` over the n! pairings; exact when
    n! <= scale.permutations) and a percentile bootstrap CI over models (resamples with a
    constant side are skipped). Values equal within ``analysis.tolerance`` are ties
    (`snap_ties`) before the ranks, the permutations and the bootstrap, so rounding noise is
    never ranked; the reported rho equals ``scipy.stats.spearmanr`` on the snapped values.

    Left out of a row, and named in its ``note``: models whose parameter count is unknown
    (missing from ``models`` or NA there, e.g. a hub id outside the registry), models with a
    void verdict (invalid agree control), and, for ``depth``, models whose rule never emerged
    (no collapse depth). When no statistic is meaningful, ``rho``, ``p_perm``, ``rho_lo`` and
    ``rho_hi`` are NaN and the note starts with the reason, in words a figure can print:
    ``"n = 2: too few models for a rank correlation"`` (fewer than scale.min_models) or
    ``"rho undefined: all depths equal"``.

    Args:
        metrics: `analyze` metrics rows.
        models: models.parquet rows (model, params_total, params_nonembedding).
        config: thresholds (scale.*, bootstrap.*, analysis.tolerance).

    Returns:
        Columns probeset, rule, split, size, metric, n_models, models, rho, p_perm, rho_lo,
        rho_hi, note, config_sha256 (empty frame when no size column is known at all).
    """
    cols = ["probeset", "rule", "split", "size", "metric", "n_models", "models", "rho", "p_perm", "rho_lo", "rho_hi",
            "note", "config_sha256"]
    if models is None or models.empty or metrics.empty or "model" not in models:
        return pd.DataFrame(columns=cols)
    sizes = [c for c in SIZE_COLUMNS if c in models]
    if not sizes:
        return pd.DataFrame(columns=cols)
    joined = metrics.merge(_known_sizes(models, sizes), on="model", how="left")
    tol = config.tolerance
    alpha = (1 - config.bootstrap_confidence) / 2
    rows = []
    for (probeset, rule, split), group in joined.groupby(["probeset", "rule", "split"], sort=True):
        void = group["void"].astype(bool)
        for size in sizes:
            unknown = ~void & group[size].isna()
            for metric in SCALE_METRICS:
                value = pd.to_numeric(group[metric], errors="coerce").astype(float)
                undefined = ~void & ~unknown & value.isna()
                if metric == "depth" and "emerged" in group:
                    undefined |= ~void & ~unknown & ~group["emerged"].fillna(False).astype(bool)
                keep = ~void & ~unknown & ~undefined
                sub = pd.DataFrame({"model": group["model"], "x": group[size], "y": value})[keep]
                sub = sub.sort_values(["x", "model"])
                extras = []
                if unknown.any():
                    extras.append(f"sizes unknown for: {_names(group[unknown])}")
                if undefined.any():
                    what = "never emerged (no collapse depth)" if metric == "depth" else f"no {metric}"
                    extras.append(f"{what}: {_names(group[undefined])}")
                if void.any():
                    extras.append(f"void verdict: {_names(group[void])}")
                row = dict(probeset=probeset, rule=rule, split=split, size=size, metric=metric, n_models=len(sub),
                           models=",".join(sub["model"]), rho=np.nan, p_perm=np.nan, rho_lo=np.nan, rho_hi=np.nan,
                           note="", config_sha256=config.sha256)
                x, y = snap_ties(sub["x"].to_numpy(float), tol), snap_ties(sub["y"].to_numpy(float), tol)
                reason = ""
                if len(sub) < config.scale_min_models:
                    reason = f"n = {len(sub)}: too few models for a rank correlation"
                elif np.unique(y).size < 2:
                    reason = f"rho undefined: all {_SCALE_WORDS.get(metric, metric)} equal"
                elif np.unique(x).size < 2:
                    reason = f"rho undefined: all {_SCALE_WORDS.get(size, size)} equal"
                else:
                    row["rho"] = float(_spearman_rows(x, y))
                    # one sample with x fixed: scipy then enumerates the n! pairings exactly when
                    # n! <= n_resamples (with two samples it would count n!^2 and go random)
                    perm = stats.permutation_test(
                        (y,), lambda b, axis=-1: _spearman_rows(np.broadcast_to(x, b.shape), b),
                        permutation_type="pairings",
                        vectorized=True, n_resamples=config.scale_permutations, alternative="two-sided",
                        random_state=config.bootstrap_seed)
                    row["p_perm"] = float(min(1.0, perm.pvalue))
                    rng = np.random.default_rng(config.bootstrap_seed)
                    idx = rng.integers(0, len(x), size=(config.bootstrap_n, len(x)))
                    boot = _spearman_rows(x[idx], y[idx])
                    boot = boot[np.isfinite(boot)]
                    if boot.size:
                        row["rho_lo"], row["rho_hi"] = (float(v) for v in np.quantile(boot, [alpha, 1 - alpha]))
                row["note"] = "; ".join(p for p in [reason, *extras] if p)
                rows.append(row)
    return pd.DataFrame(rows, columns=cols)


# --- output -------------------------------------------------------------------------------
def write_dynamics(analysis: Analysis, results_dir: str | Path) -> list[Path]:
    """Write dynamics.parquet/.csv, trajectories.parquet and scale.csv into `results_dir`.

    Each file carries a ``config_sha256`` column; files are written to a temp name and renamed.

    Returns:
        The paths written.
    """
    root = Path(results_dir)
    root.mkdir(parents=True, exist_ok=True)
    written = []

    def _atomic(path: Path, write) -> None:
        tmp = path.with_name(f".tmp-{path.name}")
        write(tmp)
        tmp.replace(path)
        written.append(path)

    _atomic(root / DYNAMICS_FILE, lambda p: analysis.metrics.to_parquet(p, index=False))
    _atomic(root / DYNAMICS_CSV, lambda p: analysis.metrics.to_csv(p, index=False))
    if not analysis.trajectories.empty:
        _atomic(root / TRAJECTORIES_FILE, lambda p: analysis.trajectories.to_parquet(p, index=False))
    _atomic(root / SCALE_FILE, lambda p: analysis.scale.to_csv(p, index=False))
    return written
