"""Shared CLI helpers: the rich consoles used by every command, strict option parsing, and the
check that an output location can be written, done before any (long) work starts."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from pythia_forensics.errors import OutputPathError, UsageError

# Piped output (CI logs, `| tee`) has no terminal width; rich would then squeeze tables to 80
# columns and elide numbers. Keep them readable instead.
_PIPED_WIDTH = 160

console = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)

# ASCII digits only: str.isdigit() also accepts "²" or "٣", which int() then rejects.
_ASCII_INT = re.compile(r"[0-9]+")


def parse_batch_size(text: str, option: str = "--batch-size") -> int | str:
    """``"auto"`` or a positive integer written in ASCII digits.

    Raises:
        UsageError: anything else (names the option and the value).
    """
    value = text.strip()
    if value == "auto":
        return value
    if _ASCII_INT.fullmatch(value) and int(value) > 0:
        return int(value)
    raise UsageError(f"{option} {text!r}: the batch size must be a positive whole number such as 8, or auto")


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_folder_writable(folder: Path, option: str, target: Path) -> None:
    """``folder`` exists; it must be a folder we can create files in."""
    if not folder.is_dir():
        raise OutputPathError(f"{option} {target}: {folder} is a file, not a folder; choose a path whose "
                              "parent folders are folders")
    try:  # a real attempt: os.access answers "yes" for root on a read-only mount
        fd, name = tempfile.mkstemp(prefix=".tmp-pf-check-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputPathError(f"{option} {target}: cannot create files in {folder} ({exc.strerror}); "
                              "choose a writable location") from None


def check_output_file(path: Path | str | None, option: str = "--out") -> None:
    """Refuse, before any work, an output file that could not be written at the end.

    Args:
        path: the file to be written (None: nothing to check).
        option: the option name used in the message.

    Raises:
        OutputPathError: the path is a folder, a parent is a file, or the folder is read-only.
    """
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is an existing folder; give a file name inside it, "
                              f"e.g. {path / 'scores.csv'}")
    _check_folder_writable(_nearest_existing(path.parent), option, path)


def check_output_dir(path: Path | str | None, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that could not be created or written.

    Raises:
        OutputPathError: the path is a file, a parent is a file, or the folder is read-only.
    """
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is a file, not a folder; choose a folder path")
    _check_folder_writable(_nearest_existing(path), option, path)

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
