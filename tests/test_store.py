"""ResultsStore: keys, atomic writes, supersession, summary, models/health tables."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from pythia_forensics.errors import StoreError
from pythia_forensics.store import ResultsStore, WorkKey


def _key(**over) -> WorkKey:
    base = dict(model="m", revision="step10", content_key="c1", probeset="p", probeset_sha256="s1",
                dtype="float32", bos=False, vocab_rows="tokenizer", code_version="1")
    base.update(over)
    return WorkKey(**base)


def _frame(n: int = 6, *, seed: int = 0, model: str = "m") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lt, lf = rng.normal(-3, 1, n), rng.normal(-3, 1, n)
    return pd.DataFrame({
        "model": model, "revision": "x", "item_id": [f"i{k}" for k in range(n)],
        "rule": ["r1", "r2"] * (n // 2), "condition": ["conflict"] * (n // 2) + ["agree"] * (n - n // 2),
        "split": "heldout", "logp_target": lt, "logp_foil": lf, "margin": lt - lf, "correct": lt - lf > 0,
    })


def test_key_id_changes_with_every_field_and_shares_slot():
    base = _key()
    for field, value in [("content_key", "c2"), ("probeset_sha256", "s2"), ("dtype", "bfloat16"),
                         ("bos", True), ("vocab_rows", "all"), ("code_version", "2")]:
        other = _key(**{field: value})
        assert other.id != base.id, field
        assert other.slot == base.slot, field
    assert _key(revision="step20").slot != base.slot
    assert _key(probeset="q").slot != base.slot
    assert _key(model="m2").slot != base.slot


def test_write_has_items_and_summary(tmp_path):
    store = ResultsStore(tmp_path)
    key = _key()
    assert not store.has(key)
    frame = _frame()
    store.write(key, frame, provenance={"step": 10, "repo": "local/m", "commit": None})
    assert store.has(key)
    rows = store.items()
    assert len(rows) == len(frame)
    assert set(rows["work_key"]) == {key.id}
    assert rows["step"].tolist() == [10] * len(frame)
    np.testing.assert_allclose(rows.sort_values("item_id")["margin"], frame.sort_values("item_id")["margin"])
    summ = store.refresh_summary()
    # independent count: plain loop over the input frame
    for (rule, cond), grp in frame.groupby(["rule", "condition"]):
        row = summ[(summ.rule == rule) & (summ.condition == cond)].iloc[0]
        assert row.n == len(grp)
        assert row.accuracy == pytest.approx(sum(m > 0 for m in grp.margin) / len(grp))
        assert row.mean_margin == pytest.approx(sum(grp.margin) / len(grp))
    pd.testing.assert_frame_equal(store.summary(), summ, check_dtype=False)


def test_rewrite_under_new_key_supersedes_old_slot(tmp_path):
    store = ResultsStore(tmp_path)
    old, new = _key(content_key="c1"), _key(content_key="c2")
    store.write(old, _frame(seed=1), provenance={"step": 10})
    store.write(_key(revision="step20"), _frame(seed=2), provenance={"step": 20})
    store.write(new, _frame(seed=3), provenance={"step": 10})
    assert not store.has(old) and store.has(new)
    rows = store.items()
    assert len(rows) == 12
    assert set(rows[rows.revision == "step10"]["content_key"]) == {"c2"}


def test_leftover_superseded_file_never_duplicates_rows(tmp_path):
    """A kill between publishing the new file and deleting the old one leaves both files."""
    store = ResultsStore(tmp_path)
    old, new = _key(content_key="c1"), _key(content_key="c2")
    store.write(old, _frame(seed=1), provenance={"step": 10})
    saved = store.path_for(old).read_bytes()
    store.write(new, _frame(seed=3), provenance={"step": 10})
    store.path_for(old).write_bytes(saved)  # resurrect the superseded file
    rows = store.items()
    assert len(rows) == 6 and set(rows["content_key"]) == {"c2"}


def test_empty_frame_is_refused_and_key_names_the_rows(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(StoreError, match="empty"):
        store.write(_key(), _frame().iloc[:0], provenance={})
    store.write(_key(), _frame(model="/some/path/step10"), provenance={})
    assert set(store.items()["model"]) == {"m"}
    store.path_for(_key()).unlink()
    with pytest.raises(StoreError, match="no results"):
        store.require_items()


def test_hub_ids_partition_safely(tmp_path):
    store = ResultsStore(tmp_path)
    key = _key(model="EleutherAI/pythia-14m")
    store.write(key, _frame(model="EleutherAI/pythia-14m"), provenance={"step": None})
    assert store.path_for(key).parent.name == "model=EleutherAI--pythia-14m"
    rows = store.items(models=["EleutherAI/pythia-14m"])
    assert len(rows) == 6 and rows["step"].isna().all()
    assert store.items(models=["other"]).empty


def test_models_and_health_upsert(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_models(pd.DataFrame({"model": ["a", "b"], "params_total": [1, 2]}))
    store.write_models(pd.DataFrame({"model": ["b"], "params_total": [3]}))
    assert store.models().set_index("model")["params_total"].to_dict() == {"a": 1, "b": 3}
    store.write_health(pd.DataFrame({"model": ["a"], "revision": ["step1"], "status": ["bad"], "reasons": ["x"]}))
    store.write_health(pd.DataFrame({"model": ["a"], "revision": ["step1"], "status": ["ok"], "reasons": [""]}))
    assert store.health()["status"].tolist() == ["ok"]
    with pytest.raises(StoreError, match="key column"):
        store.write_health(pd.DataFrame({"model": ["a"]}))


@pytest.mark.slow
def test_killed_writer_leaves_no_partial_file(tmp_path):
    """SIGKILL a process mid-way through many writes: every published file reads whole."""
    script = textwrap.dedent(f"""
        import numpy as np, pandas as pd, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_store import _frame, _key
        from pythia_forensics.store import ResultsStore
        store = ResultsStore({str(tmp_path)!r})
        big = pd.concat([_frame(6, seed=k) for k in range(3000)], ignore_index=True)
        big["item_id"] = [f"i{{k}}" for k in range(len(big))]
        print("ready", flush=True)
        for k in range(1000):
            store.write(_key(revision=f"step{{k}}"), big, provenance={{"step": k}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    store = ResultsStore(tmp_path)
    while len(store.keys()) < 2:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_files = len(store.keys())
    rows = store.items()
    assert len(rows) == n_files * 18000  # every published file is complete
    assert not rows.duplicated(["revision", "item_id"]).any()
    store.clean_temporaries()
    assert not list(tmp_path.rglob(".tmp-*"))
