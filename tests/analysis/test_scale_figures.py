"""The scale grid's figures plot exactly the stored tables (grid.csv, replicates.csv,
scale_by_knob.csv), computed here from a synthetic grid with known per-seed values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pythia_forensics.analysis.config import load_config
from pythia_forensics.analysis.replicates import seed_table
from pythia_forensics.analysis.scale_figures import depth_size_figure, fate_boundary, phase_cells, phase_diagram
from pythia_forensics.experiments.scale import scale_by_knob
from pythia_forensics.sweep.replay import replicate_group

CFG = load_config()
SIZES = [6_000, 14_000, 25_000, 100_000, 221_000]
KNOBS = {0.5: 0.6, 0.7: 1.4, 0.8: 2.5, 0.9: 5.8}  # knob -> measured in-frame support
SEEDS = (1234, 1235, 1236)


def _grid():
    rng = np.random.default_rng(11)
    rows, metrics = [], []
    for knob, support in KNOBS.items():
        for k, size in enumerate(SIZES):
            for seed in SEEDS if knob in (0.7, 0.8) else SEEDS[:1]:
                name = f"grid-d{k}-s{round(knob * 100):03d}-r{seed}"
                final = float(np.clip(2 * (knob - 0.6) + 0.15 * k + rng.normal(0, 0.03), 0, 1))
                depth = np.nan if (knob == 0.9 and k == 0) else 1.0 - final
                rows.append(dict(model=name, replicate_group=replicate_group(name, seed), seed=seed, d_model=8 * k,
                                 params_total=2 * size, params_nonembedding=size, knob=knob,
                                 corpus=f"corpus-s{round(knob * 100):03d}", in_frame_support=support,
                                 emerged=bool(np.isfinite(depth)), peak_acc=1.0, final_acc=final, depth=depth,
                                 verdict_label="DISPLACED", void=False))
                metrics.append(dict(model=name, probeset="pronoun_gender", rule="pronoun_gender", split="heldout",
                                    void=False, emerged=bool(np.isfinite(depth)), peak_acc=1.0, final_acc=final,
                                    depth=depth, agree_final=1.0, cm_max=3.0))
    grid = pd.DataFrame(rows)
    models = grid[["model", "params_total", "params_nonembedding", "seed", "replicate_group"]]
    return grid, pd.DataFrame(metrics), models


def test_phase_diagram_cells_and_boundary_equal_the_grid_table():
    grid, _, _ = _grid()
    fig = phase_diagram(grid, rule="pronoun_gender", survive_min=CFG.recovered_final_min)
    cells = phase_cells(grid)
    for metric in ("final_acc", "depth"):
        art = next(c for ax in fig.axes for c in ax.collections if c.get_gid() == f"cells:{metric}")
        offsets = np.asarray(art.get_offsets())
        # the table, recomputed here: mean over seeds per (knob, size)
        for (x, y), v in zip(offsets, np.asarray(art.get_array(), dtype=float)):
            sub = grid[(grid["in_frame_support"] == x) & (grid["params_nonembedding"] == y)]
            want = sub[metric].mean()
            assert (np.isnan(v) and np.isnan(want)) or v == pytest.approx(want, abs=1e-12)
        assert len(offsets) == len(cells) == len(KNOBS) * len(SIZES)
    boundary = fate_boundary(cells, CFG.recovered_final_min)
    line = next(ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == "boundary")
    drawn = [(xb, y) for xb, y in zip(line.get_xdata(), line.get_ydata()) if np.isfinite(xb)]
    for xb, y in drawn:
        c = cells[cells["params_nonembedding"] == y]
        kept = c["final_acc"] >= CFG.recovered_final_min
        lost_max, kept_min = c.loc[~kept, "in_frame_support"].max(), c.loc[kept, "in_frame_support"].min()
        assert lost_max < kept_min and xb == pytest.approx(np.sqrt(lost_max * kept_min))
    assert len(drawn) == boundary["boundary"].notna().sum() > 0


def test_depth_size_figure_plots_the_replicates_table_and_prints_the_scale_row():
    grid, metrics, models = _grid()
    replicates = seed_table(metrics, models, config=CFG)
    scale = scale_by_knob(metrics, models, grid, config=CFG)
    fig = depth_size_figure(grid, replicates, scale, rule="pronoun_gender")
    pooled = replicates[(replicates["seed"] == "pooled") & (replicates["metric"] == "depth")]
    for ax, knob in zip(fig.axes, sorted(KNOBS)):
        line = next(ln for ln in ax.lines if ln.get_gid() == f"means:{knob}")
        g = grid[grid["knob"] == knob]
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            group = g[g["params_nonembedding"] == x]["replicate_group"].iloc[0]
            want = pooled[pooled["replicate_group"] == group]["value"].item()
            seeds = g[(g["params_nonembedding"] == x)]["depth"].dropna()
            assert (np.isnan(y) and seeds.empty) or (y == pytest.approx(want) and want == pytest.approx(seeds.mean()))
        row = scale[(scale["knob"] == knob) & (scale["size"] == "params_nonembedding") & (scale["metric"] == "depth")]
        title = ax.get_title()
        assert f"p_min = {row['p_min'].item():.3g}" in title
        if np.isfinite(row["rho"].item()):
            assert f"rho = {row['rho'].item():.2f}" in title and f"p = {row['p_perm'].item():.3g}" in title


def test_seed_table_pools_with_a_student_t_interval_over_seeds():
    from scipy import stats

    grid, metrics, models = _grid()
    t = seed_table(metrics, models, config=CFG)
    group = "grid-d2-s070"
    values = grid[grid["replicate_group"] == group]["final_acc"].to_numpy()
    row = t[(t["replicate_group"] == group) & (t["seed"] == "pooled") & (t["metric"] == "final_acc")].iloc[0]
    ci = stats.t.interval(CFG.bootstrap_confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert row["n_seeds"] == 3 and row["value"] == pytest.approx(values.mean())
    assert (row["lo"], row["hi"]) == pytest.approx(ci)
    per_seed = t[(t["replicate_group"] == group) & (t["seed"] != "pooled") & (t["metric"] == "final_acc")]
    assert sorted(per_seed["seed"]) == ["1234", "1235", "1236"] and per_seed["value"].tolist() == pytest.approx(
        sorted(values, key=lambda v: list(values).index(v)))
    single = t[(t["replicate_group"] == "grid-d0-s090") & (t["seed"] == "pooled") & (t["metric"] == "depth")].iloc[0]
    assert single["n_seeds"] == 0 and np.isnan(single["value"]) and single["interval"].startswith("no interval")
