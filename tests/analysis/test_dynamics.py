"""Trajectory metrics and verdicts on synthetic trajectories whose answers are worked out by
hand in the comments (k = 3 centred smoothing, edges truncated; shipped thresholds)."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import pythia_forensics.analysis.dynamics as dyn
from pythia_forensics.errors import ConfigError, StoreError
from synthetic_results import SUITE_FINALS, SUITE_PARAMS, items_for, suite_items, suite_models

CFG = dyn.load_config()
STEPS = np.arange(100, 1001, 100)  # ten checkpoints; final window = max(3, ceil(0.1 * 10)) = 3
ONES = np.ones(10)
# emerge-then-collapse; smoothed: .35 .5333 .7667 .9 .9 .7 .4 .1 0 0
COLLAPSE = np.array([0.2, 0.5, 0.9, 0.9, 0.9, 0.9, 0.3, 0.0, 0.0, 0.0])
CM_AT_COLLAPSE = np.array([1, 1, 1, 1, 1, 1, -1, -1, -1, -1], float)  # smoothed i5 = 1/3, i6 = -1/3


def metrics(conflict, agree=ONES, cm=None, steps=STEPS):
    cm = CM_AT_COLLAPSE if cm is None else cm
    res = dyn.trajectory_metrics(steps, np.asarray(conflict, float), np.asarray(agree, float), np.asarray(cm, float),
                                 config=CFG)
    return res, dyn.classify(res, CFG)


def test_smoothing_centred_truncated_edges():
    got = dyn.smooth(np.array([0.0, 3.0, 6.0, 9.0]), 3)
    np.testing.assert_allclose(got, [1.5, 3.0, 6.0, 7.5])
    got = dyn.smooth(np.array([0.0, np.nan, 6.0]), 3)  # NaN is skipped, not zero
    np.testing.assert_allclose(got, [0.0, 3.0, 6.0])
    np.testing.assert_allclose(dyn.smooth(np.array([[1.0, 2.0], [3.0, 5.0]]), 3), [[1.5, 1.5], [4.0, 4.0]])


def test_final_window_size():
    assert dyn.final_window_size(10, CFG) == 3
    assert dyn.final_window_size(30, CFG) == 3  # 0.1 * 30 = 3.0000000000000004 must not round up
    assert dyn.final_window_size(31, CFG) == 4
    assert dyn.final_window_size(154, CFG) == 16
    assert dyn.final_window_size(2, CFG) == 2


def test_emerge_then_collapse():
    res, (verdict, void, _) = metrics(COLLAPSE)
    assert res.emerged and res.emergence_step == 400  # first smoothed >= .8
    assert res.peak_acc == pytest.approx(0.9) and res.peak_step == 400  # first of the tied maxima
    assert res.collapse_step == 600  # last smoothed >= .5 (0.7 at step 600, 0.4 after)
    assert res.final_acc == pytest.approx(0.0) and res.final_points == 3
    assert res.depth == pytest.approx(0.9)
    assert res.final_range == pytest.approx(0.1)
    assert res.cm_valid and res.cm_max == pytest.approx(1.0)
    assert res.cm_cross_step == 600 and res.lag_steps == 0 and res.lag_checkpoints == 0
    assert res.cm_within_lag is True
    assert res.agree_valid and (verdict, void) == ("DISPLACED", False)


@pytest.mark.parametrize("cm, cross, lag_ckpt, within", [
    ([1, 1, 1, 1, 1, -1, -1, -1, -1, -1], 500, -1, True),   # smoothed i4 = 1/3, i5 = -1/3
    ([1, 1, 1, 1, 1, 1, 1, -1, -1, -1], 700, 1, True),      # smoothed i6 = 1/3, i7 = -1/3
    ([1, 1, 1, 1, 1, 1, 1, 1, -1, -1], 800, 2, False),      # two checkpoints late
])
def test_cm_crossing_before_and_after_collapse(cm, cross, lag_ckpt, within):
    res, _ = metrics(COLLAPSE, cm=np.array(cm, float))
    assert res.collapse_step == 600
    assert res.cm_cross_step == cross
    assert res.lag_checkpoints == lag_ckpt and res.lag_steps == lag_ckpt * 100
    assert res.cm_within_lag is within


def test_cm_invalid_when_its_maximum_stays_small():
    res, _ = metrics(COLLAPSE, cm=np.array([0.4] * 6 + [-0.4] * 4))  # smoothed max 0.4 < 0.5 nats
    assert not res.cm_valid and res.cm_cross_step is None and res.lag_steps is None


def test_cm_exactly_zero_counts_as_not_yet_crossed():
    # smoothed i5 = (1 + 1 - 2)/3 = 0 exactly, i6 = (1 - 2 - 2)/3 < 0: the crossing is step 600
    res, _ = metrics(COLLAPSE, cm=np.array([1, 1, 1, 1, 1, 1, -2, -2, -2, -2], float))
    assert res.cm_cross_step == 600


def test_cm_crossing_is_defined_only_after_emergence():
    """One crossing definition (last checkpoint with smoothed CM >= 0), and none for a rule
    that never emerged, or whose margin last stood before the rule did."""
    cm = np.array([1, 1, 1, 1, 1, 1, -1, -1, -1, -1], float)  # valid (max 1), last >= 0 at i5 = 600
    res, (verdict, _, _) = metrics([0.3] * 10, cm=cm)
    assert verdict == "NEVER" and res.cm_valid and res.cm_cross_step is None and res.lag_checkpoints is None
    # conflict .3 x5 then .9 x5: smoothed .3 .3 .3 .3 .5 .7 .9 ... -> emerged at 700 (i6);
    # CM 1 1 1 -1 ...: smoothed 1 1 1/3 -1/3 ... -> last >= 0 at 300 (i2), before emergence
    late = [0.3] * 5 + [0.9] * 5
    res, _ = metrics(late, cm=np.array([1, 1, 1] + [-1] * 7, float))
    assert res.emergence_step == 700 and res.cm_cross_step is None
    # the same rule with a margin that crosses after emergence: the last checkpoint >= 0
    res, _ = metrics(late, cm=np.array([1] * 8 + [-1] * 2, float))  # smoothed i7 = 1/3, i8 = -1/3
    assert res.cm_cross_step == 800


def test_depth_is_defined_only_for_a_rule_that_collapsed():
    # final .7 (< recovered .8): a partial collapse from the .9 peak, depth .2
    res, (verdict, _, _) = metrics([0.9] * 6 + [0.7] * 4)
    assert verdict == "PARTIAL" and res.depth == pytest.approx(0.2)
    # final exactly .8 is recovered (the verdict's own tie rule): no depth
    res, (verdict, _, _) = metrics([0.9] * 7 + [0.8] * 3)
    assert verdict == "RECOVERED" and res.depth is None
    row = dyn.analyze(items_for(STEPS, [0.9] * 7 + [0.8] * 3, ONES, ONES)).metrics.iloc[0]
    assert np.isnan(row["depth"]) and np.isnan(row["depth_lo"]) and np.isnan(row["depth_hi"])


def test_survive_with_emergence_on_a_tie():
    # smoothed: .45 .6 .8 (=(.6+.9+.9)/3, a float tie) .9 ...; final .9
    res, (verdict, void, _) = metrics([0.3, 0.6, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], cm=ONES)
    assert res.emergence_step == 300
    assert res.peak_step == 400 and res.collapse_step is None and res.cm_cross_step is None
    assert res.final_acc == pytest.approx(0.9) and res.depth is None  # recovered: no collapse, no depth
    assert (verdict, void) == ("RECOVERED", False)


def test_never():
    res, (verdict, void, _) = metrics([0.3] * 10, cm=-ONES)
    assert not res.emerged and res.emergence_step is None and res.collapse_step is None
    assert res.depth is None and (verdict, void) == ("NEVER", False)  # nothing learned: no depth


def test_peak_ignores_checkpoints_without_conflict_items():
    """Agree items gate checkpoints that have no conflict value: those are never the peak, and
    a trajectory with no conflict value at all has no peak instead of crashing."""
    conflict = np.array([np.nan, np.nan, 0.9, 0.9, 0.9, 0.9, 0.3, 0.0, 0.0, 0.0])
    res, _ = metrics(conflict)
    assert res.peak_acc == pytest.approx(0.9) and res.emerged
    res, _ = metrics(np.full(10, np.nan), cm=np.full(10, np.nan))
    assert not res.emerged and (res.peak_acc is None or math.isnan(res.peak_acc))


def test_unstable_tail_wins_over_displaced():
    # final raw 1, 0, 0 -> final 1/3; smoothed last three .6333 .3333 0 -> range .6333 >= .2
    res, (verdict, _, _) = metrics([0.9] * 7 + [1.0, 0.0, 0.0])
    assert res.final_acc == pytest.approx(1 / 3) and res.final_range == pytest.approx(1.9 / 3)
    assert res.collapse_step == 800
    assert verdict == "UNSTABLE"


def test_ties_on_every_verdict_threshold():
    # range exactly .2: smoothed last three .8, .6667, .6 -> UNSTABLE
    res, (verdict, _, _) = metrics([0.8] * 9 + [0.4])
    assert res.final_range == pytest.approx(0.2) and verdict == "UNSTABLE"
    # final exactly .6 -> DISPLACED; exactly .8 -> RECOVERED
    assert metrics([0.9] * 6 + [0.6] * 4)[1][0] == "DISPLACED"
    assert metrics([0.9] * 7 + [0.8] * 3)[1][0] == "RECOVERED"
    # final .7 (neither) -> PARTIAL
    assert metrics([0.9] * 6 + [0.7] * 4)[1][0] == "PARTIAL"
    # collapse: smoothed exactly .5 counts as still standing (i6 = (.9 + .6 + 0)/3 = .5)
    res, _ = metrics([0.9] * 6 + [0.6, 0.0, 0.0, 0.0])
    assert res.collapse_step == 700


def test_invalid_agree_control_voids_the_verdict():
    res, (verdict, void, reason) = metrics(COLLAPSE, agree=[1.0] * 5 + [0.5] * 5)
    assert res.agree_final == pytest.approx(0.5) and not res.agree_valid
    assert verdict == "DISPLACED" and void and "agree control invalid" in reason
    # drop exactly .15 (max 1.0, final .85) is not < .15: invalid
    res, (_, void, _) = metrics(COLLAPSE, agree=[1.0] * 7 + [0.85] * 3)
    assert not res.agree_valid and void
    res, (_, void, _) = metrics(COLLAPSE, agree=[1.0] * 7 + [0.9] * 3)
    assert res.agree_valid and not void


def test_early_global_bias_is_not_emergence():
    # conflict 1.0 while agree is 0: a bias toward one candidate, not the rule
    conflict = [1.0, 1.0, 0.5, 0.2, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9]
    agree = [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # smoothed conflict 1, .833, .567, .3, .433, .667, .9...; smoothed agree 0, .167, .5, .833, 1...
    res, (verdict, void, _) = metrics(conflict, agree=agree, cm=ONES)
    assert res.emergence_step == 700
    assert res.peak_acc == pytest.approx(0.9) and res.peak_step == 700  # not the 1.0 at step 100
    assert res.depth is None  # recovered
    assert (verdict, void) == ("RECOVERED", False)


def test_too_few_checkpoints_is_void():
    res, (verdict, void, reason) = metrics([0.9, 0.9], agree=[1, 1], cm=[1, 1], steps=np.array([100, 200]))
    assert void and "only 2 checkpoints" in reason


# --- analyze on item rows --------------------------------------------------------------------
def test_analyze_items_drops_early_steps_main_duplicate_and_flagged_checkpoints():
    steps = [0, 50, *STEPS]
    conflict = [1.0, 1.0, *COLLAPSE]
    agree = [0.0, 0.0, *ONES]
    cm = [1.0, 1.0, *CM_AT_COLLAPSE]
    items = items_for(steps, conflict, agree, cm)
    main = items[items["step"] == 1000].assign(revision="main")  # main duplicates step1000
    # a flagged checkpoint at step 500 whose numbers are garbage: must not be used
    bad = items_for([500], [0.0], [0.0], [-1.0]).assign(revision="step500")
    items = pd.concat([items[items["step"] != 500], bad, main], ignore_index=True)
    health = pd.DataFrame(dict(model=["mini-s"], revision=["step500"], step=[500], status=["flagged"],
                               reasons=["spike"]))
    result = dyn.analyze(items, health=health)
    row = result.metrics.iloc[0]
    # used: 100..1000 without 500 (9 checkpoints): conflict .2 .5 .9 .9 .9(600) .3 0 0 0
    # smoothed: .35 .533 .767 .9 .9 .7(600) .4 .1 0 -> emergence 400, collapse 600. Had the flagged
    # 0.0 at step 500 been used: smoothed .6(400) .6(500) .4(600) -> collapse 500.
    assert row["n_checkpoints"] == 9 and row["n_excluded_health"] == 1 and row["excluded_steps"] == "500"
    assert row["emergence_step"] == 400 and row["collapse_step"] == 600
    assert row["final_acc"] == pytest.approx(0.0) and row["verdict_label"] == "DISPLACED"
    assert row["config_sha256"] == CFG.sha256
    traj = result.trajectories
    assert set(traj.loc[~traj["used"], "step"]) == {0, 50, 500}
    assert (traj["revision"] != "main").all()
    assert traj.loc[traj["step"] == 500, "drop_reason"].item() == "health: flagged"


def test_bootstrap_final_ci_matches_scipy_bootstrap_of_item_means():
    rng = np.random.default_rng(3)
    n, steps = 40, list(range(100, 1100, 100))
    rows = []
    # items with their own per-step correctness, so the CI is not degenerate
    correct = rng.random((n, len(steps))) < np.linspace(0.95, 0.3, len(steps))
    for i in range(n):
        for s_idx, step in enumerate(steps):
            for cond in ("conflict", "agree"):
                ok = bool(correct[i, s_idx]) if cond == "conflict" else True
                rows.append(dict(model="m", revision=f"step{step}", step=step, rule="r", condition=cond,
                                 split="heldout", item_id=f"{cond}{i}", margin=1.0 if ok else -1.0, correct=ok))
    row = dyn.analyze(pd.DataFrame(rows)).metrics.iloc[0]
    # final = mean over the last 3 steps = mean over items of each item's last-3 mean
    per_item = correct[:, -3:].mean(axis=1)
    assert row["final_acc"] == pytest.approx(per_item.mean())
    ref = stats.bootstrap((per_item,), np.mean, method="percentile", n_resamples=20000,
                          confidence_level=CFG.bootstrap_confidence, random_state=1).confidence_interval
    assert row["final_lo"] == pytest.approx(ref.low, abs=0.03)
    assert row["final_hi"] == pytest.approx(ref.high, abs=0.03)
    assert row["depth_lo"] <= row["depth"] <= row["depth_hi"]


def test_scale_analysis_rho_and_exact_permutation_p():
    result = dyn.analyze(suite_items(), models=suite_models())
    assert len(result.metrics) == 10
    void = result.metrics[result.metrics["void"]]
    assert list(zip(void["model"], void["rule"])) == [("mini-m", "reflexive_gender")]
    scale = result.scale.set_index(["rule", "size", "metric"])
    row = scale.loc[("pronoun_gender", "params_total", "final_acc")]
    # finals 0, .2, .5, .8, .9 rise with size: rho = 1; exact two-sided p = 2 / 5! (identity, reverse)
    assert row["n_models"] == 5 and row["rho"] == pytest.approx(1.0)
    assert row["p_perm"] == pytest.approx(2 / math.factorial(5))
    # depth exists only where the rule collapsed (final < recovered_final_min .8): xs, s, m
    depth = scale.loc[("pronoun_gender", "params_nonembedding", "depth")]
    assert depth["n_models"] == 3 and depth["rho"] == pytest.approx(-1.0)
    by_model = result.metrics[result.metrics["rule"] == "pronoun_gender"].set_index("model")["depth"]
    assert by_model[["mini-l", "mini-xl"]].isna().all()  # recovered: undefined, not 0
    # reflexive: the void model is left out -> 4 models
    refl = scale.loc[("reflexive_gender", "params_total", "final_acc")]
    assert refl["n_models"] == 4 and "mini-m" not in refl["models"].split(",")
    finals = [SUITE_FINALS[m] for m in refl["models"].split(",")]
    sizes = [SUITE_PARAMS[m] for m in refl["models"].split(",")]
    assert refl["rho"] == pytest.approx(stats.spearmanr(sizes, finals).statistic)
    # 4 models, one seed each: below scale.bootstrap_min_models no interval, and the note says why
    assert np.isnan(refl["rho_lo"]) and np.isnan(refl["rho_hi"]) and "no interval: n = 4" in refl["note"]
    assert refl["p_min"] == pytest.approx(2 / math.factorial(4))


def test_scale_rho_matches_scipy_with_ties():
    metrics = pd.DataFrame(dict(model=list("abcdef"), probeset="p", rule="r", split="heldout", void=False,
                                depth=[0.5, 0.4, 0.45, 0.1, 0.1, 0.0], final_acc=[0.1, 0.3, 0.3, 0.7, 0.9, 0.9]))
    models = pd.DataFrame(dict(model=list("abcdef"), params_total=[1, 2, 3, 4, 5, 6.0],
                               params_nonembedding=[1, 1, 2, 3, 5, 8.0]))
    scale = dyn.scale_analysis(metrics, models, config=CFG).set_index(["size", "metric"])
    for size in ("params_total", "params_nonembedding"):
        for metric in ("depth", "final_acc"):
            want = stats.spearmanr(models[size], metrics[metric]).statistic
            assert scale.loc[(size, metric), "rho"] == pytest.approx(want)


def test_scale_needs_three_models():
    items = pd.concat([items_for(STEPS, COLLAPSE, ONES, model=m) for m in ("a", "b")])
    models = pd.DataFrame(dict(model=["a", "b"], params_total=[1.0, 2.0], params_nonembedding=[1.0, 2.0]))
    scale = dyn.analyze(items, models=models).scale
    assert scale[["rho", "p_perm", "rho_lo", "rho_hi"]].isna().all().all()
    assert (scale["note"] == "n = 2: too few models for a rank correlation").all()


# --- scale statistics with ties, unknown sizes and undefined metrics -----------------------
def _scale_metrics(depth, final, *, emerged=None, void=None, models=None):
    n = len(depth)
    names = models or [f"m{k}" for k in range(n)]
    return pd.DataFrame(dict(model=names, probeset="p", rule="r", split="heldout",
                             void=void if void is not None else [False] * n,
                             emerged=emerged if emerged is not None else [True] * n,
                             depth=depth, final_acc=final))


def _scale_models(names, sizes):
    return pd.DataFrame(dict(model=names, params_total=sizes, params_nonembedding=[s / 2 for s in sizes]))


def _rows(scale):
    return scale.set_index(["size", "metric"])


def test_float_noise_ties_give_rho_undefined():
    """The demo's case: three collapse depths 1.0, 1.0, 1.0000000000000002 after smoothing."""
    metrics = _scale_metrics([1.0, 1.0, 1.0000000000000002], [0.1, 0.0, 0.2])
    scale = _rows(dyn.scale_analysis(metrics, _scale_models(["m0", "m1", "m2"], [1e6, 4e6, 1.6e7]), config=CFG))
    for size in ("params_total", "params_nonembedding"):
        depth = scale.loc[(size, "depth")]
        assert np.isnan([depth["rho"], depth["p_perm"], depth["rho_lo"], depth["rho_hi"]]).all()
        assert depth["note"] == "rho undefined: all depths equal" and depth["n_models"] == 3
        final = scale.loc[(size, "final_acc")]  # 0.1, 0.0, 0.2 against rising sizes
        assert final["rho"] == pytest.approx(stats.spearmanr([1, 2, 3], [0.1, 0.0, 0.2]).statistic)
        # the demo's n = 3 rows: no interval, saying why, and the smallest p three sizes allow
        assert final["note"] == "no interval: n = 3 < scale.bootstrap_min_models = 8 and not every size has 2+ seeds"
        assert np.isnan(final["rho_lo"]) and final["p_min"] == pytest.approx(1 / 3)
    # without the tie snapping, scipy would rank the noise: rho 0.866 (what the demo printed)
    assert stats.spearmanr([1, 2, 3], [1.0, 1.0, 1.0000000000000002]).statistic == pytest.approx(0.866, abs=1e-3)


def test_snap_ties_groups_values_within_the_tolerance():
    got = dyn.snap_ties(np.array([0.3, 1.0 + 2e-16, 0.1 + 0.2, 1.0, 0.5]), 1e-9)
    # 0.1 + 0.2 = 0.30000000000000004 ties with 0.3; both 1.0s tie; 0.5 stands alone
    assert got[0] == got[2] and got[1] == got[3] and len(set(got)) == 3
    assert stats.rankdata(got).tolist() == [1.5, 4.5, 1.5, 4.5, 3.0]
    assert dyn.snap_ties(np.array([]), 1e-9).size == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_rho_equals_scipy_on_the_snapped_values_and_ignores_rounding_noise(seed):
    rng = np.random.default_rng(seed)
    n = 6
    # coarse values (many exact ties), then float noise far below the tolerance on top
    depth = rng.integers(0, 3, n) / 4
    final = rng.integers(0, 4, n) / 5
    sizes = [float(2 ** k) for k in rng.permutation(n)]
    noise = lambda v: v + rng.choice([-1, 0, 1], n) * 1e-13  # noqa: E731
    names = [f"m{k}" for k in range(n)]
    models = _scale_models(names, sizes)
    clean = dyn.scale_analysis(_scale_metrics(depth, final), models, config=CFG)
    noisy = dyn.scale_analysis(_scale_metrics(noise(depth), noise(final)), models, config=CFG)
    pd.testing.assert_frame_equal(clean, noisy)  # rho, p, CI and notes: noise changes nothing
    for row in noisy.itertuples():
        sub = models.set_index("model").loc[row.models.split(",")]
        y = dict(depth=depth, final_acc=final)[row.metric][[names.index(m) for m in sub.index]]
        want = stats.spearmanr(sub[row.size].to_numpy(), y).statistic
        if np.unique(y).size < 2:
            assert np.isnan(row.rho) and row.note.startswith("rho undefined: all")
        else:
            assert row.rho == pytest.approx(want, abs=1e-12)
            assert np.isnan(row.rho_lo) and "no interval: n = 6 <" in row.note  # 6 < bootstrap_min_models


def test_permutation_p_with_ties_equals_a_full_enumeration():
    """Two-sided exact p over all 5! pairings, computed here from scratch (scipy's definition:
    twice the smaller tail, ties with the observed value count in both tails)."""
    import itertools

    depth = [0.5, 0.5, 0.25, 0.25 + 1e-14, 0.0]  # two float-noise ties
    sizes = [1.0, 2.0, 3.0, 4.0, 5.0]
    row = _rows(dyn.scale_analysis(_scale_metrics(depth, [0.0] * 5), _scale_models(
        [f"m{k}" for k in range(5)], sizes), config=CFG)).loc[("params_total", "depth")]
    snapped = [0.5, 0.5, 0.25, 0.25, 0.0]
    obs = stats.spearmanr(sizes, snapped).statistic
    null = np.array([stats.spearmanr(sizes, list(p)).statistic for p in itertools.permutations(snapped)])
    gamma = 1e-14 * abs(obs)
    want = min(1.0, 2 * min((null <= obs + gamma).mean(), (null >= obs - gamma).mean()))
    assert row["rho"] == pytest.approx(obs) and row["p_perm"] == pytest.approx(want)


def test_unknown_sizes_void_and_never_emerged_models_are_left_out_and_named():
    metrics = _scale_metrics([0.9, 0.5, 0.2, 0.1, 0.4, 0.3, 0.0], [0.0, 0.3, 0.6, 0.8, 0.2, 0.1, 0.9],
                             emerged=[True, True, True, True, True, False, True],
                             void=[False, False, False, False, True, False, False],
                             models=["a", "b", "c", "d", "v", "never", "hub/extra"])
    # "hub/extra" is not in models.parquet at all; "c" is, with an unknown (NA) size
    models = pd.DataFrame(dict(model=["a", "b", "c", "d", "v", "never"],
                               params_total=pd.array([1, 2, None, 8, 16, 32], dtype="Int64"),
                               params_nonembedding=pd.array([1, 2, None, 4, 8, 16], dtype="Int64")))
    scale = _rows(dyn.scale_analysis(metrics, models, config=CFG))
    depth = scale.loc[("params_total", "depth")]
    assert depth["models"] == "a,b,d" and depth["n_models"] == 3
    assert depth["rho"] == pytest.approx(stats.spearmanr([1, 2, 8], [0.9, 0.5, 0.1]).statistic)
    assert depth["note"] == ("no interval: n = 3 < scale.bootstrap_min_models = 8 and not every size has 2+ "
                             "seeds; sizes unknown for: c, hub/extra; never emerged (no collapse depth): never; "
                             "void verdict: v")
    final = scale.loc[("params_total", "final_acc")]  # a rule that never emerged still has a final
    assert final["models"] == "a,b,d,never" and final["note"] == (
        "no interval: n = 4 < scale.bootstrap_min_models = 8 and not every size has 2+ seeds; "
        "sizes unknown for: c, hub/extra; void verdict: v")
    assert final["rho"] == pytest.approx(stats.spearmanr([1, 2, 8, 32], [0.0, 0.3, 0.8, 0.1]).statistic)


def test_all_sizes_unknown_is_a_note_not_a_crash():
    metrics = _scale_metrics([0.9, 0.5, 0.2], [0.0, 0.3, 0.6])
    models = pd.DataFrame(dict(model=["m0", "m1", "m2"], params_total=[np.nan] * 3, params_nonembedding=[0, 0, 0]))
    scale = dyn.scale_analysis(metrics, models, config=CFG)
    assert len(scale) == 4 and scale["rho"].isna().all()
    assert (scale["note"] == "n = 0: too few models for a rank correlation; sizes unknown for: m0, m1, m2").all()


# dynamics.parquet / .csv columns as users and earlier releases read them (TrajectoryMetrics.to_row
# must keep them, in this order)
DYNAMICS_COLUMNS = [
    "model", "probeset", "rule", "split", "n_checkpoints", "emerged", "emergence_step", "peak_acc", "peak_step",
    "collapse_step", "final_points", "final_acc", "final_range", "depth", "agree_final", "agree_max", "agree_valid",
    "cm_max", "cm_valid", "cm_cross_step", "lag_steps", "lag_checkpoints", "cm_within_lag", "final_lo", "final_hi",
    "depth_lo", "depth_hi", "verdict", "void", "void_reason", "verdict_label", "n_items_conflict", "n_items_agree",
    "n_excluded_health", "excluded_steps", "config_sha256"]


def test_analyze_results_folder_and_write(pronoun_suite_store, copy_store):
    root = copy_store(pronoun_suite_store)  # suite_items(rules=("pronoun_gender",)), suite_models()
    result = dyn.analyze(root)
    assert len(result.metrics) == 5 and not result.scale.empty
    written = dyn.write_dynamics(result, root)
    names = {p.name for p in written}
    assert {"dynamics.parquet", "dynamics.csv", "trajectories.parquet", "scale.csv"} <= names
    back = pd.read_parquet(root / "dynamics.parquet")
    assert (back["config_sha256"] == CFG.sha256).all()
    assert list(back["verdict_label"]) == list(result.metrics["verdict_label"])
    assert list(back.columns) == DYNAMICS_COLUMNS == list(pd.read_csv(root / "dynamics.csv").columns)


def test_trajectory_metrics_is_a_frozen_record_whose_row_has_no_series():
    res, _ = metrics(COLLAPSE)
    with pytest.raises(AttributeError):
        res.depth = 0.0  # frozen: a hand-off nobody edits on the way
    row = res.to_row()
    assert list(row) == DYNAMICS_COLUMNS[4:23]  # the metric columns, no smoothed series
    np.testing.assert_allclose(res.conflict_smooth, [0.35, 1.6 / 3, 2.3 / 3, 0.9, 0.9, 0.7, 0.4, 0.1, 0.0, 0.0])


def test_analyze_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist") as missing:
        dyn.analyze(tmp_path / "nope")
    assert missing.value.param == "results" and "--" not in str(missing.value)  # the CLI adds the flag
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no results"):
        dyn.analyze(tmp_path / "empty")
    with pytest.raises(StoreError, match="lack column"):
        dyn.analyze(pd.DataFrame(dict(model=["a"])))


def test_config_override_changes_hash_and_results(tmp_path):
    override = tmp_path / "strict.yaml"
    override.write_text("verdicts:\n  displaced_final_max: 0.05\n")
    cfg = dyn.load_config(override)
    assert cfg.displaced_final_max == 0.05 and cfg.sha256 != CFG.sha256
    res = dyn.trajectory_metrics(STEPS, np.array([0.9] * 6 + [0.1] * 4), ONES, CM_AT_COLLAPSE, config=cfg)
    assert dyn.classify(res, cfg)[0] == "PARTIAL"  # final .1 is no longer displaced
    bad = tmp_path / "bad.yaml"
    bad.write_text("verdicts:\n  displaced_max: 0.5\n")
    with pytest.raises(ConfigError, match="unknown key verdicts.displaced_max"):
        dyn.load_config(bad)
    bad.write_text("smoothing:\n  window: 4\n")
    with pytest.raises(ConfigError, match="odd"):
        dyn.load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        dyn.load_config(tmp_path / "missing.yaml")


def test_no_threshold_literal_outside_analysis_yaml():
    """No #5 module compares against, or names a constant for, a registered threshold value:
    thresholds are read from analysis.yaml. (Drawing offsets and line widths may be 0.5.)"""
    registered = {0.8, 0.6, 0.15, 0.2, 0.5, 100}
    pkg = Path(dyn.__file__).parent

    def literals(node):
        return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
                and isinstance(n.value, (int, float)) and not isinstance(n.value, bool) and n.value in registered]

    for name in ("dynamics.py", "prereg.py", "figures.py", "report.py", "../cli/analyze.py"):
        tree = ast.parse((pkg / name).read_text())
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                found += literals(node)
        for node in tree.body:  # module-level constants (DISPLACED_THR = 0.6)
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                found += literals(node)
        assert not found, f"{name} holds threshold literal(s) {found}; read them from analysis.yaml"


def test_pythia_grid_with_early_global_bias():
    """Pythia's 154-step grid: 0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000."""
    steps = [0] + [2 ** i for i in range(10)] + list(range(1000, 143001, 1000))
    assert len(steps) == 154
    # global bias (conflict 1, agree 0) up to 512; the rule at 1000-3000 (.9); gone from 4000
    conflict = [1.0 if s < 1000 else 0.9 if s <= 3000 else 0.0 for s in steps]
    agree = [0.0 if s < 1000 else 1.0 for s in steps]
    row = dyn.analyze(items_for(steps, conflict, agree)).metrics.iloc[0]
    # used: 128, 256, 512 and 1000..143000 = 146 checkpoints; final = last max(3, ceil(14.6)) = 15
    assert row["n_checkpoints"] == 146 and row["final_points"] == 15
    # smoothed conflict 1, 1, .967, .933 (1000), .9 (2000), .6 (3000), .3 (4000), 0...
    # smoothed agree    0, 0, .333, .667 (1000), 1 (2000)... -> emergence at 2000, not at 128
    assert row["emergence_step"] == 2000
    assert row["peak_step"] == 2000 and row["peak_acc"] == pytest.approx(0.9)
    assert row["collapse_step"] == 3000 and row["final_acc"] == 0.0 and row["depth"] == pytest.approx(0.9)
    # CM +1 through 3000, -1 after: smoothed 1/3 at 3000, -1/3 at 4000
    assert row["cm_cross_step"] == 3000 and row["lag_steps"] == 0 and row["lag_checkpoints"] == 0
    assert row["verdict_label"] == "DISPLACED"
