"""The demo pipeline end to end on a reduced mini suite, and its claim checks."""
from __future__ import annotations

import pandas as pd
import pytest

from pythia_forensics.mini import reduced_config
from pythia_forensics.pipeline import CHECKS_TABLE, SUPPORT_TABLE, _loss_jump, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, config=reduced_config(), progress=False, jobs=1)


@pytest.mark.slow
def test_demo_writes_every_stage_output(demo):
    out = demo.out
    for name in (CHECKS_TABLE, SUPPORT_TABLE, "dynamics.csv", "report.md", "models.parquet", "summary.parquet"):
        assert (out / name).is_file(), name
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "d_verdicts.png" in pngs and any(n.startswith("f_support_") for n in pngs)
    assert {p.with_suffix(".pdf").name for p in (out / "figures").glob("*.png")} <= {
        p.name for p in (out / "figures").glob("*.pdf")}
    assert set(demo.timings) == {"train", "replay", "support", "analyse+figures"}


@pytest.mark.slow
def test_survival_checks_agree_with_the_written_dynamics(demo):
    """Each 'survives' row must say what dynamics.csv says, recomputed here from the table."""
    dyn = pd.read_csv(demo.out / "dynamics.csv")
    dyn = dyn[dyn["split"] == demo.analysis.config.primary_split]
    survive = [c for c in demo.checks if "survives" in c.claim]
    assert survive, "no high-support-rule check was made"
    for check in survive:
        model = check.claim.split(":")[0]
        rule = check.claim.split("rule ")[1].split(" ")[0]
        final = dyn[(dyn["model"] == model) & (dyn["rule"] == rule)]["final_acc"].item()
        assert check.passed == (final >= demo.analysis.config.recovered_final_min)
        assert f"final {final:.2f}" in check.observed
    written = pd.read_csv(demo.out / CHECKS_TABLE)
    assert len(written) == len(demo.checks)


@pytest.mark.slow
def test_rerun_resumes_without_rescoring(demo):
    from pythia_forensics.store import ResultsStore

    before = ResultsStore(demo.out).items()["written_at"].sort_values().to_numpy()
    again = run_demo(demo.out, config=reduced_config(), progress=False, jobs=1)
    after = ResultsStore(demo.out).items()["written_at"].sort_values().to_numpy()
    assert (before == after).all()  # nothing re-scored, nothing duplicated
    assert [c.passed for c in again.checks] == [c.passed for c in demo.checks]


def test_loss_jump_measures_a_step_change(tmp_path):
    steps = list(range(1, 101))
    (tmp_path / "train_log.csv").write_text(
        "step,loss\n" + "".join(f"{s},{2.0 if s <= 50 else 1.5}\n" for s in steps))
    assert _loss_jump(tmp_path, 50, half_window=10) == pytest.approx(0.5)
    assert _loss_jump(tmp_path, 30, half_window=10) == pytest.approx(0.0)
