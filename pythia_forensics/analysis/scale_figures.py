"""Figures of the scale grid: fate over support x size, and collapse depth against size.

(a) ``phase_diagram``: per (measured in-frame support, non-embedding parameters) cell the
    final conflict accuracy and the collapse depth (means over seeds, printed in the cell),
    with the fate boundary: per size, between the largest support whose rule was lost and the
    smallest one whose rule survived (`scale.flip_point`), drawn at their geometric midpoint.
(b) ``depth_size_figure``: per support knob, depth against non-embedding parameters: every
    seed as a light dot, the pooled mean over seeds with its Student-t interval over seeds
    (replicates.csv), and the knob's scale statistic (scale_by_knob.csv) in the title.

Every plotted number comes from the stored tables passed in (grid.csv, replicates.csv,
scale_by_knob.csv); artists carry a ``gid`` naming what they show so a test can read them.
Same visual language as figures.py (figure_style): Okabe-Ito hues, DejaVu Sans, PDF + PNG.
"""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pythia_forensics.analysis.figure_style import (CONDITION_COLORS, EVENT_COLOR, NEUTRAL, figure_legend, panel_grid,
                                                    style, wrap)
from pythia_forensics.analysis.scale import flip_point

__all__ = ["phase_cells", "fate_boundary", "phase_diagram", "depth_size_figure", "PARAMS_LABEL", "SUPPORT_LABEL"]

PARAMS_LABEL = "non-embedding parameters (count, log scale)"
SUPPORT_LABEL = "measured in-frame support (rule wins / prior wins, log scale)"
DEPTH_LABEL = "collapse depth (peak - final conflict accuracy)"
CMAP = "cividis"  # sequential and colour-blind safe


def phase_cells(grid: pd.DataFrame) -> pd.DataFrame:
    """Per (knob, size) cell: measured support, mean final accuracy and depth over seeds, n."""
    g = grid[~grid["void"].astype(bool)]
    cells = g.groupby(["knob", "params_nonembedding"], sort=True).agg(
        in_frame_support=("in_frame_support", "first"), final_acc=("final_acc", "mean"), depth=("depth", "mean"),
        n_seeds=("model", "size"), n_depth=("depth", "count")).reset_index()
    return cells


def fate_boundary(cells: pd.DataFrame, survive_min: float) -> pd.DataFrame:
    """Per size: the flip interval along measured support (lost below, kept above) and its
    geometric midpoint; NaN where no single flip separates them."""
    rows = []
    for size, c in cells.groupby("params_nonembedding", sort=True):
        flip = flip_point(c["in_frame_support"].to_numpy(float), c["final_acc"].to_numpy(float) >= survive_min)
        lo, hi = flip if flip else (np.nan, np.nan)
        rows.append(dict(params_nonembedding=size, lost_max=lo, kept_min=hi,
                         boundary=float(np.sqrt(lo * hi)) if flip else np.nan))
    return pd.DataFrame(rows, columns=["params_nonembedding", "lost_max", "kept_min", "boundary"])


def phase_diagram(grid: pd.DataFrame, *, rule: str, survive_min: float = 0.8) -> Figure:
    """Final conflict accuracy and collapse depth over measured support x size, fate boundary drawn.

    Args:
        grid: grid.csv rows (experiments.scale.grid_table).
        rule: the rule whose support knob the grid varies (title).
        survive_min: final accuracy at or above which a rule counts as kept (verdicts.recovered_final_min).
    """
    cells = phase_cells(grid)
    boundary = fate_boundary(cells, survive_min)
    cmap = matplotlib.colormaps[CMAP].with_extremes(bad="#FFFFFF")  # undefined depth: a white cell
    with style():
        fig, axes = panel_grid(2, width=4.2, height=3.4, max_cols=2, legend_rows=1)
        for ax, metric, title, label in (
                (axes[0], "final_acc", "final conflict accuracy (mean over seeds)", "final conflict accuracy"),
                (axes[1], "depth", "collapse depth (mean over seeds)", DEPTH_LABEL)):
            values = cells[metric].to_numpy(float)
            sc = ax.scatter(cells["in_frame_support"], cells["params_nonembedding"], c=values, cmap=cmap, vmin=0,
                            vmax=1, marker="s", s=420, edgecolors=NEUTRAL, linewidths=0.5, plotnonfinite=True,
                            gid=f"cells:{metric}")
            for x, y, v, n in zip(cells["in_frame_support"], cells["params_nonembedding"], values, cells["n_seeds"]):
                text = "n/a" if not np.isfinite(v) else f"{v:.2f}"
                ax.annotate(text + (f"\n×{n}" if n > 1 else ""), (x, y), ha="center", va="center", fontsize=5.5,
                            color="white" if np.isfinite(v) and v < 0.45 else "black")
            # NaN rows (no single flip at that size) break the line: only adjacent flips are joined
            b = boundary
            ax.plot(b["boundary"], b["params_nonembedding"], color=EVENT_COLOR, linestyle="--", marker="|",
                    markersize=10, linewidth=1.2, label=f"fate boundary (final acc. {survive_min:g} flips)",
                    gid="boundary")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(SUPPORT_LABEL)
            ax.set_title(title)
            ax.margins(x=0.15, y=0.15)
            fig.colorbar(sc, ax=ax, label=label, shrink=0.9)
        axes[0].set_ylabel(PARAMS_LABEL)
        fig.suptitle(f"{rule}: fate over support x size (×n: seeds averaged; white n/a: depth undefined; "
                     "no boundary tick: no single flip at that size)", fontsize=8.5)
        figure_legend(fig, axes)
    return fig


def depth_size_figure(grid: pd.DataFrame, replicates: pd.DataFrame, scale: pd.DataFrame, *, rule: str,
                      split: str = "heldout") -> Figure:
    """Collapse depth against non-embedding parameters, one panel per support knob.

    Args:
        grid: grid.csv rows (per seed: the light dots).
        replicates: replicates.csv rows (pooled depth per replicate group: mean and interval).
        scale: scale_by_knob.csv rows (rho, p_perm, p_min, interval for params_nonembedding/depth).
        rule: the rule (title).
        split: the probe split grid.csv and scale_by_knob.csv were computed on (analysis.primary_split).
    """
    knobs = sorted(grid["knob"].unique())
    pooled = replicates[(replicates["seed"] == "pooled") & (replicates["metric"] == "depth")
                        & (replicates["rule"] == rule) & (replicates["split"] == split)].set_index("replicate_group")
    stat = scale[(scale["size"] == "params_nonembedding") & (scale["metric"] == "depth") & (scale["rule"] == rule)
                 & (scale["split"] == split)]
    color = CONDITION_COLORS["conflict"]
    sizes = grid["params_nonembedding"].astype(float)
    xlim = (sizes.min() / 1.6, sizes.max() * 1.6) if len(sizes) else (1, 10)  # one x range: panels compare
    with style():
        fig, axes = panel_grid(len(knobs), width=2.9, height=2.6, max_cols=3, legend_rows=1)
        for ax, knob in zip(axes, knobs):
            g = grid[(grid["knob"] == knob) & ~grid["void"].astype(bool)]
            ok = g[np.isfinite(g["depth"].astype(float))]
            ax.scatter(ok["params_nonembedding"], ok["depth"], s=10, color=color, alpha=0.35, linewidths=0,
                       label="one seed", gid=f"seeds:{knob}")
            groups = g.groupby("replicate_group")["params_nonembedding"].first().sort_values()
            p = pooled.reindex(groups.index)
            x = groups.to_numpy(float)
            y = p["value"].to_numpy(float)
            lo, hi = p["lo"].to_numpy(float), p["hi"].to_numpy(float)
            err = np.vstack([np.where(np.isfinite(lo), y - lo, 0), np.where(np.isfinite(hi), hi - y, 0)])
            bars = ax.errorbar(x, y, yerr=err, color=color, marker="o", markersize=4, capsize=2.5, linewidth=1,
                               label="mean over seeds (t interval over seeds)")
            bars.lines[0].set_gid(f"means:{knob}")
            ax.set_xscale("log")
            ax.set_ylim(-0.05, 1.05)
            row = stat[np.isclose(stat["knob"].astype(float), knob)]
            support = g["in_frame_support"].iloc[0] if len(g) else np.nan
            ax.set_title(f"knob {knob:g} (in-frame support {support:.2f})\n" + _stat_line(row), fontsize=7)
            ax.set_xlim(*xlim)
            ax.set_xlabel("non-embedding params (log)")
            left_out = g[~np.isfinite(g["depth"].astype(float))]
            if len(left_out):
                ax.text(0.02, 0.02, wrap(f"depth undefined, left out: {len(left_out)} run(s)", 40),
                        transform=ax.transAxes, fontsize=6, color=NEUTRAL)
        axes[0].set_ylabel(DEPTH_LABEL)
        fig.suptitle(f"{rule}: collapse depth against size per support knob (Spearman on per-size seed means)",
                     fontsize=8.5)
        figure_legend(fig, axes, [(Line2D([], [], color=NEUTRAL, linestyle=""), "rho: Spearman; p: exact "
                                   "permutation; p_min: smallest p n sizes allow")], ncols=3)
    return fig


def _stat_line(row: pd.DataFrame) -> str:
    if row.empty:
        return "no scale statistic"
    r = row.iloc[0]
    p_min = "" if pd.isna(r["p_min"]) else f", p_min = {r['p_min']:.3g}"
    if pd.isna(r["rho"]):
        return wrap(f"rho n/a ({str(r['note']).split(';')[0]}){p_min}", 44)
    ci = "" if pd.isna(r["rho_lo"]) else f"\n95% [{r['rho_lo']:.2f}, {r['rho_hi']:.2f}] ({r['interval']})"
    return f"rho = {r['rho']:.2f}, p = {r['p_perm']:.3g}{p_min} (n = {int(r['n_sizes'])}){ci}"
