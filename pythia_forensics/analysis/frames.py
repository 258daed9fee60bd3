"""From the results store's item rows to the step table every trajectory metric reads.

Input is the store's item rows (model, revision, step, rule, condition, split, item_id,
margin, correct; ARCHITECTURE.md "Results store"). `step_table` aggregates them per
(model, probeset, rule, split, step) into the raw accuracy and contrast margin of the
*conflict* items (rule and corpus prior disagree) and of the *agree* control, and marks which
checkpoints the analysis uses: steps below ``steps.min_step`` and checkpoints whose health
status is in ``analysis.health_exclude`` stay in the table with ``used`` False and a
``drop_reason``, so figures show them and nothing uses them silently.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pythia_forensics.analysis.config import AnalysisConfig, load_config
from pythia_forensics.constants import STEP_DIR_PREFIX
from pythia_forensics.errors import StoreError

__all__ = ["GROUP_KEYS", "REQUIRED_ITEM_COLUMNS", "prepare_items", "step_table", "item_matrix", "load_items",
           "sizes_numeric", "model_order", "unknown_size_models"]

# One trajectory per (model, probe set, rule, split): two batteries of one rule never mix.
GROUP_KEYS = ("model", "probeset", "rule", "split")
REQUIRED_ITEM_COLUMNS = ("model", "revision", "step", "rule", "condition", "split", "item_id", "margin", "correct")


def prepare_items(items: pd.DataFrame) -> pd.DataFrame:
    """Item rows with typed columns, a probeset column, and one revision per (model, step).

    Raises:
        StoreError: a required column is missing.
    """
    missing = [c for c in REQUIRED_ITEM_COLUMNS if c not in items]
    if missing:
        raise StoreError(f"item rows lack column(s) {missing}; analysis needs {list(REQUIRED_ITEM_COLUMNS)} "
                         "(score with `pythia-forensics replay`)", param="source")
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
               config: AnalysisConfig | None = None, prepared: bool = False) -> pd.DataFrame:
    """Per (model, probeset, rule, split, step): raw accuracy and CM of both conditions.

    Args:
        items: item rows.
        health: optional health.parquet rows (model, revision, status).
        config: thresholds (min_step, health_exclude).
        prepared: `items` already went through `prepare_items` (skip doing it again).

    Returns:
        Columns GROUP_KEYS + step, revision, conflict_acc, agree_acc, conflict_cm, agree_cm,
        n_conflict, n_agree, health_status, used (bool), drop_reason.

    Raises:
        StoreError: the item rows lack a required column.
    """
    config = config or load_config()
    frame = items if prepared else prepare_items(items)
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


def item_matrix(frame: pd.DataFrame, steps: np.ndarray, value: str) -> np.ndarray:
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


def load_items(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(items, models, health) frames of a results folder, via the results store.

    Raises:
        StoreError: the folder does not exist or holds no item rows.
    """
    from pythia_forensics.sweep.store import ResultsStore

    root = Path(results_dir)
    if not root.is_dir():
        # "results": the CLI's name for the folder (`analyze(source=...)` in the API)
        raise StoreError(f"results folder {root} does not exist; give the folder replay wrote", param="results")
    store = ResultsStore(root)
    return store.require_items(), store.models(), store.health()


# --- models.parquet sizes: the order every table and figure lists models in ----------------
def sizes_numeric(sizes: pd.DataFrame | None) -> pd.DataFrame:
    """models.parquet with size columns as float (pd.NA / None / missing -> NaN)."""
    if sizes is None or sizes.empty or "model" not in sizes:
        return pd.DataFrame(columns=["model", "params_total", "params_nonembedding"])
    out = sizes.copy()
    for col in ("params_total", "params_nonembedding", "tokens_per_step"):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def model_order(models: Sequence[str], sizes: pd.DataFrame | None = None) -> list[str]:
    """Models by total parameter count when known (smallest first; unknown sizes last), else by name."""
    names = sorted(set(models))
    sizes = sizes_numeric(sizes)
    if not sizes.empty and "params_total" in sizes:
        size = {m: v for m, v in zip(sizes["model"], sizes["params_total"]) if np.isfinite(v)}
        return sorted(names, key=lambda m: (size.get(m, np.inf), m))
    return names


def unknown_size_models(models: Sequence[str], sizes: pd.DataFrame | None) -> list[str]:
    """Models (of `models`) whose total or non-embedding parameter count is unknown, sorted."""
    sizes = sizes_numeric(sizes)
    known = set()
    if not sizes.empty:
        cols = [c for c in ("params_total", "params_nonembedding") if c in sizes]
        ok = np.isfinite(sizes[cols].to_numpy(float)).all(axis=1) if cols else np.zeros(len(sizes), bool)
        known = set(sizes.loc[ok, "model"])
    return sorted(set(models) - known)
