"""Figures of the intervention experiments (issue #8): dose-response and per-arm trajectories.

Uses figures.py's style context (`_style`) and the shared colour-blind-safe PALETTE; writes
vector PDF + PNG.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pythia_forensics.constants import FIGURE_DPI, PALETTE  # noqa: E402
from pythia_forensics.figures import _style  # noqa: E402


def _save(fig, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".pdf"))
    fig.savefig(stem.with_suffix(".png"), dpi=FIGURE_DPI)
    plt.close(fig)


def dose_response_figure(summary: pd.DataFrame, stem: str | Path, *, rule: str, xlabel: str) -> None:
    """Final held-out conflict accuracy and final CM against dose: one line per seed, mean in black.

    Args:
        summary: target-rule rows with columns dose, seed, final_acc, final_cm.
        stem: output path without suffix (.pdf and .png written).
        rule: the edited rule (title).
        xlabel: dose axis label with units.
    """
    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.0), constrained_layout=True)
        for ax, col, label in ((axes[0], "final_acc", "final held-out conflict accuracy"),
                               (axes[1], "final_cm", "final conflict CM (nats)")):
            for i, (seed, g) in enumerate(summary.groupby("seed")):
                g = g.sort_values("dose")
                ax.plot(g["dose"], g[col], "o-", color=PALETTE[i % len(PALETTE)], alpha=0.6, lw=1,
                        label=f"seed {seed}")
            m = summary.groupby("dose")[col].mean()
            ax.plot(m.index, m.values, "s-", color="black", lw=2, label="mean")
            if col == "final_cm":
                ax.axhline(0, color="grey", lw=0.8, ls=":")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
        axes[0].set_ylim(-0.05, 1.05)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{rule}: dose-response")
        _save(fig, Path(stem))


def trajectories_figure(traj: pd.DataFrame, stem: str | Path, *, rule: str) -> None:
    """Held-out conflict accuracy and CM against step, one line per arm (colour = dose).

    Args:
        traj: rows with columns arm, dose, seed, step, conflict_acc, conflict_cm.
        stem: output path without suffix.
        rule: the edited rule (title).
    """
    doses = sorted(traj["dose"].unique())
    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.0), constrained_layout=True)
        for ax, col, label in ((axes[0], "conflict_acc", "held-out conflict accuracy"),
                               (axes[1], "conflict_cm", "conflict CM (nats)")):
            seen = set()
            # Arms in dose order so the legend reads low to high.
            for arm, g in sorted(traj.groupby("arm"), key=lambda kv: (kv[1]["dose"].iloc[0], kv[0])):
                g = g.sort_values("step")
                d = g["dose"].iloc[0]
                ax.plot(g["step"], g[col], color=PALETTE[doses.index(d) % len(PALETTE)], lw=1, alpha=0.8,
                        label=None if d in seen else f"dose {d:g}")
                seen.add(d)
            if col == "conflict_cm":
                ax.axhline(0, color="grey", lw=0.8, ls=":")
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{rule}: trajectories per arm")
        _save(fig, Path(stem))
