"""`report.md` in the results folder: verdicts, a job's measured claims (checks.csv, when a
demo or sweep wrote one), metrics, scale statistics, the thresholds' hash, the
pre-registration ledger (when a lock exists) and the figures, embedded.

The report is a pure rendering of stored results: the same store and config give the same
text (no clock in it), so a diff of two reports is a diff of results.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pythia_forensics.atomic import write_text
from pythia_forensics.constants import CHECKS_FILE, FIGURES_SUBDIR, REPORT_FILE
from pythia_forensics.analysis.dynamics import VERDICT_LETTERS, Analysis, AnalysisConfig, analyze, primary
from pythia_forensics.errors import PreregError
from pythia_forensics.analysis.frames import model_order, unknown_size_models
from pythia_forensics.analysis.prereg import ledger as score_ledger

__all__ = ["write_report", "render_report", "read_claims", "markdown_table"]

FIGURE_CAPTIONS = {
    "a_accuracy": "Conflict (vermillion) and agree (blue) accuracy against training step, one panel per model "
                  "(dots: raw; line: smoothed, k = 3; band: bootstrap 95% CI over items; open triangle: "
                  "emergence; star: peak; dotted line: collapse onset; hollow: below the minimum step, not "
                  "analysed; cross: health-flagged checkpoint, excluded).",
    "b_cm": "Contrast margin of the conflict items (CM, nats) against step; diamond: the CM zero crossing, "
            "the last checkpoint with smoothed CM >= 0 before it falls below (the table's CM zero; none for a "
            "rule that never emerged); dotted: collapse onset; title: lag = CM zero - collapse onset in "
            "checkpoints.",
    "c_scale": "Collapse depth (peak - final) against parameter count, total and non-embedding, one tick per "
               "model, with bootstrap 95% CIs, only where the rule collapsed (emerged, final below "
               "verdicts.recovered_final_min); panel title: Spearman rho with permutation p and bootstrap CI, "
               "or why rho is undefined; grey hollow: void verdict, not in rho; grey dashed line, labelled: a "
               "model with no depth and why (void, never emerged, never collapsed); models of unknown size are "
               "named in the title.",
    "d_verdicts": "Verdicts, rule x model: R recovered, U unstable, D displaced, P partial, N never; "
                  "hatched grey: void (the agree control failed or too few checkpoints: the letter is what the "
                  "verdict would be, not used in any statistic).",
    "e_overview": "Every rule's smoothed conflict accuracy (solid, vermillion shades) and agree accuracy "
                  "(dashed, blue shades), one line per model, darker = larger.",
    "f_support": "Support ratio (rule wins + 1)/(prior wins + 1) per step window beside the rule's accuracy.",
}

SYMBOLS = (
    ("R, U, D, P, N", "verdicts: recovered, unstable, displaced, partial, never emerged (checked in the order "
                      "U, R, D, P, N; thresholds below)"),
    ("(X)", "a void verdict X: the agree control is invalid or there are too few checkpoints; shown, never used"),
    ("VOID", "the same, in the metrics table's verdict column"),
    ("-", "not defined (the event did not happen, or the value is unknown)"),
    ("conflict / agree", "items where the rule and the corpus prior disagree / agree (agree = the control)"),
    ("CM", "contrast margin: mean logp(target) - logp(foil) over conflict items, in nats"),
    ("emergence", "first step with smoothed conflict accuracy >= emergence.conflict_min while the agree "
                  "control holds"),
    ("peak (step)", "highest smoothed conflict accuracy while the agree control holds, and its step"),
    ("collapse onset", "last step with smoothed conflict accuracy >= collapse.onset_max_acc, for emerged "
                       "rules that fall below it"),
    ("final [CI]", "mean raw accuracy over the final window, bootstrap 95% CI over items"),
    ("depth [CI]", "collapse depth = peak - final, bootstrap 95% CI; only for a rule that collapsed (emerged, "
                   "final below verdicts.recovered_final_min), '-' when it never emerged or ended recovered"),
    ("CM zero", "CM zero crossing: last checkpoint with smoothed CM >= contrast_margin.zero before it falls "
                "below, at or after emergence (the b_cm diamond); '-' when the rule never emerged"),
    ("lag steps (ckpt)", "CM zero - collapse onset, in steps and (in parentheses) in checkpoints"),
    ("agree final", "final accuracy of the agree control"),
    ("rho", "Spearman rank correlation of a metric with parameter count (void verdicts left out)"),
    ("p_perm", "two-sided permutation p-value of rho (exact over all n! pairings up to scale.exact_max_n)"),
    ("p_min", "smallest p-value any pairing of these n values could give (2/n! without ties: 1/3 at n = 3)"),
    ("rho_lo, rho_hi", "bootstrap 95% interval of rho (`interval` says over what; none below "
                       "scale.bootstrap_min_models sizes unless every size has 2+ seeds; the note says why)"),
    ("n_models", "models in the statistic; note: why rho is undefined, or which models are left out"),
    ("params_total, params_nonembedding", "total and non-embedding parameter counts"),
    ("k", "smoothing window: centred moving average over k checkpoints"),
)


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


def _config_source(source: str) -> str:
    """The config's origin without machine paths: file names only (the hash pins the content)."""
    names = [Path(part.strip()).name for part in str(source).split(" + ") if part.strip()]
    if not names:
        return "shipped analysis.yaml"
    return "shipped " + names[0] + "".join(f" + override {n}" for n in names[1:])


def read_claims(results_dir: Path, analysis: Analysis) -> tuple[pd.DataFrame | None, str | None]:
    """RESULTS/checks.csv (a job's measured claims) for the report, or why it is not shown.

    Returns:
        (claims, None) when the table exists and was measured under this analysis's config;
        (None, reason) when it was measured under other thresholds; (None, None) when absent.
    """
    path = Path(results_dir) / CHECKS_FILE
    if not path.is_file():
        return None, None
    claims = pd.read_csv(path, keep_default_na=False, dtype=str)
    need = {"claim", "precondition", "result", "observed", "config_sha256"}
    if not need <= set(claims.columns):
        return None, f"{CHECKS_FILE} was written by an older version; rerun the job (`pythia-forensics demo`)"
    stale = set(claims["config_sha256"]) - {analysis.config.sha256}
    if stale:
        return None, (f"{CHECKS_FILE} was measured under config {sorted(stale)[0][:12]}, not this analysis's "
                      f"{analysis.config.sha256[:12]}; rerun the job to measure its claims again")
    return claims, None


def render_report(analysis: Analysis, *, results_dir: Path, figures: Sequence[Path] = (),
                  ledger: pd.DataFrame | None = None, ledger_error: str | None = None,
                  order: Sequence[str] | None = None, unknown_sizes: Sequence[str] = (),
                  claims: pd.DataFrame | None = None, claims_note: str | None = None) -> str:
    """The report's markdown text.

    Args:
        analysis: `analyze` of the results folder.
        results_dir: the folder the report is written into (figure links are relative to it).
        figures: figure files (PNG are embedded, PDF linked).
        ledger: the scored pre-registration ledger, if any.
        ledger_error: why the ledger was refused, if it was.
        order: model order for tables (default: by name).
        unknown_sizes: models whose parameter count is unknown (named in the scale section).
        claims: a job's measured claims (checks.csv rows: claim, precondition, result, observed).
        claims_note: why a claims table exists but is not shown.
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
        "Results: the folder this report is in; every path below is relative to it.  ",
        f"Analysis config sha256: `{cfg.sha256}` ({_config_source(cfg.source)})  ",
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
    if claims is not None or claims_note is not None:
        parts += ["## Claims", ""]
        if claims is None:
            parts += [f"_Not shown: {claims_note}._", ""]
        else:
            counts = claims["result"].value_counts()
            parts += ["What this run measured (checks.csv): a claim is tested only when its precondition holds, "
                      "else it is *not applicable*, never a yes; `measured` names the stored numbers it rests on "
                      "(dynamics.csv, support_in_frame.csv). "
                      + ", ".join(f"{counts.get(r, 0)} {r}" for r in ("yes", "no", "not applicable")) + ".", "",
                      markdown_table(claims.rename(columns={"observed": "measured"}),
                                     ["claim", "precondition", "result", "measured"]), ""]
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
    parts += ["## Symbols", "", "| symbol | meaning |", "|---|---|"]
    parts += [f"| {sym} | {meaning} |" for sym, meaning in SYMBOLS]
    parts += ["", "## Trajectory metrics", "", markdown_table(_metrics_table(metrics)), ""]
    excluded = metrics[metrics["n_excluded_health"] > 0]
    if not excluded.empty:
        parts += ["Checkpoints left out for health flags (never used in any metric):", ""]
        parts += [f"- {r.model} {r.rule} ({r.split}): steps {r.excluded_steps}" for r in excluded.itertuples()]
        parts.append("")
    parts += ["## Scale", ""]
    if unknown_sizes:
        parts += [f"Parameter count unknown for {', '.join(unknown_sizes)}: left out of the scale statistics "
                  "and the scale figures.", ""]
    if analysis.scale.empty:
        parts += ["_No model sizes in models.parquet: no scale statistics._", ""]
    else:
        parts += ["Spearman rho of collapse depth and final accuracy against parameter count (void verdicts "
                  "left out; seeds of one run are one point, their mean); p: two-sided permutation test, p_min: "
                  "the smallest p these n allow; CI: bootstrap (see interval).", "",
                  markdown_table(analysis.scale, ["rule", "split", "size", "metric", "n_models", "rho", "p_perm",
                                                  "p_min", "rho_lo", "rho_hi", "note"]), ""]
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
    from pythia_forensics.sweep.store import ResultsStore

    sizes = ResultsStore(root).models()
    order = model_order(analysis.metrics["model"], sizes)
    unknown = unknown_size_models(analysis.metrics["model"], sizes) if not sizes.empty else []
    claims, claims_note = read_claims(root, analysis)
    text = render_report(analysis, results_dir=root, figures=figures, ledger=ledger, ledger_error=error, order=order,
                         unknown_sizes=unknown, claims=claims, claims_note=claims_note)
    path = root / REPORT_FILE
    write_text(path, text)
    return path
