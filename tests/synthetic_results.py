"""Synthetic item rows and results folders whose trajectories the tests know by hand.

`items_for` turns per-checkpoint accuracy (multiples of 1/n) and contrast margin into item
rows that obey the store's contract (``correct = margin > 0``, mean margin = the given CM),
so analysis sees exactly the accuracies and CMs a test wrote down.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

N_ITEMS = 10


def _margins(k: int, n: int, cm: float) -> list[float]:
    """n margins, k of them > 0, with mean exactly `cm` (up to float rounding)."""
    if k == n:
        assert cm > 0, "all items correct needs a positive CM"
        return [cm] * n
    if k == 0:
        assert cm < 0, "no item correct needs a negative CM"
        return [cm] * n
    pos = abs(cm) * n / k + 1.0
    neg = (n * cm - k * pos) / (n - k)
    assert neg < 0
    return [pos] * k + [neg] * (n - k)


def items_for(
    steps: Sequence[int],
    conflict: Sequence[float],
    agree: Sequence[float],
    cm: Sequence[float] | None = None,
    *,
    model: str = "mini-s",
    rule: str = "pronoun_gender",
    split: str = "heldout",
    probeset: str = "pronoun_gender",
    n: int = N_ITEMS,
    agree_cm: float = 2.0,
) -> pd.DataFrame:
    """Item rows: at each step round(acc * n) of n items correct, conflict mean margin = cm."""
    rows = []
    if cm is None:
        cm = [1.0 if round(a * n) > n / 2 else -1.0 if round(a * n) < n / 2 else 0.5 for a in conflict]
    for i, step in enumerate(steps):
        for cond, acc, margin_mean in (("conflict", conflict[i], cm[i]), ("agree", agree[i], None)):
            k = int(round(acc * n))
            if margin_mean is None:
                margin_mean = agree_cm if k == n else (-agree_cm if k == 0 else 0.1)
            for j, m in enumerate(_margins(k, n, margin_mean)):
                rows.append(dict(model=model, revision=f"step{step}", step=step, rule=rule, condition=cond,
                                 split=split, item_id=f"{rule}-{cond}-{j}", margin=float(m), correct=bool(m > 0),
                                 probeset=probeset))
    return pd.DataFrame(rows)


def write_store(root: Path, items: pd.DataFrame, models: pd.DataFrame | None = None,
                health: pd.DataFrame | None = None) -> Path:
    """Write item rows (one file per model/revision) and side tables through ResultsStore."""
    from unittest import mock

    from pythia_forensics.sweep.store import ResultsStore, WorkKey

    store = ResultsStore(root)
    # tmp_path needs no durability: skipping fsync makes the ~120 small writes fast on a busy disk
    with mock.patch("pythia_forensics.sweep.store.os.fsync"):
        for (model, revision, probeset), frame in items.groupby(["model", "revision", "probeset"]):
            key = WorkKey(model=model, revision=revision, content_key=f"c-{model}-{revision}", probeset=probeset,
                          probeset_sha256="p" * 64, dtype="float32", bos=False, vocab_rows="tokenizer",
                          code_version="t")
            store.write(key, frame.drop(columns=["probeset"]), provenance={"repo": model})
        store.refresh_summary()
    if models is not None:
        store.write_models(models)
    if health is not None:
        store.write_health(health)
    return root


# A five-model suite whose collapse depth shrinks with size (the paper's shape): the
# smallest models are displaced, the largest recover.
SUITE_STEPS = [0, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
SUITE_FINALS = {"mini-xs": 0.0, "mini-s": 0.2, "mini-m": 0.5, "mini-l": 0.8, "mini-xl": 0.9}
SUITE_PARAMS = {"mini-xs": 1e5, "mini-s": 4e5, "mini-m": 1.6e6, "mini-l": 6.4e6, "mini-xl": 2.56e7}


def suite_items(rules: Sequence[str] = ("pronoun_gender", "reflexive_gender")) -> pd.DataFrame:
    frames = []
    for r, rule in enumerate(rules):
        for model, final in SUITE_FINALS.items():
            conflict = [1.0, 1.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0, final, final, final, final]
            agree = [0.0, 0.0, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
            if r == 1 and model == "mini-m":
                agree = agree[:8] + [0.5] * 4  # the control fails: this verdict is void
            frames.append(items_for(SUITE_STEPS, conflict, agree, model=model, rule=rule, probeset=rule))
    return pd.concat(frames, ignore_index=True)


def suite_models() -> pd.DataFrame:
    names = list(SUITE_PARAMS)
    total = np.array([SUITE_PARAMS[m] for m in names])
    return pd.DataFrame(dict(model=names, params_total=total, params_nonembedding=total * 0.6,
                             tokens_per_step=[4096] * len(names), source=["local"] * len(names)))
