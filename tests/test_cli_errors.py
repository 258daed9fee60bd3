"""The exit contract's naming of parameters: a library error says what is wrong with a value and
names the API argument (`param=`); the CLI line adds how that argument is spelled there."""
from __future__ import annotations

import pytest
import typer

from pythia_forensics.cli import run
from pythia_forensics.errors import StepSpecError

app = typer.Typer(add_completion=False)


@app.command()
def go(model: str = typer.Argument(...), disk_budget: str = typer.Option("1G", "--disk-budget"),
       which: str = typer.Option("option")) -> None:
    param = {"option": "disk_budget", "argument": "model", "unknown": "not_a_parameter", "none": None}[which]
    raise StepSpecError(f"bad value {model!r}", param=param)


@app.command()
def other() -> None:  # a second command makes the app a group, as the real one is
    pass


@pytest.mark.parametrize("which, prefix", [
    ("option", "error: --disk-budget: bad value 'x'"),
    ("argument", "error: MODEL: bad value 'x'"),
    ("unknown", "error: bad value 'x'"),
    ("none", "error: bad value 'x'"),
])
def test_the_cli_line_names_the_parameter_as_the_command_spells_it(which, prefix, capsys):
    with pytest.raises(SystemExit) as exc:
        run(app, ["go", "x", "--which", which])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == prefix + "\n"


def test_the_library_message_itself_names_no_flag():
    from pythia_forensics.checkpoints.registry import parse_steps

    with pytest.raises(StepSpecError) as exc:
        parse_steps("1:x", (0, 1, 2))
    assert exc.value.param == "steps" and "--" not in str(exc.value)
