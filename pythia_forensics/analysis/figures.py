"""The figure set: tidy frames in, matplotlib Figures out; one visual language; deterministic files.

Figures (one per rule where it says so), all on the analysis's primary split:

(a) ``a_accuracy_<rule>``: conflict and agree accuracy vs training step, one panel per model
    (dots raw, line smoothed, band bootstrap CI), emergence (triangle), peak (star), collapse
    onset (dotted).
(b) ``b_cm_<rule>``: conflict-item contrast margin vs step per model; the zero crossing
    (diamond) sits on the zero line where the smoothed CM crosses it downward after emergence.
(c) ``c_scale_<rule>``: collapse depth vs parameter count (total, non-embedding; log x, a tick
    at each model) with bootstrap CIs and Spearman rho, or the scale analysis's note when rho
    is undefined; rules that never emerged are drawn as such (no depth); unknown sizes named.
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

import re
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.collections import Collection
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
from matplotlib.transforms import offset_copy

from pythia_forensics.atomic import atomic_path
from pythia_forensics.constants import (
    CONDITION_COLORS,
    FIGURE_DPI,
    FIGURE_FORMATS,
    FIGURES_SUBDIR,
    PALETTE,
    SUPPORT_TABLE_FILES,
)
from pythia_forensics.analysis.dynamics import (
    VERDICT_LETTERS,
    VERDICTS,
    Analysis,
    AnalysisConfig,
    analyze,
    load_config,
    primary,
)
from pythia_forensics.errors import StoreError
from pythia_forensics.analysis.step_axis import StepAxis, count_label, step_axis

__all__ = ["accuracy_figure", "cm_figure", "scale_figure", "verdict_grid", "overview_figure", "support_figure",
           "save_figure", "render_figures", "load_support", "model_order", "model_shades", "cm_crossing",
           "unknown_size_models", "model_colors"]


# --- one visual language -----------------------------------------------------------------------
def _mix(color: str, other: str, t: float) -> str:
    a, b = np.array(to_rgb(color)), np.array(to_rgb(other))
    return to_hex((1 - t) * a + t * b)

# A model's name goes left of its point once the point lies past this fraction of the axis width,
# so names near the right edge are never clipped (a placement choice, not an analysis threshold).
_LABEL_FLIP_AT = 0.55


def model_shades(base: str, n: int) -> list[str]:
    """`n` shades of one hue, lightest first (models smallest first: darker = larger)."""
    if n <= 1:
        return [base] * max(n, 0)
    ts = np.linspace(-0.5, 0.45, n)  # < 0: towards white, > 0: towards black
    return [_mix(base, "#FFFFFF", -t) if t < 0 else _mix(base, "#000000", t) for t in ts]


def model_colors(order: Sequence[str], condition: str = "conflict") -> dict[str, str]:
    """model -> its shade of `condition`'s hue, from the whole set's order (same model, same
    shade in every figure of a set; lightest = first = smallest)."""
    return dict(zip(order, model_shades(CONDITION_COLORS[condition], len(order))))


EVENT_COLOR = "#000000"  # emergence, peak, collapse onset, CM zero crossing: black shapes
NEUTRAL = "#4D4D4D"  # legend proxies for encodings that are not a condition
# Verdict cells: hues no trajectory line uses (conditions own vermillion and blue).
VERDICT_COLORS = {"RECOVERED": PALETTE[2], "UNSTABLE": PALETTE[6], "DISPLACED": PALETTE[3],
                  "PARTIAL": PALETTE[4], "NEVER": "#FFFFFF"}
VERDICT_TEXT = {"RECOVERED": "white", "UNSTABLE": "black", "DISPLACED": "black", "PARTIAL": "black",
                "NEVER": "black"}
VOID_COLOR = "#D9D9D9"  # greyed cells and points: a verdict whose control failed
VOID_TEXT = "#8C8C8C"
# Several models in one panel (support figure, sweep): shades of the conflict hue, lightest first.
MODEL_COLORS = tuple(model_shades(CONDITION_COLORS["conflict"], 5))
FLAG_COLOR = EVENT_COLOR
RAW_ALPHA = 0.35  # raw per-checkpoint points under the smoothed line
BAND_ALPHA = 0.18  # bootstrap bands
MIN_FIGURE_WIDTH = 7.5  # inches
STEP_LABEL = "training step"
ACC_LABEL = "accuracy (fraction of items correct)"
CM_LABEL = "contrast margin CM (nats)"
COND_LABELS = {"conflict": "conflict items", "agree": "agree items (control)"}
NOT_ANALYSED = "not analysed (below minimum step)"
FLAGGED = "flagged checkpoint (excluded)"
EMERGENCE, PEAK, ONSET, CROSSING = "emergence", "peak", "collapse onset", "CM zero crossing (downward)"
_RC = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: same glyphs, same bytes everywhere
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.formatter.useoffset": False,  # an offset text ("+1") would sit over the title
    "pdf.fonttype": 42,
    "svg.hashsalt": "pythia-forensics",
    "savefig.dpi": FIGURE_DPI,
}
_METADATA = {"pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
             "png": {"Software": None}}


@contextmanager
def _style():
    with matplotlib.rc_context(_RC):
        yield


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "_"


def _tokens_at(store: Any) -> dict[str, dict[int, float]]:
    """model -> {step: tokens seen} from the stored rows' `tokens` column (absent: empty)."""
    items = store.items()
    if items.empty or "tokens" not in items:
        return {}
    rows = items[["model", "step", "tokens"]].dropna().drop_duplicates(["model", "step"])
    return {m: dict(zip(g["step"].astype(int), g["tokens"].astype(float))) for m, g in rows.groupby("model")}


def _sizes_numeric(sizes: pd.DataFrame | None) -> pd.DataFrame:
    """models.parquet with size columns as float (pd.NA / None / missing -> NaN)."""
    if sizes is None or sizes.empty or "model" not in sizes:
        return pd.DataFrame(columns=["model", "params_total", "params_nonembedding"])
    out = sizes.copy()
    for col in ("params_total", "params_nonembedding", "tokens_per_step"):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def model_order(models: Sequence[str], sizes: pd.DataFrame | None = None) -> list[str]:
    """Models by total parameter count when known (smallest first; unknown sizes last), else by name."""
    names = sorted(set(models))
    sizes = _sizes_numeric(sizes)
    if not sizes.empty and "params_total" in sizes:
        size = {m: v for m, v in zip(sizes["model"], sizes["params_total"]) if np.isfinite(v)}
        return sorted(names, key=lambda m: (size.get(m, np.inf), m))
    return names


def unknown_size_models(models: Sequence[str], sizes: pd.DataFrame | None) -> list[str]:
    """Models (of `models`) whose total or non-embedding parameter count is unknown, sorted."""
    sizes = _sizes_numeric(sizes)
    known = set()
    if not sizes.empty:
        cols = [c for c in ("params_total", "params_nonembedding") if c in sizes]
        ok = np.isfinite(sizes[cols].to_numpy(float)).all(axis=1) if cols else np.zeros(len(sizes), bool)
        known = set(sizes.loc[ok, "model"])
    return sorted(set(models) - known)


def _symlog(ax, steps) -> None:
    """The grid-following step axis for figures that build no `StepAxis` of their own."""
    steps = np.asarray(list(steps), dtype=float)
    step_axis(pd.DataFrame(dict(model="_", step=steps, used=True))).apply(ax, label=False)


def _grid(n: int, *, width: float = 3.0, height: float = 2.4, max_cols: int = 5,
          legend_rows: int = 1) -> tuple[Figure, np.ndarray]:
    cols = min(max(n, 1), max_cols)
    rows = -(-max(n, 1) // cols)
    # at least MIN_FIGURE_WIDTH wide: the shared legend under the panels needs the room
    fig = Figure(figsize=(max(width * cols, MIN_FIGURE_WIDTH), height * rows + 0.6 + 0.25 * legend_rows),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:max(n, 1)]


def _bottom_row(axes, k: int, cols: int) -> bool:
    """Whether panel k has no visible panel below it (it carries the x label)."""
    return k + cols >= len(axes)


def _group(frame: pd.DataFrame, probeset: str, rule: str) -> pd.DataFrame:
    return frame[(frame["probeset"] == probeset) & (frame["rule"] == rule)]


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


def _figure_legend(fig: Figure, axes, extra: Sequence[tuple[object, str]] = (), *, ncols: int = 4) -> None:
    """One legend for the figure: every labelled artist of every panel, plus `extra` proxies.

    Artists sharing a label in one panel become one entry: drawn on top of each other when one
    of them is a band (raw dots + line + CI read as one series), side by side otherwise (the
    same encoding in both conditions' colours).
    """
    seen: dict[str, object] = {}
    handler_map = {}
    for ax in axes:
        if not ax.get_visible():
            continue
        handles, labels = ax.get_legend_handles_labels()
        groups: dict[str, list] = {}
        for handle, label in zip(handles, labels):
            groups.setdefault(label, []).append(handle)
        for label, group in groups.items():
            if label in seen:
                continue
            if len(group) == 1:
                seen[label] = group[0]
                continue
            handle = tuple(group)
            overlay = any(isinstance(h, Collection) for h in group)
            handler_map[handle] = HandlerTuple(ndivide=1 if overlay else None, pad=0.3)
            seen[label] = handle
    for handle, label in extra:
        seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center",
                   ncols=min(len(seen), ncols), frameon=False, handler_map=handler_map, handlelength=2.4)


def _legend_rows(n_entries: int, ncols: int = 4) -> int:
    return -(-n_entries // ncols)


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
    traj, met = _group(trajectories, probeset, rule), _group(metrics, probeset, rule).set_index("model")
    models = [m for m in order if m in set(traj["model"])]
    axis = _axis_for(trajectories, axis)
    with _style():
        fig, axes = _grid(len(models), legend_rows=2)
        cols = min(max(len(models), 1), 5)
        for k, (ax, model) in enumerate(zip(axes, models)):
            t = traj[traj["model"] == model].sort_values("step")
            used = t[t["used"]]
            axis.apply(ax, label=_bottom_row(axes, k, cols))
            x_of = lambda s, m=model: float(axis.values([s], m)[0])  # noqa: E731
            xs = axis.values(used["step"], model)
            for cond in ("conflict", "agree"):
                color, label = CONDITION_COLORS[cond], COND_LABELS[cond]
                ax.fill_between(xs, used[f"{cond}_lo"], used[f"{cond}_hi"], color=color, alpha=BAND_ALPHA,
                                linewidth=0, label=label)
                ax.plot(xs, used[f"{cond}_smooth"], color=color, linewidth=1.5, label=label)
                ax.plot(xs, used[f"{cond}_acc"], linestyle="none", marker="o", ms=2.5, color=color,
                        alpha=RAW_ALPHA, label=label)
            _dropped(ax, t, axis, model, {"conflict": "conflict_acc", "agree": "agree_acc"})
            row = met.loc[model]
            _events(ax, fig, row, x_of, used, y_column="conflict_smooth")
            ax.set_title(f"{model}: {row['verdict_label']}", color=VOID_TEXT if row["void"] else "black")
            ax.set_ylim(-0.04, 1.04)
        axes[0].set_ylabel(ACC_LABEL)
        _figure_legend(fig, axes)
        split = traj["split"].iloc[0] if not traj.empty else ""
        fig.suptitle(f"{rule}: conflict and agree accuracy by checkpoint ({split} items)\n"
                     "dots: raw; line: smoothed (centred, k = 3); band: bootstrap 95% CI over items",
                     fontsize=8.5)
    return fig


# --- (b) contrast margin -------------------------------------------------------------------------
def cm_crossing(x: Sequence[float], cm_smooth: Sequence[float], cross_x: float, *, zero: float = 0.0,
                forward=None, inverse=None) -> float | None:
    """Where the drawn smoothed CM line crosses `zero` downward, just after checkpoint `cross_x`.

    Args:
        x: checkpoint positions (increasing), as drawn.
        cm_smooth: smoothed CM at `x`.
        cross_x: the stored crossing checkpoint (last one at or above zero).
        zero: the zero level (contrast_margin.zero).
        forward, inverse: the axis scale's transform and its inverse (default identity); the
            line is straight between checkpoints in transformed space, so the interpolation is too.

    Returns:
        The interpolated x on the zero line, or None when the next checkpoint is not below zero
        (no downward crossing there).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(cm_smooth, dtype=float)
    hits = np.flatnonzero(np.isclose(x, cross_x, rtol=0, atol=0) | (x == cross_x))
    if hits.size == 0 or hits[0] + 1 >= len(x):
        return None
    i = int(hits[0])
    y0, y1 = y[i], y[i + 1]
    if not (y0 >= zero > y1):
        return None
    fwd = forward or (lambda v: v)
    inv = inverse or (lambda v: v)
    u0, u1 = fwd(x[i]), fwd(x[i + 1])
    return float(inv(u0 + (u1 - u0) * (y0 - zero) / (y0 - y1)))


def cm_figure(trajectories: pd.DataFrame, metrics: pd.DataFrame, *, probeset: str, rule: str,
              order: Sequence[str], axis: StepAxis | None = None, zero: float = 0.0) -> Figure:
    """(b) Conflict-item CM vs step per model: zero line, downward zero crossing, collapse onset.

    The crossing diamond sits on the zero line where the smoothed CM crosses it after the
    stored crossing checkpoint, drawn only when that crossing is downward and the rule had
    emerged by then.
    """
    traj, met = _group(trajectories, probeset, rule), _group(metrics, probeset, rule).set_index("model")
    models = [m for m in order if m in set(traj["model"])]
    axis = _axis_for(trajectories, axis)
    color = CONDITION_COLORS["conflict"]
    with _style():
        fig, axes = _grid(len(models), legend_rows=2)
        cols = min(max(len(models), 1), 5)
        for k, (ax, model) in enumerate(zip(axes, models)):
            t = traj[traj["model"] == model].sort_values("step")
            used = t[t["used"]]
            axis.apply(ax, label=_bottom_row(axes, k, cols))
            xs = axis.values(used["step"], model)
            ax.axhline(zero, color=NEUTRAL, linewidth=0.8, zorder=1, label="CM = 0")
            ax.plot(xs, used["cm_smooth"], color=color, linewidth=1.5, label="conflict-item CM")
            ax.plot(xs, used["conflict_cm"], linestyle="none", marker="o", ms=2.5, color=color, alpha=RAW_ALPHA,
                    label="conflict-item CM")
            _dropped(ax, t, axis, model, {"conflict": "conflict_cm"})
            row = met.loc[model]
            if pd.notna(row["collapse_step"]):
                ax.axvline(float(axis.values([row["collapse_step"]], model)[0]), color=EVENT_COLOR, linestyle=":",
                           linewidth=1.2, zorder=1.5, label=ONSET)
            cross = row["cm_cross_step"]
            emerged_before = pd.notna(row["emergence_step"]) and pd.notna(cross) and cross >= row["emergence_step"]
            if emerged_before:
                scale = ax.xaxis.get_transform()
                at = cm_crossing(xs, used["cm_smooth"], float(axis.values([cross], model)[0]), zero=zero,
                                 forward=lambda v: scale.transform([v])[0],
                                 inverse=lambda u: scale.inverted().transform([u])[0])
                if at is not None:
                    ax.plot([at], [zero], linestyle="none", marker="D", color=EVENT_COLOR, mec="white", mew=0.6,
                            ms=6, zorder=6, label=CROSSING)
            lag = "" if pd.isna(row["lag_checkpoints"]) else f"; lag {int(row['lag_checkpoints']):+d} ckpt"
            valid = "" if row["cm_valid"] else " (CM max < valid minimum)"
            ax.set_title(f"{model}{lag}{valid}")
        axes[0].set_ylabel(CM_LABEL)
        _figure_legend(fig, axes)
        fig.suptitle(f"{rule}: contrast margin logp(target) - logp(foil) of conflict items\n"
                     "dots: raw; line: smoothed (k = 3); lag = CM crossing - collapse onset, in checkpoints",
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

    A rho that ranks models the panel draws without a depth (never emerged) is not printed:
    the figure would show a correlation over points it does not show.
    """
    hit = stat[(stat["size"] == size) & (stat["metric"] == "depth")] if not stat.empty else stat
    if hit.empty:
        return "no scale statistic for this size"
    r = hit.iloc[0]
    ranked = set(str(r["models"]).split(",")) if "models" in r and pd.notna(r["models"]) else set()
    hidden = sorted(ranked & set(no_depth))
    if pd.notna(r["rho"]) and hidden:
        return _wrap(f"rho not shown: it ranks models that never emerged ({', '.join(hidden)})", 48)
    if pd.notna(r["rho"]):
        ci = "" if pd.isna(r["rho_lo"]) else f"\n95% CI [{r['rho_lo']:.2f}, {r['rho_hi']:.2f}]"
        p = "" if pd.isna(r["p_perm"]) else f", perm. p = {r['p_perm']:.3g}"
        return f"Spearman rho = {r['rho']:.3f} (n = {int(r['n_models'])}{p}){ci}"
    note = str(r["note"]) if pd.notna(r["note"]) and str(r["note"]) else "rho not computed"
    return _wrap(note, 48)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def scale_figure(metrics: pd.DataFrame, scale: pd.DataFrame, sizes: pd.DataFrame, *, probeset: str,
                 rule: str) -> Figure:
    """(c) Collapse depth vs parameter count (total | non-embedding), CIs, Spearman rho or its note.

    Emerged rules get a point with the bootstrap CI (void verdicts grey and hollow: not in rho);
    rules that never emerged get a grey dotted line at their size (no depth exists); models
    whose size is unknown are named in the figure title, never drawn. Each panel's title is the
    scale row's rho (permutation p, bootstrap CI) or, when rho is undefined, its note.

    Args:
        metrics: `Analysis.metrics` (one split).
        scale: `Analysis.scale` of the same split.
        sizes: models.parquet rows (model, params_total, params_nonembedding); NA = unknown.
        probeset, rule: which rule.
    """
    sizes = _sizes_numeric(sizes)
    group = _group(metrics, probeset, rule)
    met = group.merge(sizes, on="model", how="left")
    stat = _group(scale, probeset, rule) if not scale.empty else scale
    emerged = met["emerged"].astype(bool) if "emerged" in met else met["emergence_step"].notna()
    with _style():
        fig = Figure(figsize=(7.5, 3.6), layout="constrained")
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
            points = met[known & emerged & met["depth"].notna()]
            for void, sub in points.groupby(points["void"].astype(bool)):
                err = np.vstack([sub["depth"] - sub["depth_lo"].fillna(sub["depth"]),
                                 sub["depth_hi"].fillna(sub["depth"]) - sub["depth"]]).clip(min=0)
                ax.errorbar(sub[size].astype(float), sub["depth"], yerr=err, linestyle="none", marker="o", capsize=3,
                            color=VOID_TEXT if void else EVENT_COLOR, mfc="white" if void else EVENT_COLOR,
                            label="void verdict (not in rho)" if void else "collapse depth (bootstrap 95% CI)")
            never = met[known & ~emerged]
            for k, row in enumerate(never.itertuples()):
                ax.axvline(float(getattr(row, size)), color=VOID_TEXT, linestyle=(0, (2, 2)), linewidth=1.0,
                           label="never emerged (no depth)")
            right_half = lambda x: (np.log10(x) - (lo - pad)) / (hi - lo + 2 * pad) > _LABEL_FLIP_AT  # noqa: E731
            for row in points.itertuples():
                x = float(getattr(row, size))
                ax.annotate(row.model, (x, row.depth), textcoords="offset points",
                            xytext=(-5, 5) if right_half(x) else (5, 5), ha="right" if right_half(x) else "left",
                            fontsize=6.5)
            for row in never.itertuples():
                x = float(getattr(row, size))
                ax.annotate(f"{row.model}: never emerged", (x, 0.5), xycoords=("data", "axes fraction"),
                            rotation=90, ha="center", va="center", fontsize=6, color=VOID_TEXT,
                            textcoords="offset points", xytext=(-5, 0))
            _size_ticks(ax, xs)
            ax.set_title(_scale_title(stat, size, list(never["model"])))
        depth = met.loc[emerged, ["depth", "depth_lo", "depth_hi"]].to_numpy(float)
        depth = depth[np.isfinite(depth)]
        axes[0].set_ylim(min(-0.05, depth.min() - 0.05) if depth.size else -0.05,
                         max(1.05, depth.max() + 0.05) if depth.size else 1.05)
        axes[0].set_ylabel("collapse depth (peak - final accuracy)")
        _figure_legend(fig, axes)
        missing = sorted(unknown_all, key=str)
        extra = f"\nsizes unknown for: {', '.join(missing)} (not drawn)" if missing else ""
        fig.suptitle(f"{rule}: collapse depth against model size{extra}", fontsize=8.5)
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
    with _style():
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
                             label="hatched grey = void\n(agree control invalid)"))
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        ax.set_title("verdicts (held-out conflict items)")
    return fig


# --- (e) overview ------------------------------------------------------------------------------------
def overview_figure(trajectories: pd.DataFrame, metrics: pd.DataFrame, *, order: Sequence[str],
                    axis: StepAxis | None = None) -> Figure:
    """(e) One panel per rule: every model's smoothed conflict accuracy (solid) and agree (dashed).

    Models are shades of the condition's hue (vermillion conflict, blue agree), lightest =
    smallest; each legend entry shows a model's conflict and agree line side by side.
    """
    labels = _rule_labels(metrics)
    models = [m for m in order if m in set(trajectories["model"])]
    conflict, agree = model_colors(order, "conflict"), model_colors(order, "agree")
    axis = _axis_for(trajectories, axis)
    n_entries = len(models) + 2
    with _style():
        fig, axes = _grid(len(labels), width=3.2, height=2.6, max_cols=3, legend_rows=_legend_rows(n_entries))
        cols = min(max(len(labels), 1), 3)
        for k, (ax, (key, label)) in enumerate(zip(axes, labels.items())):
            traj = _group(trajectories, *key)
            axis.apply(ax, label=_bottom_row(axes, k, cols))
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
        _figure_legend(fig, axes, proxies)
        fig.suptitle("all rules: smoothed conflict (solid) and agree (dashed) accuracy per model\n"
                     "(shade: model, darker = larger)", fontsize=8.5)
    return fig


# --- (f) support and (g) sweep: drawn in support_figures.py --------------------------------------
def support_figure(support: pd.DataFrame, trajectories: pd.DataFrame, *, probeset: str, rule: str,
                   order: Sequence[str]) -> Figure:
    """(f) Corpus-wide and in-frame support per step window beside accuracy
    (`support_figures.support_figure`)."""
    from pythia_forensics.analysis.support_figures import support_figure as draw

    return draw(support, trajectories, probeset=probeset, rule=rule, order=order)


def sweep_figure(table: pd.DataFrame, *, rule: str) -> Figure:
    """(g) Final accuracy and margin against measured in-frame support (`support_figures.sweep_figure`)."""
    from pythia_forensics.analysis.support_figures import sweep_figure as draw

    return draw(table, rule=rule)


# --- files ---------------------------------------------------------------------------------------------
def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write `stem`.pdf and `stem`.png with fixed metadata (same figure -> same bytes)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with _style():
        for fmt in FIGURE_FORMATS:
            path = stem.with_suffix(f".{fmt}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, metadata=_METADATA.get(fmt))
            paths.append(path)
    return paths


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
    sizes = _sizes_numeric(ResultsStore(root).models())
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
        slug = _slug(label)
        written += save_figure(accuracy_figure(traj, metrics, probeset=probeset, rule=rule, order=order, axis=axis),
                               out / f"a_accuracy_{slug}")
        written += save_figure(cm_figure(traj, metrics, probeset=probeset, rule=rule, order=order, axis=axis,
                                         zero=cfg.cm_zero), out / f"b_cm_{slug}")
        if not sizes.empty:
            written += save_figure(scale_figure(metrics, scale, sizes, probeset=probeset, rule=rule),
                                   out / f"c_scale_{slug}")
    written += save_figure(verdict_grid(metrics, order=order), out / "d_verdicts")
    written += save_figure(overview_figure(traj, metrics, order=order, axis=axis), out / "e_overview")
    if support is not None:
        for (probeset, rule), label in labels.items():
            if rule in set(support["rule"]):
                written += save_figure(support_figure(support, traj, probeset=probeset, rule=rule, order=order),
                                       out / f"f_support_{_slug(label)}")
    return written
