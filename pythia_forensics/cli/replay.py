"""`pythia-forensics replay`: score every checkpoint of some models into a results store."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.cli.common import step_pattern_option
from pythia_forensics.constants import (
    DEFAULT_RESULTS_DIR,
    REPLAY_EXIT_SOME_FAILED,
)
from pythia_forensics.scoring.options import DEFAULT_VOCAB_ROWS, VOCAB_ROWS


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_cmd(
        models: list[str] = typer.Argument(..., help="Registry names (pythia-160m), hub ids or local model folders "
                                           "(folders of step<N>/ or checkpoint-<N>/ subfolders)."),
        probes: list[str] = typer.Option(..., "--probes", "-p", help="Probe-set name or file (repeatable)."),
        steps: str = typer.Option("all", help="all | N,N,... | A:B | log"),
        suite_dir: Optional[Path] = typer.Option(None, help="Local suite folder to look model names up in."),
        results: Path = typer.Option(DEFAULT_RESULTS_DIR, help="Results folder (default ./results)."),
        disk_budget: Optional[str] = typer.Option(None, help="Most checkpoint bytes held at once, e.g. 50GB."),
        dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
        batch_size: str = typer.Option("auto", help="Items per forward pass, or auto."),
        bos: bool = typer.Option(False, help="Prepend a BOS token (Pythia adds none)."),
        vocab_rows: str = typer.Option(DEFAULT_VOCAB_ROWS, help=f"{' | '.join(VOCAB_ROWS)}: log-sum-exp over every "
                                       "output row (the model's distribution, as minicons/lm-eval) or the tokenizer's only."),
        step_pattern: Optional[str] = step_pattern_option(),
        executor: str = typer.Option("local", help="local | slurm | submitit-local"),
        health: str = typer.Option("off", help="off | skip | flag (reads RESULTS/health.parquet)"),
        cache_dir: Optional[Path] = typer.Option(None, help="Hub cache folder (default: huggingface_hub's)."),
        chunk: Optional[int] = typer.Option(None, help="Revisions per array task (slurm executors; default 8)."),
        slurm: list[str] = typer.Option([], "--slurm", help="submitit parameter KEY=VALUE, e.g. "
                                        "slurm_partition=gpu, gpus_per_node=1, timeout_min=600 (repeatable)."),
        threads: str = typer.Option("auto", help="CPU threads for scoring, or auto ($PF_THREADS, else "
                                    "$OMP_NUM_THREADS, else the CPUs this process may use); recorded with results."),
    ) -> None:
        """Replay checkpoints: fetch within a disk budget, score, store; reruns resume.

        Exit status 0: every planned revision is stored; 1: some revisions could not be used
        (each named on a warning line and recorded in RESULTS/failures/), the rest is stored;
        2: a usage error, nothing done.
        """
        from pythia_forensics.cli.common import check_output_dir, console, parse_batch_size
        from pythia_forensics.sweep.replay import parse_params, replay

        batch = parse_batch_size(batch_size)
        check_output_dir(results, "--results")
        summary = replay(models, probes, steps=steps, suite_dir=suite_dir, results=results,
                         disk_budget=disk_budget, dtype=dtype, device=device,
                         batch_size=batch, bos=bos,
                         vocab_rows=vocab_rows, step_pattern=step_pattern,
                         threads=int(threads) if threads.isascii() and threads.isdigit() else threads,
                         executor=executor, health=health, cache_dir=cache_dir, chunk=chunk,
                         slurm=parse_params(slurm))
        console.print(summary.render(), highlight=False)
        if summary.revisions_failed:
            # some revisions could not be used: recorded in RESULTS/failures/, the rest is stored
            raise typer.Exit(REPLAY_EXIT_SOME_FAILED)
