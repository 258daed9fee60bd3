"""Checkpoint forensics: census and deep checks find every planted fault, and nothing else.

Pure checks run on synthetic listings/series; the wiring runs on local and loopback-hub
suites of tiny GPT-NeoX checkpoints whose weights move smoothly from a seed's init
(theta_t = theta_0 + g(t) * delta), with faults planted by copying, deleting and
truncating files.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest

from pythia_forensics.checkpoints.health import (
    ListedFile,
    RevisionFiles,
    build_rows,
    census_findings,
    cluster_blobs,
    trend_breaks,
)


# --- pure: census on synthetic listings ----------------------------------------------------
def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _listing(rev: str, blob: str | None = None, *, files=None, size: int = 1000) -> RevisionFiles:
    step = int(rev[4:]) if rev.startswith("step") else None
    if files is None:
        files = (ListedFile("model.safetensors", size, _sha(blob or rev)),)
    return RevisionFiles(rev, step, tuple(files))


GRID = ["step0", "step1", "step2", "step4", "step8", "step16", "step100", "step200", "step300"]


def _clean():
    return [_listing(r) for r in GRID] + [_listing("main", "step300")]


def _codes(findings):
    return sorted((f.revision, f.code, f.status) for f in findings)


def test_census_clean_suite_reports_nothing():
    findings, clusters = census_findings(_clean(), expected=GRID, final_revision="step300")
    assert findings == [] and clusters == []


def test_census_finds_each_planted_fault():
    listings = {x.revision: x for x in _clean()}
    listings["step100"] = _listing("step100", "step300")          # final model under a mid name
    listings["step1"] = _listing("step1", "step0")                # known upstream fault
    del listings["step8"]                                         # missing branch
    listings["step16"] = _listing("step16", files=())             # no weight file
    listings["step4"] = _listing("step4", size=600)               # truncated upload (size)
    findings, clusters = census_findings(list(listings.values()), expected=GRID, final_revision="step300")
    assert _codes(findings) == [
        ("step1", "duplicate", "flagged"),
        ("step100", "duplicate", "bad"),
        ("step16", "no_weights", "bad"),
        ("step4", "size", "bad"),
        ("step8", "missing", "bad"),
    ]
    known = {f.revision: f.known for f in findings}
    assert known["step1"] is True and known["step100"] is False
    assert "main" in next(f.detail for f in findings if f.revision == "step100")
    assert clusters == [("step0", "step1"), ("step100", "step300", "main")]


def test_census_partial_shard_sharing_and_incomplete_shards():
    def shards(rev, first=None, n=2, drop=()):
        return _listing(rev, files=tuple(
            ListedFile(f"pytorch_model-{i:05d}-of-{n:05d}.bin", 500, _sha(first if (i == 1 and first) else f"{rev}/{i}"))
            for i in range(1, n + 1) if i not in drop))
    listings = [shards(r) for r in GRID] + [shards("main")]
    listings[GRID.index("step200")] = shards("step200", first="step300/1")   # 12b: final's first shard
    listings[GRID.index("step2")] = shards("step2", drop=(2,))
    # main's shards = step300's
    listings[-1] = _listing("main", files=listings[GRID.index("step300")].files)
    findings, _ = census_findings(listings, expected=GRID, final_revision="step300")
    assert _codes(findings) == [("step2", "incomplete", "bad"), ("step200", "shared_blob", "bad")]
    assert "pytorch_model-00002-of-00002.bin" in findings[0].detail
    assert "pytorch_model-00001-of-00002.bin" in findings[1].detail


def test_census_cluster_without_final_blames_later_members():
    listings = _clean()
    listings[GRID.index("step200")] = _listing("step200", "step100")   # stale: step200 is step100
    findings, clusters = census_findings(listings, expected=GRID, final_revision="step300")
    assert _codes(findings) == [("step100", "duplicate", "flagged"), ("step200", "duplicate", "bad")]
    assert clusters == [("step100", "step200")]


def test_census_final_differs_from_main():
    listings = _clean()
    listings[-1] = _listing("main", "something else")
    findings, _ = census_findings(listings, expected=GRID, final_revision="step300")
    assert _codes(findings) == [("main", "final_mismatch", "flagged"), ("step300", "final_mismatch", "flagged")]


def test_cluster_blobs_is_transitive_and_ordered():
    a = _listing("step2", files=(ListedFile("a.safetensors", 1, "x"), ListedFile("b.safetensors", 1, "y")))
    b = _listing("step1", files=(ListedFile("a.safetensors", 1, "x"),))
    c = _listing("step4", files=(ListedFile("b.safetensors", 1, "y"),))
    d = _listing("step8", files=(ListedFile("a.safetensors", 1, "z"),))
    assert cluster_blobs([a, b, c, d]) == [("step1", "step2", "step4")]


def test_rows_take_worst_status_and_keep_ok_revisions():
    listings = _clean()
    listings[GRID.index("step100")] = _listing("step100", "step300")
    findings, _ = census_findings(listings, expected=GRID, final_revision="step300")
    rows = build_rows("m", [(x.revision, x.step) for x in listings], findings)
    status = {r.revision: r.status for r in rows}
    assert status["step100"] == "bad" and status["step300"] == "ok" and status["main"] == "ok"
    assert [r.revision for r in rows][-1] == "main" and len(rows) == len(listings)


# --- pure: trend breaks ------------------------------------------------------------------
def test_trend_breaks_find_a_swapped_point_and_nothing_on_smooth_series():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 20001, 1000)), float)
    rise = np.sqrt(steps)                                   # distance from init: grows, slows
    bump = np.exp(-((np.log1p(steps) - 6) ** 2))            # a smooth rise and fall (embedding norm)
    assert trend_breaks(rise) == [] and trend_breaks(bump) == [] and trend_breaks(-rise) == []
    assert trend_breaks(np.ones(10)) == []
    swapped = rise.copy()
    swapped[15] = rise[-1]                                  # a checkpoint swapped with the final one
    assert trend_breaks(swapped) == [15]
    dip = bump.copy()
    dip[20] -= 0.5
    assert trend_breaks(dip) == [20]


# --- local suites of tiny GPT-NeoX checkpoints ---------------------------------------------
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 10001, 1000))
FINAL = STEPS[-1]


@functools.lru_cache(maxsize=None)
def _tiny_states(seed: int):
    """(theta_0, delta) for a seed: a tiny GPT-NeoX init and a training direction (built once
    per seed: `write_model` reads them, never writes into them)."""
    import torch
    from tinymodels import tiny_neox

    model = tiny_neox(64, hidden=32, layers=2, seed=seed)
    theta0 = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1000 + seed)
    delta = {k: torch.randn(v.shape, generator=gen) * 0.05 if v.is_floating_point() else torch.zeros_like(v)
             for k, v in theta0.items()}
    return model.config, theta0, delta


def _at(theta0, delta, step):
    g = (step / FINAL) ** 0.5  # a distance from init that grows and slows, like training
    return {k: (theta0[k] + g * delta[k]).contiguous() for k in theta0}


def write_model(root, name, seed, *, init_from=None, steps=STEPS, manifest_steps=None):
    """DIR/<name>/step<N>/ (config + model.safetensors) and manifest.json; returns the folder.

    `init_from`: another seed whose init the trained revisions (step >= 1) descend from,
    while step0 keeps this seed's own init (PolyPythia weight-seed fault, #203).
    """
    import json

    from safetensors.torch import save_file

    config, theta0, delta = _tiny_states(seed)
    base = _tiny_states(init_from)[1] if init_from is not None else theta0
    model_dir = root / name
    for step in steps:
        folder = model_dir / f"step{step}"
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        state = theta0 if step == 0 else _at(base, delta, step)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "manifest.json").write_text(json.dumps({
        "model": name, "seed": seed, "steps": list(manifest_steps or steps), "layers": 2, "d_model": 32}))
    return model_dir


def _findings(report):
    return sorted((f.revision, f.code, f.status) for f in report.findings)


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """A clean suite (two seeds) and a faulty one with every planted fault."""
    import shutil

    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("suites")
    clean = root / "clean"
    a = write_model(clean, "tiny-a", 1)
    b = write_model(clean, "tiny-b", 2)
    # A branch carrying both formats that AGREE must raise nothing.
    torch.save(load_file(str(a / "step4000" / "model.safetensors")), a / "step4000" / "pytorch_model.bin")

    faulty = root / "faulty"
    f = write_model(faulty, "tiny-f", 1, steps=[s for s in STEPS if s != 64], manifest_steps=STEPS)
    shutil.copy(f / f"step{FINAL}" / "model.safetensors", f / "step2000" / "model.safetensors")  # final under a mid name
    shutil.copy(f / "step0" / "model.safetensors", f / "step1" / "model.safetensors")            # step0 == step1
    (f / "step16" / "model.safetensors").unlink()                                                # missing weight file
    data = (f / "step512" / "model.safetensors").read_bytes()
    (f / "step512" / "model.safetensors").write_bytes(data[: len(data) // 2])                    # truncated upload
    state = load_file(str(f / "step6000" / "model.safetensors"))
    state["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"][0, 0] += 0.5
    torch.save(state, f / "step6000" / "pytorch_model.bin")                                       # .bin disagrees
    g = write_model(faulty, "tiny-g", 2, init_from=3)                                            # wrong lineage
    write_model(faulty, "tiny-h", 3)
    return {"clean": (a, b), "faulty": (f, g, faulty / "tiny-h")}


def test_local_clean_suite_no_false_alarms(suites):
    from pythia_forensics.checkpoints.health import check_health

    a, b = suites["clean"]
    census = check_health(a, progress=False)
    assert census.findings == () and not census.failed
    assert {r.status for r in census.rows} == {"ok"} and len(census.rows) == len(STEPS)
    deep = check_health(a, deep=True, peers=[b], progress=False)
    assert deep.findings == (), [f.reason for f in deep.findings]
    assert len(deep.stats) == len(STEPS)
    # the series are independent measurements: check two against a direct computation
    import torch
    from safetensors.torch import load_file

    s0 = load_file(str(a / "step0" / "model.safetensors"))
    s3 = load_file(str(a / "step3000" / "model.safetensors"))
    direct = torch.sqrt(sum(((s3[k].double() - s0[k].double()) ** 2).sum() for k in s0)).item()
    stat = next(s for s in deep.stats if s.revision == "step3000")
    assert stat.dist_from_step0 == pytest.approx(direct, rel=1e-5)
    assert stat.embedding_norm == pytest.approx(s3["gpt_neox.embed_in.weight"].double().norm().item(), rel=1e-5)


def test_local_faulty_suite_reports_every_fault(suites):
    from pythia_forensics.checkpoints.health import check_health

    f, g, h = suites["faulty"]
    census = check_health(f, progress=False)
    assert _findings(census) == [
        ("step1", "duplicate", "flagged"),
        ("step16", "no_weights", "bad"),
        ("step2000", "duplicate", "bad"),
        ("step512", "truncated", "bad"),
        ("step64", "missing", "bad"),
    ]
    assert census.failed and census.status_of("step1") == "flagged"
    assert next(x for x in census.findings if x.revision == "step1").known

    deep = check_health(f, deep=True, progress=False)
    got = _findings(deep)
    assert ("step6000", "format_mismatch", "bad") in got
    assert ("step2000", "trend_break", "flagged") in got
    assert {r for r, *_ in got} == {"step1", "step16", "step2000", "step512", "step64", "step6000"}, got
    spike = next(x for x in deep.findings if x.code == "trend_break")
    assert "toward the final model" in spike.detail
    mismatch = next(x for x in deep.findings if x.code == "format_mismatch")
    assert "dense_h_to_4h" in mismatch.detail and "0.5" in mismatch.detail

    lineage = check_health(g, deep=True, peers=[h], progress=False)
    assert _findings(lineage) == [("step1", "lineage", "bad")]
    assert "tiny-h" in lineage.findings[0].detail


def test_health_table_matches_store_contract(suites, tmp_path):
    from pythia_forensics.checkpoints.health import check_health
    from pythia_forensics.sweep.store import ResultsStore

    f, _, _ = suites["faulty"]
    report = check_health(f, steps="0:1000", progress=False)
    store = ResultsStore(tmp_path)
    store.write_health(report.to_frame())
    table = store.health()
    assert {"model", "revision", "step", "status", "reasons"} <= set(table.columns)
    bad = dict(zip(table["revision"], table["status"]))
    assert bad["step16"] == "bad" and bad["step8"] == "ok" and "step2000" not in bad
    assert "no_weights" in table.set_index("revision").loc["step16", "reasons"]


# --- loopback hub ----------------------------------------------------------------------------
@pytest.fixture()
def hub():
    from hubserver import HubServer

    with HubServer() as server:
        yield server


def _hub_source(hub, spec, tmp_path):
    from pythia_forensics.checkpoints.sources import HubSource

    return HubSource(spec, cache_dir=tmp_path / "hf-cache", endpoint=hub.endpoint, token=False,
                     backoff_base_s=0.01)


@pytest.mark.slow
def test_hub_census_of_154_revisions_downloads_no_weight_bytes(hub, tmp_path):
    """Pythia-14m's full grid with fake weights; planted faults found from LFS metadata alone."""
    from pythia_forensics.checkpoints.health import check_health
    from pythia_forensics.checkpoints.registry import resolve_model

    spec = resolve_model("pythia-14m")
    assert len(spec.revisions) == 154

    def weights(tag: str) -> bytes:
        return f"fake-weights-{tag:>12}".encode() * 64   # same size for every revision

    content = {rev: weights(rev) for rev in spec.revisions}
    content["step1"] = content["step0"]                   # known upstream fault
    content["step50000"] = content["step143000"]         # the final model under a mid-training name
    content["step100000"] = content["step100000"][:-100]   # truncated upload
    for rev, data in content.items():
        if rev == "step71000":
            continue                                      # missing branch
        files = {"config.json": b'{"model_type": "gpt_neox"}'}
        if rev != "step3000":                             # missing weight file
            files["model.safetensors"] = data
        hub.add_branch(spec.repo, rev, files)
    hub.add_branch(spec.repo, "main", {"config.json": b'{"model_type": "gpt_neox"}',
                                       "model.safetensors": content["step143000"]})
    report = check_health(spec, source=_hub_source(hub, spec, tmp_path), progress=False)

    assert _findings(report) == [
        ("step1", "duplicate", "flagged"),
        ("step100000", "size", "bad"),
        ("step3000", "no_weights", "bad"),
        ("step50000", "duplicate", "bad"),
        ("step71000", "missing", "bad"),
    ]
    assert len(report.rows) == 155                        # 154 expected + main
    assert sum(r.status == "ok" for r in report.rows) == 150
    # the census never touched a weight file: no CDN request at all, and the one resolve is
    # the config.json every revision shares (read once for the architecture check)
    assert hub.requests(kind="cdn") == []
    assert {r.file for r in hub.requests(kind="resolve")} == {"config.json"}
    assert hub.bytes_sent(file="*.safetensors") == 0
    assert len(hub.requests(kind="tree")) >= 154


@pytest.mark.slow
def test_hub_deep_checks_within_disk_budget(hub, tmp_path):
    """Deep mode over the hub: .bin/safetensors disagreement, stale final copy, lineage."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from pythia_forensics.checkpoints.health import check_health
    from pythia_forensics.checkpoints.registry import resolve_model

    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000, 4000, 5000]
    local = write_model(tmp_path / "src", "tiny-hub", 1, steps=steps)
    state = load_file(str(local / "step3000" / "model.safetensors"))
    state["gpt_neox.embed_in.weight"][5] *= 2
    torch.save(state, local / "step3000" / "pytorch_model.bin")
    shutil.copy(local / "step5000" / "model.safetensors", local / "step1000" / "model.safetensors")
    for step in steps:
        hub.add_branch("org/tiny-hub", f"step{step}", local / f"step{step}")
    hub.add_branch("org/tiny-hub", "main", local / "step5000")
    # a clean run (also the peer seed) and a run whose trained revisions descend from it
    peer = write_model(tmp_path / "src", "tiny-peer", 7, steps=steps)
    wrong = write_model(tmp_path / "src", "tiny-wrong", 8, init_from=7, steps=steps[:8])
    for step in steps:
        hub.add_branch("org/tiny-peer", f"step{step}", peer / f"step{step}")
    for step in steps[:8]:
        hub.add_branch("org/tiny-wrong", f"step{step}", wrong / f"step{step}")

    spec = resolve_model("org/tiny-hub")
    one = (local / "step0" / "model.safetensors").stat().st_size
    src = _hub_source(hub, spec, tmp_path)
    from pythia_forensics.errors import DiskBudgetError

    with pytest.raises(DiskBudgetError, match="disk budget must be at least"):
        check_health(spec, source=src, deep=True, disk_budget=one // 2, progress=False)
    report = check_health(spec, source=src, deep=True, disk_budget=3 * one,
                          peers=[_hub_source(hub, resolve_model("org/tiny-peer"), tmp_path)], progress=False)
    got = _findings(report)
    assert ("step3000", "format_mismatch", "bad") in got
    assert ("step1000", "duplicate", "bad") in got
    assert {r for r, *_ in got} == {"step1000", "step3000"}, got
    # within budget: never more than the budget plus one checkpoint held at once, and the
    # cache holds no more than that at the end
    biggest = max(sum(p.stat().st_size for p in (local / f"step{s}").iterdir()) for s in steps)
    assert 0 < report.peak_bytes <= 3 * one + biggest and report.downloaded_bytes > report.peak_bytes
    blobs = sum(p.stat().st_size for p in (tmp_path / "hf-cache").rglob("blobs/*") if p.is_file())
    assert blobs <= 3 * one + biggest
    assert len(report.stats) == len(steps)

    peer_src = _hub_source(hub, resolve_model("org/tiny-peer"), tmp_path)
    clean = check_health(peer_src.spec, source=peer_src, deep=True, progress=False,
                         peers=[_hub_source(hub, resolve_model("org/tiny-hub"), tmp_path)])
    assert clean.findings == (), [f.reason for f in clean.findings]
    wrong_src = _hub_source(hub, resolve_model("org/tiny-wrong"), tmp_path)
    lineage = check_health(wrong_src.spec, source=wrong_src, deep=True, peers=[peer_src], progress=False)
    assert _findings(lineage) == [("step1", "lineage", "bad")]


# --- CLI -------------------------------------------------------------------------------------
def test_cli_exit_status_table_and_files(suites, tmp_path, run_cli):
    import json

    import pandas as pd

    a, _ = suites["clean"]
    f, _, _ = suites["faulty"]
    code, out, _ = run_cli(["health", str(a), "--out", str(tmp_path / "clean.json")])
    assert code == 0 and "0 bad" in out
    assert json.loads((tmp_path / "clean.json").read_text())["failed"] is False

    code, out, _ = run_cli(["health", str(f), "--results", str(tmp_path / "res"), "--out", str(tmp_path / "f.csv")])
    assert code == 1 and "step2000" in out and "duplicate" in out
    table = pd.read_csv(tmp_path / "f.csv")
    assert set(table.loc[table.status == "bad", "revision"]) == {"step16", "step2000", "step512", "step64"}
    stored = pd.read_parquet(tmp_path / "res" / "health.parquet")
    assert len(stored) == len(table) and set(stored["model"]) == {"tiny-f"}


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "5:x"], "steps"),
    (["--out", "report.txt"], ".txt"),
])
def test_cli_user_mistakes_exit_2_with_one_line(suites, tmp_path, run_cli, extra, needle):
    a, _ = suites["clean"]
    code, _, err = run_cli(["health", str(a), *extra])
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_unknown_model_exit_2(run_cli):
    code, _, err = run_cli(["health", "pythia-71m"])
    assert code == 2 and "pythia-70m" in err and err.count("\n") == 1


def test_deep_findings_tensor_equal_neighbours_and_main_mismatch():
    """Re-saved copies (different bytes, same tensors) and a `main` that is not the final step."""
    import torch

    from pythia_forensics.checkpoints.health import DeepInput, deep_findings

    gen = torch.Generator().manual_seed(0)
    theta0 = {"gpt_neox.embed_in.weight": torch.randn(16, 8, generator=gen),
              "gpt_neox.layers.0.attention.bias": torch.ones(4, 4)}       # a buffer: ignored
    delta = {k: torch.randn(v.shape, generator=gen) for k, v in theta0.items()}
    steps = [0, 1, 2, 4, 8, 16, 32]

    def at(step):
        return {k: theta0[k] + (step / 32) ** 0.5 * delta[k] for k in theta0}

    states = {f"step{s}": at(s) for s in steps}
    states["step16"] = {k: v.clone() for k, v in states["step8"].items()}   # stale: step8 re-saved
    states["step2"] = {k: v.clone() for k, v in at(32).items()}               # the final model, re-saved
    states["main"] = at(31)                                                   # main != step32
    inputs = [DeepInput(rev, int(rev[4:]) if rev != "main" else 32, {"safetensors": (lambda s=s: s)})
              for rev, s in states.items()]
    findings, stats = deep_findings(inputs, final_revision="step32")
    got = sorted((f.revision, f.code, f.status) for f in findings)
    assert got == [("main", "final_mismatch", "flagged"), ("step16", "not_distinct", "bad"),
                   ("step2", "not_distinct", "bad"), ("step2", "trend_break", "flagged"),
                   ("step32", "final_mismatch", "flagged")]
    assert "final model" in next(f.detail for f in findings if f.revision == "step2" and f.code == "not_distinct")
    assert [s.revision for s in stats] == [f"step{s}" for s in steps]
    # the same pair reported by the census as byte-identical is not reported twice
    findings, _ = deep_findings(inputs, final_revision="step32", same_blobs=[("step8", "step16"), ("step2", "step32")])
    assert "not_distinct" not in {f.code for f in findings}
