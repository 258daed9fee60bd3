"""`pythia-forensics health`: prove each revision is what its name says (census / deep)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from pythia_forensics.cli.common import step_pattern_option
from pythia_forensics.errors import OutputFormatError

_STATUS_STYLE = {"ok": "green", "flagged": "yellow", "bad": "bold red"}


_OUT_SUFFIXES = (".json", ".parquet", ".csv")


def check_out(out: Path | None) -> None:
    """Reject an `--out` suffix before any work is done.

    Raises:
        OutputFormatError: a suffix other than .json, .parquet, .csv.
    """
    if out is not None and out.suffix.lower() not in _OUT_SUFFIXES:
        raise OutputFormatError(f"--out {out} has suffix {out.suffix!r}; use {', '.join(_OUT_SUFFIXES)}")
    from pythia_forensics.cli.common import check_output_file

    check_output_file(out, "--out")


def write_report(payload: dict[str, Any], frame: Any, out: Path) -> None:
    """Write a machine-readable report: .json (everything), .parquet or .csv (the table).

    Raises:
        OutputFormatError: another suffix.
    """
    from pythia_forensics.atomic import atomic_write, write_text

    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".json":
        write_text(out, json.dumps(payload, indent=2, default=str) + "\n")
    elif suffix == ".parquet":
        atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))


def register(app: typer.Typer) -> None:
    @app.command("health")
    def health_cmd(
        model: str = typer.Argument(..., help="Registry name (pythia-160m), hub id or local model folder."),
        steps: Optional[str] = typer.Option(None, help="all | N,N,... | A:B | log (default: all)."),
        deep: bool = typer.Option(False, "--deep", help="Load tensors: neighbours, trends, formats, lineage."),
        suite_dir: Optional[Path] = typer.Option(None, help="Local suite folder to look model names up in."),
        results: Optional[Path] = typer.Option(None, help="Results folder: upsert RESULTS/health.parquet."),
        out: Optional[Path] = typer.Option(None, help="Write the report: .json, .parquet or .csv."),
        peer: list[str] = typer.Option([], "--peer", help="Another seed's model for the lineage check (repeatable)."),
        disk_budget: Optional[str] = typer.Option(None, help="Most bytes --deep downloads at once, e.g. 50GB."),
        cache_dir: Optional[Path] = typer.Option(None, help="Hub cache folder (default: huggingface_hub's)."),
        show_all: bool = typer.Option(False, "--all", help="List every revision, not only problems."),
        step_pattern: Optional[str] = step_pattern_option(),
    ) -> None:
        """Check a model's revisions; exit status 1 when a (not known-upstream) check fails."""
        from rich.table import Table

        from pythia_forensics.cli.common import console
        from pythia_forensics.checkpoints.health import check_health
        from pythia_forensics.sweep.replay import parse_size

        from pythia_forensics.cli.common import check_output_dir

        check_out(out)
        check_output_dir(results, "--results")
        report = check_health(model, steps=steps, deep=deep, suite_dir=suite_dir, peers=peer,
                              disk_budget=parse_size(disk_budget), cache_dir=cache_dir)
        table = Table(title=f"health of {report.model} ({report.source}, {'deep' if report.deep else 'census'})")
        for col in ("revision", "step", "status", "reasons"):
            table.add_column(col, overflow="fold")
        for row in report.rows:
            if show_all or row.status != "ok":
                status = row.status + (" (known)" if row.known else "")
                table.add_row(row.revision, "" if row.step is None else str(row.step),
                              f"[{_STATUS_STYLE[row.status]}]{status}[/]", "\n".join(row.reasons))
        counts = {s: sum(r.status == s for r in report.rows) for s in _STATUS_STYLE}
        if table.row_count:
            console.print(table)
        console.print(f"{len(report.rows)} revisions: {counts['ok']} ok, {counts['flagged']} flagged, "
                      f"{counts['bad']} bad" + ("" if report.failed else " -- no unexplained problems"),
                      highlight=False)
        if results is not None:
            from pythia_forensics.sweep.store import ResultsStore

            ResultsStore(results).write_health(report.to_frame())
        if out is not None:
            write_report(report.to_dict(), report.to_frame(), out)
        if report.failed:
            raise typer.Exit(1)
