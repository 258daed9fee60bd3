"""`pythia-forensics verify RESULTS [--repair]`: is a results store intact, and fix what can be fixed."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def verify(
        results: Path = typer.Argument(..., help="Results folder written by `replay`."),
        repair: bool = typer.Option(False, "--repair", help="Quarantine damaged and duplicate files, upgrade old "
                                    "files, rebuild summary/models tables from the item files."),
    ) -> None:
        """Report intact / damaged / duplicate / missing counts, one line per problem; exit 1 if any remain."""
        from pythia_forensics.cli.common import console
        from pythia_forensics.errors import StoreError
        from pythia_forensics.sweep.store import ResultsStore

        if not results.is_dir():
            raise StoreError(f"{results} is not a folder; pass the results folder `replay --results` wrote")
        if not (results / "items").is_dir() and not any(results.glob("*.parquet")):
            raise StoreError(f"{results} holds no results store (no items/ folder); pass the folder "
                             "`replay --results` wrote")
        report = ResultsStore(results).verify(repair=repair)
        for line in report.repaired:
            console.print(f"repaired: {line}", highlight=False, soft_wrap=True)
        for problem in report.problems:
            console.print(problem.line(), highlight=False, soft_wrap=True)
        counts = ", ".join(f"{report.count(k)} {k}" for k in ("damaged", "duplicate", "missing", "legacy", "stale",
                                                             "temporary") if report.count(k) or k in ("damaged",
                                                             "duplicate", "missing"))
        state = "intact" if report.ok else ("problems remain: `replay` recomputes missing checkpoints"
                                            if repair else "problems found: `verify --repair` fixes what it can")
        console.print(f"{results}: {report.intact} intact item file(s), {counts} -- {state}", highlight=False,
                      soft_wrap=True)
        if not report.ok:
            raise typer.Exit(1)
