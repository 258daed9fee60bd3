"""Cluster-scale replay: leases, one ledger and budget per cache, concurrent workers, a killed
worker, offline compute nodes, bad checkpoints skipped and recorded, architecture checks.

Everything runs on the loopback hub (tests/hubserver.py). Peak disk use is polled from the
file system in a thread of the test, independently of what the code reports; expected rows
come from an independent single-process run; expected sizes from the models the test built.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hub_fixtures import DiskPoller
from tinymodels import save_checkpoint, tiny_neox

from pythia_forensics.sweep.store import ResultsStore
from paths import REPO

STEPS = (0, 1, 2, 4)
MODELS = ("mini-a", "mini-b", "mini-c")
HUB_REPOS = {f"EleutherAI/pythia-tiny-{m[-1]}": m for m in MODELS}
VOLATILE = ("written_at", "device")
# short enough for a test, long enough that a loaded 2-core machine never starves a heartbeat past it
# Long enough that a heartbeat thread starved on a loaded 2-core machine never lets a live
# worker's lease be broken (3 s did, once, at load 13); short enough to wait out once.
FAST_LEASES = {"PF_LEASE_TIMEOUT_S": "30", "PF_LEASE_HEARTBEAT_S": "0.5"}
ROOT = REPO


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def suite(tmp_path_factory, tiny_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("suite")
    for k, name in enumerate(MODELS):
        for i, step in enumerate(STEPS):
            net = tiny_neox(len(tiny_tokenizer), seed=100 * (k + 1) + i)
            save_checkpoint(root / name / f"step{step}", net, tiny_tokenizer)
        total = sum(p.numel() for p in net.parameters())
        embedding = net.get_input_embeddings().weight.numel() + net.get_output_embeddings().weight.numel()
        (root / name / "manifest.json").write_text(json.dumps({
            "model": name, "params_total": total, "params_nonembedding": total - embedding, "tokens_per_step": 4096,
            "layers": 2, "d_model": 32, "heads": 4, "vocab_size": len(tiny_tokenizer), "seed": k,
            "steps": list(STEPS), "corpus": {}, "train": {}}))
    return root


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    rows = [{"item_id": f"pronoun_gender.{c}.heldout.{k:03d}", "rule": "pronoun_gender", "condition": c,
             "split": "heldout", "prefix": p, "target": t, "foil": f}
            for k, (c, p, t, f) in enumerate([("conflict", "Mia cried because", " she", " he"),
                                               ("agree", "Tom cried because", " he", " she"),
                                               ("conflict", "Lily said that", " she", " he")])]
    path = tmp_path_factory.mktemp("probes") / "pron.yaml"
    path.write_text(yaml.safe_dump({"name": "pron", "items": rows}, sort_keys=False))
    return path


@pytest.fixture()
def hub(suite):
    from hub_fixtures import publish_to_hub
    from hubserver import HubServer

    with HubServer() as server:
        for repo, model in HUB_REPOS.items():
            publish_to_hub(server, suite / model, repo=repo)
        yield server


def _checkpoint_bytes(suite: Path) -> int:
    return max(sum(p.stat().st_size for p in (suite / m / f"step{s}").iterdir() if p.is_file())
               for m in MODELS for s in STEPS)


def _stable(frame: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in frame.columns if c not in VOLATILE]
    return frame[cols].sort_values(["model", "probeset", "revision", "item_id"]).reset_index(drop=True)


def _assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = _stable(a), _stable(b)
    assert len(a) == len(b) and list(a["item_id"]) == list(b["item_id"])
    assert list(a["revision"]) == list(b["revision"]) and list(a["model"]) == list(b["model"])
    # same checkpoint, same items, same code: fp32 on one machine is deterministic, but allow
    # the fp32 resolution of a margin of a few nats
    np.testing.assert_allclose(a["margin"], b["margin"], rtol=0, atol=8 * 2.0**-23 * 8)
    assert (a["weights_sha256"] == b["weights_sha256"]).all()


def _env(hub, **extra) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           **FAST_LEASES, **extra}
    env.pop("HF_HUB_OFFLINE", None)
    return env


def _replay_cmd(probes: Path, results: Path, cache: Path, budget: int, models=tuple(HUB_REPOS)) -> list[str]:
    return [sys.executable, "-m", "pythia_forensics", "replay", *models, "--probes", str(probes),
            "--results", str(results), "--cache-dir", str(cache), "--disk-budget", str(budget), "--device", "cpu",
            "--dtype", "float32"]


def _single_run(probes: Path, tmp_path: Path, hub) -> pd.DataFrame:
    from pythia_forensics.sweep.replay import replay

    results = tmp_path / "single"
    replay(list(HUB_REPOS), [str(probes)], results=results, cache_dir=tmp_path / "single-cache",
           hub_options={"endpoint": hub.endpoint, "token": False}, device="cpu", dtype="float32", progress=False)
    return ResultsStore(results).items()


def _scored(text: str) -> int:
    match = re.search(r"(\d+) scored", text)
    assert match, text
    return int(match.group(1))


# --- leases and the ledger (no subprocess) ---------------------------------------------------
def test_lease_is_exclusive_kept_alive_and_broken_when_stale(tmp_path, monkeypatch):
    from pythia_forensics.checkpoints import lease

    # A timeout far above any scheduling stall: the live lease must never look stale here. The
    # stale case below is made deterministic by dating the file in the past.
    monkeypatch.setenv("PF_LEASE_TIMEOUT_S", "30")
    monkeypatch.setenv("PF_LEASE_HEARTBEAT_S", "0.05")
    first = lease.Lease.create(tmp_path / "x.lease")
    assert first is not None and lease.Lease.create(tmp_path / "x.lease") is None
    # the heartbeat keeps it fresh: never broken while its owner lives
    mtime = os.stat(tmp_path / "x.lease").st_mtime
    deadline = time.time() + 5
    while os.stat(tmp_path / "x.lease").st_mtime == mtime and time.time() < deadline:
        time.sleep(0.05)
    assert os.stat(tmp_path / "x.lease").st_mtime > mtime
    assert lease.Lease.create(tmp_path / "x.lease") is None
    # a dead owner: a file nobody touches, dated in the past
    dead = tmp_path / "y.lease"
    dead.write_text(json.dumps({"worker": "gone-1-abc"}))
    os.utime(dead, (time.time() - 100, time.time() - 100))
    taken = lease.Lease.create(dead)
    assert taken is not None and lease.read_lease(dead)["worker"] == lease.worker_id()
    taken.release()
    first.release()
    assert not dead.exists() and not (tmp_path / "x.lease").exists()


def test_ledger_shares_one_budget_counts_a_shared_revision_once_and_reaps_dead_holds(tmp_path, monkeypatch):
    from pythia_forensics.checkpoints import lease

    monkeypatch.setenv("PF_LEASE_TIMEOUT_S", "30")
    ledger = lease.Ledger(tmp_path / "ledger")
    evicted: list[tuple[str, str]] = []
    kept: list[frozenset] = []
    evict = lambda repo, commit, keep: evicted.append((repo, commit)) or kept.append(keep) or 100  # noqa: E731
    a = ledger.reserve("r", "c1", 100, 250, evict, blobs=["cfg1", "tok"])
    b = ledger.reserve("r", "c2", 100, 250, evict, blobs=["cfg2", "tok"])
    assert a is not None and b is not None
    assert ledger.reserve("r", "c3", 100, 250, evict) is None        # 300 > 250
    again = ledger.reserve("r", "c1", 100, 250, evict)               # already held: costs nothing
    assert again is not None and ledger.peak_probe() == 200
    # the last holder evicts; an earlier one leaves the files to it
    assert ledger.release(a, evict) == 0 and evicted == []
    assert ledger.release(again, evict) == 100 and evicted == [("r", "c1")]
    # a blob c1 shares with c2 (still held, maybe not yet linked by its download) is kept
    assert kept == [frozenset({"cfg2", "tok"})]
    # a dead worker's hold: expired by its age, reaped (and its revision evicted) by the next ask
    os.utime(b.path, (time.time() - 60, time.time() - 60))
    b.released = True  # this process plays the dead worker: its heartbeat must not revive it
    c = ledger.reserve("r", "c3", 200, 250, evict)
    assert c is not None and ("r", "c2") in evicted and not b.path.exists()
    ledger.release(c, None)
    assert ledger.holds() == []


# --- many workers on one cache and one budget ----------------------------------------------
@pytest.mark.slow
def test_three_concurrent_replays_share_one_cache_and_one_budget(hub, suite, probes, tmp_path):
    ckpt = _checkpoint_bytes(suite)
    budget = int(2.5 * ckpt)
    cache, results = tmp_path / "cache", tmp_path / "res"
    cache.mkdir()
    with DiskPoller(cache) as disk:
        procs = [subprocess.Popen(_replay_cmd(probes, results, cache, budget), env=_env(hub), cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    n = len(MODELS) * len(STEPS)
    print(f"\n3 workers: checkpoint {ckpt} B, budget {budget} B, peak on disk {disk.peak} B")
    assert disk.peak <= budget + ckpt, (disk.peak, budget, ckpt)
    assert sum(_scored(out) for out, _ in outs) == n               # each revision scored once
    # every weight file downloaded whole exactly once (range requests are the header reads
    # that size each model from its checkpoint)
    whole = [r for r in hub.requests(kind="cdn", method="GET") if r.file and r.file.endswith(".safetensors")
             and not r.range]
    assert sum(r.bytes_sent for r in whole) == sum(
        (suite / m / f"step{s}" / "model.safetensors").stat().st_size for m in MODELS for s in STEPS)
    _assert_same_rows(ResultsStore(results).items(), _single_run(probes, tmp_path, hub))


@pytest.mark.slow
def test_submitit_local_array_of_three_tasks_shares_one_budget(hub, suite, probes, tmp_path):
    from pythia_forensics.sweep.replay import replay

    ckpt = _checkpoint_bytes(suite)
    budget = int(2.5 * ckpt)
    cache, results = tmp_path / "cache", tmp_path / "res"
    cache.mkdir()
    with DiskPoller(cache) as disk:
        summary = replay(list(HUB_REPOS), [str(probes)], results=results, cache_dir=cache, disk_budget=budget,
                         hub_options={"endpoint": hub.endpoint, "token": False}, executor="submitit-local",
                         chunk=len(STEPS), device="cpu", dtype="float32", progress=False)
    print(f"\nsubmitit-local x3: budget {budget} B, peak on disk {disk.peak} B")
    assert summary.jobs == 3 and summary.revisions_scored == len(MODELS) * len(STEPS)
    assert disk.peak <= budget + ckpt, (disk.peak, budget, ckpt)
    _assert_same_rows(ResultsStore(results).items(), _single_run(probes, tmp_path, hub))


@pytest.mark.slow
def test_killed_worker_hold_expires_others_finish_rerun_completes(hub, suite, probes, tmp_path):
    from pythia_forensics.checkpoints.fetch import ledger_for
    from pythia_forensics.sweep.replay import replay

    ckpt = _checkpoint_bytes(suite)
    budget = int(2.5 * ckpt)
    cache, results = tmp_path / "cache", tmp_path / "res"
    cache.mkdir()
    # the fault hook: the first worker SIGKILLs itself right after its 2nd fetch, holding a
    # revision in the ledger and a claim in the results folder. It runs alone until it dies, so
    # the kill happens whatever the machine's speed (started together, the others could take
    # every revision before it fetched twice); the others then meet its hold and its claim.
    victim = subprocess.Popen(_replay_cmd(probes, results, cache, budget), env=_env(hub, PF_TEST_KILL_AFTER_FETCHES="2"),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim.communicate(timeout=900)
    assert victim.returncode == -9
    assert ledger_for(cache).holds(), "the killed worker left no hold: the test would prove nothing"
    others = [subprocess.Popen(_replay_cmd(probes, results, cache, budget), env=_env(hub), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in others]
    for p, (_, err) in zip(others, outs):
        assert p.returncode == 0, err[-3000:]
    # its hold expires by itself: after the timeout the ledger counts it as dead
    time.sleep(float(FAST_LEASES["PF_LEASE_TIMEOUT_S"]) + 0.5)
    assert all(h.stale for h in ledger_for(cache).holds())
    os.environ.update(FAST_LEASES)
    try:
        rerun = replay(list(HUB_REPOS), [str(probes)], results=results, cache_dir=cache, disk_budget=budget,
                       hub_options={"endpoint": hub.endpoint, "token": False}, device="cpu", dtype="float32",
                       progress=False)
    finally:
        for k in FAST_LEASES:
            os.environ.pop(k, None)
    assert rerun.revisions_failed == ()
    assert ledger_for(cache).holds() == []                     # dead holds reaped, nothing left held
    _assert_same_rows(ResultsStore(results).items(), _single_run(probes, tmp_path, hub))


# --- offline compute nodes -----------------------------------------------------------------
@pytest.mark.slow
def test_fetch_then_offline_replay_gives_identical_rows_and_unstaged_is_one_line(hub, suite, probes, tmp_path):
    from pythia_forensics.checkpoints.fetch import stage

    cache = tmp_path / "cache"
    staged = stage(list(HUB_REPOS), steps="0,2", cache_dir=cache, hub_options={"endpoint": hub.endpoint, "token": False},
                   progress=False)
    assert len(staged.revisions) == 2 * len(MODELS)
    online = tmp_path / "online"
    from pythia_forensics.sweep.replay import replay

    replay(list(HUB_REPOS), [str(probes)], steps="0,2", results=online, cache_dir=tmp_path / "other-cache",
           hub_options={"endpoint": hub.endpoint, "token": False}, device="cpu", dtype="float32", progress=False)
    hub.stop()
    env = {**_env(hub), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    cmd = _replay_cmd(probes, tmp_path / "offline", cache, 10**9)
    ok = subprocess.run([*cmd, "--steps", "0,2"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert ok.returncode == 0, ok.stderr[-3000:]
    _assert_same_rows(ResultsStore(tmp_path / "offline").items(), ResultsStore(online).items())
    bad = subprocess.run([*cmd, "--steps", "0,1"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    err = bad.stderr.strip()
    assert bad.returncode == 2 and len(err.splitlines()) == 1, err
    assert "HF_HUB_OFFLINE" in err and "pythia-forensics fetch" in err, err


# --- a sweep that survives bad checkpoints -------------------------------------------------
def _corrupt_suite(suite: Path, root: Path) -> Path:
    shutil.copytree(suite / "mini-a", root / "mini-a")
    weights = root / "mini-a" / "step1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])   # truncated
    return root / "mini-a"


def test_corrupt_checkpoint_in_a_local_sweep_is_recorded_and_skipped(suite, probes, tmp_path, run_cli):
    from pythia_forensics.sweep.replay import read_failures

    model = _corrupt_suite(suite, tmp_path)
    results = tmp_path / "res"
    code, out, err = run_cli(["replay", str(model), "--probes", str(probes), "--results", str(results),
                              "--device", "cpu", "--dtype", "float32"])
    assert code == 1, err
    assert "Traceback" not in err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "mini-a@step1" in warnings[0], err
    rows = ResultsStore(results).items()
    assert sorted(rows["revision"].unique()) == ["step0", "step2", "step4"]
    failures = read_failures(results)
    assert list(failures["revision"]) == ["step1"] and failures["reason"].str.len().gt(0).all()
    # the health census: with no health table, --health skip runs it first, and skips step1
    results2 = tmp_path / "res2"
    code, out, err = run_cli(["replay", str(model), "--probes", str(probes), "--results", str(results2),
                              "--health", "skip", "--device", "cpu", "--dtype", "float32"])
    assert code == 0, err
    assert "running the census first" in err
    assert sorted(ResultsStore(results2).items()["revision"].unique()) == ["step0", "step2", "step4"]
    assert ResultsStore(results2).health().query("revision == 'step1'")["status"].tolist() == ["bad"]


@pytest.mark.slow
def test_corrupt_checkpoint_in_a_hub_sweep_is_recorded_and_skipped(suite, probes, tmp_path, capsys):
    from hub_fixtures import publish_to_hub
    from hubserver import HubServer

    from pythia_forensics.sweep.replay import read_failures, replay

    model = _corrupt_suite(suite, tmp_path / "src")
    with HubServer() as server:
        publish_to_hub(server, model, repo="EleutherAI/pythia-tiny-a")
        summary = replay(["EleutherAI/pythia-tiny-a"], [str(probes)], results=tmp_path / "res",
                         cache_dir=tmp_path / "cache", disk_budget=10**9, device="cpu", dtype="float32",
                         hub_options={"endpoint": server.endpoint, "token": False}, progress=False)
    err = capsys.readouterr().err
    assert summary.revisions_failed == ("pythia-tiny-a@step1",)
    assert summary.revisions_scored == len(STEPS) - 1   # step0, 2, 4 (main is step4)
    assert "Traceback" not in err and sum(ln.startswith("warning:") for ln in err.splitlines()) == 1
    assert list(read_failures(tmp_path / "res")["revision"]) == ["step1"]


# --- health checks what it is told ---------------------------------------------------------
@pytest.mark.slow
def test_a_different_architecture_under_a_registry_name_is_flagged(suite, probes, tmp_path):
    from hub_fixtures import publish_to_hub
    from hubserver import HubServer

    from pythia_forensics.checkpoints.health import check_health
    from pythia_forensics.checkpoints.registry import resolve_model
    from pythia_forensics.sweep.replay import replay
    from pythia_forensics.checkpoints.sources import HubSource

    spec = resolve_model("pythia-14m")
    src_dir = tmp_path / "src"
    for step in (0, 1000):
        shutil.copytree(suite / "mini-a" / f"step{STEPS[min(step, 1)]}", src_dir / f"step{step}")
    with HubServer() as server:
        publish_to_hub(server, src_dir, repo=spec.repo)
        source = lambda: HubSource(spec, cache_dir=tmp_path / "cache", endpoint=server.endpoint, token=False)  # noqa: E731
        census = check_health(spec, steps="0,1000", source=source(), progress=False)
        deep = check_health(spec, steps="0,1000", source=source(), deep=True, progress=False)
        import torch  # noqa: F401
        from safetensors import safe_open

        with safe_open(str(src_dir / "step0" / "model.safetensors"), "pt") as fh:
            true_params = sum(fh.get_slice(k).get_shape()[0] * int(np.prod(fh.get_slice(k).get_shape()[1:]))
                              for k in fh.keys() if not k.endswith(("attention.bias", "attention.masked_bias")))
        hub_steps = replay([spec.name], [str(probes)], steps="0", results=tmp_path / "res", cache_dir=tmp_path / "c2",
                           hub_options={"endpoint": server.endpoint, "token": False}, device="cpu", progress=False)
    for report in (census, deep):
        arch = [f for f in report.findings if f.code == "architecture"]
        assert {f.revision for f in arch} >= {"step0", "step1000"}, [f.reason for f in report.findings]
        assert all(f.status == "bad" for f in arch) and "layers 2 vs 6" in arch[0].detail
    deep_params = [f for f in deep.findings if f.code == "architecture" and "params_total" in f.detail]
    assert deep_params and f"params_total {true_params:,} vs 14,067,712" in deep_params[0].detail
    models = ResultsStore(tmp_path / "res").models()
    assert hub_steps.revisions_scored == 1
    assert models.loc[0, "params_total"] == true_params and models.loc[0, "size_source"] == "checkpoint"
    assert models.loc[0, "layers"] == 2


def test_architecture_from_shapes_matches_the_published_pythia_14m_counts():
    """GPT-NeoX tensor shapes written out by hand for Pythia-14m (6 layers, d=128, 50304 rows);
    the counts must equal the published 14,067,712 / 1,189,888, buffers ignored."""
    from pythia_forensics.checkpoints.architecture import Architecture, from_config, from_shapes, mismatches
    from pythia_forensics.checkpoints.registry import resolve_model

    d, layers, rows = 128, 6, 50304
    shapes = {"gpt_neox.embed_in.weight": (rows, d), "embed_out.weight": (rows, d),
              "gpt_neox.final_layer_norm.weight": (d,), "gpt_neox.final_layer_norm.bias": (d,)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (d,), p + "input_layernorm.bias": (d,),
                   p + "post_attention_layernorm.weight": (d,), p + "post_attention_layernorm.bias": (d,),
                   p + "attention.query_key_value.weight": (3 * d, d), p + "attention.query_key_value.bias": (3 * d,),
                   p + "attention.dense.weight": (d, d), p + "attention.dense.bias": (d,),
                   p + "mlp.dense_h_to_4h.weight": (4 * d, d), p + "mlp.dense_h_to_4h.bias": (4 * d,),
                   p + "mlp.dense_4h_to_h.weight": (d, 4 * d), p + "mlp.dense_4h_to_h.bias": (d,),
                   p + "attention.bias": (1, 1, 2048, 2048), p + "attention.masked_bias": ()}
    arch = from_shapes(shapes).merged(from_config({"num_attention_heads": 4, "num_hidden_layers": 6}))
    assert arch == Architecture(layers=6, d_model=128, heads=4, vocab_size=50304,
                                params_total=14_067_712, params_nonembedding=1_189_888)
    assert mismatches(arch, resolve_model("pythia-14m")) == []
    wrong = mismatches(arch, resolve_model("pythia-70m"))
    assert "d_model 128 vs 512" in wrong and "params_total 14,067,712 vs 70,426,624" in wrong


# --- a finished sweep re-runs as a no-op anywhere ------------------------------------------
def _item_files(results: Path) -> dict[str, int]:
    return {str(p.relative_to(results)): p.stat().st_mtime_ns for p in (results / "items").rglob("*.parquet")}


def _one_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_a_finished_sweep_reruns_as_a_no_op_online_and_offline_whatever_the_cache_holds(hub, suite, probes, tmp_path):
    from pythia_forensics.sweep.itemfile import model_partition

    models = tuple(HUB_REPOS)[:2]
    cache, results = tmp_path / "cache", tmp_path / "res"
    # a budget of one checkpoint and a half: every revision is evicted once scored
    cmd = _replay_cmd(probes, results, cache, int(1.5 * _checkpoint_bytes(suite)), models=models)
    first = subprocess.run(cmd, env=_env(hub), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    n = len(models) * len(STEPS)
    assert _scored(first.stdout) == n
    assert not list(cache.rglob("*.safetensors")) and not list(cache.rglob("snapshots/*/*")), "nothing was evicted"
    stored = _item_files(results)
    assert len(stored) == n
    done_line = [f"nothing to do: {n} revisions already stored"]

    # online: the hub lists the revisions, the store holds every unit; nothing is downloaded
    downloads = len(hub.requests(kind="cdn", method="GET"))
    online = subprocess.run(cmd, env=_env(hub), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert online.returncode == 0, online.stderr[-3000:]
    assert online.stdout.strip().splitlines() == done_line and online.stderr.strip() == "", online.stderr
    assert len(hub.requests(kind="cdn", method="GET")) == downloads

    # offline, the hub gone, the cache holding no revision at all
    hub.stop()
    offline_env = {**_env(hub), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    rerun = subprocess.run(cmd, env=offline_env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.strip().splitlines() == done_line and rerun.stderr.strip() == "", rerun.stderr
    assert _item_files(results) == stored                                   # nothing re-scored or rewritten

    # one unit lost: exactly that revision is named, with the command that stages it
    lost = next(p for p in (results / "items" / model_partition("pythia-tiny-a")).glob("step2_*.parquet"))
    kept = lost.read_bytes()
    lost.unlink()
    missing = subprocess.run(cmd, env=offline_env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    line = _one_line(missing)
    assert missing.returncode == 2, missing.stderr
    assert re.findall(r"[\w-]+@step\d+", line) == ["pythia-tiny-a@step2"], line
    assert f"pythia-forensics fetch EleutherAI/pythia-tiny-a --steps 2 --cache-dir {cache.resolve()}" in line, line
    # a step nobody knows of (never listed, not stored, not cached) is named the same way
    unknown = subprocess.run([*cmd, "--steps", "0,3"], env=offline_env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=900)
    line = _one_line(unknown)
    assert unknown.returncode == 2 and "step 3 is neither stored" in line and "--steps 3 " in line, line
    lost.write_bytes(kept)   # put back as it was, so the next check still proves nothing is rewritten
    mtime = stored[str(lost.relative_to(results))]
    os.utime(lost, ns=(mtime, mtime))

    # whatever the cache holds: with no cache folder at all the store alone says it is done
    shutil.rmtree(cache)
    bare = subprocess.run(cmd, env=offline_env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert bare.returncode == 0, bare.stderr[-3000:]
    assert bare.stdout.strip().splitlines() == done_line and bare.stderr.strip() == "", bare.stderr
    assert _item_files(results) == stored
