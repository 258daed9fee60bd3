"""`pythia-forensics demo` and `pythia-forensics sweep`: the whole pipeline on the mini suite
(thin shells over `experiments.demo.run_demo` / `run_sweep`). The output folder is checked
before any training starts."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.cli.mini import FORCE_ARMS, JOBS, RULE, SUPPORTS, SWEEP_OUT, parse_supports


def _print(result, title: str, started: float) -> None:
    from pythia_forensics.cli.analyze import _print_verdicts
    from pythia_forensics.cli.common import console
    from pythia_forensics.cli.tables import Col, print_table
    from pythia_forensics.analysis.figures import model_order
    from pythia_forensics.sweep.store import ResultsStore

    _print_verdicts(result.analysis, model_order(result.analysis.metrics["model"], ResultsStore(result.out).models()))
    style = {"yes": "green", "no": "red", "not applicable": "dim"}
    print_table(title, [Col("claim", wrap=True), Col("precondition", wrap=True, drop=1), Col("measured", wrap=True),
                        Col("result")],
                [(c.claim, c.precondition, c.observed, f"[{style[c.result]}]{c.result}[/]") for c in result.checks])
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    console.print(f"wall time {time.perf_counter() - started:.0f} s ({stages}); "
                  f"{len(result.figures)} figure files; report {result.report}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("results/demo"), "--out", help="Results folder; the suite is trained into OUT/suite."),
        force: bool = typer.Option(False, "--force", help="Retrain the mini suite even if it exists."),
        jobs: Optional[int] = JOBS,
    ) -> None:
        """Train (or reuse) the mini suite, replay the shipped probes, analyse, draw, report."""
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.experiments.demo import run_demo

        check_output_dir(out, "--out")
        started = time.perf_counter()
        _print(run_demo(out, force=force, jobs=jobs), "what the demo shows (measured)", started)

    @app.command()
    def sweep(out: Path = SWEEP_OUT, supports: str = SUPPORTS, rule: str = RULE, force: bool = FORCE_ARMS,
              jobs: Optional[int] = JOBS) -> None:
        """Support-knob sweep: train one arm per knob value, replay, analyse, draw the dose curve."""
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.experiments.demo import run_sweep

        check_output_dir(out, "--out")
        started = time.perf_counter()
        result = run_sweep(out, rule=rule, supports=parse_supports(supports), force=force, jobs=jobs)
        _print(result, f"support sweep of {rule} (measured)", started)
