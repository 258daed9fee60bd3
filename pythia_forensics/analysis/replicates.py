"""Seeds as replicates: every metric per seed and pooled over the seeds of one run.

A replicate group is one training recipe run with several seeds (PolyPythia's
`pythia-70m-seed1..9` with `pythia-70m`, the mini grid's `grid-d32-s070-r1234..1236`, a user's
own runs whose manifests carry `seed`); models.parquet names it (`replicate_group`, `seed`).
`seed_table` keeps the per-seed rows and adds, per group, the mean over seeds with a Student-t
interval over seeds (the seeds are the sample: n - 1 degrees of freedom), so a statement about
the recipe carries the spread of training runs, not of probe items.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from pythia_forensics.analysis.config import AnalysisConfig

__all__ = ["REPLICATE_METRICS", "REPLICATE_COLUMNS", "seed_table", "parse_seed_flags", "with_seeds"]

REPLICATE_METRICS = ("peak_acc", "final_acc", "depth", "agree_final", "cm_max")
REPLICATE_COLUMNS = ("probeset", "rule", "split", "replicate_group", "seed", "model", "metric", "n_seeds", "value",
                     "lo", "hi", "interval", "config_sha256")
POOLED = "pooled"  # the `seed` / `model` value of a pooled row


def _groups(models: pd.DataFrame | None) -> pd.DataFrame:
    cols = ["model", "seed", "replicate_group"]
    if models is None or models.empty:
        return pd.DataFrame(columns=cols)
    out = models.drop_duplicates("model", keep="last").copy()
    for c in cols[1:]:
        if c not in out:
            out[c] = pd.NA
    out["replicate_group"] = out["replicate_group"].where(out["replicate_group"].notna(), out["model"])
    return out[cols]


def seed_table(metrics: pd.DataFrame, models: pd.DataFrame | None, *, config: AnalysisConfig) -> pd.DataFrame:
    """Per-seed metric rows and, per replicate group, the pooled mean with an interval over seeds.

    Args:
        metrics: `analyze` metrics rows.
        models: models.parquet rows (model, seed, replicate_group); a model without them is
            its own group of one.
        config: bootstrap.confidence sets the interval's level.

    Returns:
        Columns REPLICATE_COLUMNS. Per-seed rows have ``seed`` (or "" when unknown) and
        ``model``, ``n_seeds`` = 1 and no interval; pooled rows have ``seed`` = ``model`` =
        "pooled", ``value`` = the mean over the group's seeds whose metric is defined (a depth
        that is NaN is left out of the mean and of ``n_seeds``), and ``lo``/``hi`` = mean -/+
        t(n - 1) * sd / sqrt(n), NaN with ``interval`` saying why for fewer than 2 seeds.
    """
    if metrics.empty:
        return pd.DataFrame(columns=list(REPLICATE_COLUMNS))
    joined = metrics.merge(_groups(models), on="model", how="left")
    joined["replicate_group"] = joined["replicate_group"].fillna(joined["model"]).astype(str)
    joined["seed"] = joined["seed"].map(lambda s: "" if pd.isna(s) else str(int(s)))
    keys = ["probeset", "rule", "split", "replicate_group"]
    level = config.bootstrap_confidence
    rows = []
    for key, group in joined.sort_values([*keys, "seed", "model"]).groupby(keys, sort=True):
        base = dict(zip(keys, key), config_sha256=config.sha256)
        for metric in (m for m in REPLICATE_METRICS if m in group):
            values = pd.to_numeric(group[metric], errors="coerce").astype(float)
            for seed, model, v in zip(group["seed"], group["model"], values):
                rows.append(dict(base, seed=seed, model=model, metric=metric, n_seeds=1, value=v, lo=np.nan,
                                 hi=np.nan, interval=""))
            defined = values[np.isfinite(values)].to_numpy()
            n = len(defined)
            mean = float(defined.mean()) if n else np.nan
            lo = hi = np.nan
            if n >= 2:
                half = stats.t.ppf(0.5 + level / 2, n - 1) * defined.std(ddof=1) / np.sqrt(n)
                lo, hi = mean - half, mean + half
                kind = f"Student t over {n} seeds ({level:.0%})"
            else:
                kind = f"no interval: {n} seed{'s' if n != 1 else ''} with a defined {metric}"
            rows.append(dict(base, seed=POOLED, model=POOLED, metric=metric, n_seeds=n, value=mean, lo=lo, hi=hi,
                             interval=kind))
    return pd.DataFrame(rows, columns=list(REPLICATE_COLUMNS))


def parse_seed_flags(flags: list[str]) -> dict[str, tuple[int, str | None]]:
    """`--seed MODEL=SEED` or `--seed MODEL=SEED:GROUP` values -> {model: (seed, group or None)}.

    Raises:
        ConfigError: a value is not of that form.
    """
    from pythia_forensics.errors import ConfigError

    out = {}
    for flag in flags:
        model, sep, rest = flag.partition("=")
        seed, _, group = rest.partition(":")
        if not sep or not model or not seed.lstrip("-").isdigit():
            raise ConfigError(f"--seed {flag!r}: write MODEL=SEED or MODEL=SEED:GROUP (e.g. run-a=2:run)",
                              param="seed")
        out[model] = (int(seed), group or None)
    return out


def with_seeds(models: pd.DataFrame, seeds: dict[str, tuple[int, str | None]]) -> pd.DataFrame:
    """models.parquet rows with the user's seeds (and replicate groups) set; a model given a
    seed but no group gets its name without a seed suffix (`sweep.replay.replicate_group`)."""
    from pythia_forensics.sweep.replay import replicate_group

    out = models.copy()
    for col in ("seed", "replicate_group"):
        if col not in out:
            out[col] = pd.NA
    out["replicate_group"] = out["replicate_group"].astype(object)
    for model, (seed, group) in seeds.items():
        hit = out["model"] == model
        if not hit.any():
            out = pd.concat([out, pd.DataFrame([{"model": model}])], ignore_index=True)
            hit = out["model"] == model
        out.loc[hit, "seed"] = seed
        out.loc[hit, "replicate_group"] = group or replicate_group(model, seed)
    return out
