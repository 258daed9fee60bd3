"""The `pythia-forensics` command: a thin typer shell over the Python API.

Each subcommand lives in its own module here with a `register(app)` function, and calls one
public library function. `main()` turns every `PFError` into one line on stderr and exit
status 2 (never a traceback); set PF_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import errno
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


# Subcommand modules, in pipeline order; each defines register(app). (The benchmark is not a
# command of the installed tool: `make bench` runs benchmarks/ from a clone.)
_COMMAND_MODULES = (
    "probe",
    "suite",
    "fetch",
    "replay",
    "health",
    "audit",
    "analyze",
    "verify",
    "support",
    "mini",
    "demo",
    "experiment",
    "scale",
    "mechanism",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


# OS errors that mean "this location cannot be written/read as asked", not a bug: reported as one
# line (exit 2) even when a check before the work could not foresee them (disk full mid-run).
_USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                          errno.EISDIR, errno.ENAMETOOLONG})


_INTERRUPTED = "interrupted: finished work is saved; rerun the same command to resume."


def _fail(message: str, code: int) -> None:
    # one line, whatever the message holds (a path with a newline, a multi-line library text)
    print(" ".join(message.split()), file=sys.stderr)
    sys.exit(code)


def _flag_of(typer_app: typer.Typer, argv: list[str] | None, param: str | None) -> str | None:
    """The command-line spelling of API argument `param` in the command `argv` ran: its option
    flag (``--steps``) or its argument's name (``MODEL``); None when it is not a parameter there."""
    if param is None:
        return None
    # duck-typed: typer ships its own copy of click's classes, so no isinstance on click's
    command = typer.main.get_command(typer_app)
    for word in list(sys.argv[1:] if argv is None else argv):
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command = sub
    for p in getattr(command, "params", ()):
        if p.name == param:
            if p.param_type_name == "option":
                return max(p.opts, key=len)
            return getattr(p, "metavar", None) or p.name.upper()  # an argument: its metavar, as --help shows it
    return None


def _no_flag_placeholders(command) -> None:
    """A flag takes no value, so its help row shows none: blank the metavar of every flag (and of
    --help) in the command tree; newer typer releases would print ``<bool>`` there."""
    params = list(getattr(command, "params", ()))
    try:
        params.append(command.get_help_option(typer.Context(command)))
    except Exception:  # noqa: BLE001  (an older typer/click builds the help option per call: nothing to show)
        pass
    for param in params:
        if param is not None and getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _no_flag_placeholders(sub)


def command_of(typer_app: typer.Typer):
    """The click command `typer_app` runs, with the help conventions of this CLI applied (also
    what tests render help from)."""
    command = typer.main.get_command(typer_app)
    _no_flag_placeholders(command)
    return command


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (see `run`)."""
    run(app, argv)


def run(typer_app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a Typer app with the tool's exit contract (also used by the repo's benchmarks/).

    Every way a run can end is one of: exit 0 (or the status a command documents, e.g. 1 for a
    failed health check), one line on stderr with exit 2 (a user mistake or unusable input),
    or one line with exit 130 (interrupted). ``PF_DEBUG=1`` re-raises to show the traceback.
    """
    from pythia_forensics.errors import Interrupted

    debug = bool(os.environ.get("PF_DEBUG"))
    try:
        code = command_of(typer_app)(args=argv, standalone_mode=False)
    except PFError as exc:
        if debug:
            raise
        if isinstance(exc, Interrupted):
            _fail(str(exc), exc.exit_code)
        where = _flag_of(typer_app, argv, exc.param)
        _fail(f"error: {where}: {exc}" if where else f"error: {exc}", exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        if debug:
            raise
        _fail(_INTERRUPTED, 130)
    except typer.TyperException as exc:  # click's usage errors (unknown option, missing argument)
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        if debug:
            raise
        _fail(f"error: {exc.format_message()} (see --help)", getattr(exc, "exit_code", 2))
    except OSError as exc:
        if debug or exc.errno not in _USER_ERRNOS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        _fail(f"error: cannot use{where}: {exc.strerror}; choose another location or fix its permissions", 2)
    if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit 130: say so
        _fail(_INTERRUPTED, 130)
    sys.exit(code if isinstance(code, int) else 0)
