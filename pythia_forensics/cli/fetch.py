"""`pythia-forensics fetch`: stage a sweep's checkpoints on a node with network, for offline compute nodes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("fetch")
    def fetch_cmd(
        models: list[str] = typer.Argument(..., help="Registry names (pythia-160m) or hub ids."),
        steps: str = typer.Option("all", help="all | N,N,... | A:B | log (as replay will use)."),
        suite_dir: Optional[Path] = typer.Option(None, help="Local suite folder to look model names up in."),
        cache_dir: Optional[Path] = typer.Option(None, help="Hub cache the compute nodes read (default: huggingface_hub's)."),
        disk_budget: Optional[str] = typer.Option(None, help="Refuse before downloading when the staged revisions "
                                                  "would exceed this, e.g. 500GB."),
    ) -> None:
        """Download weights, config, tokenizer and branch refs of the chosen steps into one cache.

        Then, on the compute nodes: HF_HUB_OFFLINE=1 pythia-forensics replay ... --cache-dir
        SAME_CACHE (the same models and --steps).
        """
        from pythia_forensics.cli.common import console
        from pythia_forensics.checkpoints.fetch import stage
        from pythia_forensics.sweep.replay import parse_size

        summary = stage(models, steps=steps, suite_dir=suite_dir, cache_dir=cache_dir,
                        disk_budget=parse_size(disk_budget))
        console.print(summary.render(), highlight=False)
