"""figures.py's one visual language, shared by every figure module: colours, labels, style, layout, files.

Hue means condition (vermillion conflict, blue agree: Okabe-Ito, colour-blind safe); where
several models share a panel they are shades of that hue, darker = larger; events are black
shapes. `style()` fixes fonts and sizes, `save_figure` writes PDF + PNG with fixed metadata,
so equal input gives equal bytes. figures.py, support_figures.py and intervention_figures.py
all import this module; none of them imports another figure module's privates.
"""
from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.collections import Collection
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple

from pythia_forensics.analysis.step_axis import step_axis
from pythia_forensics.atomic import atomic_path

# Okabe-Ito: colour-blind-safe categorical palette.
PALETTE = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
CONDITION_COLORS = {"conflict": PALETTE[1], "agree": PALETTE[0]}
FIGURE_DPI = 200
FIGURE_FORMATS = ("pdf", "png")  # save_figure writes one file per format


def _mix(color: str, other: str, t: float) -> str:
    a, b = np.array(to_rgb(color)), np.array(to_rgb(other))
    return to_hex((1 - t) * a + t * b)

def model_shades(base: str, n: int) -> list[str]:
    """`n` shades of one hue, lightest first (models smallest first: darker = larger)."""
    if n <= 1:
        return [base] * max(n, 0)
    # < 0: towards white, > 0: towards black. The lightest shade stays at >= 3:1 contrast on white
    # (WCAG's bar for graphics; vermillion itself is only 3.9:1), so no model's line is faint.
    ts = np.linspace(-0.15, 0.55, n)
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
EMERGENCE, PEAK, ONSET, CROSSING = ("emergence", "peak", "collapse onset",
                                    "CM zero crossing (last checkpoint with CM >= 0)")
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
def style():
    """The figure set's rcParams (fonts, sizes, grid, no axis offset text) for the block."""
    with matplotlib.rc_context(_RC):
        yield


def slug(text: str) -> str:
    """`text` as a safe file-name part (runs of other characters become "_")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "_"

def plain_step_axis(ax, steps) -> None:
    """The grid-following step axis for figures that build no `StepAxis` of their own."""
    steps = np.asarray(list(steps), dtype=float)
    step_axis(pd.DataFrame(dict(model="_", step=steps, used=True))).apply(ax, label=False)


def panel_grid(n: int, *, width: float = 3.0, height: float = 2.4, max_cols: int = 5,
          legend_rows: int = 1) -> tuple[Figure, np.ndarray]:
    """A figure of `n` panels sharing y, at most `max_cols` a row, room below for the legend.

    Returns:
        (figure, the first max(n, 1) axes); spare axes of the last row are hidden.
    """
    cols = min(max(n, 1), max_cols)
    rows = -(-max(n, 1) // cols)
    # at least MIN_FIGURE_WIDTH wide: the shared legend under the panels needs the room
    fig = Figure(figsize=(max(width * cols, MIN_FIGURE_WIDTH), height * rows + 0.6 + 0.25 * legend_rows),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:max(n, 1)]


def bottom_row(axes, k: int, cols: int) -> bool:
    """Whether panel k has no visible panel below it (it carries the x label)."""
    return k + cols >= len(axes)


def group_rows(frame: pd.DataFrame, probeset: str, rule: str) -> pd.DataFrame:
    """The rows of one (probeset, rule) of a metrics or trajectories frame."""
    return frame[(frame["probeset"] == probeset) & (frame["rule"] == rule)]


def figure_legend(fig: Figure, axes, extra: Sequence[tuple[object, str]] = (), *, ncols: int = 4) -> None:
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


def legend_rows(n_entries: int, ncols: int = 4) -> int:
    """How many rows a figure legend of `n_entries` takes at `ncols` entries a row."""
    return -(-n_entries // ncols)


def wrap(text: str, width: int) -> str:
    """`text` broken into lines of at most `width` characters."""
    return "\n".join(textwrap.wrap(text, width)) or text


# --- files ---------------------------------------------------------------------------------------------
def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write `stem`.pdf and `stem`.png with fixed metadata (same figure -> same bytes)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with style():
        for fmt in FIGURE_FORMATS:
            path = stem.with_suffix(f".{fmt}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, metadata=_METADATA.get(fmt))
            paths.append(path)
    return paths
