"""`python -m benchmarks` (what `make bench` runs from a clone): side-by-side benchmark against
minicons, lm-eval and a full-logits scorer on locally built Pythia-shaped checkpoints (writes
OUT/bench.md and OUT/bench.csv). Not part of the installed package."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False)


@app.command()
def bench(
    out: Path = typer.Option(Path("results/bench"), "--out", help="Output folder (bench.md, bench.csv, suite/)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny shape, 2 revisions, 120 items, one round (~1 min)."),
    suite_dir: Optional[Path] = typer.Option(None, help="Where to build / reuse the random suites (default OUT/suite)."),
    gpu: bool = typer.Option(True, help="Run the GPU section when CUDA is present."),
) -> None:
    """Benchmark our replay against minicons, lm-eval and a full-logits scorer, side by side."""
    from benchmarks.run import run_bench
    from pythia_forensics.cli.common import console

    report = run_bench(out, quick=quick, suite_dir=suite_dir, gpu=gpu)
    for note in report["notes"]:
        console.print(note, highlight=False)
    console.print(f"wrote {report['paths']['md']} and {report['paths']['csv']}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    from pythia_forensics.cli import run

    run(app, argv)


if __name__ == "__main__":
    main()
