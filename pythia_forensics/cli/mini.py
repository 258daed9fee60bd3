"""`pythia-forensics mini train` and `pythia-forensics mini sweep`: train the mini suite / the
support-knob sweep arms (thin shells over `mini.suite.build_suite` / `build_sweep`). The
top-level `demo` and `sweep` commands run the whole pipeline on them (cli/demo.py) and share
the sweep's options defined here."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.experiments.mini.suite import SWEEP_RULE, SWEEP_SUPPORTS

SUPPORTS_DEFAULT = ",".join(f"{s:g}" for s in SWEEP_SUPPORTS)

# The options `mini sweep` and the top-level `sweep` share (one definition, one help text).
SWEEP_OUT = typer.Option(Path("results/sweep"), "--out", help="Sweep folder; the arms are trained into OUT/suite.")
SUPPORTS = typer.Option(SUPPORTS_DEFAULT, help="Support knob values (>= 4).")
RULE = typer.Option(SWEEP_RULE, help="Rule whose support knob varies.")
FORCE_ARMS = typer.Option(False, "--force", help="Retrain arms even if present.")
JOBS = typer.Option(None, help="Models trained in parallel (default min(2, CPUs)).")


def parse_supports(text: str) -> tuple[float, ...]:
    """Comma-separated support knob values.

    Raises:
        CorpusError: a value that is not a number (param ``supports``).
    """
    from pythia_forensics.errors import CorpusError

    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CorpusError(f"support values must be comma-separated numbers in [0, 1], got {text!r}",
                          param="supports") from None


@contextlib.contextmanager
def _report_interrupt(suite_dir: Path, names: list[str]) -> Iterator[None]:
    """Ctrl-C while training: one line saying what is on disk and that a rerun resumes (exit 130)."""
    from pythia_forensics.errors import Interrupted
    from pythia_forensics.experiments.mini.train import describe_kept

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: kept {describe_kept(suite_dir, names)} in {suite_dir}; "
                          "rerun the same command to resume from the last checkpoints") from None


def register(app: typer.Typer) -> None:
    mini_app = typer.Typer(help="The mini suite: a small Pythia-style family trained on a generated corpus.",
                           no_args_is_help=True)
    app.add_typer(mini_app, name="mini")

    @mini_app.command("train")
    def train_cmd(
        out: Optional[Path] = typer.Option(None, "--out", help="Suite folder (default $PF_MINI_DIR or results/demo/suite)."),
        force: bool = typer.Option(False, "--force", help="Retrain even if a matching suite exists."),
        jobs: Optional[int] = JOBS,
    ) -> None:
        """Train the mini suite (corpus, tokenizer, every scale), or reuse it."""
        from pythia_forensics.cli.common import check_output_dir, console
        from pythia_forensics.experiments.mini.config import demo_config
        from pythia_forensics.experiments.mini.suite import build_suite, default_suite_dir

        check_output_dir(out or default_suite_dir(), "--out")
        with _report_interrupt(out or default_suite_dir(), [m.name for m in demo_config().models]):
            path = build_suite(out, force=force, jobs=jobs)
        console.print(f"mini suite ready: {path}")

    @mini_app.command("sweep")
    def sweep_cmd(out: Path = SWEEP_OUT, supports: str = SUPPORTS, rule: str = RULE, force: bool = FORCE_ARMS,
                  jobs: Optional[int] = JOBS) -> None:
        """Train the support-knob sweep arms only: one scale, one arm per knob value."""
        from pythia_forensics.cli.common import check_output_dir, console
        from pythia_forensics.experiments.mini.suite import build_sweep, sweep_configs

        check_output_dir(out, "--out")
        values = parse_supports(supports)
        names = [a.model.name for a in sweep_configs(rule=rule, supports=values)]
        with _report_interrupt(out / "suite", names):
            path = build_sweep(out / "suite", rule=rule, supports=values, force=force, jobs=jobs)
        console.print(f"sweep arms ready: {path}")
