"""`pythia-forensics probe`: summary table, output files, and one-line errors (exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pythia_forensics.cli import main
from pythia_forensics.scoring.probes import load_probes
from pythia_forensics.scoring.score import FRAME_COLUMNS
from paths import DATA as TEST_DATA, REPO, TESTS

DATA = TEST_DATA / "probes"


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_probe_prints_summary_and_writes_items(tiny_checkpoint, tmp_path, capsys, suffix):
    out_file = tmp_path / f"scores{suffix}"
    code, out, err = _run(["probe", str(tiny_checkpoint), "--probes", str(DATA / "small.yaml"),
                           "--probes", str(DATA / "paper_battery.jsonl"), "--out", str(out_file),
                           "--batch-size", "2", "--device", "cpu"], capsys)
    assert code in (0, None), err
    for word in ("pronoun_gender", "indefinite_article", "sva", "conflict", "accuracy", "float32"):
        assert word in out
    frame = {".parquet": pd.read_parquet, ".csv": pd.read_csv,
             ".jsonl": lambda p: pd.read_json(p, lines=True)}[suffix](out_file)
    assert list(frame.columns) == list(FRAME_COLUMNS) and len(frame) == 6
    assert np.allclose(frame["margin"], frame["logp_target"] - frame["logp_foil"])
    assert json.loads(str(frame.loc[frame.item_id == "art.c.1", "target_ids"].iloc[0]))  # ids recorded


def test_summary_numbers_match_the_items(tiny_checkpoint, tmp_path, capsys):
    out_file = tmp_path / "s.csv"
    code, out, _ = _run(["probe", str(tiny_checkpoint), "-p", str(DATA / "small.jsonl"), "--out", str(out_file)],
                        capsys)
    frame = pd.read_csv(out_file)
    row = frame[frame.condition == "conflict"].iloc[0]
    line = next(l for l in out.splitlines() if "conflict" in l)
    assert f"{float(row.correct):.3f}" in line and f"{row.margin:+.3f}" in line


@pytest.mark.parametrize("args, fragment", [
    (["MODEL", "--probes", str(DATA / "malformed.yaml")], "problem(s) in probe file"),
    (["MODEL", "--probes", str(DATA / "empty_candidate.yaml")], "field 'target': empty string"),
    (["/no/such/checkpoint", "--probes", str(DATA / "small.yaml")], "does not exist"),
    (["MODEL", "--probes", "pronoun_gendr_nope"], "unknown probe set"),
    (["MODEL", "--probes", str(DATA / "small.yaml"), "--dtype", "fp8"], "unknown dtype"),
    (["MODEL", "--probes", str(DATA / "small.yaml"), "--batch-size", "many"], "batch size"),
    (["MODEL", "--probes", str(DATA / "small.yaml"), "--out", "x.xlsx"], "--out"),
])
def test_user_mistakes_are_one_line_exit_2(tiny_checkpoint, capsys, args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["probe"] + [str(tiny_checkpoint) if a == "MODEL" else a for a in args]
    code, _, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err


@pytest.mark.slow
def test_no_traceback_from_the_real_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "pythia_forensics", "probe", str(tmp_path / "missing"),
                          "--probes", str(DATA / "small.yaml")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr


def test_help_explains_every_option(capsys):
    code, out, _ = _run(["probe", "--help"], capsys)
    assert code == 0
    for option in ("--revision", "--probes", "--out", "--batch-size", "--dtype", "--device", "--bos",
                   "--vocab-rows"):
        assert option in out


def test_shipped_names_resolve(tiny_checkpoint, capsys):
    try:
        load_probes("pronoun_gender")
    except Exception:
        pytest.skip("shipped battery pronoun_gender not present")
    code, out, err = _run(["probe", str(tiny_checkpoint), "--probes", "pronoun_gender"], capsys)
    assert code in (0, None), err
    assert "pronoun_gender" in out and "heldout" in out


@pytest.mark.slow
def test_hub_repo_with_revision_and_unknown_revision(tiny_checkpoint, tmp_path):
    """Through a loopback hub: a good revision scores, an unknown one is one line, exit 2."""
    from hubserver import HubServer

    with HubServer() as hub:
        hub.add_branch("EleutherAI/pythia-tiny", "step100", tiny_checkpoint)
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
        base = [sys.executable, "-m", "pythia_forensics", "probe", "EleutherAI/pythia-tiny", "-p", str(DATA / "small.yaml")]
        good = subprocess.run(base + ["--revision", "step100", "--out", str(tmp_path / "s.csv")],
                              capture_output=True, text=True, env=env, timeout=300)
        assert good.returncode == 0, good.stderr[-2000:]
        frame = pd.read_csv(tmp_path / "s.csv")
        assert len(frame) == 3 and frame["revision"].eq("step100").all()
        bad = subprocess.run(base + ["--revision", "step999"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "step999" in lines[0] and "Traceback" not in bad.stderr, bad.stderr[-2000:]
