"""`pythia-forensics mechanism`: the exact direct-logit decomposition of one checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("mechanism")
    def mechanism_cmd(
        model: str = typer.Argument(..., help="Checkpoint folder (save_pretrained) or folder of revisions."),
        probes: str = typer.Option(..., "--probes", "-p", help="Probe file or shipped set name."),
        results: Path = typer.Option(..., "--results", help="Results folder (writes mechanism/ inside)."),
        revision: Optional[str] = typer.Option(None, help="Revision inside a folder of revisions."),
    ) -> None:
        """Decompose each item's target-foil logit gap into embedding, heads, MLPs, norm bias."""
        from pythia_forensics.mechanism.run import record_decomposition

        out, fresh = record_decomposition(model, probes, results, revision=revision)
        typer.echo(f"{'wrote' if fresh else 'already done'}: {out}")
