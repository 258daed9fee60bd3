"""`pythia-forensics scale` (the mini suite's scale grid, end to end) and `pythia-forensics
paper` (figures, LaTeX tables and a methods file from a results folder): thin shells over
`experiments.scale.run_scale` and `analysis.paper.write_paper_kit`."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.cli.mini import JOBS


def _print_scale(result, started: float) -> None:
    from pythia_forensics.cli.common import console
    from pythia_forensics.cli.tables import Col, print_table

    rows = result.scale[(result.scale["size"] == "params_nonembedding")]
    fmt = lambda v, f: "--" if v != v else format(v, f)  # noqa: E731  (NaN -> --)
    print_table("scale grid: Spearman of per-size seed means against non-embedding parameters (measured)",
                [Col("knob"), Col("in-frame support", justify="right"), Col("metric"), Col("n sizes", justify="right"),
                 Col("seeds/size"), Col("rho", justify="right"), Col("p (exact perm.)", justify="right"),
                 Col("p_min", justify="right"), Col("interval", wrap=True), Col("note", wrap=True, drop=1)],
                [(f"{r.knob:g}", fmt(r.in_frame_support, ".2f"), r.metric, str(r.n_sizes), r.seeds_per_size,
                  fmt(r.rho, ".3f"), fmt(r.p_perm, ".3g"), fmt(r.p_min, ".3g"),
                  "--" if r.rho_lo != r.rho_lo else f"[{r.rho_lo:.2f}, {r.rho_hi:.2f}] {r.interval}", str(r.note))
                 for r in rows.itertuples()])
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    console.print(f"wall time {time.perf_counter() - started:.0f} s ({stages}); {len(result.grid)} models; "
                  f"tables in {result.out}; {len(result.figures)} figure files", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def scale(
        out: Path = typer.Option(Path("results/scale"), "--out", help="Results folder; the grid is trained into OUT/suite."),
        force: bool = typer.Option(False, "--force", help="Retrain every grid model even if it exists."),
        jobs: Optional[int] = JOBS,
    ) -> None:
        """Scale grid on the mini suite: 5 sizes x 4 support knobs (3 seeds near the flip); resumes."""
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.experiments.scale import run_scale

        check_output_dir(out, "--out")
        started = time.perf_counter()
        _print_scale(run_scale(out, force=force, jobs=jobs), started)

    @app.command()
    def paper(
        results: Path = typer.Option(..., "--results", help="A replayed results folder (e.g. results/demo)."),
        out: Path = typer.Option(..., "--out", help="Folder for the kit: figures/, tables/*.tex+csv, methods.tex, paper.tex."),
        config: Optional[Path] = typer.Option(None, "--config", help="Analysis threshold overrides (YAML)."),
        no_figures: bool = typer.Option(False, "--no-figures", help="Tables and methods only."),
    ) -> None:
        """Paper kit: the figure set, booktabs tables (same numbers as their CSVs) and a methods file."""
        from pythia_forensics.analysis.paper import write_paper_kit
        from pythia_forensics.cli.common import check_output_dir, console

        check_output_dir(out, "--out")
        kit = write_paper_kit(results, out, config=config, figures=not no_figures)
        console.print(f"paper kit in {kit.out}: {len(kit.tables)} tables, {len(kit.figures)} figure files, "
                      f"{kit.methods.name}, {kit.document.name} (pdflatex paper.tex)", highlight=False)
