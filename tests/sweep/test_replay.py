"""Replay: local suite == per-checkpoint scoring, resume, kills, edits, hub budget, executors, CLI errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hub_fixtures import DiskPoller
from numerics import assert_fp32_close
from tinymodels import save_checkpoint, tiny_neox

from pythia_forensics.sweep.records import ReplayOptions
from pythia_forensics.sweep.store import ResultsStore

STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
MODELS = ("mini-a", "mini-b", "mini-c")
# Columns that legitimately differ between two runs of the same work.
VOLATILE = ("written_at", "device")
# Scored columns compared against the reference computation.
NUMERIC = ("logp_target", "logp_foil", "margin")


# --- fixtures ------------------------------------------------------------------------------
def _items(rule: str, pairs: list) -> list[dict]:
    return [{"item_id": f"{rule}.{cond}.{split}.{k:03d}", "rule": rule, "condition": cond, "split": split,
             "prefix": prefix, "target": target, "foil": foil}
            for k, (cond, split, prefix, (target, foil)) in enumerate(pairs)]


def _write_probes(path: Path, name: str, rows: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "items": rows}, sort_keys=False))
    return path


PRONOUN = [
    ("conflict", "heldout", "Mia cried because", (" she", " he")),
    ("agree", "heldout", "Tom cried because", (" he", " she")),
    ("conflict", "train", "Sue laughed because", (" she", " he")),
    ("agree", "train", "Bob laughed because", (" he", " she")),
    ("conflict", "heldout", "Lily said that", (" she", " he")),
    ("agree", "heldout", "Jack said that", (" he", " she")),
]
ARTICLE = [
    ("conflict", "heldout", "I ate", (" an apple", " a apple")),
    ("agree", "heldout", "She saw", (" a cat", " an cat")),
    ("conflict", "train", "He found", (" an egg", " a egg")),
    ("agree", "train", "He found", (" a box", " an box")),
]


def _build_model(root: Path, name: str, tokenizer, *, seed0: int) -> Path:
    model_dir = root / name
    for i, step in enumerate(STEPS):
        net = tiny_neox(len(tokenizer), seed=seed0 + i)
        save_checkpoint(model_dir / f"step{step}", net, tokenizer)
    total = sum(p.numel() for p in net.parameters())
    embedding = net.get_input_embeddings().weight.numel() + net.get_output_embeddings().weight.numel()
    (model_dir / "manifest.json").write_text(json.dumps({
        "model": name, "params_total": total, "params_nonembedding": total - embedding, "tokens_per_step": 4096,
        "layers": 2, "d_model": 32, "heads": 4, "vocab_size": len(tokenizer), "seed": seed0,
        "steps": list(STEPS), "corpus": {}, "train": {},
    }))
    return model_dir


@pytest.fixture(scope="module")
def suite(tmp_path_factory, tiny_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("suite")
    for k, name in enumerate(MODELS):
        _build_model(root, name, tiny_tokenizer, seed0=100 * (k + 1))
    return root


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("probes")
    return (_write_probes(folder / "pron.yaml", "pron", _items("pronoun_gender", PRONOUN)),
            _write_probes(folder / "art.yaml", "art", _items("indefinite_article", ARTICLE)))


@pytest.fixture(scope="module")
def reference_run(suite, probe_files, tmp_path_factory):
    """One uninterrupted local replay of 3 models x 10 revisions x 2 probe sets."""
    from pythia_forensics.sweep.replay import replay

    results = tmp_path_factory.mktemp("ref")
    summary = replay([str(suite / m) for m in MODELS], [str(p) for p in probe_files], results=results,
                     progress=False)
    return results, summary


def _plain_logp(model, tokenizer, prefix: str, continuation: str) -> float:
    """Independent fp32 reference: one item, prefix and continuation encoded separately, no BOS."""
    import torch

    p = tokenizer(prefix)["input_ids"]
    c = tokenizer(continuation)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p + c])).logits[0, :, : len(tokenizer)].double()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[len(p) - 1 + k, t] for k, t in enumerate(c)))


def _stable(frame: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in frame.columns if c not in VOLATILE]
    return frame[cols].sort_values(["model", "probeset", "revision", "item_id"]).reset_index(drop=True)


# --- local suite -----------------------------------------------------------------------------
@pytest.mark.slow
def test_local_replay_equals_scoring_each_checkpoint_alone(suite, probe_files, reference_run):
    from pythia_forensics.scoring.probes import load_probes
    from pythia_forensics.scoring.score import load_model, score

    results, summary = reference_run
    assert summary.revisions_planned == 30 and summary.revisions_scored == 30
    assert summary.units_scored == 60
    rows = ResultsStore(results).items()
    assert len(rows) == 30 * (len(PRONOUN) + len(ARTICLE))
    assert not rows.duplicated(["model", "revision", "probeset", "item_id"]).any()
    sets = [load_probes(p) for p in probe_files]
    for model in MODELS:
        for step in STEPS:
            # each checkpoint loaded on its own from its folder (no skeleton reuse)
            net, tokenizer = load_model(suite / model / f"step{step}", dtype="float32", device="cpu")
            for probe_set in sets:
                alone = score(net, probe_set, tokenizer=tokenizer).set_index("item_id").sort_index()
                got = rows[(rows.model == model) & (rows.revision == f"step{step}")
                           & (rows.probeset == probe_set.name)].set_index("item_id").sort_index()
                assert list(got.index) == list(alone.index)
                for col in NUMERIC:
                    np.testing.assert_allclose(got[col], alone[col], atol=1e-4, rtol=0)
                assert (got["correct"] == alone["correct"]).all()
                assert (got["step"] == step).all()


def test_replay_numbers_match_a_plain_fp32_loop(suite, reference_run, tiny_tokenizer):
    """Independent of the scorer: three checkpoints re-scored item by item here."""
    from transformers import GPTNeoXForCausalLM

    rows = ResultsStore(reference_run[0]).items()
    for model_name, step in [("mini-a", 0), ("mini-b", 16), ("mini-c", 256)]:
        model = GPTNeoXForCausalLM.from_pretrained(suite / model_name / f"step{step}").eval()
        got = rows[(rows.model == model_name) & (rows.step == step)]
        assert len(got) == len(PRONOUN) + len(ARTICLE)
        for row in got.itertuples():
            lt = _plain_logp(model, tiny_tokenizer, row.prefix, row.target)
            lf = _plain_logp(model, tiny_tokenizer, row.prefix, row.foil)
            assert row.logp_target == pytest.approx(lt, abs=1e-4)
            assert row.margin == pytest.approx(lt - lf, abs=1e-4)
            assert row.correct == (lt - lf > 0)


def test_store_provenance_summary_and_models(reference_run):
    results, _ = reference_run
    store = ResultsStore(results)
    rows = store.items()
    for col in ("repo", "step", "commit", "weights_sha256", "dtype", "batch_size", "device", "bos",
                "probeset", "probeset_sha256", "work_key", "pf_version", "torch_version",
                "transformers_version"):
        assert col in rows, col
    assert set(rows["dtype"]) == {"float32"} and not rows["bos"].any()
    assert rows["weights_sha256"].str.len().min() == 64
    summary = store.summary()
    assert len(summary) == len(rows.groupby(["model", "revision", "probeset", "rule", "condition", "split"]))
    one = summary[(summary.model == "mini-b") & (summary.step == 32) & (summary.condition == "conflict")
                  & (summary.split == "heldout") & (summary.probeset == "pron")].iloc[0]
    mine = rows[(rows.model == "mini-b") & (rows.step == 32) & (rows.condition == "conflict")
                & (rows.split == "heldout") & (rows.probeset == "pron")]
    assert one.n == len(mine) == 2
    assert one.accuracy == pytest.approx(float(np.mean(mine.margin > 0)))
    assert one.mean_margin == pytest.approx(float(np.mean(mine.margin)))
    models = store.models().set_index("model")
    assert set(models.index) == set(MODELS)
    assert models.loc["mini-a", "tokens_per_step"] == 4096


@pytest.mark.slow
def test_rerun_skips_everything_and_edits_rescore_only_what_changed(suite, probe_files, tmp_path, tiny_tokenizer):
    """Edit one probe item -> only that set; replace one revision's weights -> only that revision."""
    import shutil

    from pythia_forensics.sweep.replay import replay

    local = tmp_path / "suite"
    shutil.copytree(suite / "mini-a", local / "mini-a")
    shutil.copytree(suite / "mini-b", local / "mini-b")
    pron = _write_probes(tmp_path / "pron.yaml", "pron", _items("pronoun_gender", PRONOUN))
    art = _write_probes(tmp_path / "art.yaml", "art", _items("indefinite_article", ARTICLE))
    models = [str(local / "mini-a"), str(local / "mini-b")]
    results = tmp_path / "res"
    run = lambda: replay(models, [str(pron), str(art)], results=results, steps="0:16", progress=False)  # noqa: E731
    first = run()
    assert first.revisions_scored == 12 and first.units_scored == 24
    store = ResultsStore(results)
    before = store.items().set_index(["model", "revision", "probeset", "item_id"])["written_at"]

    again = run()
    assert again.revisions_scored == 0 and again.units_scored == 0 and again.revisions_skipped == 12

    edited = _items("indefinite_article", ARTICLE)
    edited[1]["prefix"] = "She found"
    _write_probes(art, "art", edited)
    third = run()
    assert third.units_scored == 12 and third.revisions_scored == 12
    after = store.items().set_index(["model", "revision", "probeset", "item_id"])
    changed = after["written_at"] != before.reindex(after.index)
    assert set(after[changed].index.get_level_values("probeset")) == {"art"}
    assert (after.xs("art", level="probeset")["written_at"] != before.xs("art", level="probeset")).all()
    assert after.loc[("mini-a", "step0", "art", "indefinite_article.agree.heldout.001"), "prefix"] == "She found"
    assert len(after) == 12 * 10

    before = after["written_at"]
    save_checkpoint(local / "mini-b" / "step4", tiny_neox(len(tiny_tokenizer), seed=999), tiny_tokenizer)
    fourth = run()
    assert fourth.revisions_scored == 1 and fourth.units_scored == 2
    after = store.items().set_index(["model", "revision", "probeset", "item_id"])
    changed = after["written_at"] != before.reindex(after.index)
    assert set(after[changed].index.droplevel(["probeset", "item_id"])) == {("mini-b", "step4")}
    assert len(after) == 12 * 10 and not after.index.duplicated().any()


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pythia_forensics", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def _fp32_close(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal, numbers within a few fp32 steps at the log-probs' magnitude (never a fixed atol)."""
    assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
    scale = np.maximum(expected["logp_target"].abs(), expected["logp_foil"].abs()).to_numpy()
    step = np.spacing(scale.astype(np.float32)).astype(float)
    for col in got.columns:
        if col in NUMERIC or col in ("mean_logp_target", "mean_logp_foil"):
            bound = 4 * step if col in NUMERIC else 4 * step / expected["n_target_tokens"].clip(lower=1).to_numpy()
            diff = np.abs(got[col].to_numpy(float) - expected[col].to_numpy(float))
            assert (diff <= np.maximum(bound, 4 * np.spacing(np.abs(expected[col].to_numpy(np.float32))))).all(), col
        else:
            pd.testing.assert_series_equal(got[col], expected[col], check_dtype=False, obj=col)


def _summary_close(got: pd.DataFrame, expected: pd.DataFrame, items: pd.DataFrame) -> None:
    """Summary tables equal; mean margins within a few fp32 steps of the largest log-prob."""
    scale = float(np.maximum(items["logp_target"].abs(), items["logp_foil"].abs()).max())
    tol = 4 * float(np.spacing(np.float32(scale)))
    assert len(got) == len(expected)
    for col in got.columns:
        if col == "mean_margin":
            np.testing.assert_allclose(got[col], expected[col], rtol=0, atol=tol)
        else:
            pd.testing.assert_series_equal(got[col].reset_index(drop=True), expected[col].reset_index(drop=True),
                                           check_dtype=False, obj=col)


def _replay_with_fault(fault: str, models: list[str], probes: list[str], results: str) -> None:
    """Forkserver target: a replay whose store exits hard at the PF_FAULT point."""
    from pythia_forensics.constants import FAULT_ENV
    from pythia_forensics.sweep.replay import replay

    os.environ[FAULT_ENV] = fault
    replay(models, probes, results=results, progress=False)


@pytest.mark.slow
def test_kill_at_every_store_write_and_mid_write_then_resume_equals_uninterrupted(suite, probe_files, reference_run,
                                                                                  tmp_path):
    """A replay of 10 revisions x 2 probe sets killed (os._exit via PF_FAULT) in the middle of and
    right after every one of its store writes (models table, 20 item files, summary), each time
    resumed by a fresh process: the store ends equal to the uninterrupted run's.

    Each process with units left writes models.parquet first, so "store-write:2" lets it finish
    exactly one more unit; once every unit is stored the model's row is kept as it is and the
    summary is the first write. The processes fork from a forkserver that imported torch and
    the package once.
    """
    import multiprocessing

    from pythia_forensics.constants import FAULT_EXIT_STATUS
    from pythia_forensics.sweep.replay import replay

    results = tmp_path / "killed"
    models = [str(suite / "mini-a")]
    probes = [str(p) for p in probe_files]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "transformers.models.gpt_neox.modeling_gpt_neox",
                                "pandas", "pyarrow.parquet", "pythia_forensics.sweep.replay", "pythia_forensics.scoring.score",
                                "pythia_forensics.checkpoints.sources", "pythia_forensics.scoring.probes"])
    store = ResultsStore(results)
    units = len(STEPS) * len(probes)
    plan = [("store-write-mid:1", 0), ("store-write:1", 0)]  # the models table
    plan += [(f"store-write{mid}:2", k + (not mid)) for k in range(units) for mid in ("-mid", "")]
    plan += [("store-write-mid:1", units), ("store-write:1", units)]  # the summary table
    for fault, files_after in plan:
        proc = ctx.Process(target=_replay_with_fault, args=(fault, models, probes, str(results)))
        proc.start()
        proc.join(timeout=300)
        assert proc.exitcode == FAULT_EXIT_STATUS, (fault, proc.exitcode)
        assert len(store.keys()) == files_after, fault  # deterministic progress, one unit per kill pair
        temps = list(results.rglob(".tmp-*"))
        assert len(temps) == (1 if "mid" in fault else 0), fault  # mid-write leaves half a temp file
    assert (results / "summary.parquet").exists()
    final = replay(models, probes, results=results, progress=False)
    assert final.units_scored == 0
    assert not list(results.rglob(".tmp-*"))
    assert store.verify().ok
    reference = ResultsStore(reference_run[0]).items()
    expected = _stable(reference[reference.model == "mini-a"])
    got = _stable(store.items())
    assert (got["work_key"] == expected["work_key"]).all()  # same keys: same inputs, same code
    _fp32_close(got, expected)
    ref_summary = ResultsStore(reference_run[0]).summary()
    ref_summary = ref_summary[ref_summary.model == "mini-a"].reset_index(drop=True)
    _summary_close(store.summary(), ref_summary, reference)


def _damage_store(results: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Apply every kind of damage to a copy of a finished store; returns the slots hit per kind."""
    store = ResultsStore(results)
    rows = store.items()

    def path_of(model, step, probeset):
        key = rows[(rows.model == model) & (rows.step == step) & (rows.probeset == probeset)]["work_key"].iloc[0]
        return results / "items" / model / f"{key}.parquet"

    def edit(p, keep_metadata):
        table = pq.read_table(p)
        if keep_metadata:
            j = table.schema.get_field_index("logp_foil")
            lf = table["logp_foil"].to_numpy().copy()
            lf[0] -= 1.0
            pq.write_table(table.set_column(j, "logp_foil", pa.array(lf)), p)
        else:
            frame = table.to_pandas()
            frame.loc[0, "margin"] += 1.0
            frame.to_parquet(p)

    import pyarrow as pa
    import pyarrow.parquet as pq

    damages = {
        "truncate": (("mini-a", 0, "pron"), lambda p: p.write_bytes(p.read_bytes()[:500])),
        "zero-byte": (("mini-a", 1, "art"), lambda p: p.write_bytes(b"")),
        "garbage": (("mini-b", 2, "pron"), lambda p: p.write_bytes(os.urandom(2000))),
        "rows-dropped": (("mini-b", 4, "art"), lambda p: pq.write_table(pq.read_table(p).slice(0, 2), p)),
        "edited": (("mini-c", 8, "pron"), lambda p: edit(p, True)),
        "edited-pandas": (("mini-c", 16, "art"), lambda p: edit(p, False)),
        "deleted": (("mini-b", 64, "pron"), lambda p: p.unlink()),
        "duplicate": (("mini-a", 32, "pron"), lambda p: (p.parent / "copy.parquet").write_bytes(p.read_bytes())),
    }
    for slot, hurt in damages.values():
        hurt(path_of(*slot))
    for table in ("models.parquet", "summary.parquet"):
        path = results / table
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return {kind: slot for kind, (slot, _) in damages.items()}


@pytest.mark.parametrize("mode", ["replay", "repair-then-replay"])
@pytest.mark.slow
def test_corrupted_store_is_detected_and_a_replay_restores_it(mode, suite, probe_files, reference_run, tmp_path,
                                                              run_cli):
    """Truncated, zero-byte, garbage, short, edited (twice), duplicated and deleted item files and
    truncated models/summary tables: analyze uses none of the damaged rows and names the gaps;
    a replay (or verify --repair, then a replay) ends with the uninterrupted run's store."""
    import shutil

    from pythia_forensics.sweep.replay import replay

    results = tmp_path / "hurt"
    shutil.copytree(reference_run[0], results)
    slots = _damage_store(results)
    lost = {(m, f"step{s}", p) for kind, (m, s, p) in slots.items() if kind != "duplicate"}
    store = ResultsStore(results)
    if mode == "repair-then-replay":
        code, out, _ = run_cli(["verify", str(results), "--repair"])
        assert code == 1  # the lost slots stay missing until a replay
        assert {ln for ln in out.splitlines() if ln.startswith("missing:")} == {
            f"missing: {m} {r} (step {r[4:]}) for probe set {p}: a replay recomputes it" for m, r, p in lost}
        pd.testing.assert_frame_equal(store.models(), ResultsStore(reference_run[0]).models())
    else:
        code, out, _ = run_cli(["verify", str(results)])
        assert code == 1 and sum(ln.startswith("duplicate:") for ln in out.splitlines()) == 1
    code, out, err = run_cli(["analyze", "--results", str(results)])
    assert code in (0, None), err
    assert {ln for ln in out.splitlines() if ln.startswith("missing:")} == {
        f"missing: {m} {r} (step {r[4:]}) for probe set {p}; `replay` recomputes it" for m, r, p in lost}
    used = store.items()
    assert len(used) == len(ResultsStore(reference_run[0]).items()) - sum(
        len(PRONOUN) if p == "pron" else len(ARTICLE) for _, _, p in lost)
    assert not {(r.model, r.revision, r.probeset) for r in used.itertuples()} & lost
    assert not used.duplicated(["model", "revision", "probeset", "item_id"]).any()

    summary = replay([str(suite / m) for m in MODELS], [str(p) for p in probe_files], results=results,
                     progress=False)
    assert summary.units_scored == len(lost)
    assert ResultsStore(results).verify(repair=True).ok
    expected = ResultsStore(reference_run[0])
    _fp32_close(_stable(ResultsStore(results).items()), _stable(expected.items()))
    pd.testing.assert_frame_equal(ResultsStore(results).models(), expected.models())
    _summary_close(ResultsStore(results).summary(), expected.summary(), expected.items())


@pytest.mark.slow
def test_submitit_two_task_array_on_local_executor(suite, probe_files, tmp_path):
    from pythia_forensics.sweep.replay import replay

    summary = replay([str(suite / "mini-c")], str(probe_files[0]), results=tmp_path / "arr", steps="0:4",
                     executor="submitit-local", chunk=2, progress=False)
    assert summary.jobs == 2  # one array of two tasks: steps (0, 1) and (2, 4)
    assert summary.revisions_scored == 4 and summary.units_scored == 4
    assert len(list((tmp_path / "arr" / ".submitit").rglob("*_result.pkl"))) == 2
    rows = ResultsStore(tmp_path / "arr").items()
    assert len(rows) == 4 * len(PRONOUN) and not rows.duplicated(["revision", "item_id"]).any()
    assert sorted(set(rows["step"])) == [0, 1, 2, 4]
    # the array tasks wrote exactly what an in-process replay computes
    ref = replay([str(suite / "mini-c")], str(probe_files[0]), results=tmp_path / "ref", steps="0:4",
                 progress=False)
    assert ref.revisions_scored == 4
    want = ResultsStore(tmp_path / "ref").items()
    key = ["revision", "item_id"]
    rows, want = rows.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    assert (rows[key] == want[key]).all().all()
    # Two processes, two runs of the tool: equal to fp32 resolution at the log-probs' magnitude
    # (bit-identical here when both pin the same threads; the bound is what any platform keeps)
    for col in ("logp_target", "logp_foil"):
        assert_fp32_close(rows[col], want[col], what=col)
    assert_fp32_close(rows["margin"], want["margin"], scale=np.maximum(want["logp_target"].abs(),
                                                                      want["logp_foil"].abs()), what="margin")


@pytest.mark.parametrize("option, value", [("dtype", "float8"), ("device", "tpu"), ("vocab_rows", "some"),
                                           ("batch_size", 0), ("threads", -1)])
def test_a_bad_scoring_option_is_refused_before_any_work(suite, probe_files, tmp_path, option, value):
    """Refused with the option named, before a model is resolved or a results folder made."""
    from pythia_forensics.errors import PFError
    from pythia_forensics.sweep.replay import replay

    results = tmp_path / "never"
    with pytest.raises(PFError) as err:
        replay(str(tmp_path / "no-such-model"), probe_files[0], results=results, progress=False, **{option: value})
    assert err.value.param == option
    assert not results.exists()


def test_work_unit_is_idempotent(suite, probe_files, tmp_path):
    """An array task run twice (a requeued Slurm task) scores once and stores no duplicates."""
    from pythia_forensics.scoring.probes import load_probes
    from pythia_forensics.sweep.replay import run_unit

    unit = {"model": str(suite / "mini-b"), "suite_dir": None, "revisions": ["step2", "step64"],
            "probes": (load_probes(probe_files[1]),), "results": str(tmp_path / "u"),
            "options": ReplayOptions(progress=False)}
    assert run_unit(unit).revisions_scored == 2
    assert run_unit(unit).revisions_scored == 0
    rows = ResultsStore(tmp_path / "u").items()
    assert sorted(set(rows["revision"])) == ["step2", "step64"] and len(rows) == 2 * len(ARTICLE)


def test_plan_is_built_once_per_model_and_probe_set(suite, probe_files, tmp_path, monkeypatch, reference_run):
    """Tokenization and the forward plan are prepared once per model for the probe sets scored
    together (one pass per revision, `score_sets`) and reused by every revision; each set is
    still its own stored unit; the numbers equal the reference replay's; threads recorded."""
    from pythia_forensics.scoring import score as scoring
    from pythia_forensics.sweep.replay import replay

    calls: list[tuple[str, int]] = []
    real = scoring.prepare

    def counting(model, probes, **kw):
        calls.append((probes.name, id(kw["tokenizer"])))
        return real(model, probes, **kw)

    monkeypatch.setattr(scoring, "prepare", counting)
    monkeypatch.setenv("PF_THREADS", "1")
    results = tmp_path / "once"
    summary = replay([str(suite / m) for m in ("mini-a", "mini-b")], [str(p) for p in probe_files],
                     results=results, steps="0:16", progress=False)
    assert summary.revisions_scored == 2 * 6 and summary.units_scored == 2 * 6 * 2
    assert [name for name, _ in calls] == ["pron+art", "pron+art"]  # 2 models, both sets in one plan
    assert len(set(calls)) == 2  # each model's own tokenizer
    assert len(summary.units) == 2 * 6 * 2 and {u.probeset for u in summary.units} == {"pron", "art"}
    rows = ResultsStore(results).items()
    assert set(rows["threads"]) == {1}
    assert rows["omp_wait_policy"].notna().all() and (rows["omp_wait_policy"] != "").all()
    ref = ResultsStore(reference_run[0]).items()
    keys = ["model", "revision", "probeset", "item_id"]
    merged = rows.merge(ref, on=keys, suffixes=("", "_ref"))
    assert len(merged) == len(rows)
    # the reference ran with another thread count: equal to fp32 rounding at the log-probs' size
    # (a margin is a difference of two log-probs and carries their rounding)
    logps = merged[["logp_target", "logp_foil"]].abs().max(axis=1).to_numpy()
    for col in NUMERIC:
        assert_fp32_close(merged[col].to_numpy(), merged[f"{col}_ref"].to_numpy(), scale=logps, what=col)


def test_rank_slices_are_disjoint_and_cover_the_work(suite, probe_files, tmp_path, monkeypatch):
    """What `accelerate launch` does: each rank (RANK/WORLD_SIZE) takes a disjoint slice."""
    from pythia_forensics.sweep.replay import replay

    results = tmp_path / "ranks"
    scored = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        scored.append(replay([str(suite / "mini-a")], str(probe_files[0]), results=results, steps="0:8",
                             progress=False).revisions_scored)
    assert scored == [3, 2]  # rank 0 takes revisions 0, 2, 4 of 5; rank 1 the rest
    rows = ResultsStore(results).items()
    assert sorted(set(rows["step"])) == [0, 1, 2, 4, 8]


def test_health_skip_and_flag(suite, probe_files, tmp_path):
    from pythia_forensics.sweep.replay import replay

    store = ResultsStore(tmp_path / "h")
    store.write_health(pd.DataFrame({"model": ["mini-a", "mini-a"], "revision": ["step2", "step4"],
                                     "status": ["bad", "flagged"], "reasons": ["truncated weights", "equals main"]}))
    run = lambda mode: replay([str(suite / "mini-a")], str(probe_files[0]), results=tmp_path / "h",  # noqa: E731
                              steps="0:4", health=mode, progress=False)
    skipped = run("skip")
    assert skipped.revisions_scored == 3 and skipped.revisions_skipped_health == 1
    assert skipped.revisions_flagged == ("mini-a@step4 (flagged)",)
    assert sorted(set(store.items()["step"])) == [0, 1, 4]
    flagged = run("flag")
    assert flagged.revisions_scored == 1 and flagged.revisions_skipped_health == 0
    assert set(flagged.revisions_flagged) == {"mini-a@step2 (bad)", "mini-a@step4 (flagged)"}
    assert "flagged by health" in flagged.render()
    assert sorted(set(store.items()["step"])) == [0, 1, 2, 4]


def test_parse_size_and_params():
    from pythia_forensics.errors import DiskBudgetError, PFError
    from pythia_forensics.sweep.replay import parse_params, parse_size

    assert parse_size("50GB") == 50 * 10**9
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("800 MiB") == 800 * 2**20
    assert parse_size("123456") == 123456 and parse_size(None) is None
    for bad in ("lots", "5 XB", "-3GB", "GB"):
        with pytest.raises(DiskBudgetError, match="malformed disk budget"):
            parse_size(bad)
    assert parse_params(["slurm_partition=gpu", "gpus_per_node=1"]) == {"slurm_partition": "gpu", "gpus_per_node": 1}
    with pytest.raises(PFError, match="KEY=VALUE") as exc:
        parse_params(["oops"])
    assert exc.value.param == "slurm" and "--" not in str(exc.value)  # the library names no flag


@pytest.mark.parametrize("kwargs, param", [({"chunk": 0}, "chunk"), ({"executor": "cloud"}, "executor"),
                                           ({"health": "maybe"}, "health"), ({"disk_budget": "0GB"}, "disk_budget")])
def test_library_errors_name_the_argument_not_a_flag(kwargs, param, tmp_path):
    from pythia_forensics.errors import PFError
    from pythia_forensics.sweep.replay import replay

    with pytest.raises(PFError) as exc:
        replay("nowhere", "all", results=tmp_path / "r", progress=False, **kwargs)
    assert exc.value.param == param and "--" not in str(exc.value), str(exc.value)


# --- bad input: one line, exit status 2 -----------------------------------------------------------
@pytest.mark.parametrize("extra, expect", [
    (["pythia-160mm"], "unknown model 'pythia-160mm'"),
    (["{suite}/mini-a", "--steps", "1:x"], "error: --steps: mini-a ({suite}/mini-a): malformed step selection '1:x'"),
    (["{suite}/mini-a", "--steps", "3"], "error: --steps: mini-a ({suite}/mini-a): step selection '3': not on the checkpoint grid"),
    (["{suite}/mini-a", "--disk-budget", "lots"], "error: --disk-budget: malformed disk budget 'lots'"),
    (["{suite}/mini-a", "--chunk", "0"], "error: --chunk: chunk size must be at least 1"),
    (["{suite}/mini-a", "--slurm", "oops"], "error: --slurm: malformed executor parameter 'oops'"),
    (["{suite}/mini-a", "--executor", "cloud"], "error: --executor: unknown executor 'cloud'"),
    (["{suite}/mini-a", "--health", "maybe"], "error: --health: unknown health mode 'maybe'"),
])
def test_cli_bad_input_is_one_line_exit_2(extra, expect, suite, probe_files, tmp_path, capsys):
    from pythia_forensics.cli import main

    args = ["replay", *[a.format(suite=suite) for a in extra], "--probes", str(probe_files[0]),
            "--results", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect.format(suite=suite) in err, err


# --- the loopback hub: disk budget, prefetch, eviction --------------------------------------
HUB_REPOS = {f"EleutherAI/pythia-tiny-{m[-1]}": m for m in MODELS}   # hub id -> local model
HUB_REPO = "EleutherAI/pythia-tiny-a"
CDN_DELAY_S = 0.25  # per LFS object: makes downloads slow enough to overlap with scoring


@pytest.fixture()
def slow_hub(suite, monkeypatch):
    """The loopback hub serving the suite's 3 models x 10 revisions (+ main), with a slow CDN."""
    import hubserver
    from hub_fixtures import publish_to_hub

    real = hubserver._Handler._serve_cdn

    def slow(self, method, sha256):
        if method == "GET":
            time.sleep(CDN_DELAY_S)
        return real(self, method, sha256)

    monkeypatch.setattr(hubserver._Handler, "_serve_cdn", slow)
    with hubserver.HubServer() as hub:
        for repo, model in HUB_REPOS.items():
            publish_to_hub(hub, suite / model, repo=repo)
        yield hub


@pytest.mark.slow
def test_hub_sweep_respects_disk_budget_and_prefetch_overlaps(slow_hub, suite, probe_files, reference_run,
                                                              tmp_path, capsys):
    from pythia_forensics.sweep.replay import replay

    checkpoint = sum(p.stat().st_size for p in (suite / "mini-a" / "step0").iterdir() if p.is_file())
    budget = int(2.5 * checkpoint)  # room for the revision being scored plus the next one
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    hub = {"endpoint": slow_hub.endpoint, "token": False}
    with DiskPoller(cache) as disk:
        summary = replay(list(HUB_REPOS), [str(p) for p in probe_files], results=tmp_path / "res", cache_dir=cache,
                         disk_budget=budget, hub_options=hub, progress=False)
    print(f"\nhub sweep: checkpoint {checkpoint} B, budget {budget} B, 30 revisions = {30 * checkpoint} B; "
          f"peak on disk {disk.peak} B; {summary.render()}")
    assert summary.revisions_scored == 30 and summary.units_scored == 60
    assert 30 * checkpoint > budget
    assert disk.peak <= budget + checkpoint, (disk.peak, budget)
    assert summary.peak_held_bytes <= budget
    assert summary.downloaded_bytes >= 30 * checkpoint * 0.9
    assert summary.evicted_bytes >= 30 * checkpoint * 0.9
    assert disk.peak > checkpoint  # a revision was downloading while another was held
    # the weights of every revision were downloaded exactly once
    # (range requests are the safetensors-header reads that size each model from its checkpoint)
    whole = [r for r in slow_hub.requests(kind="cdn", method="GET") if r.file and r.file.endswith(".safetensors")
             and not r.range]
    assert sum(r.bytes_sent for r in whole) == sum(
        (suite / m / f"step{s}" / "model.safetensors").stat().st_size for m in MODELS for s in STEPS)
    # How much fetching overlapped scoring is a timing, reported in the summary (and measured by
    # `make bench`), never asserted: on a loaded machine any ratio of it can fail. What prefetch
    # guarantees structurally is asserted above: a second revision on disk while one is held.
    # same numbers as the local replay of the same checkpoints
    hub_rows = ResultsStore(tmp_path / "res").items()
    local = ResultsStore(reference_run[0]).items()
    hub_rows["local_model"] = hub_rows["repo"].map(HUB_REPOS)
    merged = hub_rows.merge(local, left_on=["local_model", "revision", "probeset", "item_id"],
                            right_on=["model", "revision", "probeset", "item_id"], suffixes=("", "_local"))
    assert len(merged) == len(local) == len(hub_rows)
    np.testing.assert_allclose(merged["margin"], merged["margin_local"], atol=1e-5, rtol=0)
    assert merged["commit"].str.len().eq(40).all()
    assert (merged["weights_sha256"] == merged["weights_sha256_local"]).all()

    # rerun: nothing to fetch; a re-uploaded branch (same name, new commit) is re-scored alone
    again = replay(list(HUB_REPOS), [str(p) for p in probe_files], results=tmp_path / "res", cache_dir=cache,
                   disk_budget=budget, hub_options=hub, progress=False)
    assert again.revisions_scored == 0 and again.downloaded_bytes == 0
    slow_hub.add_branch(HUB_REPO, "step8", suite / "mini-b" / "step8", title="re-upload")
    third = replay(list(HUB_REPOS), [str(p) for p in probe_files], results=tmp_path / "res", cache_dir=cache,
                   disk_budget=budget, hub_options=hub, progress=False)
    assert third.revisions_scored == 1 and third.units_scored == 2
    rows = ResultsStore(tmp_path / "res").items()
    assert len(rows) == len(hub_rows)
    rows = rows[rows.repo == HUB_REPO]
    step8 = rows[rows.revision == "step8"].merge(
        ResultsStore(reference_run[0]).items().query("model == 'mini-b' and revision == 'step8'"),
        on=["probeset", "item_id"], suffixes=("", "_b"))
    np.testing.assert_allclose(step8["margin"], step8["margin_b"], atol=1e-5, rtol=0)


def test_budget_smaller_than_one_checkpoint_and_unreachable_hub_exit_2(slow_hub, suite, probe_files, tmp_path,
                                                                       capsys, monkeypatch):
    from pythia_forensics.checkpoints import sources
    from pythia_forensics.cli import main

    # The CLI reaches the hub through HF_ENDPOINT, read when huggingface_hub is imported (long
    # before this test); hand the loopback endpoint (and no retries) to every hub source instead.
    endpoint = {"url": slow_hub.endpoint}
    real_open = sources.open_source
    monkeypatch.setattr(sources, "open_source", lambda spec, **o: real_open(
        spec, **{**o, "token": False, "max_retries": 0, "endpoint": endpoint["url"]}))
    base = [HUB_REPO, "--probes", str(probe_files[0]), "--results", str(tmp_path / "r"),
            "--cache-dir", str(tmp_path / "c")]
    cases = [(["--steps", "0:4", "--disk-budget", "1MB"], None),
             (["--disk-budget", "10kB"], "smaller than one checkpoint")]
    for extra, expect in cases:
        with pytest.raises(SystemExit) as exc:
            main(["replay", *base, *extra])
        err = capsys.readouterr().err.strip()
        if expect is None:
            assert exc.value.code == 0, err
            continue
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert slow_hub.bytes_sent(file="*.safetensors") > 0
    endpoint["url"] = "http://127.0.0.1:9"
    with pytest.raises(SystemExit) as exc:
        main(["replay", *base])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "cannot reach the hub" in err, err
