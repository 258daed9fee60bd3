"""Every command's --help, as a user reads it: no type placeholders on flags, the defaults and
formats a user needs spelled out in the help itself (not in a source file)."""
from __future__ import annotations

import pytest

from pythia_forensics.cli import app, command_of, main


def _commands(command, path=()):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(command_of(app)))


def _help(path, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out.replace("\u2502", " ")  # rich panel borders between wrapped lines


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "root")
def test_no_flag_shows_a_value_placeholder(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    text = _help(path, capsys)
    assert "--help" in text and "<bool>" not in text


def test_every_command_is_covered():
    assert {"analyze", "figures", "replay", "demo"} <= {p[0] for p in COMMANDS if p}
    assert ("prereg", "lock") in COMMANDS


def test_prereg_lock_help_documents_the_predictions_format_inline(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    text = " ".join(_help(("prereg", "lock"), capsys).split())
    assert ".py" not in text  # no pointer into the source tree an installed user does not have
    for part in ("predictions:", "MODEL RULE VERDICT", "rho(SIZE, METRIC) OP NUMBER", "for RULE",
                 "RECOVERED, UNSTABLE, DISPLACED, PARTIAL or NEVER", "METRIC: depth or final"):
        assert part in text, part


def test_support_help_explains_both_pythia_token_counts(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    text = " ".join(_help(("support",), capsys).split())
    assert "2,098,176 = 1024 x 2049" in text and "2,097,152 = 1024 x 2048" in text
    assert 1024 * 2049 == 2_098_176 and 1024 * 2048 == 2_097_152


@pytest.mark.parametrize("path", [("analyze",), ("figures",), ("replay",), ("prereg", "lock")])
def test_results_defaults_to_dot_results(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = " ".join(_help(path, capsys).split())
    assert "default ./results" in text and "[required]" not in text.split("--results", 1)[1].split("--", 1)[0]
