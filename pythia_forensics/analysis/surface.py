"""The LM beside the surface model: per (model, rule, checkpoint) and n-gram order, how often
the LM's forced choice equals the stupid-backoff n-gram model's on the conflict items, and both
accuracies. Pure: item rows in (the store's LM rows; ``support --mode ngram --per-item`` rows),
a table out. A checkpoint at step s is compared with the n-gram model of the last budget at or
before s (its training tokens); a checkpoint before the first budget has no surface model.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["SURFACE_COLUMNS", "surface_agreement", "agreement_onset"]

SURFACE_COLUMNS = ["model", "rule", "split", "step", "order", "ngram_step", "n_items", "agreement", "lm_accuracy",
                   "ngram_accuracy"]


def surface_agreement(lm_items: pd.DataFrame, ngram_items: pd.DataFrame, *, condition: str = "conflict") -> pd.DataFrame:
    """``SURFACE_COLUMNS`` per (model, rule, split, LM step, order) over ``condition`` items
    present in both tables (LM ``correct`` and n-gram ``correct``: the target was chosen, so
    choices agree exactly when both are right or both wrong)."""
    lm = lm_items[lm_items.condition == condition]
    ng = ngram_items[ngram_items.condition == condition]
    rows = []
    budgets = np.sort(ng.step.dropna().unique().astype(int))
    for step in np.sort(lm.step.unique()):
        k = np.searchsorted(budgets, int(step), side="right") - 1
        if k < 0:
            continue
        ng_at = ng[ng.step == budgets[k]]
        lm_at = lm[lm.step == step]
        for order, ng_o in ng_at.groupby("order"):
            both = lm_at.merge(ng_o[["item_id", "correct"]], on="item_id", suffixes=("_lm", "_ng"))
            for (model, rule, split), g in both.groupby(["model", "rule", "split"], sort=True):
                lm_c, ng_c = g.correct_lm.astype(bool), g.correct_ng.astype(bool)
                rows.append(dict(model=model, rule=rule, split=split, step=int(step), order=int(order),
                                 ngram_step=int(budgets[k]), n_items=len(g), agreement=float((lm_c == ng_c).mean()),
                                 lm_accuracy=float(lm_c.mean()), ngram_accuracy=float(ng_c.mean())))
    return pd.DataFrame(rows, columns=SURFACE_COLUMNS)


def agreement_onset(table: pd.DataFrame, *, threshold: float) -> pd.DataFrame:
    """Per (model, rule, split, order): the first step from which agreement stays at or above
    ``threshold`` to the last checkpoint (NaN: never)."""
    out = []
    for key, g in table.sort_values("step").groupby(["model", "rule", "split", "order"], sort=True):
        ok = g.agreement.to_numpy() >= threshold
        tail = np.flatnonzero(~ok)
        start = 0 if tail.size == 0 else tail[-1] + 1
        onset = float(g.step.iloc[start]) if start < len(g) else float("nan")
        out.append(dict(zip(["model", "rule", "split", "order"], key), onset_step=onset))
    return pd.DataFrame(out, columns=["model", "rule", "split", "order", "onset_step"])
