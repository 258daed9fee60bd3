"""End to end: the analyze/figures CLI on a store whose trajectories were constructed by hand
(exact verdicts and steps), and on a real replay of a trained reduced mini suite."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from pythia_forensics.cli import app
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from pythia_forensics.experiments.mini.config import reduced_config
    from pythia_forensics.experiments.mini.suite import build_suite
    from pythia_forensics.sweep.replay import replay

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mini")
    suite = build_suite(root / "suite", config=reduced_config(), progress=False, jobs=1)
    replay(["mini-t"], "pronoun_gender", suite_dir=suite, results=root / "res", progress=False)
    # the reduced suite trains 40 steps: analyse every checkpoint (min_step 0) via --config
    config = root / "min0.yaml"
    config.write_text("steps:\n  min_step: 0\n")
    return root / "res", config


def test_constructed_trajectories_get_their_hand_derived_verdicts_through_the_cli(pronoun_suite_store, copy_store,
                                                                                  run_cli):
    """synthetic_results' five-model suite, worked by hand (min_step 100 keeps steps 100..1000):
    raw conflict .3 .6 .9 1 1 1 f f f f, agree .6 .9 1 1 ...; smoothed conflict .45 .6 .833
    .967 1 (2+f)/3 (1+2f)/3 f f f, smoothed agree .75 .833 .967 1 ... Emergence at 300 (first
    smoothed conflict >= .8 with agree >= .8), peak 1.0 at 500, final f, depth 1 - f. Collapse
    onset (last smoothed >= .5 that falls below afterwards): 600 for f = 0 and .2; none for
    f >= .5 (the tail sits at f >= .5). Verdicts: final <= .6 DISPLACED, final >= .8 RECOVERED."""
    from synthetic_results import SUITE_FINALS

    root = copy_store(pronoun_suite_store)  # suite_items(rules=("pronoun_gender",)), suite_models()
    code, out, err = run_cli(["analyze", "--results", str(root)])
    assert code == 0, err
    metrics = pd.read_parquet(root / "dynamics.parquet").set_index("model")
    want = {"mini-xs": ("DISPLACED", 600), "mini-s": ("DISPLACED", 600), "mini-m": ("DISPLACED", None),
            "mini-l": ("RECOVERED", None), "mini-xl": ("RECOVERED", None)}
    for model, (verdict, collapse) in want.items():
        row = metrics.loc[model]
        assert row["verdict_label"] == verdict, model
        assert row["emergence_step"] == 300 and row["peak_step"] == 500 and row["peak_acc"] == pytest.approx(1.0)
        assert row["final_acc"] == pytest.approx(SUITE_FINALS[model])
        if SUITE_FINALS[model] < 0.8:  # collapsed (final below recovered_final_min): depth = peak - final
            assert row["depth"] == pytest.approx(1.0 - SUITE_FINALS[model])
        else:  # recovered: undefined, never 0
            assert pd.isna(row["depth"]), model
        assert (pd.isna(row["collapse_step"]) if collapse is None else row["collapse_step"] == collapse), model
        assert model in out  # the terminal table lists every trajectory
    scale = pd.read_csv(root / "scale.csv")
    depth = scale[(scale["size"] == "params_total") & (scale["metric"] == "depth")].iloc[0]
    assert depth["n_models"] == 3 and depth["rho"] == pytest.approx(-1.0)  # depth shrinks with size (xs, s, m)


@pytest.mark.slow
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
    # the verdict label is the void marker exactly when the agree control failed
    for row in metrics.itertuples():
        assert row.void == (not row.agree_valid)
        assert (row.verdict_label == "VOID") == row.void

    out = runner.invoke(app, ["figures", "--results", str(results), "--out", str(tmp_path / "figs"),
                              "--config", str(config)])
    assert out.exit_code == 0, out.output
    stems = sorted(p.stem for p in (tmp_path / "figs").glob("*.pdf"))
    assert stems == ["a_accuracy_pronoun_gender", "b_cm_pronoun_gender", "c_scale_pronoun_gender", "d_verdicts",
                     "e_overview"]
    assert all((tmp_path / "figs" / f"{s}.png").stat().st_size > 1000 for s in stems)
    report = (results / "report.md").read_text()
    # one model, and its verdict is void (40 steps of training): no rank correlation, and the
    # report says why instead of printing a rho
    scale = pd.read_csv(results / "scale.csv")
    assert scale["rho"].isna().all() and (scale["n_models"] <= 1).all()
    assert "| pronoun_gender |" in report and "too few models for a rank correlation" in report


@pytest.mark.slow
def test_default_thresholds_leave_a_40_step_suite_void(replayed):
    from pythia_forensics.analysis.dynamics import analyze

    results, _ = replayed
    metrics = analyze(results).metrics  # min_step 100 drops every checkpoint of a 40-step run
    assert metrics["void"].all()
    assert metrics["void_reason"].str.contains("no checkpoints at or above the minimum step").all()
