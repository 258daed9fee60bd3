"""The support figures: what decides a rule's fate, drawn from the measured counts.

(f) ``f_support_<rule>``: support ratio per step window, corpus-wide and inside each of the
    rule's frames (the conflict frame first), on one log axis with the parity line, beside the
    rule's conflict accuracy per model. A rule whose in-frame support sits below parity is the
    one that collapses, whatever its corpus-wide support says.
(g) ``sweep_support``: final conflict accuracy and final contrast margin per sweep arm against
    the arm's MEASURED in-frame support (log x, parity line), the knob value written at each
    point, the interval where the fate flips shaded.

figures.py re-exports both; they share the set's visual language (`figure_style`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pythia_forensics.analysis import figure_style as fg
from pythia_forensics.analysis.scale import flip_point
from pythia_forensics.corpus.support import CORPUS_FRAME

__all__ = ["support_figure", "sweep_figure", "FRAME_STYLES"]

# the frame name the shipped rule files give the frame where rule and prior conflict
CONFLICT_FRAME = "conflict"
# figures.py's visual language: conflict is vermillion (the conflict frame, thick), neutral
# grey for the corpus-wide line, further frames dashed in other Okabe-Ito hues; parity black
FRAME_STYLES = {CORPUS_FRAME: dict(color=fg.NEUTRAL, linewidth=1.5, linestyle="-"),
                CONFLICT_FRAME: dict(color=fg.CONDITION_COLORS["conflict"], linewidth=2.2, linestyle="-")}
_OTHER_FRAME_COLORS = (fg.PALETTE[4], fg.PALETTE[3], fg.PALETTE[2])
PARITY_LABEL = "parity: rule wins = prior wins"
RATIO_LABEL = "support ratio (log scale)"
RATIO_TITLE = "support per window: (rule wins + 1) / (prior wins + 1)"


def _frame_order(frames: Sequence[str]) -> list[str]:
    rest = sorted(f for f in frames if f not in (CORPUS_FRAME, CONFLICT_FRAME))
    return [f for f in (CORPUS_FRAME, CONFLICT_FRAME) if f in frames] + rest


def _frame_label(frame: str, rows: pd.DataFrame | None) -> str:
    what = {CORPUS_FRAME: "corpus-wide", CONFLICT_FRAME: "in the conflict frame"}.get(frame, f"in frame '{frame}'")
    if rows is None or rows.empty:
        return what
    wins, losses = int(rows["rule_wins"].sum()), int(rows["prior_wins"].sum())
    if wins == losses == 0:
        return f"{what}: no events"
    return f"{what}: {wins:,}:{losses:,} = {(wins + 1) / (losses + 1):.2g}"


def support_figure(support: pd.DataFrame, trajectories: pd.DataFrame, *, probeset: str, rule: str,
                   order: Sequence[str]) -> Figure:
    """(f) Support per step window, corpus-wide and in-frame (left, log axis, parity line),
    beside the rule's smoothed held-out conflict accuracy per model (right).

    Args:
        support: per-window rows of `support.count_support` (``frame`` column optional; a
            ``corpus`` column, when several corpora were counted, draws one line per corpus).
        trajectories, probeset, rule, order: as the other per-rule figures.

    Returns:
        The figure. Windows with no events on either side are left as gaps (never drawn at
        parity).
    """
    sup = support[support["rule"] == rule].copy()
    if "frame" not in sup:
        sup["frame"] = CORPUS_FRAME
    sup = sup.sort_values("window_start_step")
    corpora = sorted(sup["corpus"].unique()) if "corpus" in sup else [None]
    traj = fg.group_rows(trajectories, probeset, rule)
    models = [m for m in order if m in set(traj["model"])]
    colors = fg.model_colors(order)  # shades of the conflict hue, darker = larger (as figures.py)
    with fg.style():
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")
        left, right = fig.subplots(1, 2, sharex=True)
        all_edges = []
        for frame in _frame_order(list(sup["frame"].unique())):
            style = dict(FRAME_STYLES.get(frame) or dict(
                color=_OTHER_FRAME_COLORS[len(all_edges) % len(_OTHER_FRAME_COLORS)], linewidth=1.3,
                linestyle="--"))
            for c_i, corpus in enumerate(corpora):
                rows = sup[(sup["frame"] == frame) & ((sup["corpus"] == corpus) if corpus is not None else True)]
                if rows.empty:
                    continue
                edges = np.append(rows["window_start_step"].to_numpy(float),
                                  rows["window_end_step"].to_numpy(float)[-1:])
                all_edges.append(edges)
                ratio = rows["ratio"].to_numpy(float)  # NaN = no events: a gap
                label = _frame_label(frame, rows) + (f" [{corpus}]" if len(corpora) > 1 else "")
                left.stairs(ratio, edges, baseline=None, label=label, alpha=1.0 if c_i == 0 else 0.6, **style)
        left.axhline(1.0, color="black", linewidth=0.9, linestyle=":", label=PARITY_LABEL)
        left.set_yscale("log")
        left.set_ylabel(RATIO_LABEL)
        left.set_title(RATIO_TITLE)
        lo, hi = left.get_ylim()
        left.set_ylim(min(lo, 0.5), max(hi, 2.0))  # parity always inside the axis
        for model in models:
            t = traj[(traj["model"] == model) & traj["used"]].sort_values("step")
            right.plot(t["step"], t["conflict_smooth"], color=colors[model], linewidth=1.5, label=model)
        right.set_ylim(-0.03, 1.03)
        right.set_ylabel("smoothed conflict accuracy (fraction)")
        right.set_title("held-out conflict accuracy per model")
        steps = traj.loc[traj["used"], "step"] if traj["used"].any() else (
            np.concatenate(all_edges) if all_edges else [1])
        for ax in (left, right):
            fg.plain_step_axis(ax, steps)
            ax.set_xlabel(fg.STEP_LABEL)
        # legends under the panels: inside they would hide the parity line or a trajectory
        for ax in (left, right):
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, fontsize=6.5, frameon=False)
        fig.suptitle(f"{rule}: support frequency (corpus-wide and in the conflict frame) and behaviour")
    return fig


def sweep_figure(table: pd.DataFrame, *, rule: str) -> Figure:
    """(g) Final held-out conflict accuracy (left) and final contrast margin (right) per sweep
    arm against its measured in-frame support ratio (log x, parity line at 1); each point is
    labelled with its knob and verdict letter, and the interval where the fate flips is shaded.

    Args:
        table: `pipeline.sweep_claims`'s table (``support, in_frame_ratio, final_acc, final_cm,
            verdict, survived``); without measured ratios the knob is the x axis.
    """
    measured = "in_frame_ratio" in table and table["in_frame_ratio"].notna().all()
    key = "in_frame_ratio" if measured else "support"
    table = table.sort_values(key)
    x = table[key].to_numpy(float)
    survived = table["survived"].to_numpy(bool)
    flip = flip_point(x, survived)
    with fg.style():
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")
        left, right = fig.subplots(1, 2, sharex=True)
        left.plot(x, table["final_acc"], marker="o", color=fg.CONDITION_COLORS["conflict"],
                  label="final conflict accuracy")
        right.plot(x, table["final_cm"], marker="s", color=fg.MODEL_COLORS[0], label="final contrast margin")
        right.axhline(0.0, color=fg.VOID_TEXT, linewidth=0.8, linestyle="--", label="CM = 0")
        for ax, col in ((left, "final_acc"), (right, "final_cm")):
            for xi, yi, knob, v in zip(x, table[col], table["support"], table["verdict"]):
                ax.annotate(f"{str(v)[0]} (knob {knob:g})", (xi, yi), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=6.5)
            if measured:
                ax.axvline(1.0, color="black", linewidth=0.9, linestyle=":", label=PARITY_LABEL)
                ax.set_xscale("log")
            if flip is not None:
                ax.axvspan(*flip, color=fg.PALETTE[2], alpha=0.15,
                           label=f"fate flips between {flip[0]:.2g} and {flip[1]:.2g}")
            ax.set_xlabel("measured in-frame support ratio (log scale)" if measured
                          else "support knob: P(rule wins in the conflict frame)")
        left.set_ylim(-0.05, 1.15)
        left.set_ylabel("final held-out conflict accuracy")
        right.set_ylabel(fg.CM_LABEL.replace("contrast margin", "final contrast margin"))
        fg.figure_legend(fig, (left, right))
        fig.suptitle(f"{rule}: fate against measured in-frame support (rule wins + 1)/(prior wins + 1) "
                     "(letters: verdict)")
    return fig
