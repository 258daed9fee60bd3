"""The figure set: tidy frames in, matplotlib Figures out; one style; deterministic files.

Figures (one per rule where it says so), all on the analysis's primary split:

(a) ``a_accuracy_<rule>``: conflict and agree accuracy vs training step per model (raw points,
    smoothed line, bootstrap band), emergence (triangle), peak (star), collapse onset (dotted).
(b) ``b_cm_<rule>``: contrast margin vs step per model, zero crossing (diamond), collapse onset.
(c) ``c_scale_<rule>``: collapse depth vs parameter count (total, non-embedding; log x) with
    bootstrap CIs and Spearman rho.
(d) ``d_verdicts``: verdict grid, rule x model, letters R/U/D/P/N, void greyed.
(e) ``e_overview``: every rule's smoothed conflict accuracy, one panel per rule.
(f) ``f_support_<rule>``: corpus-wide and in-frame support ratio per window (log axis, parity
    line) beside the accuracy trajectory (only when the results folder holds a support table;
    drawn in support_figures.py).

Steps use a symlog x axis (linear below step 1) so step 0 is drawn. Points analysis left out
are drawn hollow (below the minimum step) or as black crosses (checkpoint health flagged).
Files are vector PDF + PNG with fixed metadata and fonts, so equal input gives equal bytes.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import NullFormatter

from pythia_forensics.constants import (
    CONDITION_COLORS,
    FIGURE_DPI,
    FIGURE_FORMATS,
    FIGURES_SUBDIR,
    PALETTE,
    SUPPORT_TABLE_FILES,
)
from pythia_forensics.dynamics import (
    VERDICT_LETTERS,
    VERDICTS,
    Analysis,
    AnalysisConfig,
    analyze,
    load_config,
    primary,
)
from pythia_forensics.errors import StoreError

__all__ = ["accuracy_figure", "cm_figure", "scale_figure", "verdict_grid", "overview_figure", "support_figure",
           "save_figure", "render_figures", "load_support", "model_order"]

# --- one style -------------------------------------------------------------------------------
VERDICT_COLORS = {"RECOVERED": PALETTE[2], "UNSTABLE": PALETTE[4], "DISPLACED": PALETTE[1],
                  "PARTIAL": PALETTE[5], "NEVER": PALETTE[0]}
VOID_COLOR = "#D9D9D9"  # greyed cells and points: a verdict whose control failed
VOID_TEXT = "#8C8C8C"
MODEL_COLORS = tuple(c for c in PALETTE if c != PALETTE[6])  # yellow is unreadable on white lines
FLAG_COLOR = PALETTE[7]
RAW_ALPHA = 0.35  # raw per-checkpoint points under the smoothed line
BAND_ALPHA = 0.18  # bootstrap bands
MIN_FIGURE_WIDTH = 7.5  # inches
STEP_LABEL = "training step (symlog axis; step 0 drawn)"
ACC_LABEL = "accuracy (fraction of items correct)"
CM_LABEL = "contrast margin CM (nats)"
_RC = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: same glyphs, same bytes everywhere
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
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


def model_order(models: Sequence[str], sizes: pd.DataFrame | None = None) -> list[str]:
    """Models by total parameter count when known (smallest first), else by name."""
    names = sorted(set(models))
    if sizes is not None and not sizes.empty and "params_total" in sizes:
        size = dict(zip(sizes["model"], sizes["params_total"]))
        return sorted(names, key=lambda m: (size.get(m, np.inf), m))
    return names


def _symlog(ax, steps) -> None:
    """Symlog x: linear from 0 to the first analysed checkpoint, log beyond.

    Step 0 stays drawn, and the steps analysis drops (below the minimum step) share one
    linear decade instead of taking most of the axis from the analysed range.
    """
    positive = [s for s in steps if s > 0]
    ax.set_xscale("symlog", linthresh=float(min(positive)) if positive else 1.0)
    ax.set_xlim(left=0)


def _grid(n: int, *, width: float = 3.0, height: float = 2.4, max_cols: int = 5) -> tuple[Figure, np.ndarray]:
    cols = min(max(n, 1), max_cols)
    rows = -(-max(n, 1) // cols)
    # at least MIN_FIGURE_WIDTH wide: the shared legend under the panels needs the room
    fig = Figure(figsize=(max(width * cols, MIN_FIGURE_WIDTH), height * rows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:max(n, 1)]


def _group(frame: pd.DataFrame, probeset: str, rule: str) -> pd.DataFrame:
    return frame[(frame["probeset"] == probeset) & (frame["rule"] == rule)]


def _dropped(ax, traj: pd.DataFrame, column: str) -> None:
    """Draw left-out checkpoints: hollow below the minimum step, black crosses when flagged."""
    low = traj[~traj["used"] & ~traj["drop_reason"].str.startswith("health")]
    if not low.empty:
        ax.plot(low["step"], low[column], linestyle="none", marker="o", mfc="none", mec=VOID_TEXT, ms=3,
                label="before minimum step (not analysed)")
    flagged = traj[traj["drop_reason"].str.startswith("health")]
    if not flagged.empty:
        ax.plot(flagged["step"], flagged[column], linestyle="none", marker="X", color=FLAG_COLOR, ms=5,
                label="flagged checkpoint (excluded)")


# --- (a) accuracy -------------------------------------------------------------------------------
def accuracy_figure(trajectories: pd.DataFrame, metrics: pd.DataFrame, *, probeset: str, rule: str,
                    order: Sequence[str]) -> Figure:
    """(a) Conflict and agree accuracy vs step, one panel per model, with event markers.

    Args:
        trajectories: `Analysis.trajectories` of one split.
        metrics: `Analysis.metrics` of the same split.
        probeset, rule: which trajectory group to draw.
        order: model order (panels left to right).

    Returns:
        The Figure; each panel's lines carry labels ("conflict (smoothed)", "agree (smoothed)",
        "emergence", "peak", "collapse onset", ...).
    """
    traj, met = _group(trajectories, probeset, rule), _group(metrics, probeset, rule).set_index("model")
    models = [m for m in order if m in set(traj["model"])]
    with _style():
        fig, axes = _grid(len(models))
        for ax, model in zip(axes, models):
            t = traj[traj["model"] == model].sort_values("step")
            used = t[t["used"]]
            for cond in ("conflict", "agree"):
                color = CONDITION_COLORS[cond]
                ax.plot(used["step"], used[f"{cond}_acc"], linestyle="none", marker="o", ms=2.5, color=color,
                        alpha=RAW_ALPHA)
                ax.fill_between(used["step"], used[f"{cond}_lo"], used[f"{cond}_hi"], color=color, alpha=BAND_ALPHA,
                                linewidth=0)
                ax.plot(used["step"], used[f"{cond}_smooth"], color=color, linewidth=1.5, label=f"{cond} (smoothed)")
            _dropped(ax, t, "conflict_acc")
            row = met.loc[model]
            smooth = dict(zip(used["step"], used["conflict_smooth"]))
            if pd.notna(row["emergence_step"]):
                ax.plot([row["emergence_step"]], [smooth[row["emergence_step"]]], linestyle="none", marker="^",
                        color=PALETTE[2], ms=7, label="emergence")
            if pd.notna(row["peak_step"]):
                ax.plot([row["peak_step"]], [row["peak_acc"]], linestyle="none", marker="*", color=PALETTE[3], ms=9,
                        label="peak")
            if pd.notna(row["collapse_step"]):
                ax.axvline(row["collapse_step"], color=PALETTE[7], linestyle=":", linewidth=1.2, label="collapse onset")
            label = row["verdict_label"]
            ax.set_title(f"{model}: {label}", color=VOID_TEXT if row["void"] else "black")
            _symlog(ax, used["step"] if not used.empty else t["step"])
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel(STEP_LABEL)
        axes[0].set_ylabel(ACC_LABEL)
        _figure_legend(fig, axes)
        fig.suptitle(f"{rule}: held-out accuracy by checkpoint (bands: bootstrap CI over items)")
    return fig


def _figure_legend(fig: Figure, axes) -> None:
    """One legend for the figure: the union of the panels' labelled artists."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center", ncols=min(len(seen), 4),
                   frameon=False)


# --- (b) contrast margin -------------------------------------------------------------------------
def cm_figure(trajectories: pd.DataFrame, metrics: pd.DataFrame, *, probeset: str, rule: str,
              order: Sequence[str]) -> Figure:
    """(b) Conflict-item CM vs step per model: zero line, zero crossing, collapse onset."""
    traj, met = _group(trajectories, probeset, rule), _group(metrics, probeset, rule).set_index("model")
    models = [m for m in order if m in set(traj["model"])]
    color = CONDITION_COLORS["conflict"]
    with _style():
        fig, axes = _grid(len(models))
        for ax, model in zip(axes, models):
            t = traj[traj["model"] == model].sort_values("step")
            used = t[t["used"]]
            ax.axhline(0.0, color=VOID_TEXT, linewidth=0.8)
            ax.plot(used["step"], used["conflict_cm"], linestyle="none", marker="o", ms=2.5, color=color,
                    alpha=RAW_ALPHA)
            ax.plot(used["step"], used["cm_smooth"], color=color, linewidth=1.5, label="CM (smoothed)")
            _dropped(ax, t, "conflict_cm")
            row = met.loc[model]
            if pd.notna(row["cm_cross_step"]):
                value = dict(zip(used["step"], used["cm_smooth"]))[row["cm_cross_step"]]
                ax.plot([row["cm_cross_step"]], [value], linestyle="none", marker="D", color=PALETTE[3], ms=6,
                        label="CM zero crossing")
            if pd.notna(row["collapse_step"]):
                ax.axvline(row["collapse_step"], color=PALETTE[7], linestyle=":", linewidth=1.2,
                           label="collapse onset (accuracy)")
            lag = "" if pd.isna(row["lag_checkpoints"]) else f", lag {int(row['lag_checkpoints']):+d} ckpt"
            valid = "" if row["cm_valid"] else " (CM invalid: max too small)"
            ax.set_title(f"{model}{lag}{valid}")
            _symlog(ax, used["step"] if not used.empty else t["step"])
            ax.set_xlabel(STEP_LABEL)
        axes[0].set_ylabel(CM_LABEL)
        _figure_legend(fig, axes)
        fig.suptitle(f"{rule}: contrast margin logp(target) - logp(foil), conflict items")
    return fig


# --- (c) scale -------------------------------------------------------------------------------------
def scale_figure(metrics: pd.DataFrame, scale: pd.DataFrame, sizes: pd.DataFrame, *, probeset: str,
                 rule: str) -> Figure:
    """(c) Collapse depth vs parameter count (total | non-embedding), CIs, Spearman rho."""
    met = _group(metrics, probeset, rule).merge(sizes, on="model", how="inner").dropna(subset=["depth"])
    stat = _group(scale, probeset, rule) if not scale.empty else scale
    with _style():
        fig = Figure(figsize=(7.0, 3.0), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, size, name in zip(axes, ("params_total", "params_nonembedding"), ("total", "non-embedding")):
            if size not in met:
                ax.set_visible(False)
                continue
            for void, sub in met.groupby("void"):
                err = np.vstack([sub["depth"] - sub["depth_lo"], sub["depth_hi"] - sub["depth"]]).clip(min=0)
                ax.errorbar(sub[size], sub["depth"], yerr=err, linestyle="none", marker="o", capsize=3,
                            color=VOID_TEXT if void else PALETTE[1], mfc="none" if void else PALETTE[1],
                            label="void verdict (not in rho)" if void else "collapse depth (95% CI)")
            for row in met.itertuples():
                ax.annotate(row.model, (getattr(row, size), row.depth), textcoords="offset points", xytext=(4, 4),
                            fontsize=6)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on narrow ranges
            ax.set_xlabel(f"parameters, {name} (log scale)")
            hit = stat[(stat["size"] == size) & (stat["metric"] == "depth")] if not stat.empty else stat
            if not hit.empty and pd.notna(hit["rho"].iloc[0]):
                r = hit.iloc[0]
                ax.set_title(f"Spearman rho = {r['rho']:.3f} (p = {r['p_perm']:.3g}, n = {r['n_models']})\n"
                             f"CI [{r['rho_lo']:.2f}, {r['rho_hi']:.2f}]")
            else:
                ax.set_title("rho: " + (hit["note"].iloc[0] if not hit.empty else "no sizes known"))
        axes[0].set_ylabel("collapse depth (peak - final accuracy)")
        _figure_legend(fig, axes)
        fig.suptitle(f"{rule}: collapse depth against model size")
    return fig


# --- (d) verdict grid ------------------------------------------------------------------------------
def _rule_labels(metrics: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(probeset, rule) -> row label; the probe set is named only when a rule has several."""
    pairs = sorted(set(zip(metrics["probeset"], metrics["rule"])), key=lambda p: (p[1], p[0]))
    count = pd.Series([r for _, r in pairs]).value_counts()
    return {(p, r): (f"{r} [{p}]" if count[r] > 1 else r) for p, r in pairs}


def verdict_grid(metrics: pd.DataFrame, *, order: Sequence[str]) -> Figure:
    """(d) Rule x model grid of verdict letters; void verdicts greyed (letter kept, grey)."""
    labels = _rule_labels(metrics)
    rows = list(labels)
    models = [m for m in order if m in set(metrics["model"])]
    with _style():
        fig = Figure(figsize=(5.0 + 0.8 * len(models), 1.6 + 0.45 * len(rows)), layout="constrained")
        ax = fig.subplots()
        for i, key in enumerate(rows):
            for j, model in enumerate(models):
                hit = metrics[(metrics["probeset"] == key[0]) & (metrics["rule"] == key[1]) & (metrics["model"] == model)]
                if hit.empty:
                    continue
                row = hit.iloc[0]
                void = bool(row["void"]) or row["verdict"] is None
                face = VOID_COLOR if void else VERDICT_COLORS[row["verdict"]]
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor=face, edgecolor="white", linewidth=2))
                letter = VERDICT_LETTERS.get(row["verdict"], "?")
                ax.text(j + 0.5, i + 0.5, letter, ha="center", va="center", fontsize=11, fontweight="bold",
                        color=VOID_TEXT if void else "white")
        ax.set_xlim(0, len(models))
        ax.set_ylim(len(rows), 0)
        ax.set_xticks(np.arange(len(models)) + 0.5, models, rotation=30, ha="right")
        ax.set_yticks(np.arange(len(rows)) + 0.5, [labels[k] for k in rows])
        ax.set_xlabel("model (by parameter count)")
        ax.set_ylabel("rule")
        ax.grid(False)
        ax.tick_params(length=0)
        handles = [Patch(facecolor=VERDICT_COLORS[v], label=f"{VERDICT_LETTERS[v]} = {v.lower()}") for v in VERDICTS]
        handles.append(Patch(facecolor=VOID_COLOR, label="grey = void (agree control invalid)"))
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        ax.set_title("verdicts (held-out conflict items)")
    return fig


# --- (e) overview ------------------------------------------------------------------------------------
def overview_figure(trajectories: pd.DataFrame, metrics: pd.DataFrame, *, order: Sequence[str]) -> Figure:
    """(e) One panel per rule: every model's smoothed conflict accuracy (solid) and agree (thin)."""
    labels = _rule_labels(metrics)
    models = [m for m in order if m in set(trajectories["model"])]
    colors = {m: MODEL_COLORS[i % len(MODEL_COLORS)] for i, m in enumerate(models)}
    with _style():
        fig, axes = _grid(len(labels), width=3.2, height=2.6, max_cols=3)
        for ax, (key, label) in zip(axes, labels.items()):
            traj = _group(trajectories, *key)
            for model in models:
                t = traj[(traj["model"] == model) & traj["used"]].sort_values("step")
                if t.empty:
                    continue
                ax.plot(t["step"], t["conflict_smooth"], color=colors[model], linewidth=1.5, label=model)
                ax.plot(t["step"], t["agree_smooth"], color=colors[model], linewidth=0.7, linestyle="--")
            _symlog(ax, traj.loc[traj["used"], "step"] if traj["used"].any() else traj["step"])
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(label)
            ax.set_xlabel(STEP_LABEL)
        axes[0].set_ylabel("smoothed accuracy (solid: conflict, dashed: agree)")
        _figure_legend(fig, axes)
        fig.suptitle("all rules: conflict accuracy per model")
    return fig


# --- (f) support and (g) sweep: drawn in support_figures.py --------------------------------------
def support_figure(support: pd.DataFrame, trajectories: pd.DataFrame, *, probeset: str, rule: str,
                   order: Sequence[str]) -> Figure:
    """(f) Corpus-wide and in-frame support per step window beside accuracy
    (`support_figures.support_figure`)."""
    from pythia_forensics.support_figures import support_figure as draw

    return draw(support, trajectories, probeset=probeset, rule=rule, order=order)


def sweep_figure(table: pd.DataFrame, *, rule: str) -> Figure:
    """(g) Final accuracy and margin against measured in-frame support (`support_figures.sweep_figure`)."""
    from pythia_forensics.support_figures import sweep_figure as draw

    return draw(table, rule=rule)


# --- files ---------------------------------------------------------------------------------------------
def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write `stem`.pdf and `stem`.png with fixed metadata (same figure -> same bytes)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with _style():
        for fmt in FIGURE_FORMATS:
            path = stem.with_suffix(f".{fmt}")
            tmp = path.with_name(f".tmp-{path.name}")
            fig.savefig(tmp, format=fmt, metadata=_METADATA.get(fmt))
            tmp.replace(path)
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
                   analysis: Analysis | None = None) -> list[Path]:
    """Regenerate every figure from a results folder's stored results only.

    Args:
        results_dir: the results folder (item rows, models.parquet, optional health/support).
        out_dir: where to write (default RESULTS/figures).
        config: thresholds (default: shipped analysis.yaml).
        analysis: a ready `analyze(results_dir)` result, to skip recomputing it.

    Returns:
        The PDF and PNG files written, in figure order.
    """
    from pythia_forensics.store import ResultsStore

    root = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else root / FIGURES_SUBDIR
    if analysis is None:
        analysis = analyze(root, config=config if config is not None else load_config())
    sizes = ResultsStore(root).models()
    cfg = analysis.config
    metrics = primary(analysis.metrics, cfg)
    split = metrics["split"].iloc[0]
    traj = analysis.trajectories[analysis.trajectories["split"] == split]
    scale = analysis.scale[analysis.scale["split"] == split] if not analysis.scale.empty else analysis.scale
    order = model_order(metrics["model"], sizes)
    support = load_support(root)
    written: list[Path] = []
    labels = _rule_labels(metrics)
    for (probeset, rule), label in labels.items():
        slug = _slug(label)
        written += save_figure(accuracy_figure(traj, metrics, probeset=probeset, rule=rule, order=order),
                               out / f"a_accuracy_{slug}")
        written += save_figure(cm_figure(traj, metrics, probeset=probeset, rule=rule, order=order), out / f"b_cm_{slug}")
        if not sizes.empty:
            written += save_figure(scale_figure(metrics, scale, sizes, probeset=probeset, rule=rule),
                                   out / f"c_scale_{slug}")
    written += save_figure(verdict_grid(metrics, order=order), out / "d_verdicts")
    written += save_figure(overview_figure(traj, metrics, order=order), out / "e_overview")
    if support is not None:
        for (probeset, rule), label in labels.items():
            if rule in set(support["rule"]):
                written += save_figure(support_figure(support, traj, probeset=probeset, rule=rule, order=order),
                                       out / f"f_support_{_slug(label)}")
    return written
