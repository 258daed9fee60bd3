"""`report.md` in the results folder: verdicts, metrics, scale statistics, the thresholds'
hash, the pre-registration ledger (when a lock exists) and the figures, embedded.

The report is a pure rendering of stored results: the same store and config give the same
text (no clock in it), so a diff of two reports is a diff of results.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pythia_forensics.constants import FIGURES_SUBDIR, REPORT_FILE
from pythia_forensics.dynamics import VERDICT_LETTERS, Analysis, AnalysisConfig, analyze, primary
from pythia_forensics.errors import PreregError
from pythia_forensics.figures import model_order
from pythia_forensics.prereg import ledger as score_ledger

__all__ = ["write_report", "render_report", "markdown_table"]

FIGURE_CAPTIONS = {
    "a_accuracy": "Conflict and agree accuracy against training step, per model (points: raw; line: smoothed; "
                  "band: bootstrap CI over items; triangle: emergence; star: peak; dotted: collapse onset; "
                  "hollow: before the minimum step; cross: health-flagged checkpoint, excluded).",
    "b_cm": "Contrast margin (mean logp(target) - logp(foil) over conflict items) against step; diamond: "
            "zero crossing; dotted: behavioural collapse onset; title: lag in checkpoints.",
    "c_scale": "Collapse depth (peak - final) against parameter count, total and non-embedding, with "
               "bootstrap CIs and Spearman rho (permutation p); grey: void verdicts, left out of rho.",
    "d_verdicts": "Verdicts, rule x model: R recovered, U unstable, D displaced, P partial, N never; grey: void.",
    "e_overview": "Every rule's smoothed conflict accuracy (solid) and agree accuracy (dashed), per model.",
    "f_support": "Support ratio (rule wins + 1)/(prior wins + 1) per step window beside the rule's accuracy.",
}


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of `frame` (floats to 3 decimals, missing as '-')."""
    columns = list(columns or frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _ci(value, lo, hi) -> str:
    if value is None or pd.isna(value):
        return "-"
    if lo is None or pd.isna(lo):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def _metrics_table(metrics: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "model": metrics["model"], "rule": metrics["rule"], "split": metrics["split"],
        "verdict": metrics["verdict_label"],
        "emergence": metrics["emergence_step"], "peak (step)": [
            "-" if pd.isna(v) else f"{v:.3f} ({s})" for v, s in zip(metrics["peak_acc"], metrics["peak_step"])],
        "collapse onset": metrics["collapse_step"],
        "final [CI]": [_ci(*r) for r in zip(metrics["final_acc"], metrics["final_lo"], metrics["final_hi"])],
        "depth [CI]": [_ci(*r) for r in zip(metrics["depth"], metrics["depth_lo"], metrics["depth_hi"])],
        "CM zero": metrics["cm_cross_step"], "lag steps (ckpt)": [
            "-" if pd.isna(s) else f"{s} ({c:+d})" for s, c in zip(metrics["lag_steps"], metrics["lag_checkpoints"])],
        "agree final": metrics["agree_final"], "checkpoints": metrics["n_checkpoints"],
        "void reason": metrics["void_reason"].replace("", "-"),
    })
    return out


def _verdict_matrix(metrics: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    cells = metrics.assign(cell=[
        ("(" + VERDICT_LETTERS.get(v, "?") + ")") if void else VERDICT_LETTERS.get(v, "?")
        for v, void in zip(metrics["verdict"], metrics["void"])])
    grid = cells.pivot_table(index="rule", columns="model", values="cell", aggfunc="first").fillna("")
    return grid[[m for m in order if m in grid.columns]].reset_index()


def render_report(analysis: Analysis, *, results_dir: Path, figures: Sequence[Path] = (),
                  ledger: pd.DataFrame | None = None, ledger_error: str | None = None,
                  order: Sequence[str] | None = None) -> str:
    """The report's markdown text.

    Args:
        analysis: `analyze` of the results folder.
        results_dir: the folder the report is written into (figure links are relative to it).
        figures: figure files (PNG are embedded, PDF linked).
        ledger: the scored pre-registration ledger, if any.
        ledger_error: why the ledger was refused, if it was.
        order: model order for tables (default: by name).
    """
    cfg: AnalysisConfig = analysis.config
    order = list(order) if order is not None else model_order(analysis.metrics["model"])
    rank = {m: i for i, m in enumerate(order)}
    metrics = analysis.metrics.assign(_rank=analysis.metrics["model"].map(rank)).sort_values(
        ["rule", "split", "_rank"], kind="stable")
    main = primary(metrics, cfg)
    parts = [
        "# pythia-forensics report",
        "",
        f"Results: `{results_dir}`  ",
        f"Analysis config sha256: `{cfg.sha256}` ({cfg.source})  ",
        f"Primary split: `{main['split'].iloc[0] if not main.empty else cfg.primary_split}`; "
        f"{len(metrics)} trajectories over {metrics['model'].nunique() if not metrics.empty else 0} models.",
        "",
        "## Verdicts",
        "",
        "Letters: R recovered, U unstable, D displaced, P partial, N never; in parentheses: void "
        "(agree control invalid or too few checkpoints).",
        "",
        markdown_table(_verdict_matrix(main, order)) if not main.empty else "_no trajectories_",
        "",
    ]
    if ledger_error is not None or ledger is not None:
        parts += ["## Pre-registration ledger", ""]
        if ledger_error is not None:
            parts += [f"**Refused:** {ledger_error}", ""]
        else:
            counts = ledger["status"].value_counts()
            summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pass", "fail", "void"))
            parts += [f"Locked at {ledger['locked_at'].iloc[0]} under config `{ledger['config_sha256'].iloc[0][:12]}`: "
                      f"{summary}.", "",
                      markdown_table(ledger, ["id", "claim", "status", "observed", "detail"]), ""]
    parts += ["## Trajectory metrics", "", markdown_table(_metrics_table(metrics)), ""]
    excluded = metrics[metrics["n_excluded_health"] > 0]
    if not excluded.empty:
        parts += ["Checkpoints left out for health flags (never used in any metric):", ""]
        parts += [f"- {r.model} {r.rule} ({r.split}): steps {r.excluded_steps}" for r in excluded.itertuples()]
        parts.append("")
    parts += ["## Scale", ""]
    if analysis.scale.empty:
        parts += ["_No model sizes in models.parquet: no scale statistics._", ""]
    else:
        parts += ["Spearman rho of collapse depth and final accuracy against parameter count (void verdicts "
                  "left out); p: two-sided permutation test; CI: bootstrap over models.", "",
                  markdown_table(analysis.scale, ["rule", "split", "size", "metric", "n_models", "rho", "p_perm",
                                                  "rho_lo", "rho_hi", "note"]), ""]
    pngs = [p for p in figures if p.suffix == ".png"]
    if pngs:
        parts += ["## Figures", ""]
        for png in pngs:
            rel = Path(os.path.relpath(png, results_dir)).as_posix()
            pdf = Path(os.path.relpath(png.with_suffix(".pdf"), results_dir)).as_posix()
            caption = next((c for k, c in FIGURE_CAPTIONS.items() if png.stem.startswith(k)), "")
            parts += [f"### {png.stem}", "", f"![{png.stem}]({rel})", "", f"{caption} ([PDF]({pdf}))", ""]
    parts += ["## Thresholds", "", "All thresholds come from analysis.yaml (hash above):", ""]
    for section, entries in cfg.values.items():
        parts.append(f"- **{section}**: " + ", ".join(f"{k} = {v}" for k, v in entries.items()))
    return "\n".join(parts) + "\n"


def write_report(results_dir: str | Path, *, analysis: Analysis | None = None, figures: Sequence[Path] | None = None,
                 config: AnalysisConfig | str | Path | None = None) -> Path:
    """Write RESULTS/report.md from stored results (and the figures, if rendered).

    Args:
        results_dir: the results folder.
        analysis: a ready `analyze(results_dir)` result (computed when None).
        figures: figure files to embed (default: whatever RESULTS/figures holds).
        config: thresholds when `analysis` is None.

    Returns:
        The report path.
    """
    root = Path(results_dir)
    if analysis is None:
        analysis = analyze(root, config=config)
    if figures is None:
        folder = root / FIGURES_SUBDIR
        figures = sorted(folder.glob("*.png")) if folder.exists() else []
    ledger, error = None, None
    try:
        ledger = score_ledger(analysis, root)
    except PreregError as exc:
        error = str(exc)
    from pythia_forensics.store import ResultsStore

    order = model_order(analysis.metrics["model"], ResultsStore(root).models())
    text = render_report(analysis, results_dir=root, figures=figures, ledger=ledger, ledger_error=error, order=order)
    path = root / REPORT_FILE
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    tmp.replace(path)
    return path
