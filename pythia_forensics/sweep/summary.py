"""summary.parquet's rows: per-group counts, accuracy and mean margin of the item rows."""
from __future__ import annotations

import pandas as pd

from pythia_forensics.constants import SUMMARY_KEYS

__all__ = ["summarize", "SUMMARY_COLUMNS"]

# the item columns `summarize` reads
SUMMARY_COLUMNS = (*SUMMARY_KEYS, "item_id", "correct", "margin")


def summarize(items: pd.DataFrame) -> pd.DataFrame:
    """Per (model, step, revision, probe set, rule, condition, split): n, accuracy, mean margin.

    Args:
        items: item rows (score frame + provenance), as `ResultsStore.items()` returns.

    Returns:
        One row per group with columns SUMMARY_KEYS + ``n, accuracy, mean_margin``, sorted.
    """
    cols = [*SUMMARY_KEYS, "n", "accuracy", "mean_margin"]
    if items.empty:
        return pd.DataFrame(columns=cols)
    grouped = items.groupby(list(SUMMARY_KEYS), dropna=False, sort=True)
    out = grouped.agg(
        n=("item_id", "size"),
        accuracy=("correct", "mean"),
        mean_margin=("margin", "mean"),
    ).reset_index()
    out["step"] = pd.array(out["step"], dtype="Int64")
    return out[cols]
