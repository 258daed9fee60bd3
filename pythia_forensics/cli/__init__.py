"""The `pythia-forensics` command: a thin typer shell over the Python API.

Each subcommand lives in its own module here with a `register(app)` function, and calls one
public library function. `main()` turns every `PFError` into one line on stderr and exit
status 2 (never a traceback); set PF_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

from pythia_forensics.errors import PFError

app = typer.Typer(
    name="pythia-forensics",
    help="Replay a model's training checkpoints and find rules it learns and later loses.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)



def _print_version(value: bool) -> None:
    if value:
        from pythia_forensics import __version__

        print(f"pythia-forensics {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the package version and exit."),
) -> None:
    """Replay a model's training checkpoints and find rules it learns and later loses."""


@app.command()
def version() -> None:
    """Print the package, torch and transformers versions."""
    from pythia_forensics import __version__
    import torch
    import transformers

    print(f"pythia-forensics {__version__}  torch {torch.__version__}  transformers {transformers.__version__}")


# Subcommand modules, in pipeline order. A module missing its register() is skipped so a
# half-built stage never breaks the whole CLI.
_COMMAND_MODULES = (
    "probe",
    "suite",
    "replay",
    "health",
    "audit",
    "analyze",
    "verify",
    "support",
    "mini",
    "demo",
    "experiment",
    "bench",
)

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # stage not written yet
        if exc.name != f"{__name__}.{_name}":
            raise
        continue
    _register = getattr(_module, "register", None)
    if _register is not None:
        _register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except PFError as exc:
        if os.environ.get("PF_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume.", file=sys.stderr)
        sys.exit(130)
