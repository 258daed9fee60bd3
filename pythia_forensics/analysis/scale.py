"""Scale statistics: does a rule's collapse depend on model size? Ranks that know ties.

Per (probeset, rule, split), per size column (total, non-embedding) and per metric (collapse
depth, final accuracy), `scale_analysis` reduces the `analyze` metrics rows to one scale row:
Spearman rho of the per-size means over seeds (a replicate group's seeds are one point)
against parameter count, the exact permutation p-value with the smallest p n values allow,
and an interval only where one means something (over sizes from scale.bootstrap_min_models,
over seeds within size where every size has 2+), or NaN and a note saying why. Values equal within ``analysis.tolerance`` are
ties (`snap_ties`) before anything is ranked, so rounding noise is never ranked (issue #12).
`flip_point` does the same job for a support sweep: where along a knob a rule's fate flips.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from pythia_forensics.analysis.config import AnalysisConfig

__all__ = ["SIZE_COLUMNS", "SCALE_METRICS", "SCALE_COLUMNS", "snap_ties", "scale_analysis", "flip_point"]

SIZE_COLUMNS = ("params_total", "params_nonembedding")
SCALE_METRICS = ("depth", "final_acc")
SCALE_COLUMNS = ("probeset", "rule", "split", "size", "metric", "n_models", "n_sizes", "seeds_per_size", "models",
                 "rho", "p_perm", "p_min", "rho_lo", "rho_hi", "interval", "note", "config_sha256")
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
    """models.parquet's size columns as floats; NA, non-numeric or non-positive -> NaN (unknown).
    Also each model's replicate group (its own name where models.parquet names none)."""
    extra = ["replicate_group"] if "replicate_group" in models else []
    out = models[["model", *sizes, *extra]].drop_duplicates("model", keep="last").copy()
    if not extra:
        out["replicate_group"] = out["model"]
    out["replicate_group"] = out["replicate_group"].where(out["replicate_group"].notna(), out["model"]).astype(str)
    for size in sizes:
        col = pd.to_numeric(out[size], errors="coerce").astype(float)
        out[size] = col.where(col > 0)
    return out


def _names(frame: pd.DataFrame) -> str:
    return ", ".join(sorted(frame["model"].astype(str)))


def _exact_null(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of every one of the n! pairings of ``y`` with ``x``."""
    perms = np.array(list(itertools.permutations(range(len(y)))), dtype=np.intp)
    return _spearman_rows(np.broadcast_to(x, perms.shape), y[perms])


def _smallest_p(x: np.ndarray, y: np.ndarray, config: AnalysisConfig) -> float:
    """The smallest two-sided permutation p any pairing of these values with these sizes can
    give: exact over the n! pairings up to scale.exact_max_n (2/n! without ties, larger with
    tied values), else the Monte Carlo floor 2/(R+1) of scipy's randomised test."""
    if len(y) <= config.scale_exact_max_n:
        null = _exact_null(x, y)
        if not np.isfinite(null).any():
            return 1.0
        most = np.nanmax(null)
        return float(min(1.0, 2 * np.mean(null >= most - 1e-12)))
    return float(min(1.0, 2 / (config.scale_permutations + 1)))


def _rank_statistics(x: np.ndarray, y: np.ndarray, metric: str, size: str,
                     config: AnalysisConfig) -> tuple[dict[str, float], str]:
    """(rho, p_perm, p_min) of tie-snapped per-size values, or NaNs and the reason there are none."""
    out = dict(rho=np.nan, p_perm=np.nan, p_min=np.nan)
    if len(x) >= 2:  # printed even where no rho is: what n alone could ever show
        out["p_min"] = _smallest_p(x, y, config)
    if len(x) < config.scale_min_models:
        return out, f"n = {len(x)}: too few models for a rank correlation"
    if np.unique(x).size < 2:
        return out, f"rho undefined: all {_SCALE_WORDS.get(size, size)} equal"
    if np.unique(y).size < 2:
        return out, f"rho undefined: all {_SCALE_WORDS.get(metric, metric)} equal"
    out["rho"] = float(_spearman_rows(x, y))
    # one sample with x fixed: scipy enumerates the n! pairings exactly when n_resamples >= n!
    # (with two samples it would count n!^2 and go random)
    exact = len(x) <= config.scale_exact_max_n
    perm = stats.permutation_test(
        (y,), lambda b, axis=-1: _spearman_rows(np.broadcast_to(x, b.shape), b), permutation_type="pairings",
        vectorized=True, n_resamples=np.inf if exact else config.scale_permutations, alternative="two-sided",
        random_state=config.bootstrap_seed)
    out["p_perm"] = float(min(1.0, perm.pvalue))
    return out, ""


def _interval(sub: pd.DataFrame, config: AnalysisConfig) -> tuple[float, float, str, str]:
    """Percentile interval of rho over the per-size means: (lo, hi, kind, why-not).

    Sizes are resampled only from scale.bootstrap_min_models sizes on; seeds are resampled
    within each size when every size has two or more. Neither: no interval, and the reason.
    """
    points = list(sub.groupby(["x", "group"], sort=True))
    groups = [g["y"].to_numpy(float) for _, g in points]
    xs = np.array([x for (x, _), _ in points], dtype=float)
    n = len(groups)
    over_sizes = n >= config.scale_bootstrap_min_models
    over_seeds = n > 0 and min(len(g) for g in groups) >= 2
    if n < config.scale_min_models or not (over_sizes or over_seeds):
        why = (f"no interval: n = {n} < scale.bootstrap_min_models = {config.scale_bootstrap_min_models} "
               "and not every size has 2+ seeds")
        return np.nan, np.nan, "", why
    rng = np.random.default_rng(config.bootstrap_seed)
    B = config.bootstrap_n
    pick = rng.integers(0, n, size=(B, n)) if over_sizes else np.broadcast_to(np.arange(n), (B, n))
    means = np.empty((B, n))
    for j, g in enumerate(groups):
        if over_seeds:
            draws = g[rng.integers(0, len(g), size=(B, len(g)))].mean(axis=1)
        else:
            draws = np.full(B, g.mean())
        means[:, j] = draws
    y = np.take_along_axis(means, pick, axis=1)
    y = np.array([snap_ties(row, config.tolerance) for row in y])
    boot = _spearman_rows(xs[pick], y)
    boot = boot[np.isfinite(boot)]  # resamples with a constant side have no rho
    kind = " and ".join(k for k, on in (("sizes", over_sizes), ("seeds within size", over_seeds)) if on)
    if not boot.size:
        return np.nan, np.nan, kind, "no interval: every resample has a constant side"
    alpha = (1 - config.bootstrap_confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(lo), float(hi), f"bootstrap over {kind}", ""


def _scale_row(group: pd.DataFrame, size: str, metric: str, config: AnalysisConfig) -> dict:
    """One scale row: which models count (and, in the note, which do not and why), then one
    point per replicate group (the mean over its seeds), their ranks and interval."""
    void = group["void"].astype(bool)
    unknown = ~void & group[size].isna()
    value = pd.to_numeric(group[metric], errors="coerce").astype(float)
    undefined = ~void & ~unknown & value.isna()
    if metric == "depth" and "emerged" in group:
        undefined |= ~void & ~unknown & ~group["emerged"].fillna(False).astype(bool)
    keep = ~void & ~unknown & ~undefined
    tol = config.tolerance
    sub = pd.DataFrame({"model": group["model"], "group": group["replicate_group"], "x": group[size],
                        "y": value})[keep].sort_values(["x", "model"])
    sub["x"] = snap_ties(sub["x"].to_numpy(float), tol)
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
    per_size = sub.groupby(["x", "group"], sort=True)["y"].agg(["mean", "size"])
    x = per_size.index.get_level_values("x").to_numpy(float)
    y = snap_ties(per_size["mean"].to_numpy(float), tol)
    statistics, reason = _rank_statistics(x, y, metric, size, config)
    lo, hi, kind, why = (np.nan, np.nan, "", "") if reason else _interval(sub, config)
    return dict(size=size, metric=metric, n_models=len(sub), n_sizes=len(per_size),
                seeds_per_size=",".join(str(int(k)) for k in per_size["size"]), models=",".join(sub["model"]),
                **statistics, rho_lo=lo, rho_hi=hi, interval=kind,
                note="; ".join(p for p in [reason, why, *extras] if p), config_sha256=config.sha256)


def scale_analysis(metrics: pd.DataFrame, models: pd.DataFrame | None, *, config: AnalysisConfig) -> pd.DataFrame:
    """Spearman rho of collapse depth and final accuracy against parameter count.

    Seeds are replicates: models sharing a ``replicate_group`` in ``models`` (the same run with
    another seed; each model its own group where the column is absent) are one point, their
    mean, so n counts sizes, not training runs. Per (probeset, rule, split) and per size
    column (total, non-embedding): Spearman rho of the per-group means against size; the
    two-sided permutation p-value (`scipy.stats.permutation_test` over pairings; every one of
    the n! enumerated up to scale.exact_max_n, Monte Carlo with scale.permutations above) and
    ``p_min``, the smallest p those n values could ever reach (2/n! without ties: 1/3 at n = 3),
    printed even where no rho is; and a percentile bootstrap interval (``interval`` says over
    what): over sizes only from scale.bootstrap_min_models points on (below, resamples are
    too few and coarse to be an interval), over seeds within each size when every size has 2+
    seeds (seed-level uncertainty of the means), both when both hold, else NaN and the note
    says why. Resamples with a constant side are skipped. Values equal within ``analysis.tolerance`` are ties
    (`snap_ties`) before the ranks, the permutations and the bootstrap, so rounding noise is
    never ranked; the reported rho equals ``scipy.stats.spearmanr`` on the snapped values.

    Left out of a row, and named in its ``note``: models whose parameter count is unknown
    (missing from ``models`` or NA there, e.g. a hub id outside the registry), models with a
    void verdict (invalid agree control), and, for ``depth``, models whose rule never emerged
    or never collapsed (depth NaN: no collapse depth). When no statistic is meaningful, ``rho``, ``p_perm``, ``rho_lo`` and
    ``rho_hi`` are NaN and the note starts with the reason, in words a figure can print:
    ``"n = 2: too few models for a rank correlation"`` (fewer than scale.min_models) or
    ``"rho undefined: all depths equal"``.

    Args:
        metrics: `analyze` metrics rows.
        models: models.parquet rows (model, params_total, params_nonembedding).
        config: thresholds (scale.*, bootstrap.*, analysis.tolerance).

    Returns:
        Columns SCALE_COLUMNS: probeset, rule, split, size, metric, n_models (training runs
        counted), n_sizes (points ranked), seeds_per_size (runs per point, in size order),
        models, rho, p_perm, p_min, rho_lo, rho_hi, interval, note, config_sha256 (empty frame when no size column is known).
    """
    cols = list(SCALE_COLUMNS)
    if models is None or models.empty or metrics.empty or "model" not in models:
        return pd.DataFrame(columns=cols)
    sizes = [c for c in SIZE_COLUMNS if c in models]
    if not sizes:
        return pd.DataFrame(columns=cols)
    joined = metrics.merge(_known_sizes(models, sizes), on="model", how="left")
    joined["replicate_group"] = joined["replicate_group"].fillna(joined["model"]).astype(str)
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

