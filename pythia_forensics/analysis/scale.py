"""Scale statistics: does a rule's collapse depend on model size? Ranks that know ties.

Per (probeset, rule, split), per size column (total, non-embedding) and per metric (collapse
depth, final accuracy), `scale_analysis` reduces the `analyze` metrics rows to one scale row:
Spearman rho against parameter count, a permutation p-value and a bootstrap CI, or NaN and a
note saying why no statistic is meaningful. Values equal within ``analysis.tolerance`` are
ties (`snap_ties`) before anything is ranked, so rounding noise is never ranked (issue #12).
`flip_point` does the same job for a support sweep: where along a knob a rule's fate flips.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from pythia_forensics.analysis.config import AnalysisConfig

__all__ = ["SIZE_COLUMNS", "SCALE_METRICS", "SCALE_COLUMNS", "snap_ties", "scale_analysis", "flip_point"]

SIZE_COLUMNS = ("params_total", "params_nonembedding")
SCALE_METRICS = ("depth", "final_acc")
SCALE_COLUMNS = ("probeset", "rule", "split", "size", "metric", "n_models", "models", "rho", "p_perm", "rho_lo",
                 "rho_hi", "note", "config_sha256")
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


def _rank_statistics(x: np.ndarray, y: np.ndarray, metric: str, size: str,
                     config: AnalysisConfig) -> tuple[dict[str, float], str]:
    """(rho, p_perm, rho_lo, rho_hi) of tie-snapped values, or NaNs and the reason there are none."""
    out = dict(rho=np.nan, p_perm=np.nan, rho_lo=np.nan, rho_hi=np.nan)
    if len(x) < config.scale_min_models:
        return out, f"n = {len(x)}: too few models for a rank correlation"
    if np.unique(y).size < 2:
        return out, f"rho undefined: all {_SCALE_WORDS.get(metric, metric)} equal"
    if np.unique(x).size < 2:
        return out, f"rho undefined: all {_SCALE_WORDS.get(size, size)} equal"
    out["rho"] = float(_spearman_rows(x, y))
    # one sample with x fixed: scipy then enumerates the n! pairings exactly when
    # n! <= n_resamples (with two samples it would count n!^2 and go random)
    perm = stats.permutation_test(
        (y,), lambda b, axis=-1: _spearman_rows(np.broadcast_to(x, b.shape), b), permutation_type="pairings",
        vectorized=True, n_resamples=config.scale_permutations, alternative="two-sided",
        random_state=config.bootstrap_seed)
    out["p_perm"] = float(min(1.0, perm.pvalue))
    alpha = (1 - config.bootstrap_confidence) / 2
    rng = np.random.default_rng(config.bootstrap_seed)
    idx = rng.integers(0, len(x), size=(config.bootstrap_n, len(x)))
    boot = _spearman_rows(x[idx], y[idx])
    boot = boot[np.isfinite(boot)]  # resamples with a constant side have no rho
    if boot.size:
        out["rho_lo"], out["rho_hi"] = (float(v) for v in np.quantile(boot, [alpha, 1 - alpha]))
    return out, ""


def _scale_row(group: pd.DataFrame, size: str, metric: str, config: AnalysisConfig) -> dict:
    """One scale row: which models count (and, in the note, which do not and why), then the ranks."""
    void = group["void"].astype(bool)
    unknown = ~void & group[size].isna()
    value = pd.to_numeric(group[metric], errors="coerce").astype(float)
    undefined = ~void & ~unknown & value.isna()
    if metric == "depth" and "emerged" in group:
        undefined |= ~void & ~unknown & ~group["emerged"].fillna(False).astype(bool)
    keep = ~void & ~unknown & ~undefined
    sub = pd.DataFrame({"model": group["model"], "x": group[size], "y": value})[keep].sort_values(["x", "model"])
    extras = []
    if unknown.any():
        extras.append(f"sizes unknown for: {_names(group[unknown])}")
    if undefined.any() and metric == "depth" and "emerged" in group:
        # dynamics defines depth only for a rule that collapsed (emerged, ended below recovered)
        emerged = group["emerged"].fillna(False).astype(bool)
        for what, mask in (("never emerged (no collapse depth)", undefined & ~emerged),
                           ("never collapsed (no collapse depth)", undefined & emerged)):
            if mask.any():
                extras.append(f"{what}: {_names(group[mask])}")
    elif undefined.any():
        what = "no collapse depth" if metric == "depth" else f"no {metric}"
        extras.append(f"{what}: {_names(group[undefined])}")
    if void.any():
        extras.append(f"void verdict: {_names(group[void])}")
    tol = config.tolerance
    x, y = snap_ties(sub["x"].to_numpy(float), tol), snap_ties(sub["y"].to_numpy(float), tol)
    statistics, reason = _rank_statistics(x, y, metric, size, config)
    return dict(size=size, metric=metric, n_models=len(sub), models=",".join(sub["model"]), **statistics,
                note="; ".join(p for p in [reason, *extras] if p), config_sha256=config.sha256)


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
        Columns SCALE_COLUMNS: probeset, rule, split, size, metric, n_models, models, rho,
        p_perm, rho_lo, rho_hi, note, config_sha256 (empty frame when no size column is known).
    """
    cols = list(SCALE_COLUMNS)
    if models is None or models.empty or metrics.empty or "model" not in models:
        return pd.DataFrame(columns=cols)
    sizes = [c for c in SIZE_COLUMNS if c in models]
    if not sizes:
        return pd.DataFrame(columns=cols)
    joined = metrics.merge(_known_sizes(models, sizes), on="model", how="left")
    rows = [dict(probeset=probeset, rule=rule, split=split, **_scale_row(group, size, metric, config))
            for (probeset, rule, split), group in joined.groupby(["probeset", "rule", "split"], sort=True)
            for size in sizes for metric in SCALE_METRICS]
    return pd.DataFrame(rows, columns=cols)


def flip_point(x: np.ndarray, survived: np.ndarray) -> tuple[float, float] | None:
    """Where a sweep's fate flips: (largest x that did not survive, smallest x that did).

    Args:
        x: the swept value per arm (e.g. measured in-frame support).
        survived: per arm, whether the rule survived (bool array, same length).

    Returns:
        The interval, or None when no single flip separates them (all survived, none did,
        or a lost arm lies at or above a kept one).
    """
    x, survived = np.asarray(x, dtype=float), np.asarray(survived, dtype=bool)
    lost, kept = x[~survived], x[survived]
    if lost.size == 0 or kept.size == 0 or lost.max() >= kept.min():
        return None
    return float(lost.max()), float(kept.min())

