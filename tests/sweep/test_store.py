"""ResultsStore: keys, atomic writes, supersession, summary, models/health tables, self-checks,
quarantine, duplicates, gaps, `verify`, ecosystem readers, the PF_FAULT hook."""
from __future__ import annotations

import json

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import pyarrow as pa
import pyarrow.parquet as pq

from pythia_forensics.errors import StoreError
from pythia_forensics.sweep.store import ResultsStore, WorkKey, summarize


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
    some = store.items(columns=["margin"])  # the asked-for columns plus the sort columns, same rows
    assert set(some.columns) == {"margin", "model", "probeset", "step", "revision", "item_id"}
    pd.testing.assert_frame_equal(some, rows[list(some.columns)])
    summ = store.refresh_summary()
    # independent count: plain loop over the input frame
    for (rule, cond), grp in frame.groupby(["rule", "condition"]):
        row = summ[(summ.rule == rule) & (summ.condition == cond)].iloc[0]
        assert row.n == len(grp)
        assert row.accuracy == pytest.approx(sum(m > 0 for m in grp.margin) / len(grp))
        assert row.mean_margin == pytest.approx(sum(grp.margin) / len(grp))
    pd.testing.assert_frame_equal(store.summary(), summ, check_dtype=False)


def test_an_arrow_table_and_its_frame_store_the_same_file(tmp_path):
    """The replay hands the store Arrow tables sliced out of one merged pass (non-zero
    offsets, nulls, 64-bit strings); the file must be the one the same rows give as a frame."""
    from pythia_forensics.sweep.itemfile import content_sha256, item_table

    whole = _frame(n=10, seed=4)
    whole["template"] = ["t1", None] * 5
    whole["prefix"] = [f"prefix {k} " * k for k in range(10)]
    part = whole.iloc[3:9].reset_index(drop=True)
    table = pa.Table.from_pandas(whole, preserve_index=False).slice(3, 6)
    table = table.set_column(table.schema.get_field_index("prefix"), "prefix",
                             table["prefix"].cast(pa.large_string()))
    key, prov = _key(), {"step": 10, "commit": None, "batch_size": 4}
    a, b = item_table(key, part, prov, 7), item_table(key, table, prov, 7)
    assert a.schema == b.schema and a.to_pylist() == b.to_pylist()
    assert content_sha256(a) == content_sha256(b)
    got = []
    for name, rows in (("frame", part), ("table", table)):
        store = ResultsStore(tmp_path / name)
        store.write(key, rows, provenance=prov)
        got.append(ResultsStore(tmp_path / name).items().drop(columns=["written_at"]))
    pd.testing.assert_frame_equal(got[0], got[1])
    assert got[1]["template"].isna().tolist() == [True, False] * 3  # rows 3..8 of the whole
    with pytest.raises(StoreError, match="empty"):
        ResultsStore(tmp_path / "e").write(key, table.slice(0, 0), provenance=prov)


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
    # a plain folder name: no hive-style `model=` partition to clash with the `model` column
    assert store.path_for(key).parent.name == "EleutherAI--pythia-14m"
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
        from pythia_forensics.sweep.store import ResultsStore
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


# --- a store that checks itself -------------------------------------------------------------
def _filled(tmp_path, n_rev: int = 3) -> tuple[ResultsStore, list[WorkKey]]:
    """Two models x n_rev revisions x two probe sets, with a models table: written once per
    session and size into a pristine folder, copied into `tmp_path` (files, metadata, mtimes)."""
    pristine = tmp_path.parent / f"_filled_store_{n_rev}"
    if not (pristine / "summary.parquet").exists():
        _fill(pristine.with_name(pristine.name + ".tmp"), n_rev)
        os.replace(pristine.with_name(pristine.name + ".tmp"), pristine)
    shutil.copytree(pristine, tmp_path, dirs_exist_ok=True)
    return ResultsStore(tmp_path), [_key(model=m, revision=f"step{r}", probeset=p)
                                    for m in ("m", "EleutherAI/x") for r in range(n_rev) for p in ("p", "q")]


def _fill(root, n_rev: int) -> None:
    store = ResultsStore(root)
    store.write_models(pd.DataFrame({"model": ["m", "EleutherAI/x"], "params_total": pd.array([10, 20], dtype="Int64"),
                                     "source": ["local", "hub"]}))
    keys = []
    for model in ("m", "EleutherAI/x"):
        for r in range(n_rev):
            for probeset in ("p", "q"):
                key = _key(model=model, revision=f"step{r}", probeset=probeset)
                store.write(key, _frame(seed=len(keys)), provenance={
                    "step": r, "repo": None if model == "m" else model,
                    "commit": None if model == "m" else "ab" * 20})
                keys.append(key)
    store.refresh_summary()


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _zero(p):
    p.write_bytes(b"")


def _garbage(p):
    p.write_bytes(os.urandom(p.stat().st_size))


def _drop_rows(p):  # a tool that keeps the file's metadata but loses rows
    table = pq.read_table(p)
    pq.write_table(table.slice(0, table.num_rows - 2), p)


def _edit_keeping_metadata(p):  # logp_target and margin edited consistently, metadata kept
    table = pq.read_table(p)
    i = table.schema.get_field_index("logp_target")
    j = table.schema.get_field_index("margin")
    lt = table["logp_target"].to_numpy().copy()
    lt[0] += 0.5
    margin = table["margin"].to_numpy().copy()
    margin[0] += 0.5
    table = table.set_column(i, "logp_target", pa.array(lt)).set_column(j, "margin", pa.array(margin))
    pq.write_table(table, p)


def _edit_through_pandas(p):  # the obvious notebook edit: the store's metadata is lost
    frame = pd.read_parquet(p)
    frame.loc[0, "margin"] = 5.0
    frame.to_parquet(p)


def _edit_margin_only(p):  # breaks margin == logp_target - logp_foil even where metadata is kept
    table = pq.read_table(p)
    j = table.schema.get_field_index("margin")
    margin = table["margin"].to_numpy().copy()
    margin[1] += 1e-3
    pq.write_table(table.set_column(j, "margin", pa.array(margin)), p)


DAMAGES = {"truncate": (_truncate, "unreadable"), "zero-byte": (_zero, "zero bytes"),
           "garbage": (_garbage, "unreadable"), "rows-dropped": (_drop_rows, "rows dropped"),
           "edited": (_edit_keeping_metadata, "checksum"), "edited-pandas": (_edit_through_pandas, "no checksum"),
           "margin-edited": (_edit_margin_only, "checksum")}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_item_file_is_detected_quarantined_and_rewritable(damage, tmp_path, caplog):
    store, keys = _filled(tmp_path)
    victim = keys[3]
    path = store.path_for(victim)
    expected = store.items()
    expected = expected[expected.work_key != victim.id].reset_index(drop=True)
    DAMAGES[damage][0](path)
    with caplog.at_level(logging.WARNING, logger="pythia_forensics.sweep.store"):
        assert not store.has(victim)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0] and DAMAGES[damage][1] in lines[0], lines
    assert not path.exists()
    moved = list((tmp_path / "quarantine").glob("*.parquet"))
    assert len(moved) == 1
    reason = moved[0].with_name(moved[0].name + ".reason.txt").read_text()
    assert DAMAGES[damage][1] in reason
    # every other key is still intact, and items() uses none of the damaged rows
    assert all(store.has(k) for k in keys if k != victim)
    pd.testing.assert_frame_equal(store.items(), expected)
    assert store.missing()[["model", "probeset", "revision"]].values.tolist() == [
        [victim.model, victim.probeset, victim.revision]]
    store.write(victim, _frame(seed=99), provenance={"step": 1})
    assert store.has(victim) and store.missing().empty


@pytest.mark.parametrize("damage", ["truncate", "edited", "rows-dropped"])
def test_items_never_return_damaged_rows(damage, tmp_path, caplog):
    """analyze reads through items(): a damaged file is skipped (and moved aside) even without has()."""
    store, keys = _filled(tmp_path)
    victim = keys[0]
    DAMAGES[damage][0](store.path_for(victim))
    with caplog.at_level(logging.WARNING, logger="pythia_forensics.sweep.store"):
        rows = store.items()
    assert victim.id not in set(rows["work_key"]) and len(rows) == 6 * (len(keys) - 1)
    assert sum(DAMAGES[damage][1] in r.getMessage() for r in caplog.records) == 1
    summ = store.refresh_summary()
    assert summ["n"].sum() == len(rows)


def test_duplicate_and_superseded_files_of_a_slot_count_once(tmp_path):
    store, keys = _filled(tmp_path)
    path = store.path_for(keys[0])
    shutil.copy(path, path.with_name("copy-of-it.parquet"))
    shutil.copy(path, path.with_name(f"{keys[0].slot}ffffffffffffffffffffffff.parquet"))
    before = summarize(store.items())
    rows = store.items()
    assert len(rows) == 6 * len(keys)  # not doubled
    report = store.verify()
    assert report.count("duplicate") == 2 and report.count("damaged") == 0, report.problems
    assert report.count("missing") == 0 and not report.ok
    fixed = store.verify(repair=True)
    assert fixed.ok, fixed.problems
    pd.testing.assert_frame_equal(summarize(store.items()), before)
    assert sorted(p.name for p in store.path_for(keys[0]).parent.iterdir()).count(path.name) == 1


def test_newest_intact_file_of_a_slot_wins_over_a_damaged_newer_one(tmp_path):
    store = ResultsStore(tmp_path)
    old, new = _key(content_key="c1"), _key(content_key="c2")
    store.write(old, _frame(seed=1), provenance={"step": 10})
    saved = store.path_for(old).read_bytes()
    store.write(new, _frame(seed=2), provenance={"step": 10})
    store.path_for(old).write_bytes(saved)
    _truncate(store.path_for(new))
    rows = store.items()
    assert set(rows["content_key"]) == {"c1"} and len(rows) == 6
    assert not store.has(new)


def test_deleted_file_is_a_gap_per_model_and_probe_set(tmp_path):
    store, keys = _filled(tmp_path)
    gone = [k for k in keys if k.model == "EleutherAI/x" and k.revision == "step2" and k.probeset == "q"][0]
    store.path_for(gone).unlink()
    gaps = store.missing()
    assert gaps.to_dict("records") == [{"model": "EleutherAI/x", "probeset": "q", "revision": "step2", "step": 2}]
    # the summary still lists a slot whose files are all gone
    for k in keys:
        if k.model == "m" and k.revision == "step1":
            store.path_for(k).unlink()
    assert {(g.model, g.probeset, g.revision) for g in store.missing().itertuples()} == {
        ("EleutherAI/x", "q", "step2"), ("m", "p", "step1"), ("m", "q", "step1")}


@pytest.mark.parametrize("table", ["summary.parquet", "models.parquet"])
@pytest.mark.parametrize("damage", ["truncate", "zero-byte", "rows-dropped", "deleted"])
def test_damaged_summary_and_models_tables_are_rebuilt_from_item_files(table, damage, tmp_path, caplog):
    store, keys = _filled(tmp_path)
    summary, models = store.summary(), store.models()
    assert len(summary) and len(models) == 2
    path = tmp_path / table
    if damage == "deleted":
        path.unlink()
    else:
        DAMAGES[damage][0](path)
    fresh = ResultsStore(tmp_path)
    report = fresh.verify()
    assert not report.ok
    if damage != "deleted":
        got = fresh.summary() if table == "summary.parquet" else fresh.models()
        pd.testing.assert_frame_equal(got, summary if table == "summary.parquet" else models)
    assert ResultsStore(tmp_path).verify(repair=True).ok
    pd.testing.assert_frame_equal(ResultsStore(tmp_path).summary(), summary)
    pd.testing.assert_frame_equal(ResultsStore(tmp_path).models(), models)


def test_damaged_models_table_does_not_break_an_upsert(tmp_path):
    store, _ = _filled(tmp_path)
    _garbage(tmp_path / "models.parquet")
    store.write_models(pd.DataFrame({"model": ["m"], "params_total": pd.array([11], dtype="Int64"),
                                     "source": ["local"]}))
    got = ResultsStore(tmp_path).models().set_index("model")["params_total"].to_dict()
    assert got == {"m": 11, "EleutherAI/x": 20}


def test_health_table_damage_is_quarantined_not_fatal(tmp_path):
    store, _ = _filled(tmp_path)
    store.write_health(pd.DataFrame({"model": ["m"], "revision": ["step1"], "status": ["bad"], "reasons": ["x"]}))
    _truncate(tmp_path / "health.parquet")
    assert ResultsStore(tmp_path).health().empty
    assert list((tmp_path / "quarantine").glob("*health.parquet"))


def test_old_layout_store_stays_readable_and_repair_upgrades_it(tmp_path, caplog):
    """Store format 1: hive-style `model=` folders, files without the store's metadata."""
    store, keys = _filled(tmp_path)
    expected = store.items()
    for path in list((tmp_path / "items").glob("*/*.parquet")):
        legacy_dir = path.parent.with_name("model=" + path.parent.name)
        legacy_dir.mkdir(exist_ok=True)
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), legacy_dir / path.name)
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()
    old = ResultsStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pythia_forensics.sweep.store"):
        rows = old.items()
    assert any("verify" in r.getMessage() and "--repair" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(rows, expected)
    assert old.verify().count("legacy") == len(keys)
    assert old.verify(repair=True).ok
    assert not list((tmp_path / "items").glob("model=*"))
    assert all(ResultsStore(tmp_path).has(k) for k in keys)
    pd.testing.assert_frame_equal(ResultsStore(tmp_path).items(), expected)


def test_verify_cli_exit_status_and_lines(tmp_path, run_cli):
    store, keys = _filled(tmp_path / "r")
    code, out, err = run_cli(["verify", str(tmp_path / "r")])
    assert code in (0, None) and "12 intact" in out and "0 damaged" in out, out + err
    _zero(store.path_for(keys[0]))
    shutil.copy(store.path_for(keys[1]), store.path_for(keys[1]).with_name("dup.parquet"))
    code, out, err = run_cli(["verify", str(tmp_path / "r")])
    assert code == 1
    problem_lines = [ln for ln in out.splitlines() if ln.startswith(("damaged:", "duplicate:", "missing:"))]
    assert len(problem_lines) == 3, out
    code, out, err = run_cli(["verify", str(tmp_path / "r"), "--repair"])
    assert code == 1 and "missing:" in out and "damaged:" not in out.replace("repaired:", "")  # a replay refills it
    store.write(keys[0], _frame(seed=0), provenance={"step": 0})
    store.refresh_summary()  # as replay does after writing
    code, out, err = run_cli(["verify", str(tmp_path / "r")])
    assert code in (0, None) and "intact" in out.splitlines()[-1], out
    code, out, err = run_cli(["verify", str(tmp_path / "nowhere")])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_verify_counts_a_recorded_failure_as_missing(tmp_path, run_cli):
    """A revision a sweep recorded as failed is work still to do: never '0 missing -- intact'."""
    _filled(tmp_path / "r")
    record = tmp_path / "r" / "failures" / "m" / "step999.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"model": "m", "revision": "step999", "step": 999, "stage": "load",
                                  "reason": "CheckpointError: truncated"}))
    code, out, err = run_cli(["verify", str(tmp_path / "r")])
    assert code == 1 and "1 missing" in out and "intact" not in out.splitlines()[-1].split("--")[-1], out + err
    line = next(ln for ln in out.splitlines() if ln.startswith("missing:"))
    assert "step999" in line and "load" in line and "truncated" in line
    record.unlink()
    code, out, err = run_cli(["verify", str(tmp_path / "r")])
    assert code in (0, None) and "0 missing" in out, out


def test_checksum_ignores_layout_but_not_values():
    from pythia_forensics.sweep.store import content_sha256

    base = pa.table({"s": ["a", None, "bc"], "x": [1.5, None, -0.0], "n": pa.array([1, 2, 3], pa.int32()),
                     "b": [True, False, None]})
    same = [
        pa.table({"b": base["b"], "n": base["n"], "x": base["x"], "s": base["s"]}),        # column order
        pa.Table.from_batches(base.to_batches(max_chunksize=1)),                            # chunking
        base.set_column(2, "n", base["n"].cast(pa.int64())),                                # physical type
        base.set_column(0, "s", base["s"].cast(pa.large_string())),
        pa.concat_tables([pa.table({"s": ["z"], "x": [0.0], "n": pa.array([0], pa.int32()), "b": [True]}),
                          base]).slice(1),                                                  # offset slice
    ]
    for other in same:
        assert content_sha256(other) == content_sha256(base)
    differ = [
        base.set_column(0, "s", pa.array(["a", "", "bc"])),        # null vs empty string
        base.set_column(0, "s", pa.array(["ab", None, "c"])),      # same bytes, other split
        base.set_column(1, "x", pa.array([1.5, None, 0.0])),       # -0.0 vs 0.0
        base.take([2, 1, 0]),                                     # row order
        base.slice(0, 2),                                         # a row dropped
        base.rename_columns(["t", "x", "n", "b"]),                # a column renamed
    ]
    digests = {content_sha256(t) for t in differ} | {content_sha256(base)}
    assert len(digests) == len(differ) + 1


def test_verify_refuses_what_is_not_a_store(tmp_path, run_cli):
    (tmp_path / "file.txt").write_text("x")
    for target in (tmp_path / "file.txt", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        code, out, err = run_cli(["verify", str(target)])
        assert code == 2 and err.count("\n") == 1 and "--results" in err and "Traceback" not in err, err


# --- a store the ecosystem reads -----------------------------------------------------------
def test_pandas_pyarrow_polars_duckdb_read_every_row_with_its_model(tmp_path):
    import duckdb
    import polars as pl
    import pyarrow.dataset as ds

    store, keys = _filled(tmp_path)
    _truncate(store.path_for(keys[0]))
    assert not store.has(keys[0])  # quarantined: must not be read by anyone
    (store.path_for(keys[1]).parent / ".tmp-x.parquet.1.2@host").write_bytes(b"partial")
    expected = store.items()
    want = expected.groupby("model").size().to_dict()
    assert want == {"m": 30, "EleutherAI/x": 36}
    items = tmp_path / "items"
    readers = {
        "pandas": lambda: pd.read_parquet(items),
        "pyarrow": lambda: ds.dataset(items).to_table().to_pandas(),
        "polars": lambda: pl.scan_parquet(str(items / "**/*.parquet")).collect().to_pandas(),
        "duckdb": lambda: duckdb.sql(f"SELECT * FROM read_parquet('{items}/**/*.parquet', "
                                     "hive_partitioning=true)").df(),
    }
    for name, read in readers.items():
        got = read()
        assert got.groupby("model").size().to_dict() == want, name
        assert set(got.columns) == set(expected.columns), name
        merged = got.merge(expected, on=["work_key", "item_id"], suffixes=("", "_ref"))
        assert len(merged) == len(expected), name
        assert (merged["model"] == merged["model_ref"]).all(), name
        np.testing.assert_array_equal(merged["margin"], merged["margin_ref"])


# --- deterministic faults ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["store-write", "store-write-mid"])
def test_fault_hook_exits_after_or_in_the_middle_of_the_nth_write(mode, tmp_path):
    from pythia_forensics.constants import FAULT_ENV, FAULT_EXIT_STATUS

    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_store import _frame, _key
        from pythia_forensics.sweep.store import ResultsStore
        store = ResultsStore({str(tmp_path)!r})
        for k in range(5):
            store.write(_key(revision=f"step{{k}}"), _frame(), provenance={{"step": k}})
        print("finished")
    """)
    env = {**os.environ, FAULT_ENV: f"{mode}:3"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == FAULT_EXIT_STATUS and "finished" not in proc.stdout, proc.stderr
    store = ResultsStore(tmp_path)
    published = sorted(int(r[4:]) for r in store.items()["revision"].unique())
    temps = list(tmp_path.rglob(".tmp-*"))
    if mode == "store-write":
        assert published == [0, 1, 2] and not temps
    else:
        assert published == [0, 1] and len(temps) == 1
        with pytest.raises(Exception):
            pq.read_table(temps[0])  # half a file, under a name no reader globs
        assert store.clean_temporaries() == 1
    bad = subprocess.run([sys.executable, "-c", script], env={**os.environ, FAULT_ENV: "store-write:x"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "store-write:N" in bad.stderr


def test_content_digest_follows_its_documented_layout():
    """content_sha256 against the layout it documents, re-implemented here in plain Python
    (stored files from earlier versions carry digests of this layout): columns by name, each
    its validity mask and values (floats as <f8, ints and bools as <i8, strings length-
    prefixed UTF-8 with nulls as "", anything else as JSON), with and without nulls."""
    import hashlib
    import json as _json

    import numpy as _np
    import pyarrow as pa

    from pythia_forensics.sweep.itemfile import content_sha256

    cols = {"f64": pa.array([1.5, None, -3.0]), "f32": pa.array([1.0, 2.5, 3.0], type=pa.float32()),
            "i32": pa.array([1, None, 3], type=pa.int32()), "b": pa.array([True, False, True]),
            "s": pa.array(["x", None, "zé"]), "ls": pa.array(["p", "q", "r"], type=pa.large_string()),
            "lst": pa.array([[1], [2, 3], None])}
    table = pa.table(cols)

    def reference(rows: dict[str, list]) -> str:
        h = hashlib.sha256(f"rows={len(next(iter(rows.values())))}".encode())
        for name in sorted(rows):
            values, kind = rows[name], cols[name].type
            h.update(b"\x1e" + name.encode() + b"\x1f" + bytes(int(v is not None) for v in values))
            if pa.types.is_floating(kind):
                h.update(b"f" + _np.array([0.0 if v is None else v for v in values], dtype="<f8").tobytes())
            elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
                h.update(b"i" + _np.array([0 if v is None else int(v) for v in values], dtype="<i8").tobytes())
            elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
                data = [("" if v is None else v).encode() for v in values]
                h.update(b"s" + _np.cumsum([0] + [len(d) for d in data]).astype("<i8").tobytes() + b"".join(data))
            else:
                h.update(b"o" + _json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode())
        return h.hexdigest()

    rows = {name: col.to_pylist() for name, col in cols.items()}
    assert content_sha256(table) == reference(rows)
    assert content_sha256(table.slice(1)) == reference({k: v[1:] for k, v in rows.items()})
    assert content_sha256(pa.concat_tables([table, table])) == reference({k: v * 2 for k, v in rows.items()})
