"""`pythia-forensics audit`: does the configured dtype / batch size reproduce fp32 batch-1 margins?"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.cli.common import step_pattern_option
from pythia_forensics.scoring.audit import AUDIT_MAX_DELTA, AUDIT_SAMPLE

_VERDICT_STYLE = {"pass": "green", "drift": "yellow", "fail": "bold red"}
_WORST_SHOWN = 10


def register(app: typer.Typer) -> None:
    @app.command("audit")
    def audit_cmd(
        model: str = typer.Argument(..., help="Checkpoint folder, hub id, registry name or local suite model."),
        probes: list[str] = typer.Option(..., "--probes", "-p", help="Probe-set name or file (repeatable)."),
        revision: Optional[str] = typer.Option(None, help="Hub branch or local checkpoint folder (step<N>, checkpoint-<N>)."),
        revisions: int = typer.Option(0, help="Instead of one revision, audit N spread over the grid (0: off)."),
        dtype: str = typer.Option("auto", help="Configured dtype: auto | float32 | bfloat16 | float16"),
        batch_size: str = typer.Option("auto", help="Configured items per forward pass, or auto."),
        sample: int = typer.Option(AUDIT_SAMPLE, help="Items to re-score (seeded, stratified); 0 = all."),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        tolerance: float = typer.Option(AUDIT_MAX_DELTA, help="Max |delta margin| in nats for a pass."),
        suite_dir: Optional[Path] = typer.Option(None, help="Local suite folder to look model names up in."),
        out: Optional[Path] = typer.Option(None, help="Write the report: .json, .parquet or .csv."),
        step_pattern: Optional[str] = step_pattern_option(),
        disk_budget: Optional[str] = typer.Option(None, help="With --revisions: most checkpoint bytes held at once "
                                                  "by every worker on the cache, e.g. 50GB."),
        cache_dir: Optional[Path] = typer.Option(None, help="Hub cache folder (default: huggingface_hub's)."),
    ) -> None:
        """Re-score a sample in fp32 at batch size 1 and compare; exit status 1 unless it passes."""
        from rich.table import Table

        from pythia_forensics.scoring.audit import audit
        from pythia_forensics.cli.common import console
        from pythia_forensics.cli.health import check_out, write_report
        from pythia_forensics.errors import AuditError

        check_out(out)
        if sample < 0:
            raise AuditError(f"sample must be a positive item count or 0 for all, got {sample}", param="sample")
        from pythia_forensics.cli.common import parse_batch_size

        kwargs = dict(dtype=dtype, batch_size=parse_batch_size(batch_size),
                      sample=sample or None, device=device, tolerance=tolerance)
        if revisions:
            from pythia_forensics.scoring.audit import audit_revisions

            from pythia_forensics.sweep.replay import parse_size

            reports = audit_revisions(model, probes=probes, n_revisions=revisions, suite_dir=suite_dir,
                                      cache_dir=cache_dir, disk_budget=parse_size(disk_budget), **kwargs)
        else:
            reports = (audit(model, revision=revision, probes=probes, suite_dir=suite_dir, **kwargs),)
        summary = Table(title=f"numerical audit of {reports[0].model}")
        for col in ("revision", "configured", "reference", "items", "max |Δ margin|", "mean |Δ margin|",
                    "flips", "verdict"):
            summary.add_column(col)
        for report in reports:
            summary.add_row(report.revision or "", f"{report.dtype}, batch {report.batch_size_used}",
                            f"{report.reference_dtype}, batch {report.reference_batch_size}",
                            f"{report.n_items} of {report.n_total}", f"{report.max_abs_delta:.3g} nats",
                            f"{report.mean_abs_delta:.3g} nats", str(report.flips),
                            f"[{_VERDICT_STYLE[report.verdict]}]{report.verdict}[/]")
        console.print(summary)
        worst_report = max(reports, key=lambda r: r.max_abs_delta)
        worst = sorted(worst_report.items, key=lambda i: -abs(i.delta))[:_WORST_SHOWN]
        if worst_report.verdict != "pass" and worst:
            table = Table(title=f"largest margin changes (nats), {worst_report.revision or worst_report.model}")
            for col in ("item", "reference", "configured", "Δ", "flipped"):
                table.add_column(col)
            for i in worst:
                table.add_row(i.item_id, f"{i.margin_reference:.5f}", f"{i.margin:.5f}", f"{i.delta:+.3g}",
                              "yes" if i.flipped else "")
            console.print(table)
        if out is not None:
            import pandas as pd

            payload = reports[0].to_dict() if len(reports) == 1 else {"reports": [r.to_dict() for r in reports]}
            write_report(payload, pd.concat([r.to_frame() for r in reports], ignore_index=True), out)
        if any(r.failed for r in reports):
            raise typer.Exit(1)
