"""Shared CLI helpers: the rich consoles used by every command."""
from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

# Piped output (CI logs, `| tee`) has no terminal width; rich would then squeeze tables to 80
# columns and elide numbers. Keep them readable instead.
_PIPED_WIDTH = 160

console = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)


def _export_step_pattern(value: str | None) -> str | None:
    # The registry reads $PF_STEP_PATTERN whenever no pattern is passed, so exporting it
    # reaches every model lookup of the command, array workers and subprocesses included.
    import os

    from pythia_forensics.constants import ENV_STEP_PATTERN

    if value:
        os.environ[ENV_STEP_PATTERN] = value
    return value


def step_pattern_option() -> Any:
    """The `--step-pattern REGEX` option shared by every command that reads model folders."""
    import typer

    return typer.Option(
        None, "--step-pattern", callback=_export_step_pattern, metavar="REGEX",
        help="Checkpoint folder names of a local model, the step in group 1 or (?P<step>...), e.g. "
             r"'ckpt_(\d+)'. Default: step<N> and checkpoint-<N> (Trainer; step from trainer_state.json).",
    )
