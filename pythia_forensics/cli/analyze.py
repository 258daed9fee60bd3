"""`pythia-forensics analyze | figures | prereg lock`: dynamics, verdicts, figures, pre-registration."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.analysis.config import X_SCALES, X_UNITS
from pythia_forensics.constants import DEFAULT_RESULTS_DIR

_VERDICT_STYLE = {"RECOVERED": "green", "UNSTABLE": "yellow", "DISPLACED": "red", "PARTIAL": "cyan",
                  "NEVER": "blue", "VOID": "dim"}
# typer turns an Enum into a choice; the values live in analysis/config.py only
XUnit = Enum("XUnit", {v: v for v in X_UNITS}, type=str)
XScale = Enum("XScale", {v: v for v in X_SCALES}, type=str)
_STATUS_STYLE = {"pass": "green", "fail": "red", "void": "dim"}


def _print_verdicts(analysis, order) -> None:
    from pythia_forensics.cli.tables import Col, print_table

    split = analysis.verdicts["split"].iloc[0] if not analysis.verdicts.empty else ""
    # which columns give way first on a narrow terminal: CM/lag, then emergence, depth, onset
    cols = [Col("model"), Col("rule", wrap=True), Col("verdict"), Col("emerge", "right", drop=2),
            Col("onset", "right", drop=1), Col("final", "right"), Col("depth", "right", drop=1),
            Col("CM=0", "right", drop=3), Col("lag", "right", drop=3)]
    rows = analysis.verdicts.merge(analysis.metrics, on=["model", "probeset", "rule", "split"], suffixes=("", "_m"))
    rank = {m: i for i, m in enumerate(order)}
    rows = rows.assign(_rank=rows["model"].map(rank)).sort_values(["rule", "_rank"])
    step = lambda v: "-" if str(v) == "<NA>" else str(v)  # noqa: E731
    num = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731  (NaN != NaN)
    cells = [(r.model, r.rule, f"[{_VERDICT_STYLE[r.verdict_label]}]{r.verdict_label}[/]",
              step(r.emergence_step), step(r.collapse_step), num(r.final_acc), num(r.depth),
              step(r.cm_cross_step), step(r.lag_checkpoints)) for r in rows.itertuples()]
    print_table(f"verdicts, {split} split (config {analysis.config.sha256[:12]})", cols, cells)


def _write_replicates(table, results: Path) -> Path:
    """replicates.csv (every metric per seed and pooled over seeds); prints the pooled rows of
    groups with two or more seeds."""
    from pythia_forensics.atomic import atomic_write
    from pythia_forensics.cli.tables import Col, print_table

    path = atomic_write(Path(results) / "replicates.csv", lambda tmp: table.to_csv(tmp, index=False))
    pooled = table[(table["seed"] == "pooled") & (table["n_seeds"] >= 2)]
    if not pooled.empty:
        num = lambda v: "-" if v != v else f"{v:.3f}"  # noqa: E731  (NaN != NaN)
        print_table("pooled over seeds (mean, Student-t interval over seeds)",
                    [Col("group"), Col("rule"), Col("split"), Col("metric"), Col("seeds", justify="right"),
                     Col("mean", justify="right"), Col("interval", justify="right")],
                    [(r.replicate_group, r.rule, r.split, r.metric, str(r.n_seeds), num(r.value),
                      f"[{num(r.lo)}, {num(r.hi)}]") for r in pooled.itertuples()])
    return path


# The predictions grammar (analysis/prereg.py parses it), shown by `prereg lock --help`.
_PREDICTIONS_FORMAT = """Predictions file (YAML):

split: heldout   (optional; default: analysis.yaml's primary split)

predictions:

- pythia-70m pronoun_gender DISPLACED   (MODEL RULE VERDICT[|VERDICT...])

- id: size-final   (optional id, else p1, p2, ...)

  claim: rho(size, final) > 0   (rho(SIZE, METRIC) OP NUMBER, then optionally: for RULE)

- rho(params_nonembedding, depth) < 0 for pronoun_gender

VERDICT: RECOVERED, UNSTABLE, DISPLACED, PARTIAL or NEVER. SIZE: size, total, params_total,
nonembedding or params_nonembedding. METRIC: depth or final. OP: > >= < <=. A rho claim without
"for RULE" must hold for every rule with a valid rho. A verdict claim is void when its verdict is
void or absent; a rho claim is void when no rule it covers has a rho."""


def register(app: typer.Typer) -> None:
    @app.command()
    def analyze(
        results: Path = typer.Option(DEFAULT_RESULTS_DIR, "--results",
                                     help="Results folder written by `replay` (default ./results, as replay)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML overriding analysis.yaml thresholds."),
        seed: list[str] = typer.Option([], "--seed", help="MODEL=SEED[:GROUP]: a run's seed where its manifest "
                                       "has none (repeatable); runs of one GROUP are replicates."),
    ) -> None:
        """Trajectory metrics and verdicts: write dynamics.parquet/.csv, print verdicts and the prereg ledger."""
        import pandas as pd

        from pythia_forensics.cli.common import console
        from pythia_forensics.cli.tables import Col, print_table
        from pythia_forensics.analysis.dynamics import analyze as run, write_dynamics
        from pythia_forensics.analysis.frames import model_order
        from pythia_forensics.analysis.prereg import ledger
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.sweep.store import ResultsStore

        from pythia_forensics.analysis.replicates import parse_seed_flags, seed_table, with_seeds

        check_output_dir(results, "--results")  # dynamics.parquet/.csv are written there
        seeds = parse_seed_flags(seed)
        models = with_seeds(ResultsStore(results).models(), seeds) if seeds else None
        analysis = run(results, config=config, models=models)
        written = write_dynamics(analysis, results)
        written.append(_write_replicates(seed_table(analysis.metrics, models if models is not None else
                                                    ResultsStore(results).models(), config=analysis.config),
                                         results))
        _print_verdicts(analysis, model_order(analysis.metrics["model"], ResultsStore(results).models()))
        for gap in ResultsStore(results).missing().itertuples(index=False):
            at = "" if pd.isna(gap.step) else f" (step {int(gap.step)})"
            console.print(f"missing: {gap.model} {gap.revision}{at} for probe set {gap.probeset}; "
                          f"`replay` recomputes it", highlight=False, soft_wrap=True)
        console.print(f"wrote {', '.join(p.name for p in written)} to {results}", highlight=False)
        scored = ledger(analysis, results)  # raises PreregError (exit 2) on a late or edited lock
        if scored is not None:
            print_table(f"pre-registration ledger (locked {scored['locked_at'].iloc[0]})",
                        [Col("id"), Col("claim", wrap=True), Col("status"), Col("observed", wrap=True)],
                        [(r.id, r.claim, f"[{_STATUS_STYLE[r.status]}]{r.status}[/]", r.observed or r.detail)
                         for r in scored.itertuples()])

    @app.command()
    def figures(
        results: Path = typer.Option(DEFAULT_RESULTS_DIR, "--results",
                                     help="Results folder written by `replay` (default ./results, as replay)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Figure folder (default RESULTS/figures)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML overriding analysis.yaml thresholds."),
        x: XUnit = typer.Option("steps", "--x", case_sensitive=False,
                                help="Trajectory x axis: training steps, or tokens (steps x tokens per step)."),
        xscale: XScale = typer.Option("auto", "--xscale", case_sensitive=False,
                                      help="x scale: auto follows the checkpoint grid (log-spaced grids log, "
                                           "others linear)."),
    ) -> None:
        """Regenerate every figure (PDF + PNG) and report.md from stored results only."""
        from pythia_forensics.cli.common import console
        from pythia_forensics.analysis.dynamics import analyze as run
        from pythia_forensics.analysis.figures import render_figures
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.analysis.report import write_report

        check_output_dir(out, "--out")
        check_output_dir(results, "--results")  # report.md (and figures/ without --out)
        analysis = run(results, config=config)
        paths = render_figures(results, out, analysis=analysis, x=x.value, xscale=xscale.value)
        report = write_report(results, analysis=analysis, figures=paths)
        console.print(f"wrote {len(paths)} figure files to {paths[0].parent} and {report}", highlight=False)

    prereg = typer.Typer(help="Pre-register predictions before results exist.", no_args_is_help=True)

    @prereg.command("lock", epilog=_PREDICTIONS_FORMAT)
    def lock(
        predictions: Path = typer.Argument(..., help="Predictions YAML (format below)."),
        results: Path = typer.Option(DEFAULT_RESULTS_DIR, "--results",
                                     help="Results folder the predictions govern (default ./results)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML overriding analysis.yaml thresholds."),
    ) -> None:
        """Record predictions + thresholds with hashes and the UTC time, before any result is read.

        `analyze` and `figures` then score each prediction pass / fail / void, and refuse when the
        lock was written after a result it governs, was edited, or the thresholds changed.
        """
        from pythia_forensics.cli.common import console
        from pythia_forensics.cli.common import check_output_dir
        from pythia_forensics.analysis.prereg import lock as do_lock, read_lock

        check_output_dir(results, "--results")

        path = do_lock(predictions, results, config=config)
        body = read_lock(results)
        console.print(f"locked {len(body['claims'])} predictions at {body['locked_at']} "
                      f"(predictions {body['predictions_sha256'][:12]}, config {body['config_sha256'][:12]}) -> {path}",
                      highlight=False)

    app.add_typer(prereg, name="prereg")
