"""The paper kit: figures, booktabs LaTeX tables and a methods file from one results folder.

    write_paper_kit("results/demo", "paper/")

OUT/figures/        the figure set (figures.render_figures; the scale grid's too where
                    RESULTS holds grid.csv, replicates.csv and scale_by_knob.csv)
OUT/tables/*.csv    the numbers of each table ...
OUT/tables/*.tex    ... and the same numbers as booktabs tables (one formatter, `cell`)
OUT/methods.tex     thresholds and their sha256, SCORING_VERSION, package versions, seeds,
                    suites, probe-set hashes; appendix: per-checkpoint provenance (repo,
                    commit, weights sha256)
OUT/paper.tex       a stand-alone document that inputs all of them (`pdflatex paper.tex`)

Every table is first written as CSV, and the .tex is rendered from that very frame, so the
two carry the same numbers (to the printed precision: 4 significant digits).
"""
from __future__ import annotations

import importlib.metadata
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pythia_forensics.analysis.config import AnalysisConfig, load_config
from pythia_forensics.atomic import atomic_write

__all__ = ["PaperKit", "cell", "latex_table", "write_paper_kit", "PACKAGES"]

PACKAGES = ("pythia-forensics", "torch", "transformers", "numpy", "pandas", "scipy", "pyarrow", "matplotlib")
VERDICT_COLUMNS = ["model", "probeset", "rule", "split", "verdict_label"]
TRAJECTORY_COLUMNS = ["model", "rule", "split", "emergence_step", "peak_acc", "collapse_step", "final_acc", "final_lo",
                      "final_hi", "depth", "cm_cross_step", "lag_checkpoints"]
SCALE_TABLE_COLUMNS = ["rule", "size", "metric", "n_sizes", "seeds_per_size", "rho", "p_perm", "p_min", "rho_lo",
                       "rho_hi", "interval", "note"]
KNOB_TABLE_COLUMNS = ["knob", "in_frame_support", "metric", "n_sizes", "seeds_per_size", "rho", "p_perm", "p_min",
                      "rho_lo", "rho_hi", "interval"]
PROVENANCE_COLUMNS = ["model", "revision", "step", "repo", "commit", "weights_sha256"]
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


@dataclass(frozen=True)
class PaperKit:
    out: Path
    figures: list[Path]
    tables: dict[str, Path]  # name -> .tex (the .csv beside it)
    methods: Path
    document: Path


def cell(value) -> str:
    """One table cell as printed: NaN/None/empty "--", integers as is, floats to 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == "":
        return "--"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return tex_escape(str(value))


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def latex_table(frame: pd.DataFrame, *, caption: str, label: str, long: bool = False) -> str:
    """A booktabs table (longtable when `long`) of `frame`'s cells (`cell`)."""
    cols = list(frame.columns)
    spec = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in cols)
    head = " & ".join(tex_escape(c) for c in cols) + r" \\"
    body = [" & ".join(cell(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    if long:
        return "\n".join([r"{\scriptsize", rf"\begin{{longtable}}{{{spec}}}",
                          rf"\caption{{{tex_escape(caption)}}}\label{{{label}}}\\", r"\toprule", head, r"\midrule",
                          r"\endhead", *body, r"\bottomrule", r"\end{longtable}", "}", ""])
    return "\n".join([r"\begin{table}[htbp]", r"\centering", r"\scriptsize", r"\resizebox{\linewidth}{!}{%",
                      rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head, r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}}", rf"\caption{{{tex_escape(caption)}}}\label{{{label}}}", r"\end{table}", ""])


def _write_table(frame: pd.DataFrame, tables: Path, name: str, caption: str, *, long: bool = False) -> Path:
    tables.mkdir(parents=True, exist_ok=True)
    atomic_write(tables / f"{name}.csv", lambda tmp: frame.to_csv(tmp, index=False))
    tex = latex_table(frame, caption=caption, label=f"tab:{name}", long=long)
    return atomic_write(tables / f"{name}.tex", lambda tmp: Path(tmp).write_text(tex))


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _provenance(results: Path) -> pd.DataFrame:
    """Per (model, revision, probe set): repo, step, commit, weights sha256, probe-set hash,
    read from the provenance columns every stored item file carries."""
    import pyarrow.parquet as pq

    cols = [*PROVENANCE_COLUMNS, "probeset", "probeset_sha256", "code_version"]
    frames = []
    for path in sorted((results / "items").glob("*/*.parquet")):
        names = pq.read_schema(path).names
        frames.append(pq.read_table(path, columns=[c for c in cols if c in names]).to_pandas().drop_duplicates())
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True).reindex(columns=cols).drop_duplicates()
    return out.sort_values(["model", "step", "probeset"], ignore_index=True)


def _thresholds(config: AnalysisConfig) -> pd.DataFrame:
    rows = [(f"{section}.{key}", value if not isinstance(value, list) else ", ".join(map(str, value)))
            for section, keys in config.values.items() for key, value in keys.items()]
    return pd.DataFrame(rows, columns=["threshold", "value"]).astype({"value": str})


def _methods(results: Path, tables: Path, config: AnalysisConfig, models: pd.DataFrame,
             provenance: pd.DataFrame) -> str:
    from pythia_forensics.scoring.score import SCORING_VERSION

    versions = pd.DataFrame(sorted(_versions().items()), columns=["package", "version"])
    probes = provenance[["probeset", "probeset_sha256"]].drop_duplicates().sort_values("probeset")
    seed_cols = [c for c in ("model", "seed", "replicate_group", "source", "params_nonembedding") if c in models]
    seeds = models[seed_cols].sort_values("model", ignore_index=True)
    codes = ", ".join(sorted({str(v) for v in provenance["code_version"].dropna()})) or "none stored"
    parts = [r"\section*{Methods: analysis provenance}",
             f"Analysis thresholds (analysis.yaml, effective): sha256 \\texttt{{{config.sha256}}}. "
             f"Scoring code SCORING\\_VERSION = {SCORING_VERSION} (stored rows: {tex_escape(codes)}). "
             f"Results folder: \\texttt{{{tex_escape(results.name)}}}; {len(models)} models, "
             f"{provenance[['model', 'revision']].drop_duplicates().shape[0]} checkpoints.", ""]
    for name, frame, caption, long in (
            ("thresholds", _thresholds(config), f"Analysis thresholds (sha256 {config.sha256[:16]}...)", False),
            ("versions", versions, "Package versions", False),
            ("probe_sets", probes, "Probe sets and their content sha256", False),
            ("seeds", seeds, "Models, their seeds and replicate groups (suites/sources)", True),
            ("provenance", provenance[PROVENANCE_COLUMNS],
             "Appendix: per-checkpoint provenance (repo, commit, weights sha256)", True)):
        path = _write_table(frame, tables, name, caption, long=long)
        if name == "provenance":
            parts.append(r"\appendix")
        parts.append(rf"\input{{tables/{path.name}}}")
    return "\n".join(parts) + "\n"


def write_paper_kit(results: str | Path, out: str | Path, *, config: AnalysisConfig | str | Path | None = None,
                    figures: bool = True) -> PaperKit:
    """Write the paper kit for one results folder (see the module docstring for the layout).

    Args:
        results: a results folder (replayed; `analyze` runs on it).
        out: the kit's folder (made if missing).
        config: thresholds (default: shipped analysis.yaml).
        figures: draw the figure set (False: tables and methods only).

    Returns:
        A PaperKit naming what was written.
    """
    from pythia_forensics.analysis.dynamics import analyze
    from pythia_forensics.sweep.store import ResultsStore

    results, out = Path(results), Path(out)
    cfg = config if isinstance(config, AnalysisConfig) else load_config(config)
    analysis = analyze(results, config=cfg)
    models = ResultsStore(results).models()
    tables_dir = out / "tables"
    metrics = analysis.metrics
    primary = metrics[metrics["split"] == cfg.primary_split]
    written = {
        "verdicts": _write_table(primary[VERDICT_COLUMNS].sort_values(["rule", "model"], ignore_index=True),
                                 tables_dir, "verdicts", f"Verdicts ({cfg.primary_split} split)"),
        "trajectory_metrics": _write_table(
            primary[TRAJECTORY_COLUMNS].sort_values(["rule", "model"], ignore_index=True), tables_dir,
            "trajectory_metrics", "Trajectory metrics (accuracy fractions; steps; final 95% CI over items)",
            long=len(primary) > 30),
        "scale": _write_table(analysis.scale.reindex(columns=SCALE_TABLE_COLUMNS), tables_dir, "scale",
                              "Scale statistics (Spearman on per-size seed means; exact permutation p; p_min: "
                              "smallest attainable p)", long=True),
    }
    knob_path = results / "scale_by_knob.csv"
    if knob_path.is_file():
        knob = pd.read_csv(knob_path)
        knob = knob[knob["size"] == "params_nonembedding"].reindex(columns=KNOB_TABLE_COLUMNS)
        written["scale_by_knob"] = _write_table(knob, tables_dir, "scale_by_knob",
                                                "Scale grid: statistics per support knob (non-embedding parameters)")
    provenance = _provenance(results)
    methods_tex = _methods(results, tables_dir, cfg, models, provenance)
    methods = atomic_write(out / "methods.tex", lambda tmp: Path(tmp).write_text(methods_tex))
    drawn = _figures(results, out / "figures", analysis) if figures else []
    doc = _document(written, drawn, out)
    document = atomic_write(out / "paper.tex", lambda tmp: Path(tmp).write_text(doc))
    return PaperKit(out=out, figures=drawn, tables=written, methods=methods, document=document)


def _figures(results: Path, out: Path, analysis) -> list[Path]:
    from pythia_forensics.analysis.figure_style import save_figure
    from pythia_forensics.analysis.figures import render_figures
    from pythia_forensics.analysis.scale_figures import depth_size_figure, phase_diagram

    drawn = render_figures(results, out, analysis=analysis)
    grid_path, rep_path, knob_path = (results / n for n in ("grid.csv", "replicates.csv", "scale_by_knob.csv"))
    if grid_path.is_file() and rep_path.is_file() and knob_path.is_file():
        grid = pd.read_csv(grid_path)
        rep = pd.read_csv(rep_path, dtype={"seed": str})
        knob = pd.read_csv(knob_path)
        rule = str(knob["rule"].iloc[0])
        drawn += save_figure(phase_diagram(grid, rule=rule, survive_min=analysis.config.recovered_final_min),
                             out / "scale_phase")
        drawn += save_figure(depth_size_figure(grid, rep, knob, rule=rule, split=analysis.config.primary_split),
                             out / "scale_depth_vs_size")
    return drawn


def _document(tables: dict[str, Path], figures: list[Path], out: Path) -> str:
    lines = [r"\documentclass[10pt]{article}", r"\usepackage[margin=2cm]{geometry}", r"\usepackage{booktabs}",
             r"\usepackage{longtable}", r"\usepackage{graphicx}", r"\begin{document}"]
    for path in tables.values():
        lines.append(rf"\input{{tables/{path.name}}}")
    for pdf in (p for p in figures if p.suffix == ".pdf"):
        rel = pdf.relative_to(out).as_posix()
        lines += [r"\begin{figure}[htbp]\centering", rf"\includegraphics[width=\linewidth]{{{rel}}}",
                  rf"\caption{{{tex_escape(pdf.stem)}}}\end{{figure}}", r"\clearpage" if pdf.stem.startswith("a_")
                  else ""]
    lines += [r"\clearpage", r"\input{methods.tex}", r"\end{document}", ""]
    return "\n".join(lines)
