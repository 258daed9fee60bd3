"""The demo, sweep, mini and experiment commands refuse an unusable --out before any work:
one line, exit 2, and the job itself is never entered (in-process via run_cli)."""
from __future__ import annotations

import pytest

from pythia_forensics.errors import UsageError

# (argv without --out, module whose public entry the command calls, that entry's name)
COMMANDS = [
    (["demo"], "pythia_forensics.experiments.demo", "run_demo"),
    (["sweep"], "pythia_forensics.experiments.demo", "run_sweep"),
    (["mini", "train"], "pythia_forensics.experiments.mini.suite", "build_suite"),
    (["mini", "sweep"], "pythia_forensics.experiments.mini.suite", "build_sweep"),
    (["experiment", "kill"], "pythia_forensics.experiments.interventions", "run_kill"),
    (["experiment", "rescue"], "pythia_forensics.experiments.interventions", "run_rescue"),
    (["experiment", "all"], "pythia_forensics.experiments.interventions", "run_kill"),
]
REACHED = "reached the job"


@pytest.fixture
def job_entered(monkeypatch):
    """Replace each command's job with one that stops at once with REACHED (exit 2)."""
    import importlib

    calls = []

    def stop(*args, **kwargs):
        calls.append(args)
        raise UsageError(REACHED)

    for _argv, module, name in COMMANDS:
        monkeypatch.setattr(importlib.import_module(module), name, stop)
    return calls


@pytest.mark.parametrize("argv", [c[0] for c in COMMANDS], ids=lambda a: " ".join(a))
@pytest.mark.parametrize("bad", ["file", "below_a_file"])
def test_unusable_out_is_refused_before_any_work(argv, bad, tmp_path, run_cli, job_entered):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if bad == "file" else blocker / "results"
    code, _stdout, err = run_cli(argv + ["--out", str(out)])
    assert code == 2, err
    line = err.strip()
    assert "\n" not in line and line.startswith("error:") and "--out" in line and "is a file" in line, line
    assert job_entered == [] and REACHED not in err


@pytest.mark.parametrize("argv", [c[0] for c in COMMANDS], ids=lambda a: " ".join(a))
def test_usable_out_reaches_the_job(argv, tmp_path, run_cli, job_entered):
    # the same commands with a writable --out get past the check (so the test above can fail)
    code, _stdout, err = run_cli(argv + ["--out", str(tmp_path / "new" / "results")])
    assert code == 2 and REACHED in err, err
    assert len(job_entered) == 1
    assert not (tmp_path / "new").exists()  # the check itself creates nothing


def test_library_errors_name_the_flag_only_on_the_command_line(run_cli):
    from pythia_forensics.experiments.interventions import InterventionError, run_kill

    with pytest.raises(InterventionError) as exc:
        run_kill("reflexive_gender", [0.5], [1], "/nonexistent-never-written")
    assert exc.value.param == "doses" and "--" not in str(exc.value)
    code, _stdout, err = run_cli(["experiment", "kill", "--doses", "0,2", "--out", "/tmp/pf-never-written-18"])
    assert code == 2 and err.startswith("error: --doses: flip fraction"), err


@pytest.mark.parametrize("argv, says", [
    (["experiment", "kill", "--rule", "nope"], "error: --rule: unknown rule 'nope'"),
    (["experiment", "rescue", "--rule", "nope"], "error: --rule: unknown rule 'nope'"),
    (["experiment", "kill", "--seeds", "0"], "error: --seeds: a kill ladder needs at least one seed"),
    (["experiment", "kill", "--doses", "0,x"], "error: --doses: values must be comma-separated numbers"),
    (["experiment", "rescue", "--doses", "0,-1"], "error: --doses: rescue multiples must be in [0, "),
    (["experiment", "rescue", "--doses", "0,1e6"], "error: --doses: rescue multiples must be in [0, "),
], ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_experiment_mistakes_are_refused_before_any_arm_trains(argv, says, tmp_path, run_cli):
    code, _stdout, err = run_cli(argv + ["--out", str(tmp_path / "exp")])
    assert code == 2 and err.startswith(says) and "\n" not in err.strip(), err
    assert not (tmp_path / "exp" / "suite").exists()
