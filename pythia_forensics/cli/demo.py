"""`pythia-forensics demo` and `pythia-forensics sweep`: the whole pipeline on the mini suite
(thin shells over `pipeline.run_demo` / `pipeline.run_sweep`)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.cli.mini import SUPPORTS_DEFAULT, parse_supports
from pythia_forensics.experiments.mini.suite import SWEEP_RULE


def _print(result, title: str, started: float) -> None:
    from pythia_forensics.cli.analyze import _print_verdicts
    from pythia_forensics.cli.common import console
    from pythia_forensics.cli.tables import Col, print_table
    from pythia_forensics.analysis.figures import model_order
    from pythia_forensics.sweep.store import ResultsStore

    _print_verdicts(result.analysis, model_order(result.analysis.metrics["model"], ResultsStore(result.out).models()))
    print_table(title, [Col("claim", wrap=True), Col("measured", wrap=True), Col("result")],
                [(c.claim, c.observed, "[green]yes[/]" if c.passed else "[red]no[/]") for c in result.checks])
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    console.print(f"wall time {time.perf_counter() - started:.0f} s ({stages}); "
                  f"{len(result.figures)} figure files; report {result.report}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("results/demo"), "--out", help="Results folder; the suite is trained into OUT/suite."),
        force: bool = typer.Option(False, "--force", help="Retrain the mini suite even if it exists."),
        jobs: Optional[int] = typer.Option(None, help="Models trained in parallel (default min(2, CPUs))."),
    ) -> None:
        """Train (or reuse) the mini suite, replay the shipped probes, analyse, draw, report."""
        from pythia_forensics.experiments.demo import run_demo

        started = time.perf_counter()
        _print(run_demo(out, force=force, jobs=jobs), "what the demo shows (measured)", started)

    @app.command()
    def sweep(
        out: Path = typer.Option(Path("results/sweep"), "--out", help="Results folder; arms go to OUT/suite."),
        supports: str = typer.Option(SUPPORTS_DEFAULT, help="Support knob values (>= 4)."),
        rule: str = typer.Option(SWEEP_RULE, help="Rule whose support knob varies."),
        force: bool = typer.Option(False, "--force", help="Retrain arms even if present."),
        jobs: Optional[int] = typer.Option(None, help="Arms trained in parallel (default min(2, CPUs))."),
    ) -> None:
        """Support-knob sweep: train one arm per knob value, replay, analyse, draw the dose curve."""
        from pythia_forensics.experiments.demo import run_sweep

        started = time.perf_counter()
        result = run_sweep(out, rule=rule, supports=parse_supports(supports), force=force, jobs=jobs)
        _print(result, f"support sweep of {rule} (measured)", started)
