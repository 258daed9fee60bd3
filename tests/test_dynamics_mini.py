"""End to end on a real replay: a reduced mini suite is trained, replayed on the pronoun
battery, analysed, and every figure and the report are rendered from the store."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from pythia_forensics.cli import app
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from pythia_forensics.mini.config import reduced_config
    from pythia_forensics.mini.suite import build_suite
    from pythia_forensics.replay import replay

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mini")
    suite = build_suite(root / "suite", config=reduced_config(), progress=False, jobs=1)
    replay(["mini-t"], "pronoun_gender", suite_dir=suite, results=root / "res", progress=False)
    # the reduced suite trains 40 steps: analyse every checkpoint (min_step 0) via --config
    config = root / "min0.yaml"
    config.write_text("steps:\n  min_step: 0\n")
    return root / "res", config


def test_mini_replay_analysis_figures_and_report(replayed, tmp_path):
    results, config = replayed
    runner = CliRunner()
    out = runner.invoke(app, ["analyze", "--results", str(results), "--config", str(config)])
    assert out.exit_code == 0, out.output
    metrics = pd.read_parquet(results / "dynamics.parquet")
    assert set(metrics["split"]) == {"train", "heldout"} and set(metrics["rule"]) == {"pronoun_gender"}
    assert (metrics["n_checkpoints"] == 6).all()  # steps 0, 1, 2, 4, 20, 40
    # per-step accuracy agrees with the store's own summary table (a separate code path)
    traj = pd.read_parquet(results / "trajectories.parquet")
    summary = pd.read_parquet(results / "summary.parquet")
    for cond in ("conflict", "agree"):
        want = summary[summary["condition"] == cond].astype({"step": "int64"})
        want = want.set_index(["split", "step"])["accuracy"].sort_index()
        got = traj.set_index(["split", "step"])[f"{cond}_acc"].sort_index()
        pd.testing.assert_series_equal(got, want, check_names=False, check_dtype=False, check_index_type=False)
    # verdicts follow the classifier order applied to the stored metrics
    for row in metrics.itertuples():
        assert row.verdict in {"RECOVERED", "UNSTABLE", "DISPLACED", "PARTIAL", "NEVER"}
        assert row.void == (not row.agree_valid)

    out = runner.invoke(app, ["figures", "--results", str(results), "--out", str(tmp_path / "figs"),
                              "--config", str(config)])
    assert out.exit_code == 0, out.output
    stems = sorted(p.stem for p in (tmp_path / "figs").glob("*.pdf"))
    assert stems == ["a_accuracy_pronoun_gender", "b_cm_pronoun_gender", "c_scale_pronoun_gender", "d_verdicts",
                     "e_overview"]
    assert all((tmp_path / "figs" / f"{s}.png").stat().st_size > 1000 for s in stems)
    report = (results / "report.md").read_text()
    assert "| pronoun_gender |" in report and "fewer than 3 models" in report


def test_default_thresholds_leave_a_40_step_suite_void(replayed):
    from pythia_forensics.dynamics import analyze

    results, _ = replayed
    metrics = analyze(results).metrics  # min_step 100 drops every checkpoint of a 40-step run
    assert metrics["void"].all()
    assert metrics["void_reason"].str.contains("no checkpoints at or above the minimum step").all()
