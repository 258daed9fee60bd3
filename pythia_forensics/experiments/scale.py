"""The scale grid, end to end: does collapse depth follow size, and where does fate flip?

    train the grid (mini.build_grid: 5 sizes x 4 support knobs, 3 seeds near the flip; resumes)
    -> replay every checkpoint on the knob's probe set -> measure in-frame support per corpus
    -> analyse -> per-model grid table, per-seed and pooled metrics, scale statistics per knob
    -> phase diagram and depth-vs-size figures

Every step reuses what a killed run left: trained models, stored checkpoint scores, tables.
Outputs in OUT/: grid.csv (one row per model: size, knob, seed, measured in-frame support,
final conflict accuracy, depth, verdict), replicates.csv (`analysis.replicates.seed_table`),
scale_by_knob.csv (`analysis.scale.scale_analysis` per knob), figures/.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pythia_forensics.atomic import atomic_write

GRID_TABLE = "grid.csv"
REPLICATES_TABLE = "replicates.csv"
SCALE_BY_KNOB_TABLE = "scale_by_knob.csv"
IN_FRAME_TABLE = "support_in_frame.csv"
GRID_COLUMNS = ["model", "replicate_group", "seed", "d_model", "params_total", "params_nonembedding", "knob",
                "corpus", "in_frame_support", "emerged", "peak_acc", "final_acc", "depth", "verdict_label", "void"]


@dataclass
class ScaleResult:
    out: Path
    grid: pd.DataFrame
    scale: pd.DataFrame
    replicates: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _model_dirs(suite: Path) -> list[Path]:
    from pythia_forensics.checkpoints.manifest import has_manifest

    return sorted(p for p in suite.iterdir() if has_manifest(p))


def _in_frame(suite: Path, out: Path, rule: str, *, progress: bool) -> pd.DataFrame:
    """In-frame support (rule wins / prior wins in the conflict frame) per corpus, counted on
    the written token stream; reused when the table already covers every corpus."""
    from pythia_forensics.checkpoints.manifest import read_manifest
    from pythia_forensics.corpus.support import count_support
    from pythia_forensics.experiments.demo import in_frame_support

    corpora = sorted({Path(read_manifest(m).corpus["path"]) for m in _model_dirs(suite)})
    path = out / IN_FRAME_TABLE
    if path.is_file():
        have = pd.read_csv(path)
        if {c.name for c in corpora} <= set(have["corpus"]):
            return have
    tables = []
    for corpus in corpora:
        frame = count_support(corpus, "all", progress=progress)
        tables.append(in_frame_support(corpus, frame, progress=progress).assign(corpus=corpus.name))
    table = pd.concat(tables, ignore_index=True)
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    return table


def grid_table(metrics: pd.DataFrame, models: pd.DataFrame, manifests: dict[str, dict], in_frame: pd.DataFrame,
               *, rule: str, split: str) -> pd.DataFrame:
    """One row per grid model: its size, knob, seed, measured in-frame support and fate.

    Args:
        metrics: `analyze` metrics rows.
        models: models.parquet rows.
        manifests: model -> {"knob": support knob, "corpus": corpus folder name, "d_model": width}.
        in_frame: `in_frame_support` rows with a ``corpus`` column.
        rule, split: which metrics rows (the knob's rule, the primary split).
    """
    m = metrics[(metrics["rule"] == rule) & (metrics["split"] == split)]
    ratio = in_frame[in_frame["rule"] == rule].set_index("corpus")["ratio"]
    rows = []
    for _, r in m.iterrows():
        info = manifests.get(r["model"])
        if info is None:
            continue
        size = models.set_index("model").loc[r["model"]]
        rows.append(dict(model=r["model"], replicate_group=size.get("replicate_group", r["model"]),
                         seed=size.get("seed"), d_model=info["d_model"], params_total=size["params_total"],
                         params_nonembedding=size["params_nonembedding"], knob=info["knob"], corpus=info["corpus"],
                         in_frame_support=float(ratio.get(info["corpus"], float("nan"))), emerged=r["emerged"],
                         peak_acc=r["peak_acc"], final_acc=r["final_acc"], depth=r["depth"],
                         verdict_label=r["verdict_label"], void=r["void"]))
    return pd.DataFrame(rows, columns=GRID_COLUMNS).sort_values(["knob", "params_nonembedding", "seed"],
                                                                ignore_index=True)


def scale_by_knob(metrics: pd.DataFrame, models: pd.DataFrame, grid: pd.DataFrame, *, config) -> pd.DataFrame:
    """`scale_analysis` over the models of each knob (sizes vary, the knob is held): seeds of
    one size are one point (their mean), n = sizes."""
    from pythia_forensics.analysis.scale import scale_analysis

    frames = []
    for knob, g in grid.groupby("knob", sort=True):
        names = set(g["model"])
        stat = scale_analysis(metrics[metrics["model"].isin(names)], models[models["model"].isin(names)],
                              config=config)
        support = g.groupby("corpus")["in_frame_support"].first()
        frames.append(stat.assign(knob=knob, in_frame_support=float(support.iloc[0]) if len(support) else None))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    return out[["knob", "in_frame_support", *[c for c in out.columns if c not in ("knob", "in_frame_support")]]]


def _manifest_info(suite: Path, rule: str) -> dict[str, dict]:
    from pythia_forensics.checkpoints.manifest import read_manifest

    info = {}
    for d in _model_dirs(suite):
        man = read_manifest(d)
        info[man.model] = dict(knob=float(man.corpus["rules"][rule]["support"]), corpus=Path(man.corpus["path"]).name,
                               d_model=man.d_model)
    return info


def run_scale(out: str | Path, *, force: bool = False, progress: bool = True, jobs: int | None = None) -> ScaleResult:
    """Train (or resume) the scale grid, replay, measure support, analyse and draw.

    Args:
        out: the results folder (the suite goes to OUT/suite).
        force: retrain every model.
        progress: progress bars.
        jobs: models trained in parallel (default min(2, CPUs)).

    Returns:
        A ScaleResult with the tables, figure paths and per-stage wall times.
    """
    import time

    from pythia_forensics.analysis.dynamics import analyze, write_dynamics
    from pythia_forensics.analysis.replicates import seed_table
    from pythia_forensics.analysis.scale_figures import depth_size_figure, phase_diagram
    from pythia_forensics.analysis.figure_style import save_figure
    from pythia_forensics.experiments.mini.config import GRID_RULE
    from pythia_forensics.experiments.mini.suite import build_grid
    from pythia_forensics.sweep.replay import replay
    from pythia_forensics.sweep.store import ResultsStore

    out = Path(out)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    suite = build_grid(out / "suite", force=force, progress=progress, jobs=jobs)
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    replay([str(m) for m in _model_dirs(suite)], GRID_RULE, results=out, progress=progress)
    timings["replay"] = time.perf_counter() - t
    t = time.perf_counter()
    in_frame = _in_frame(suite, out, GRID_RULE, progress=progress)
    timings["support"] = time.perf_counter() - t
    t = time.perf_counter()
    analysis = analyze(out)
    write_dynamics(analysis, out)
    models = ResultsStore(out).models()
    metrics = analysis.metrics
    grid = grid_table(metrics, models, _manifest_info(suite, GRID_RULE), in_frame, rule=GRID_RULE,
                      split=analysis.config.primary_split)
    primary = metrics[metrics["split"] == analysis.config.primary_split]
    scale = scale_by_knob(primary, models, grid, config=analysis.config)
    replicates = seed_table(metrics, models, config=analysis.config)
    for name, table in ((GRID_TABLE, grid), (SCALE_BY_KNOB_TABLE, scale), (REPLICATES_TABLE, replicates)):
        atomic_write(out / name, lambda tmp, table=table: table.to_csv(tmp, index=False))
    timings["analyse"] = time.perf_counter() - t
    t = time.perf_counter()
    figures = save_figure(phase_diagram(grid, rule=GRID_RULE), out / "figures" / "scale_phase")
    figures += save_figure(depth_size_figure(grid, replicates, scale, rule=GRID_RULE,
                                                split=analysis.config.primary_split), out / "figures" / "scale_depth_vs_size")
    timings["figures"] = time.perf_counter() - t
    atomic_write(out / "timings.json", lambda tmp: Path(tmp).write_text(json.dumps(timings, indent=1)))
    return ScaleResult(out=out, grid=grid, scale=scale, replicates=replicates, figures=figures, timings=timings)
