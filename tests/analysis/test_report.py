"""report.md and the analyze / figures / prereg CLI on a synthetic suite store."""
from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from pythia_forensics.cli import app, main
from pythia_forensics.analysis.dynamics import load_config
from pythia_forensics.analysis.report import write_report
from synthetic_results import suite_items, suite_models, write_store

runner = CliRunner()


@pytest.fixture
def results(pronoun_suite_store, copy_store):
    return copy_store(pronoun_suite_store)


def test_analyze_cli_writes_dynamics_and_prints_verdicts(results):
    out = runner.invoke(app, ["analyze", "--results", str(results)])
    assert out.exit_code == 0, out.output
    assert (results / "dynamics.parquet").exists() and (results / "dynamics.csv").exists()
    frame = pd.read_csv(results / "dynamics.csv")
    assert (frame["config_sha256"] == load_config().sha256).all()
    text = out.output
    assert re.search(r"mini-xs\s+.*pronoun_gender\s+.*DISPLACED", text)
    assert re.search(r"mini-xl\s+.*pronoun_gender\s+.*RECOVERED", text)
    assert "ledger" not in text  # no lock, no ledger


@pytest.mark.slow
def test_figures_cli_writes_figures_and_report(results, tmp_path):
    out_dir = tmp_path / "figs"
    out = runner.invoke(app, ["figures", "--results", str(results), "--out", str(out_dir)])
    assert out.exit_code == 0, out.output
    report = (results / "report.md").read_text()
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert pngs == ["a_accuracy_pronoun_gender.png", "b_cm_pronoun_gender.png", "c_scale_pronoun_gender.png",
                    "d_verdicts.png", "e_overview.png"]
    for name in pngs:
        assert f"](../figs/{name})" in report  # embedded, relative to the results folder
    assert load_config().sha256 in report
    # the verdict matrix, models by size: finals 0, .2, .5 displaced; .8, .9 recovered
    assert "| pronoun_gender | D | D | D | R | R |" in report
    assert "| rule | mini-xs | mini-s | mini-m | mini-l | mini-xl |" in report
    assert "## Scale" in report and "params_nonembedding" in report


def test_prereg_cli_lock_then_late_results_refused(results, tmp_path, capsys):
    pred = tmp_path / "pred.yaml"
    pred.write_text("predictions:\n  - mini-xs pronoun_gender DISPLACED\n")
    out = runner.invoke(app, ["prereg", "lock", str(pred), "--results", str(results)])
    assert out.exit_code == 0 and "locked 1 predictions" in out.output
    # the results in this folder predate the lock: analyze refuses to score, one line, exit 2
    with pytest.raises(SystemExit) as stop:
        main(["analyze", "--results", str(results)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refusing to score predictions")
    assert (results / "dynamics.parquet").exists()  # the analysis itself is kept
    write_report(results)  # the report states the refusal instead of scoring
    assert "**Refused:** refusing to score" in (results / "report.md").read_text()


def test_honest_ledger_in_cli_and_report(tmp_path):
    results = tmp_path / "res"
    pred = tmp_path / "pred.yaml"
    pred.write_text("predictions:\n  - mini-xs pronoun_gender DISPLACED\n  - mini-xl pronoun_gender DISPLACED\n")
    assert runner.invoke(app, ["prereg", "lock", str(pred), "--results", str(results)]).exit_code == 0
    write_store(results, suite_items(rules=("pronoun_gender",)), models=suite_models())
    out = runner.invoke(app, ["analyze", "--results", str(results)])
    assert out.exit_code == 0, out.output
    assert re.search(r"p1\s.*pass", out.output) and re.search(r"p2\s.*fail", out.output)
    report = write_report(results).read_text()
    assert "1 pass, 1 fail, 0 void" in report


@pytest.mark.parametrize("argv, message", [
    (["analyze", "--results", "/nonexistent/res"], "does not exist"),
    (["prereg", "lock", "/nonexistent/p.yaml", "--results", "/tmp"], "predictions file"),
])
def test_cli_user_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_config_is_one_line(results, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("emergence:\n  conflct_min: 0.7\n")
    with pytest.raises(SystemExit) as stop:
        main(["analyze", "--results", str(results), "--config", str(cfg)])
    assert stop.value.code == 2
    assert "unknown key emergence.conflct_min" in capsys.readouterr().err


@pytest.mark.slow
def test_report_paths_relative_and_symbols_defined(results, tmp_path):
    out = runner.invoke(app, ["figures", "--results", str(results)])
    assert out.exit_code == 0, out.output
    report = (results / "report.md").read_text()
    assert str(results) not in report and str(tmp_path) not in report  # no machine paths
    assert "](figures/a_accuracy_pronoun_gender.png)" in report
    assert "/" not in report.split("Analysis config sha256:")[1].split("\n")[0].split("(")[1]
    symbols = report.split("## Symbols")[1].split("## ")[0]
    for symbol in ("R, U, D, P, N", "(X)", "VOID", "CM", "rho", "p_perm", "rho_lo, rho_hi", "lag steps (ckpt)",
                   "depth [CI]", "final [CI]", "k"):
        assert f"| {symbol} |" in symbols, symbol
    # every column header of the metrics table is defined or self-explanatory
    header = report.split("## Trajectory metrics")[1].split("\n")[2]
    for col in (c.strip() for c in header.strip("|").split("|")):
        assert col in symbols or col in {"model", "rule", "split", "verdict", "checkpoints", "void reason",
                                         "emergence"}, col


@pytest.mark.slow
def test_figures_and_analyze_run_with_unknown_sizes(results, tmp_path):
    from pythia_forensics.sweep.store import ResultsStore

    sizes = suite_models()
    sizes["params_total"] = pd.array([None, 4e5, 1.6e6, None, 2.56e7], dtype="Float64")
    ResultsStore(results).write_models(sizes)
    out = runner.invoke(app, ["analyze", "--results", str(results)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["figures", "--results", str(results), "--out", str(tmp_path / "f"), "--x", "tokens",
                              "--xscale", "log"])
    assert out.exit_code == 0, out.output
    report = (results / "report.md").read_text()
    assert "Parameter count unknown for mini-l, mini-xs" in report
    assert (tmp_path / "f" / "c_scale_pronoun_gender.png").exists()


def test_bad_xscale_is_refused(results, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["figures", "--results", str(results), "--xscale", "logarithmic"])
    assert stop.value.code == 2


@pytest.mark.parametrize("width", [80, 60])
def test_verdict_and_claims_tables_fit_the_width(width):
    """Narrow terminals: no line wider than the terminal, no number cut, dropped columns named."""
    import io

    from rich.console import Console

    from pythia_forensics.cli.tables import Col, fit_table

    cols = [Col("model"), Col("rule", wrap=True), Col("verdict"), Col("emerge", "right", drop=2),
            Col("onset", "right", drop=1), Col("final", "right"), Col("depth", "right", drop=1),
            Col("CM=0", "right", drop=3), Col("lag", "right", drop=3)]
    rows = [("mini-s", "subject_verb_agreement", "UNSTABLE", "140", "780", "0.317", "0.503", "760", "-1"),
            ("mini-l", "reflexive_gender", "RECOVERED", "120", "-", "1.000", "0.000", "-", "-")]
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None)
    console.print(fit_table("verdicts", cols, rows, width=width), width=width)
    text = buf.getvalue()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    for value in ("0.317", "1.000", "UNSTABLE", "RECOVERED", "mini-s"):
        assert value in text
    assert "left out to fit" in text
    claims = [("mini-s: low-support rule pronoun_gender (support 0.02) emerges then collapses",
               "peak 1.00 @ 300, emerged @ 220, final 0.00, agree final 1.00", "yes")]
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None)
    console.print(fit_table("claims", [Col("claim", wrap=True), Col("measured", wrap=True), Col("result")], claims,
                            width=width), width=width)
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
    flat = " ".join(text.split())
    for value in ("0.02", "1.00", "220", "300"):
        assert value in flat


def test_report_shows_the_claims_of_this_analysis_and_refuses_stale_ones(results):
    """checks.csv (a demo's measured claims) goes into report.md with its preconditions and
    results; one measured under other thresholds is named, not shown."""
    sha = load_config().sha256
    claims = pd.DataFrame(dict(claim=["m: rule kept", "m: CM | crossing"], precondition=["emerged", "collapsed"],
                               result=["yes", "not applicable"], observed=["final 1.00", "onset @ -"],
                               config_sha256=[sha, sha]))
    claims.to_csv(results / "checks.csv", index=False)
    report = write_report(results).read_text()
    assert "## Claims" in report and "1 yes, 0 no, 1 not applicable" in report
    assert "| claim | precondition | result | measured |" in report
    assert "| m: rule kept | emerged | yes | final 1.00 |" in report
    assert "| m: CM \\| crossing | collapsed | not applicable | onset @ - |" in report
    claims.assign(config_sha256="0" * 64).to_csv(results / "checks.csv", index=False)
    report = write_report(results).read_text()
    assert "## Claims" in report and "m: rule kept" not in report and "measured under config 000000000000" in report
    (results / "checks.csv").unlink()
    assert "## Claims" not in write_report(results).read_text()


def test_analyze_and_figures_default_to_dot_results_like_replay(pronoun_suite_store, copy_store, monkeypatch):
    root = copy_store(pronoun_suite_store, name="results")
    monkeypatch.chdir(root.parent)
    out = runner.invoke(app, ["analyze"])
    assert out.exit_code == 0, out.output
    assert (root / "dynamics.csv").is_file() and "wrote" in out.output
