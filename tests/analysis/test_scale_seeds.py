"""Scale statistics with seeds as replicates, checked against scipy and a from-scratch
enumeration on a synthetic metrics table with known per-seed depths."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pythia_forensics.analysis.config import load_config
from pythia_forensics.analysis.scale import scale_analysis, snap_ties
from pythia_forensics.sweep.replay import replicate_group

CFG = load_config()
SIZES = [6_000.0, 14_000.0, 25_000.0, 100_000.0, 221_000.0]


def _store(depths: dict[float, list[float]], *, seeds=(1234, 1235, 1236)):
    """metrics + models rows: one model per (size, seed), depth as given, final 1 - depth."""
    metrics, models = [], []
    for k, (size, values) in enumerate(depths.items()):
        for seed, d in zip(seeds, values):
            name = f"grid-d{k}-s070-r{seed}"
            metrics.append(dict(model=name, probeset="p", rule="r", split="heldout", void=False, emerged=True,
                                depth=d, final_acc=1.0 - d if np.isfinite(d) else 0.0))
            models.append(dict(model=name, params_total=size * 2, params_nonembedding=size, seed=seed,
                               replicate_group=replicate_group(name, seed)))
    return pd.DataFrame(metrics), pd.DataFrame(models)


def _full_enumeration(x, y):
    """scipy's two-sided definition, from scratch: twice the smaller tail over all n! pairings."""
    obs = stats.spearmanr(x, y).statistic
    null = np.array([stats.spearmanr(x, list(p)).statistic for p in itertools.permutations(y)])
    gamma = 1e-14 * abs(obs)
    p = min(1.0, 2 * min((null <= obs + gamma).mean(), (null >= obs - gamma).mean()))
    most = np.nanmax(np.abs(null))
    p_min = min(1.0, 2 * (null >= most - 1e-12).mean())
    return obs, p, p_min


def test_rho_and_exact_p_are_scipy_on_the_per_size_seed_means():
    rng = np.random.default_rng(7)
    depths = {s: list(np.round(rng.random(3), 3)) for s in SIZES}
    metrics, models = _store(depths)
    row = scale_analysis(metrics, models, config=CFG).set_index(["size", "metric"]).loc[
        ("params_nonembedding", "depth")]
    means = snap_ties(np.array([np.mean(v) for v in depths.values()]), CFG.tolerance)
    rho, p, p_min = _full_enumeration(SIZES, list(means))
    assert row["n_models"] == 15 and row["n_sizes"] == 5 and row["seeds_per_size"] == "3,3,3,3,3"
    assert row["rho"] == pytest.approx(rho, abs=1e-12)
    ref = stats.permutation_test((means,), lambda b: stats.spearmanr(SIZES, b).statistic,
                                 permutation_type="pairings", n_resamples=np.inf)
    assert row["p_perm"] == pytest.approx(ref.pvalue, abs=1e-12) and row["p_perm"] == pytest.approx(p, abs=1e-12)
    assert row["p_min"] == pytest.approx(p_min) and row["p_min"] == pytest.approx(2 / math.factorial(5))
    assert row["interval"] == "bootstrap over seeds within size"
    assert row["rho_lo"] <= row["rho"] + 1e-12 and row["rho"] - 1e-12 <= row["rho_hi"]


def test_seed_interval_resamples_seeds_within_size_exactly_as_a_plain_loop():
    depths = {s: [0.9 - 0.15 * k + e for e in (-0.1, 0.0, 0.12)] for k, s in enumerate(SIZES)}
    metrics, models = _store(depths)
    row = scale_analysis(metrics, models, config=CFG).set_index(["size", "metric"]).loc[
        ("params_nonembedding", "depth")]
    # the same draws, one resample at a time (the module draws per size, in size order)
    rng = np.random.default_rng(CFG.bootstrap_seed)
    groups = [np.array(v) for v in depths.values()]
    draws = np.column_stack([g[rng.integers(0, 3, size=(CFG.bootstrap_n, 3))].mean(axis=1) for g in groups])
    boot = []
    for b in range(CFG.bootstrap_n):
        y = snap_ties(draws[b], CFG.tolerance)
        if np.unique(y).size > 1:
            boot.append(stats.spearmanr(SIZES, y).statistic)
    alpha = (1 - CFG.bootstrap_confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    assert row["rho_lo"] == pytest.approx(lo, abs=1e-12) and row["rho_hi"] == pytest.approx(hi, abs=1e-12)
    assert row["rho_lo"] < row["rho_hi"]  # the seeds overlap across sizes: not a point


def test_ties_between_size_means_are_snapped_before_ranking():
    depths = {SIZES[0]: [1.0, 1.0, 1.0], SIZES[1]: [1.0, 1.0, 1.0 + 3e-16], SIZES[2]: [0.5, 0.5, 0.5],
              SIZES[3]: [0.2, 0.3, 0.1], SIZES[4]: [0.0, 0.0, 0.0]}
    metrics, models = _store(depths)
    row = scale_analysis(metrics, models, config=CFG).set_index(["size", "metric"]).loc[
        ("params_nonembedding", "depth")]
    snapped = [1.0, 1.0, 0.5, 0.2, 0.0]
    rho, p, p_min = _full_enumeration(SIZES, snapped)
    assert row["rho"] == pytest.approx(rho) and row["p_perm"] == pytest.approx(p)
    assert row["p_min"] == pytest.approx(p_min) and row["p_min"] > 2 / math.factorial(5)  # a tie: fewer extremes


def test_nan_depths_are_left_out_with_a_note_and_single_seed_sizes_get_no_interval():
    depths = {s: [d] for s, d in zip(SIZES, [0.9, np.nan, 0.6, 0.3, 0.1])}
    metrics, models = _store(depths, seeds=(1234,))
    row = scale_analysis(metrics, models, config=CFG).set_index(["size", "metric"]).loc[
        ("params_nonembedding", "depth")]
    kept = [SIZES[0], *SIZES[2:]]
    assert row["n_sizes"] == 4 and "grid-d1-s070-r1234" in row["note"] and "no collapse depth" in row["note"]
    assert row["rho"] == pytest.approx(stats.spearmanr(kept, [0.9, 0.6, 0.3, 0.1]).statistic)
    assert np.isnan(row["rho_lo"]) and "no interval: n = 4 < scale.bootstrap_min_models" in row["note"]
    assert row["p_min"] == pytest.approx(2 / math.factorial(4))


def test_above_the_minimum_the_interval_is_over_sizes_and_p_min_is_the_monte_carlo_floor():
    sizes = [float(2 ** k) for k in range(9)]
    depths = {s: [d] for s, d in zip(sizes, [0.9, 0.8, 0.85, 0.5, 0.6, 0.3, 0.2, 0.25, 0.0])}
    metrics, models = _store(depths, seeds=(1234,))
    cfg = replace(CFG, scale_bootstrap_min_models=8)
    row = scale_analysis(metrics, models, config=cfg).set_index(["size", "metric"]).loc[
        ("params_nonembedding", "depth")]
    assert row["interval"] == "bootstrap over sizes" and row["rho_lo"] <= row["rho"] <= row["rho_hi"]
    assert row["p_min"] == pytest.approx(2 / (cfg.scale_permutations + 1))  # 9 > scale.exact_max_n


def test_replicate_group_strips_only_a_known_seed_suffix():
    assert replicate_group("pythia-70m-seed3", 3) == "pythia-70m" == replicate_group("pythia-70m", 1234)
    assert replicate_group("grid-d32-s070-r1235", 1235) == "grid-d32-s070"
    assert replicate_group("pythia-160m-data-seed1", None) == "pythia-160m-data-seed1"


def test_analyze_seed_flag_pools_a_users_runs_into_replicates_csv(pronoun_suite_store, copy_store, run_cli):
    res = copy_store(pronoun_suite_store)
    code, out, err = run_cli(["analyze", "--results", str(res), "--seed", "mini-l=1:big", "--seed", "mini-xl=2:big"])
    assert code == 0, err
    table = pd.read_csv(res / "replicates.csv", dtype={"seed": str})
    metrics = pd.read_parquet(res / "dynamics.parquet")
    pooled = table[(table["replicate_group"] == "big") & (table["seed"] == "pooled") & (table["metric"] == "final_acc")
                   & (table["split"] == "heldout")].iloc[0]
    want = metrics[metrics["model"].isin(["mini-l", "mini-xl"]) & (metrics["split"] == "heldout")]["final_acc"]
    assert pooled["n_seeds"] == 2 and pooled["value"] == pytest.approx(want.mean())
    assert "pooled over seeds" in out


def test_a_malformed_seed_flag_is_one_line_exit_2(pronoun_suite_store, copy_store, run_cli):
    res = copy_store(pronoun_suite_store)
    code, _, err = run_cli(["analyze", "--results", str(res), "--seed", "mini-l"])
    assert code == 2 and "--seed 'mini-l': write MODEL=SEED" in err and "Traceback" not in err


def test_polypythia_seeds_from_the_registry_group_with_their_size():
    from pythia_forensics.checkpoints.registry import get_suite

    specs = [m for m in get_suite("pythia").models if m.size == "70m"]
    groups = {m.name: replicate_group(m.name, m.seed) for m in specs}
    seeded = [n for n in groups if n == "pythia-70m" or n.startswith("pythia-70m-seed")]
    assert len(seeded) == 10 and {groups[n] for n in seeded} == {"pythia-70m"}
    assert groups["pythia-70m-deduped"] == "pythia-70m-deduped"  # another data set: not a replicate
