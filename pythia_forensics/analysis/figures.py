"""The figure set: tidy frames in, matplotlib Figures out; one visual language; deterministic files.

Figures (one per rule where it says so), all on the analysis's primary split:

(a) ``a_accuracy_<rule>``: conflict and agree accuracy vs training step, one panel per model
    (dots raw, line smoothed, band bootstrap CI), emergence (triangle), peak (star), collapse
    onset (dotted).
(b) ``b_cm_<rule>``: conflict-item contrast margin vs step per model; the CM zero crossing
    (diamond) is dynamics' ``cm_cross_step``: the last checkpoint with smoothed CM >= 0.
(c) ``c_scale_<rule>``: collapse depth vs parameter count (total, non-embedding; log x, a tick
    at each model) with bootstrap CIs and Spearman rho, or the scale analysis's note when rho
    is undefined; a model without a depth is a labelled line saying why (void, never emerged,
    never collapsed); unknown sizes named.
(d) ``d_verdicts``: verdict grid, rule x model, letters R/U/D/P/N, void hatched grey.
(e) ``e_overview``: every rule's smoothed conflict (solid) and agree (dashed) accuracy, one
    panel per rule.
(f) ``f_support_<rule>``: corpus-wide and in-frame support ratio per window (log axis, parity
    line) beside the accuracy trajectory (only when the results folder holds a support table;
    drawn in support_figures.py).

One visual language across the set: hue means condition (vermillion conflict, blue agree:
Okabe-Ito, colour-blind safe); where several models share a panel they are shades of that hue,
darker = larger; events are black shapes; hollow = not analysed (below the minimum step),
cross = health-flagged checkpoint. The x axis follows the checkpoint grid (`step_axis`): linear
for linear grids, log-style for log-spaced ones, shared by every panel of the set.
Files are vector PDF + PNG with fixed metadata and fonts, so equal input gives equal bytes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
from matplotlib.transforms import offset_copy

from pythia_forensics.analysis.dynamics import (
    VERDICT_LETTERS,
    VERDICTS,
    Analysis,
    AnalysisConfig,
    analyze,
    load_config,
    primary,
)
from pythia_forensics.analysis.figure_style import (  # noqa: F401  (re-exported: the figure set's language)
    ACC_LABEL, BAND_ALPHA, CM_LABEL, COND_LABELS, CONDITION_COLORS, CROSSING, EMERGENCE, EVENT_COLOR, FLAGGED,
    NEUTRAL, NOT_ANALYSED, ONSET, PALETTE, PEAK, RAW_ALPHA, VERDICT_COLORS, VERDICT_TEXT, VOID_COLOR, VOID_TEXT,
    bottom_row, figure_legend, group_rows, legend_rows, model_colors, model_shades, panel_grid, save_figure, slug,
    style, wrap,
)
from pythia_forensics.analysis.frames import model_order, sizes_numeric, unknown_size_models
from pythia_forensics.analysis.step_axis import StepAxis, count_label, step_axis
from pythia_forensics.analysis.support_figures import support_figure, sweep_figure
from pythia_forensics.constants import FIGURES_SUBDIR, SUPPORT_TABLE_FILES
from pythia_forensics.errors import StoreError

__all__ = ["accuracy_figure", "cm_figure", "scale_figure", "verdict_grid", "overview_figure", "support_figure",
           "save_figure", "render_figures", "load_support", "model_order", "model_shades",
           "unknown_size_models", "model_colors", "sweep_figure"]


# A model's name goes left of its point once the point lies past this fraction of the axis width,
# so names near the right edge are never clipped (a placement choice, not an analysis threshold).
_LABEL_FLIP_AT = 0.55



def _tokens_at(store: Any) -> dict[str, dict[int, float]]:
    """model -> {step: tokens seen} from the stored rows' `tokens` column (absent: empty)."""
    items = store.items()
    if items.empty or "tokens" not in items:
        return {}
    rows = items[["model", "step", "tokens"]].dropna().drop_duplicates(["model", "step"])
    return {m: dict(zip(g["step"].astype(int), g["tokens"].astype(float))) for m, g in rows.groupby("model")}


def _axis_for(trajectories: pd.DataFrame, axis: StepAxis | None) -> StepAxis:
    return axis if axis is not None else step_axis(trajectories)


def _dropped(ax, traj: pd.DataFrame, axis: StepAxis, model: str, columns: dict[str, str]) -> None:
    """Left-out checkpoints in their condition's colour: hollow below the minimum step, cross when flagged."""
    low = traj[~traj["used"] & ~traj["drop_reason"].str.startswith("health")]
    flagged = traj[traj["drop_reason"].str.startswith("health")]
    for cond, column in columns.items():
        color = CONDITION_COLORS[cond]
        if not low.empty:
            ax.plot(axis.values(low["step"], model), low[column], linestyle="none", marker="o", mfc="none",
                    mec=color, ms=3, mew=0.8, label=NOT_ANALYSED)
        if not flagged.empty:
            ax.plot(axis.values(flagged["step"], model), flagged[column], linestyle="none", marker="X",
                    color=color, mec=EVENT_COLOR, mew=0.5, ms=6, zorder=4, label=FLAGGED)


@dataclass(frozen=True)
class _Panel:
    """One model's panel of a per-model figure: its axes, rows (all / used) and drawn x."""

    ax: Any
    model: str
    rows: pd.DataFrame
    used: pd.DataFrame
    xs: np.ndarray
    metrics: pd.Series


def _model_panels(trajectories: pd.DataFrame, metrics: pd.DataFrame, probeset: str, rule: str,
                  order: Sequence[str], axis: StepAxis) -> tuple[Figure, np.ndarray, list[_Panel]]:
    """A figure with one panel per model of (probeset, rule), each with the set's step axis.

    Call inside `style()`; the bottom panel of each column carries the x label.
    """
    traj, met = group_rows(trajectories, probeset, rule), group_rows(metrics, probeset, rule).set_index("model")
    models = [m for m in order if m in set(traj["model"])]
    fig, axes = panel_grid(len(models), legend_rows=2)
    cols = min(max(len(models), 1), 5)
    panels = []
    for k, (ax, model) in enumerate(zip(axes, models)):
        t = traj[traj["model"] == model].sort_values("step")
        used = t[t["used"]]
        axis.apply(ax, label=bottom_row(axes, k, cols))
        panels.append(_Panel(ax, model, t, used, axis.values(used["step"], model), met.loc[model]))
    return fig, axes, panels


# --- (a) accuracy -------------------------------------------------------------------------------
def _events(ax, fig: Figure, row, x_of, used: pd.DataFrame, *, y_column: str) -> None:
    """Emergence, peak and collapse onset: black shapes that stay visible when they coincide.

    The peak star sits on the smoothed line; the emergence triangle points up at its point from
    just below, so the two never hide each other; the onset is a dotted line behind both.
    """
    smooth = dict(zip(used["step"], used[y_column]))
    if pd.notna(row["collapse_step"]):
        ax.axvline(x_of(row["collapse_step"]), color=EVENT_COLOR, linestyle=":", linewidth=1.2, zorder=1.5,
                   label=ONSET)
    if pd.notna(row["peak_step"]) and pd.notna(row["peak_acc"]):
        ax.plot([x_of(row["peak_step"])], [row["peak_acc"]], linestyle="none", marker="*", color=EVENT_COLOR,
                mec="white", mew=0.6, ms=10, zorder=5, clip_on=False, label=PEAK)
    if pd.notna(row["emergence_step"]) and row["emergence_step"] in smooth:
        below = offset_copy(ax.transData, fig=fig, y=-7, units="points")
        ax.plot([x_of(row["emergence_step"])], [smooth[row["emergence_step"]]], linestyle="none", marker="^",
                mfc="white", mec=EVENT_COLOR, mew=1.2, ms=6, zorder=6, clip_on=False, transform=below,
                label=EMERGENCE)


def accuracy_figure(trajectories: pd.DataFrame, metrics: pd.DataFrame, *, probeset: str, rule: str,
                    order: Sequence[str], axis: StepAxis | None = None) -> Figure:
    """(a) Conflict and agree accuracy vs step, one panel per model, with event markers.

    Args:
        trajectories: `Analysis.trajectories` of one split.
        metrics: `Analysis.metrics` of the same split.
        probeset, rule: which trajectory group to draw.
        order: model order (panels left to right).
        axis: the figure set's step axis (default: built from `trajectories`).

    Returns:
        The Figure. Artists carry their legend labels: "conflict items" (raw dots, band and
        smoothed line), "agree items (control)", "emergence", "peak", "collapse onset",
        NOT_ANALYSED, FLAGGED.
    """
    axis = _axis_for(trajectories, axis)
    with style():
        fig, axes, panels = _model_panels(trajectories, metrics, probeset, rule, order, axis)
        for p in panels:
            ax, model, t, used, xs, row = p.ax, p.model, p.rows, p.used, p.xs, p.metrics
            x_of = lambda s, m=model: float(axis.values([s], m)[0])  # noqa: E731
            for cond in ("conflict", "agree"):
                color, label = CONDITION_COLORS[cond], COND_LABELS[cond]
                ax.fill_between(xs, used[f"{cond}_lo"], used[f"{cond}_hi"], color=color, alpha=BAND_ALPHA,
                                linewidth=0, label=label)
                ax.plot(xs, used[f"{cond}_smooth"], color=color, linewidth=1.5, label=label)
                ax.plot(xs, used[f"{cond}_acc"], linestyle="none", marker="o", ms=2.5, color=color,
                        alpha=RAW_ALPHA, label=label)
            _dropped(ax, t, axis, model, {"conflict": "conflict_acc", "agree": "agree_acc"})
            _events(ax, fig, row, x_of, used, y_column="conflict_smooth")
            ax.set_title(f"{model}: {row['verdict_label']}", color=VOID_TEXT if row["void"] else "black")
            ax.set_ylim(-0.04, 1.04)
        axes[0].set_ylabel(ACC_LABEL)
        figure_legend(fig, axes)
        traj = group_rows(trajectories, probeset, rule)
        split = traj["split"].iloc[0] if not traj.empty else ""
        fig.suptitle(f"{rule}: conflict and agree accuracy by checkpoint ({split} items)\n"
                     "dots: raw; line: smoothed (centred, k = 3); band: bootstrap 95% CI over items",
                     fontsize=8.5)
    return fig


# --- (b) contrast margin -------------------------------------------------------------------------
def cm_figure(trajectories: pd.DataFrame, metrics: pd.DataFrame, *, probeset: str, rule: str,
              order: Sequence[str], axis: StepAxis | None = None, zero: float = 0.0) -> Figure:
    """(b) Conflict-item CM vs step per model: zero line, the CM zero crossing, collapse onset.

    The crossing diamond is the metrics' ``cm_cross_step`` itself (the one definition in
    `dynamics`: the last checkpoint whose smoothed CM is at or above zero before it falls
    below), drawn on the smoothed line at that checkpoint; the collapse onset (dotted) is the
    same kind of event for accuracy, so the title's lag is the checkpoints between the two
    marks. No diamond where the metrics have no crossing (never emerged, CM invalid, never fell).
    """
    axis = _axis_for(trajectories, axis)
    color = CONDITION_COLORS["conflict"]
    with style():
        fig, axes, panels = _model_panels(trajectories, metrics, probeset, rule, order, axis)
        for p in panels:
            ax, model, t, used, xs, row = p.ax, p.model, p.rows, p.used, p.xs, p.metrics
            ax.axhline(zero, color=NEUTRAL, linewidth=0.8, zorder=1, label="CM = 0")
            ax.plot(xs, used["cm_smooth"], color=color, linewidth=1.5, label="conflict-item CM")
            ax.plot(xs, used["conflict_cm"], linestyle="none", marker="o", ms=2.5, color=color, alpha=RAW_ALPHA,
                    label="conflict-item CM")
            _dropped(ax, t, axis, model, {"conflict": "conflict_cm"})
            if pd.notna(row["collapse_step"]):
                ax.axvline(float(axis.values([row["collapse_step"]], model)[0]), color=EVENT_COLOR, linestyle=":",
                           linewidth=1.2, zorder=1.5, label=ONSET)
            cross = row["cm_cross_step"]
            at = used[used["step"] == cross] if pd.notna(cross) else used.iloc[:0]
            if not at.empty:
                ax.plot(axis.values(at["step"], model), at["cm_smooth"], linestyle="none", marker="D",
                        color=EVENT_COLOR, mec="white", mew=0.6, ms=6, zorder=6, label=CROSSING)
            lag = "" if pd.isna(row["lag_checkpoints"]) else f"; lag {int(row['lag_checkpoints']):+d} ckpt"
            valid = "" if row["cm_valid"] else " (CM max < valid minimum)"
            ax.set_title(f"{model}{lag}{valid}")
        axes[0].set_ylabel(CM_LABEL)
        figure_legend(fig, axes)
        fig.suptitle(f"{rule}: contrast margin logp(target) - logp(foil) of conflict items\n"
                     "dots: raw; line: smoothed (k = 3); diamond: CM zero crossing (last checkpoint with smoothed "
                     "CM >= 0);\nlag = CM zero crossing - collapse onset, in checkpoints",
                     fontsize=8.5)
    return fig


# --- (c) scale -------------------------------------------------------------------------------------
def _size_ticks(ax, values: Sequence[float]) -> None:
    """A tick at each model's size, labelled like Pythia names (90k, 14M, 1.4B); tilted when crowded."""
    values = sorted(set(float(v) for v in values))
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: count_label(v, digits=2)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(values) > 1:
        lo, hi = (np.log10(v) for v in ax.get_xlim())
        gaps = np.diff(np.log10(values)) / (hi - lo)
        if gaps.min() < 0.1:
            ax.tick_params(axis="x", labelrotation=45)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")


def _scale_title(stat: pd.DataFrame, size: str, no_depth: Sequence[str] = ()) -> str:
    """The panel title: rho with p and CI, or the scale row's note when rho is undefined.

    A rho that ranks models the panel draws without a depth (void, never emerged or never
    collapsed) is not printed: the figure would show a correlation over points it does not show.
    """
    hit = stat[(stat["size"] == size) & (stat["metric"] == "depth")] if not stat.empty else stat
    if hit.empty:
        return "no scale statistic for this size"
    r = hit.iloc[0]
    ranked = set(str(r["models"]).split(",")) if "models" in r and pd.notna(r["models"]) else set()
    hidden = sorted(ranked & set(no_depth))
    if pd.notna(r["rho"]) and hidden:
        return wrap(f"rho not shown: it ranks models drawn without a depth ({', '.join(hidden)})", 48)
    if pd.notna(r["rho"]):
        ci = "" if pd.isna(r["rho_lo"]) else f"\n95% CI [{r['rho_lo']:.2f}, {r['rho_hi']:.2f}]"
        p = "" if pd.isna(r["p_perm"]) else f", perm. p = {r['p_perm']:.3g}"
        p_min = r.get("p_min", np.nan)  # the smallest p this n allows (issue #32)
        if not pd.isna(p_min):
            ci = f"\nsmallest attainable p = {p_min:.3g}" + (ci.replace("\n", "; ") if ci else "; no CI (n too small)")
        return f"Spearman rho = {r['rho']:.3f} (n = {int(r['n_models'])}{p}){ci}"
    note = str(r["note"]) if pd.notna(r["note"]) and str(r["note"]) else "rho not computed"
    p_min = r.get("p_min", np.nan)
    return wrap(note, 48) + ("" if pd.isna(p_min) else f"\nsmallest attainable p = {p_min:.3g}")


# Why a model has no depth point in c_scale (first that applies), and the line's label.
_NO_DEPTH = (("void", "void verdict (control failed or too few checkpoints; no depth used)"),
             ("never emerged", "never emerged (no depth)"),
             ("never collapsed", "never collapsed: ended recovered (no depth)"))


def _no_depth_reason(row) -> str:
    if bool(row["void"]):
        return "void"
    emerged = bool(row["emerged"]) if "emerged" in row.index else pd.notna(row["emergence_step"])
    return "never collapsed" if emerged else "never emerged"


def _stacked_offsets(xs: Sequence[float], ys: Sequence[float], *, step: float = 8.0) -> list[float]:
    """Vertical label offsets (points) so labels of models at one size and close values stack."""
    out = [0.0] * len(xs)
    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    for pos, i in enumerate(order):
        prev = order[pos - 1] if pos else None
        if prev is not None and xs[prev] == xs[i] and abs(ys[prev] - ys[i]) < 0.08:
            out[i] = out[prev] + step
    return out


def scale_figure(metrics: pd.DataFrame, scale: pd.DataFrame, sizes: pd.DataFrame, *, probeset: str,
                 rule: str) -> Figure:
    """(c) Collapse depth vs parameter count (total | non-embedding), CIs, Spearman rho or its note.

    Rules that collapsed (depth defined, `dynamics`) get a point with the bootstrap CI; a void
    verdict's depth is a grey hollow point (not in rho). A model with no depth point gets a grey
    dashed line at its size saying why: void, never emerged, or never collapsed (ended
    recovered); models of one size share one line and one label, and point labels of models at
    one size stack instead of overprinting. Models whose size is unknown are named in the
    figure title, never drawn. Each panel's title is the scale row's rho (permutation p,
    bootstrap CI) or, when rho is undefined, its note.

    Args:
        metrics: `Analysis.metrics` (one split).
        scale: `Analysis.scale` of the same split.
        sizes: models.parquet rows (model, params_total, params_nonembedding); NA = unknown.
        probeset, rule: which rule.
    """
    sizes = sizes_numeric(sizes)
    group = group_rows(metrics, probeset, rule)
    met = group.merge(sizes, on="model", how="left")
    stat = group_rows(scale, probeset, rule) if not scale.empty else scale
    has_depth = met["depth"].notna()
    with style():
        fig = Figure(figsize=(7.5, 3.8), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        unknown_all: set[str] = set()
        for ax, size, name in zip(axes, ("params_total", "params_nonembedding"), ("total", "non-embedding")):
            col = met[size] if size in met else pd.Series(np.nan, index=met.index)
            known = col.notna() & np.isfinite(col.astype(float))
            unknown_all |= set(met.loc[~known, "model"])
            ax.set_xscale("log")
            ax.set_xlabel(f"parameters, {name} (log scale)")
            if not known.any():
                ax.text(0.5, 0.5, "no parameter counts known", transform=ax.transAxes, ha="center", va="center",
                        color=VOID_TEXT)
                ax.set_xticks([])
                ax.set_title("rho not computed")
                continue
            xs = col[known].astype(float)
            lo, hi = np.log10(xs.min()), np.log10(xs.max())
            pad = max(0.12 * (hi - lo), 0.35)
            ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
            points = met[known & has_depth]
            for void, sub in points.groupby(points["void"].astype(bool)):
                err = np.vstack([sub["depth"] - sub["depth_lo"].fillna(sub["depth"]),
                                 sub["depth_hi"].fillna(sub["depth"]) - sub["depth"]]).clip(min=0)
                ax.errorbar(sub[size].astype(float), sub["depth"], yerr=err, linestyle="none", marker="o", capsize=3,
                            color=VOID_TEXT if void else EVENT_COLOR, mfc="white" if void else EVENT_COLOR,
                            label="void verdict (not in rho)" if void else "collapse depth (bootstrap 95% CI)")
            right_half = lambda x: (np.log10(x) - (lo - pad)) / (hi - lo + 2 * pad) > _LABEL_FLIP_AT  # noqa: E731
            px = [float(v) for v in points[size]]
            for row, x, dy in zip(points.itertuples(), px, _stacked_offsets(px, list(points["depth"]))):
                ax.annotate(row.model, (x, row.depth), textcoords="offset points",
                            xytext=(-5, 5 + dy) if right_half(x) else (5, 5 + dy),
                            ha="right" if right_half(x) else "left", fontsize=6.5)
            lines = met[known & ~has_depth]
            reasons = dict(_NO_DEPTH)
            for (x, reason), sub in lines.groupby([lines[size].astype(float),
                                                   lines.apply(_no_depth_reason, axis=1)], sort=True):
                ax.axvline(x, color=VOID_TEXT, linestyle=(0, (2, 2)), linewidth=1.0, label=reasons[reason])
            # one label per size: every model drawn there without a depth, with its reason
            for x, sub in lines.groupby(lines[size].astype(float), sort=True):
                text = "; ".join(f"{', '.join(sorted(g['model']))}: {reason}"
                                 for reason, g in sub.groupby(sub.apply(_no_depth_reason, axis=1), sort=True))
                ax.annotate(text, (x, 0.5), xycoords=("data", "axes fraction"), rotation=90, ha="center",
                            va="center", fontsize=6, color=VOID_TEXT, textcoords="offset points", xytext=(-5, 0))
            _size_ticks(ax, xs)
            ax.set_title(_scale_title(stat, size, list(lines["model"])))
        depth = met.loc[has_depth, ["depth", "depth_lo", "depth_hi"]].to_numpy(float)
        depth = depth[np.isfinite(depth)]
        axes[0].set_ylim(min(-0.05, depth.min() - 0.05) if depth.size else -0.05,
                         max(1.05, depth.max() + 0.05) if depth.size else 1.05)
        axes[0].set_ylabel("collapse depth (peak - final accuracy)")
        figure_legend(fig, axes, ncols=2)
        missing = sorted(unknown_all, key=str)
        extra = f"\nsizes unknown for: {', '.join(missing)} (not drawn)" if missing else ""
        fig.suptitle(f"{rule}: collapse depth against model size\n(a depth only where the rule collapsed: it "
                     f"emerged and its final accuracy ended below the recovered bar){extra}", fontsize=8.5)
    return fig


# --- (d) verdict grid ------------------------------------------------------------------------------
def _rule_labels(metrics: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(probeset, rule) -> row label; the probe set is named only when a rule has several."""
    pairs = sorted(set(zip(metrics["probeset"], metrics["rule"])), key=lambda p: (p[1], p[0]))
    count = pd.Series([r for _, r in pairs]).value_counts()
    return {(p, r): (f"{r} [{p}]" if count[r] > 1 else r) for p, r in pairs}


def verdict_grid(metrics: pd.DataFrame, *, order: Sequence[str]) -> Figure:
    """(d) Rule x model grid of verdict letters; void verdicts hatched grey (letter kept, grey)."""
    labels = _rule_labels(metrics)
    rows = list(labels)
    models = [m for m in order if m in set(metrics["model"])]
    longest = max((len(v) for v in labels.values()), default=8)
    with style():
        fig = Figure(figsize=(3.2 + 0.06 * longest + 0.8 * len(models), 1.4 + 0.42 * len(rows)),
                     layout="constrained")
        ax = fig.subplots()
        for i, key in enumerate(rows):
            for j, model in enumerate(models):
                hit = metrics[(metrics["probeset"] == key[0]) & (metrics["rule"] == key[1]) & (metrics["model"] == model)]
                if hit.empty:
                    continue
                row = hit.iloc[0]
                void = bool(row["void"]) or row["verdict"] is None
                face = VOID_COLOR if void else VERDICT_COLORS[row["verdict"]]
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor=face, edgecolor="white" if not void else VOID_TEXT,
                                       linewidth=2 if not void else 0.5, hatch="///" if void else None))
                if not void and row["verdict"] == "NEVER":
                    ax.add_patch(Rectangle((j + 0.04, i + 0.04), 0.92, 0.92, fill=False, edgecolor=NEUTRAL,
                                           linewidth=0.8))
                letter = VERDICT_LETTERS.get(row["verdict"], "?")
                ax.text(j + 0.5, i + 0.5, letter, ha="center", va="center", fontsize=11, fontweight="bold",
                        color=VOID_TEXT if void else VERDICT_TEXT[row["verdict"]],
                        bbox=dict(facecolor=VOID_COLOR, edgecolor="none", pad=1) if void else None)
        ax.set_xlim(0, len(models))
        ax.set_ylim(len(rows), 0)
        ax.set_xticks(np.arange(len(models)) + 0.5, models, rotation=30, ha="right")
        ax.set_yticks(np.arange(len(rows)) + 0.5, [labels[k] for k in rows])
        ax.set_xlabel("model (by parameter count)")
        ax.set_ylabel("rule")
        ax.grid(False)
        ax.tick_params(length=0)
        handles = [Patch(facecolor=VERDICT_COLORS[v], edgecolor=NEUTRAL, linewidth=0.5,
                         label=f"{VERDICT_LETTERS[v]} = {v.lower()}") for v in VERDICTS]
        handles.append(Patch(facecolor=VOID_COLOR, edgecolor=VOID_TEXT, hatch="///",
                             label="hatched grey = void: the agree\ncontrol failed (final or drop\nout of "
                                   "bounds) or too few\ncheckpoints; the letter is what\nthe verdict would be, "
                                   "never\nused in any statistic"))
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        ax.set_title("verdicts (held-out conflict items)")
    return fig


# --- (e) overview ------------------------------------------------------------------------------------
_OVERVIEW_MAX_COLUMNS = 3


def _overview_columns(n: int) -> int:
    """Columns for n overview panels: the fewest empty grid slots, then the fewest rows."""
    if n <= _OVERVIEW_MAX_COLUMNS:
        return max(n, 1)
    return min(range(2, _OVERVIEW_MAX_COLUMNS + 1), key=lambda c: ((-n) % c, -(-n // c)))


def overview_figure(trajectories: pd.DataFrame, metrics: pd.DataFrame, *, order: Sequence[str],
                    axis: StepAxis | None = None) -> Figure:
    """(e) One panel per rule: every model's smoothed conflict accuracy (solid) and agree (dashed).

    Models are shades of the condition's hue (vermillion conflict, blue agree), lightest =
    smallest; each legend entry shows a model's conflict and agree line side by side. Every
    panel carries its x label; the grid takes the column count that leaves the fewest empty
    slots (4 rules: 2 x 2).
    """
    labels = _rule_labels(metrics)
    models = [m for m in order if m in set(trajectories["model"])]
    conflict, agree = model_colors(order, "conflict"), model_colors(order, "agree")
    axis = _axis_for(trajectories, axis)
    n_entries = len(models) + 2
    cols = _overview_columns(len(labels))
    with style():
        fig, axes = panel_grid(len(labels), width=3.2, height=2.6, max_cols=cols, legend_rows=legend_rows(n_entries))
        for ax, (key, label) in zip(axes, labels.items()):
            traj = group_rows(trajectories, *key)
            axis.apply(ax, label=True)  # every panel names its axis: the rules are read one by one
            for model in models:
                t = traj[(traj["model"] == model) & traj["used"]].sort_values("step")
                if t.empty:
                    continue
                xs = axis.values(t["step"], model)
                ax.plot(xs, t["conflict_smooth"], color=conflict[model], linewidth=1.5, label=model)
                ax.plot(xs, t["agree_smooth"], color=agree[model], linewidth=1.0, linestyle="--", label=model)
            ax.set_ylim(-0.04, 1.04)
            ax.set_title(label)
        axes[0].set_ylabel("smoothed accuracy")
        proxies = [(Line2D([], [], color=NEUTRAL, linewidth=1.5), "solid: conflict items"),
                   (Line2D([], [], color=NEUTRAL, linewidth=1.0, linestyle="--"), "dashed: agree items (control)")]
        figure_legend(fig, axes, proxies)
        fig.suptitle("all rules: smoothed conflict (solid) and agree (dashed) accuracy per model\n"
                     "(shade: model, darker = larger)", fontsize=8.5)
    return fig


def load_support(results_dir: str | Path) -> pd.DataFrame | None:
    """The results folder's support table (per-window rows), or None when there is none.

    Raises:
        StoreError: the table lacks the columns the figure needs.
    """
    root = Path(results_dir)
    for name in SUPPORT_TABLE_FILES:
        path = root / name
        if path.exists():
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            if "scope" in frame:  # `pythia-forensics support --out` also writes an overall row
                frame = frame[frame["scope"] == "window"]
            need = {"rule", "window_start_step", "window_end_step", "ratio"}
            if not need <= set(frame):
                raise StoreError(f"{path} lacks column(s) {sorted(need - set(frame))}; write it with "
                                 "`pythia-forensics support CORPUS --tokens-per-step N --out` ")
            frame = frame.dropna(subset=["window_start_step", "window_end_step"])
            return frame if not frame.empty else None
    return None


def render_figures(results_dir: str | Path, out_dir: str | Path | None = None, *,
                   config: AnalysisConfig | str | Path | None = None,
                   analysis: Analysis | None = None, x: str = "steps", xscale: str = "auto") -> list[Path]:
    """Regenerate every figure from a results folder's stored results only.

    Args:
        results_dir: the results folder (item rows, models.parquet, optional health/support).
        out_dir: where to write (default RESULTS/figures).
        config: thresholds (default: shipped analysis.yaml).
        analysis: a ready `analyze(results_dir)` result, to skip recomputing it.
        x: "steps" or "tokens" (step x models.parquet tokens_per_step) on trajectory x axes.
        xscale: "auto" (follow the checkpoint grid), "linear", "log" or "symlog".

    Returns:
        The PDF and PNG files written, in figure order.

    Raises:
        ConfigError: x or xscale unknown.
        StoreError: x is "tokens" and a model's tokens per step is unknown.
    """
    from pythia_forensics.sweep.store import ResultsStore

    root = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else root / FIGURES_SUBDIR
    if analysis is None:
        analysis = analyze(root, config=config if config is not None else load_config())
    sizes = sizes_numeric(ResultsStore(root).models())
    cfg = analysis.config
    metrics = primary(analysis.metrics, cfg)
    split = metrics["split"].iloc[0]
    traj = analysis.trajectories[analysis.trajectories["split"] == split]
    scale = analysis.scale[analysis.scale["split"] == split] if not analysis.scale.empty else analysis.scale
    order = model_order(metrics["model"], sizes)
    tokens = dict(zip(sizes["model"], sizes["tokens_per_step"])) if "tokens_per_step" in sizes else {}
    axis = step_axis(traj, x=x, xscale=xscale, tokens_per_step=tokens,
                     tokens_at=_tokens_at(ResultsStore(root)) if x == "tokens" else None)
    support = load_support(root)
    written: list[Path] = []
    labels = _rule_labels(metrics)
    for (probeset, rule), label in labels.items():
        name = slug(label)
        written += save_figure(accuracy_figure(traj, metrics, probeset=probeset, rule=rule, order=order, axis=axis),
                               out / f"a_accuracy_{name}")
        written += save_figure(cm_figure(traj, metrics, probeset=probeset, rule=rule, order=order, axis=axis,
                                         zero=cfg.cm_zero), out / f"b_cm_{name}")
        if not sizes.empty:
            written += save_figure(scale_figure(metrics, scale, sizes, probeset=probeset, rule=rule),
                                   out / f"c_scale_{name}")
    written += save_figure(verdict_grid(metrics, order=order), out / "d_verdicts")
    written += save_figure(overview_figure(traj, metrics, order=order, axis=axis), out / "e_overview")
    if support is not None:
        for (probeset, rule), label in labels.items():
            if rule in set(support["rule"]):
                written += save_figure(support_figure(support, traj, probeset=probeset, rule=rule, order=order),
                                       out / f"f_support_{slug(label)}")
    return written
