"""End-to-end jobs on the embedded mini suite: `demo` and the support-knob `sweep`.

Each job is the same pipeline a researcher runs on Pythia, stage by stage:

    train (or reuse) the mini suite -> replay every checkpoint on the shipped probe sets
    -> count support in the training stream -> analyse -> figures + report -> checks

The checks turn the demo's scientific claims (issue #3, "what the demo must show") into
measured pass/fail rows, so the printed table says what this run showed, not what we hoped.
Every stage is resumable: rerunning a job reuses the trained suite, the stored scores and
the support counts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pythia_forensics.constants import DEMO_AGREE_MIN, DEMO_COLLAPSE_FINAL_MAX, DEMO_LOSS_JUMP_MAX
from pythia_forensics.manifest import Manifest, has_manifest, read_manifest

SUPPORT_TABLE = "support.csv"
CHECKS_TABLE = "checks.csv"


@dataclass(frozen=True)
class Check:
    """One measured claim of the demo."""

    claim: str
    passed: bool
    observed: str


@dataclass
class JobResult:
    """What a demo or sweep run produced."""

    out: Path
    analysis: object
    checks: list[Check] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _model_dirs(suite: Path) -> list[Path]:
    return sorted(p for p in suite.iterdir() if has_manifest(p))


def _manifest(model_dir: Path) -> Manifest:
    manifest = read_manifest(model_dir)
    assert manifest is not None, model_dir  # _model_dirs keeps only folders with one
    return manifest


def _count_support(suite: Path, results: Path, *, progress: bool) -> Path:
    """Support counts per rule and step window for each distinct corpus of the suite."""
    from pythia_forensics.support import count_support

    out = results / SUPPORT_TABLE
    corpora = sorted({Path(_manifest(m).corpus["path"]) for m in _model_dirs(suite)})
    frames = []
    for corpus in corpora:
        frame = count_support(corpus, "all", progress=progress)
        frames.append(frame.assign(corpus=corpus.name))
    pd.concat(frames, ignore_index=True).to_csv(out, index=False)
    return out


def _replay(suite: Path, results: Path, *, progress: bool):
    from pythia_forensics.replay import replay

    return replay([str(m) for m in _model_dirs(suite)], "all", results=results, progress=progress)


def _analyze_and_draw(results: Path, *, progress: bool) -> tuple[object, list[Path], Path]:
    from pythia_forensics.dynamics import analyze, write_dynamics
    from pythia_forensics.figures import render_figures
    from pythia_forensics.report import write_report

    analysis = analyze(results)
    write_dynamics(analysis, results)
    figures = render_figures(results, results / "figures", analysis=analysis)
    report = write_report(results, analysis=analysis, figures=figures)
    return analysis, figures, report


def _loss_jump(model_dir: Path, step: int, half_window: int) -> float:
    """|mean loss after - mean loss before| around `step`, in nats (smoothed over the window)."""
    log = pd.read_csv(model_dir / "train_log.csv")
    before = log[(log.step > step - half_window) & (log.step <= step)].loss
    after = log[(log.step > step) & (log.step <= step + half_window)].loss
    if before.empty or after.empty:
        return float("nan")
    return float(abs(after.mean() - before.mean()))


def demo_checks(analysis, suite: Path) -> list[Check]:
    """Measure the demo's claims on the analysed mini suite (held-out split)."""
    cfg = analysis.config
    metrics = analysis.metrics
    metrics = metrics[metrics["split"] == cfg.primary_split]
    dirs = {m.name: m for m in _model_dirs(suite)}
    knobs = {name: _manifest(d).corpus["rules"] for name, d in dirs.items()}
    any_knobs = next(iter(knobs.values()))
    low = min(any_knobs, key=lambda r: any_knobs[r]["support"])
    high = max(any_knobs, key=lambda r: any_knobs[r]["support"])
    checks: list[Check] = []
    for row in metrics[metrics["rule"] == low].sort_values("model").itertuples():
        emerged = pd.notna(row.emergence_step)
        collapsed = bool(row.final_acc <= DEMO_COLLAPSE_FINAL_MAX)
        agree_ok = bool(row.agree_final >= DEMO_AGREE_MIN)
        checks.append(Check(
            f"{row.model}: low-support rule {low} (support {any_knobs[low]['support']}) emerges then collapses",
            bool(emerged and collapsed and agree_ok),
            f"peak {row.peak_acc:.2f} @ {row.peak_step}, emerged @ {row.emergence_step}, final {row.final_acc:.2f}, "
            f"agree final {row.agree_final:.2f}"))
        if pd.notna(row.collapse_step):
            lag = row.lag_checkpoints
            checks.append(Check(
                f"{row.model}: CM zero crossing within {cfg.cm_lag_max_checkpoints} "
                f"checkpoint of collapse onset",
                bool(pd.notna(lag) and abs(lag) <= cfg.cm_lag_max_checkpoints),
                f"CM=0 @ {row.cm_cross_step}, onset @ {row.collapse_step}, lag {lag} checkpoints"))
            jump = _loss_jump(dirs[row.model], int(row.collapse_step), half_window=int(row.collapse_step) // 4 or 1)
            checks.append(Check(
                f"{row.model}: no training-loss jump at the collapse (< {DEMO_LOSS_JUMP_MAX} nats)",
                bool(jump < DEMO_LOSS_JUMP_MAX), f"|delta loss| {jump:.3f} nats"))
    for row in metrics[metrics["rule"] == high].sort_values("model").itertuples():
        checks.append(Check(
            f"{row.model}: high-support rule {high} (support {any_knobs[high]['support']}) survives",
            bool(row.final_acc >= cfg.recovered_final_min),
            f"final {row.final_acc:.2f}, verdict {row.verdict_label}"))
    return checks


def sweep_checks(analysis, suite: Path, rule: str) -> tuple[list[Check], pd.DataFrame]:
    """Final accuracy and margin per support value; is the verdict monotone in support?"""
    from scipy import stats

    cfg = analysis.config
    metrics = analysis.metrics
    metrics = metrics[(metrics["split"] == cfg.primary_split) & (metrics["rule"] == rule)]
    support = {d.name: _manifest(d).corpus["rules"][rule]["support"] for d in _model_dirs(suite)}
    final_cm = _final_margin(analysis, rule)
    table = pd.DataFrame({
        "model": metrics["model"], "support": metrics["model"].map(support), "final_acc": metrics["final_acc"],
        "final_cm": metrics["model"].map(final_cm), "verdict": metrics["verdict_label"],
    }).sort_values("support").reset_index(drop=True)
    survived = table["final_acc"] >= cfg.recovered_final_min
    monotone = bool((np.diff(survived.astype(int)) >= 0).all() and survived.any() and not survived.all())
    rho = stats.spearmanr(table["support"], table["final_cm"]).statistic if len(table) > 2 else float("nan")
    checks = [
        Check(f"support sweep of {rule}: verdict turns from collapse to survive monotonically",
              monotone, " ".join(f"{s:g}:{v[0]}" for s, v in zip(table["support"], table["verdict"]))),
        Check(f"support sweep of {rule}: final margin rises with support (Spearman rho)",
              bool(rho > 0), f"rho = {rho:.3f}"),
    ]
    return checks, table


def _final_margin(analysis, rule: str) -> dict[str, float]:
    """Mean conflict CM over each model's final window (same window as final accuracy)."""
    from pythia_forensics.dynamics import final_window_size

    traj = analysis.trajectories
    traj = traj[(traj["split"] == analysis.config.primary_split) & (traj["rule"] == rule) & traj["used"]]
    out = {}
    for model, group in traj.groupby("model"):
        group = group.sort_values("step")
        n = final_window_size(len(group), analysis.config)
        out[model] = float(group["conflict_cm"].tail(n).mean())
    return out


def _write_checks(checks: list[Check], results: Path) -> Path:
    path = results / CHECKS_TABLE
    pd.DataFrame([c.__dict__ for c in checks]).to_csv(path, index=False)
    return path


class _Stages:
    """Runs pipeline stages in order and records each one's wall time."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = time.perf_counter() - started


def run_demo(out: str | Path, *, force: bool = False, progress: bool = True, jobs: int | None = None,
             config=None) -> JobResult:
    """Train (or reuse) the mini suite, replay, count support, analyse, draw, check.

    Args:
        out: results folder (`results/demo`); the suite is trained into `out/suite`.
        force: retrain the suite.
        progress: show progress bars.
        jobs: models trained in parallel.
        config: the mini suite's `SuiteConfig` (default: the demo's).

    Returns:
        A JobResult with the analysis, the measured checks, figures and report paths, and
        the wall time of each stage.
    """
    from pythia_forensics.mini import build_suite

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages()
    suite = stages.run("train", build_suite, out / "suite", config=config, force=force, progress=progress,
                       jobs=jobs)
    stages.run("replay", _replay, suite, out, progress=progress)
    stages.run("support", _count_support, suite, out, progress=progress)
    analysis, figures, report = stages.run("analyse+figures", _analyze_and_draw, out, progress=progress)
    checks = demo_checks(analysis, suite)
    _write_checks(checks, out)
    return JobResult(out=out, analysis=analysis, checks=checks, figures=figures, report=report,
                     timings=stages.timings)


def run_sweep(out: str | Path, *, force: bool = False, progress: bool = True, jobs: int | None = None,
              rule: str | None = None, supports: tuple[float, ...] | None = None) -> JobResult:
    """Train the support-knob sweep (one scale, one arm per support value), replay, analyse,
    and draw final accuracy and margin against support."""
    from pythia_forensics.figures import save_figure, sweep_figure
    from pythia_forensics.mini import SWEEP_RULE, SWEEP_SUPPORTS, build_sweep

    out = Path(out)
    rule = rule or SWEEP_RULE
    stages = _Stages()
    suite = stages.run("train", build_sweep, out / "suite", rule=rule, supports=supports or SWEEP_SUPPORTS,
                       force=force, progress=progress, jobs=jobs)
    stages.run("replay", _replay, suite, out, progress=progress)
    analysis, figures, report = stages.run("analyse+figures", _analyze_and_draw, out, progress=progress)
    checks, table = sweep_checks(analysis, suite, rule)
    table.to_csv(out / "sweep.csv", index=False)
    figures += save_figure(sweep_figure(table, rule=rule), out / "figures" / "sweep_support")
    _write_checks(checks, out)
    return JobResult(out=out, analysis=analysis, checks=checks, figures=figures, report=report,
                     timings=stages.timings)
