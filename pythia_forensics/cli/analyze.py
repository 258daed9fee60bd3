"""`pythia-forensics analyze | figures | prereg lock`: dynamics, verdicts, figures, pre-registration."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

_VERDICT_STYLE = {"RECOVERED": "green", "UNSTABLE": "yellow", "DISPLACED": "red", "PARTIAL": "cyan",
                  "NEVER": "blue", "VOID": "dim"}
_STATUS_STYLE = {"pass": "green", "fail": "red", "void": "dim"}


def _print_verdicts(analysis, order) -> None:
    from rich.table import Table

    from pythia_forensics.cli.common import console

    split = analysis.verdicts["split"].iloc[0] if not analysis.verdicts.empty else ""
    table = Table(title=f"verdicts, {split} split (config {analysis.config.sha256[:12]})")
    for col in ("model", "rule", "verdict"):
        table.add_column(col, no_wrap=True)
    for col in ("emerge", "collapse", "final", "depth", "CM=0", "lag"):
        table.add_column(col, justify="right")
    rows = analysis.verdicts.merge(analysis.metrics, on=["model", "probeset", "rule", "split"], suffixes=("", "_m"))
    rank = {m: i for i, m in enumerate(order)}
    rows = rows.assign(_rank=rows["model"].map(rank)).sort_values(["rule", "_rank"])
    step = lambda v: "-" if str(v) == "<NA>" else str(v)  # noqa: E731
    num = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731  (NaN != NaN)
    for r in rows.itertuples():
        table.add_row(r.model, r.rule, f"[{_VERDICT_STYLE[r.verdict_label]}]{r.verdict_label}[/]",
                      step(r.emergence_step), step(r.collapse_step), num(r.final_acc), num(r.depth),
                      step(r.cm_cross_step), step(r.lag_checkpoints))
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command()
    def analyze(
        results: Path = typer.Option(..., "--results", help="Results folder written by `replay`."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML overriding analysis.yaml thresholds."),
    ) -> None:
        """Trajectory metrics and verdicts: write dynamics.parquet/.csv, print verdicts and the prereg ledger."""
        from rich.table import Table

        from pythia_forensics.cli.common import console
        from pythia_forensics.dynamics import analyze as run, write_dynamics
        from pythia_forensics.figures import model_order
        from pythia_forensics.prereg import ledger
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.store import ResultsStore

        check_output_dir(results, "--results")  # dynamics.parquet/.csv are written there
        analysis = run(results, config=config)
        written = write_dynamics(analysis, results)
        _print_verdicts(analysis, model_order(analysis.metrics["model"], ResultsStore(results).models()))
        console.print(f"wrote {', '.join(p.name for p in written)} to {results}", highlight=False)
        scored = ledger(analysis, results)  # raises PreregError (exit 2) on a late or edited lock
        if scored is not None:
            table = Table(title=f"pre-registration ledger (locked {scored['locked_at'].iloc[0]})")
            for col in ("id", "claim", "status", "observed"):
                table.add_column(col)
            for r in scored.itertuples():
                table.add_row(r.id, r.claim, f"[{_STATUS_STYLE[r.status]}]{r.status}[/]", r.observed or r.detail)
            console.print(table)

    @app.command()
    def figures(
        results: Path = typer.Option(..., "--results", help="Results folder written by `replay`."),
        out: Optional[Path] = typer.Option(None, "--out", help="Figure folder (default RESULTS/figures)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML overriding analysis.yaml thresholds."),
    ) -> None:
        """Regenerate every figure (PDF + PNG) and report.md from stored results only."""
        from pythia_forensics.cli.common import console
        from pythia_forensics.dynamics import analyze as run
        from pythia_forensics.figures import render_figures
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.report import write_report

        check_output_dir(out, "--out")
        check_output_dir(results, "--results")  # report.md (and figures/ without --out)
        analysis = run(results, config=config)
        paths = render_figures(results, out, analysis=analysis)
        report = write_report(results, analysis=analysis, figures=paths)
        console.print(f"wrote {len(paths)} figure files to {paths[0].parent} and {report}", highlight=False)

    prereg = typer.Typer(help="Pre-register predictions before results exist.", no_args_is_help=True)

    @prereg.command("lock")
    def lock(
        predictions: Path = typer.Argument(..., help="Predictions YAML (see pythia_forensics/prereg.py)."),
        results: Path = typer.Option(..., "--results", help="Results folder the predictions govern."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML overriding analysis.yaml thresholds."),
    ) -> None:
        """Record predictions + thresholds with hashes and the UTC time, before any result is read."""
        from pythia_forensics.cli.common import console
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.prereg import lock as do_lock, read_lock

        check_output_dir(results, "--results")

        path = do_lock(predictions, results, config=config)
        body = read_lock(results)
        console.print(f"locked {len(body['claims'])} predictions at {body['locked_at']} "
                      f"(predictions {body['predictions_sha256'][:12]}, config {body['config_sha256'][:12]}) -> {path}",
                      highlight=False)

    app.add_typer(prereg, name="prereg")
