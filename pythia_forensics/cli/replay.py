"""`pythia-forensics replay`: score every checkpoint of some models into a results store."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.constants import DEFAULT_REPLAY_CHUNK, DEFAULT_RESULTS_DIR, REPLAY_EXIT_SOME_FAILED


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_cmd(
        models: list[str] = typer.Argument(..., help="Registry names (pythia-160m), hub ids or local model folders."),
        probes: list[str] = typer.Option(..., "--probes", "-p", help="Probe-set name or file (repeatable)."),
        steps: str = typer.Option("all", help="all | N,N,... | A:B | log"),
        suite_dir: Optional[Path] = typer.Option(None, help="Local suite folder to look model names up in."),
        results: Path = typer.Option(DEFAULT_RESULTS_DIR, help="Results folder."),
        disk_budget: Optional[str] = typer.Option(None, help="Most checkpoint bytes held at once, e.g. 50GB."),
        dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
        batch_size: str = typer.Option("auto", help="Items per forward pass, or auto."),
        bos: bool = typer.Option(False, help="Prepend a BOS token (Pythia adds none)."),
        executor: str = typer.Option("local", help="local | slurm | submitit-local"),
        health: str = typer.Option("off", help="off | skip | flag (reads RESULTS/health.parquet)"),
        cache_dir: Optional[Path] = typer.Option(None, help="Hub cache folder (default: huggingface_hub's)."),
        chunk: int = typer.Option(DEFAULT_REPLAY_CHUNK, help="Revisions per array task (slurm executors)."),
        slurm: list[str] = typer.Option([], "--slurm", help="submitit parameter KEY=VALUE, e.g. "
                                        "slurm_partition=gpu, gpus_per_node=1, timeout_min=600 (repeatable)."),
    ) -> None:
        """Replay checkpoints: fetch within a disk budget, score, store; reruns resume.

        Exit status 0: every planned revision is stored; 1: some revisions could not be used
        (each named on a warning line and recorded in RESULTS/failures/), the rest is stored;
        2: a usage error, nothing done.
        """
        from pythia_forensics.cli.common import console
        from pythia_forensics.replay import replay

        from pythia_forensics.replay import parse_params

        summary = replay(models, probes, steps=steps, suite_dir=suite_dir, results=results,
                         disk_budget=disk_budget, dtype=dtype, device=device,
                         batch_size=int(batch_size) if batch_size.isdigit() else batch_size, bos=bos,
                         executor=executor, health=health, cache_dir=cache_dir, chunk=chunk,
                         slurm=parse_params(slurm))
        console.print(summary.render(), highlight=False)
        if summary.revisions_failed:
            # some revisions could not be used: recorded in RESULTS/failures/, the rest is stored
            raise typer.Exit(REPLAY_EXIT_SOME_FAILED)
