"""Figures of the intervention experiments (issue #8): dose-response and per-arm trajectories.

The figure set's visual language (figures.py): the quantities drawn are conflict-item
accuracy and CM, so they are drawn in the conflict hue; dose is ordinal, so doses are shades
of that hue (lightest = lowest dose); seeds are replicates, drawn thin and grey, their mean
black. The step axis follows the checkpoint grid (`step_axis`). Files go through
`figures.save_figure` (vector PDF + PNG, fixed metadata, atomic).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from pythia_forensics.analysis.figure_style import CONDITION_COLORS, NEUTRAL, VOID_TEXT, figure_legend, model_shades, \
    save_figure, style
from pythia_forensics.analysis.step_axis import step_axis

__all__ = ["dose_response_figure", "trajectories_figure"]


def dose_response_figure(summary: pd.DataFrame, stem: str | Path, *, rule: str, xlabel: str) -> list[Path]:
    """Final held-out conflict accuracy and final CM against dose: one grey line per seed, mean in black.

    Args:
        summary: target-rule rows with columns dose, seed, final_acc, final_cm.
        stem: output path without suffix (.pdf and .png written).
        rule: the edited rule (title).
        xlabel: dose axis label with units.

    Returns:
        The files written.
    """
    with style():
        fig = Figure(figsize=(7.5, 3.2), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, col, label in ((axes[0], "final_acc", "final held-out conflict accuracy"),
                               (axes[1], "final_cm", "final conflict CM (nats)")):
            for i, (seed, g) in enumerate(summary.groupby("seed")):
                g = g.sort_values("dose")
                ax.plot(g["dose"], g[col], marker="o", ms=3, color=VOID_TEXT, linewidth=0.8,
                        label="one seed" if i == 0 else "_")
            m = summary.groupby("dose")[col].mean()
            ax.plot(m.index, m.values, marker="s", color="black", linewidth=2, label="mean over seeds")
            if col == "final_cm":
                ax.axhline(0, color=NEUTRAL, linewidth=0.8, linestyle=":", label="CM = 0")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
        axes[0].set_ylim(-0.05, 1.05)
        figure_legend(fig, axes)
        fig.suptitle(f"{rule}: dose-response ({summary['seed'].nunique()} seeds)", fontsize=8.5)
        return save_figure(fig, Path(stem))


def trajectories_figure(traj: pd.DataFrame, stem: str | Path, *, rule: str) -> list[Path]:
    """Held-out conflict accuracy and CM against step, one line per arm (shade = dose).

    Args:
        traj: rows with columns arm, dose, seed, step, conflict_acc, conflict_cm.
        stem: output path without suffix.
        rule: the edited rule (title).

    Returns:
        The files written.
    """
    doses = sorted(traj["dose"].unique())
    shade = dict(zip(doses, model_shades(CONDITION_COLORS["conflict"], len(doses))))
    axis = step_axis(traj.assign(model="_", used=True))
    with style():
        fig = Figure(figsize=(7.5, 3.2), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, col, label in ((axes[0], "conflict_acc", "held-out conflict accuracy"),
                               (axes[1], "conflict_cm", "conflict CM (nats)")):
            axis.apply(ax)
            seen = set()
            # arms in dose order so the legend reads low to high
            for arm, g in sorted(traj.groupby("arm"), key=lambda kv: (kv[1]["dose"].iloc[0], kv[0])):
                g = g.sort_values("step")
                d = g["dose"].iloc[0]
                ax.plot(g["step"], g[col], color=shade[d], linewidth=1.2, label="_" if d in seen else f"dose {d:g}")
                seen.add(d)
            if col == "conflict_cm":
                ax.axhline(0, color=NEUTRAL, linewidth=0.8, linestyle=":", label="CM = 0")
            ax.set_ylabel(label)
        axes[0].set_ylim(-0.04, 1.04)
        figure_legend(fig, axes, ncols=6)
        fig.suptitle(f"{rule}: trajectories per arm (shade: dose, darker = higher)", fontsize=8.5)
        return save_figure(fig, Path(stem))
