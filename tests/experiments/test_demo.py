"""The demo pipeline end to end on a reduced mini suite, and its claim checks."""
from __future__ import annotations

import pandas as pd
import pytest

from pythia_forensics.experiments.mini import reduced_config
from pythia_forensics.analysis.dynamics import load_config
from pythia_forensics.experiments.demo import (CHECKS_TABLE, IN_FRAME_TABLE, SUPPORT_TABLE, measure_claims, run_demo,
                                       sweep_claims)


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
def test_demo_claims_use_the_measured_in_frame_support(demo):
    """The claims name the low/high rule by the in-frame support the run measured, and each
    rule's support row is in the table next to what happened to it."""
    in_frame = pd.read_csv(demo.out / IN_FRAME_TABLE)
    assert set(in_frame.rule) == {"pronoun_gender", "reflexive_gender", "indefinite_article",
                                  "subject_verb_agreement"}
    low = in_frame.loc[in_frame.ratio.idxmin(), "rule"]
    high = in_frame.loc[in_frame.ratio.idxmax(), "rule"]
    assert any(f"low-support rule {low} " in c.claim for c in demo.checks)
    assert any(f"high-support rule {high} " in c.claim for c in demo.checks)
    for r in in_frame.itertuples():
        fate = [c for c in demo.checks if c.claim.startswith(f"{r.rule}: fate follows")]
        assert len(fate) <= 1 and all(f"in-frame {r.rule_wins}:{r.prior_wins} " in c.observed for c in fate)
    assert len(pd.read_csv(demo.out / CHECKS_TABLE)) == len(demo.checks)


# --- every claim can fail: synthetic metrics on which each one must ------------------------------
CFG = load_config()
NAN = float("nan")
KNOBS = {"low": 0.1, "high": 0.9, "mid": 0.7}


def metrics_row(model, rule, *, emerged=True, final=1.0, agree=1.0, collapse=None, cm_cross=None, lag=None):
    return dict(model=model, rule=rule, split=CFG.primary_split, emergence_step=200 if emerged else float("nan"),
                peak_acc=1.0 if emerged else 0.3, peak_step=300, final_acc=final, agree_final=agree,
                collapse_step=collapse if collapse is not None else float("nan"),
                cm_cross_step=cm_cross if cm_cross is not None else float("nan"),
                lag_checkpoints=lag if lag is not None else float("nan"), verdict_label="X")


def in_frame_rows(**overrides):
    base = {"low": (5, 45, 3, 900), "high": (90, 10, 2, 900), "mid": (70, 30, 4, 0)}
    base.update(overrides)
    return pd.DataFrame([dict(rule=r, frame="conflict", rule_wins=w, prior_wins=p, ratio=(w + 1) / (p + 1),
                              note="", distance=d, rule_wins_at_distance=far + w,
                              rule_wins_at_distance_outside_frame=far)
                         for r, (w, p, d, far) in base.items()])


def healthy():
    """The demo as it should come out: low collapses, high survives, mid never emerges."""
    return [metrics_row("m1", "low", final=0.0, collapse=400, cm_cross=420, lag=1),
            metrics_row("m1", "high", final=1.0), metrics_row("m1", "mid", emerged=False, final=0.3)]


def verdicts(rows, in_frame=None):
    checks = measure_claims(pd.DataFrame(rows), CFG, KNOBS, in_frame_rows() if in_frame is None else in_frame)
    return {c.claim.split(" (")[0] if "-support rule" in c.claim else c.claim: c.passed for c in checks}


def test_every_claim_holds_on_the_healthy_trajectory():
    got = verdicts(healthy())
    assert got and all(got.values()), got
    assert len(got) == 3 + 2 + 1  # collapse, CM lag, survive; fate of low and high; emergence order


@pytest.mark.parametrize("breakage, failing", [
    # the low rule never collapses -> its collapse claim, its CM-lag claim and its fate claim fail
    (lambda r: r[0].update(final_acc=0.9, collapse_step=NAN, lag_checkpoints=NAN),
     ["low-support rule low", "CM zero", "low: fate"]),
    (lambda r: r[0].update(agree_final=0.5), ["low-support rule low"]),  # agree control broke
    (lambda r: r[0].update(lag_checkpoints=3), ["CM zero"]),  # CM crossed far from the collapse
    (lambda r: r[1].update(final_acc=0.1), ["high-support rule high", "high: fate"]),  # high rule collapsed
    # mid, never shown at its distance outside its frame, emerged first
    (lambda r: r[2].update(emergence_step=150, final_acc=1.0), ["m1: rules the corpus shows"]),
    (lambda r: r[0].update(emergence_step=NAN), ["low-support rule low", "m1: rules the corpus shows"]),
])
def test_each_claim_fails_where_it_should(breakage, failing):
    rows = healthy()
    breakage(rows)
    got = verdicts(rows)
    failed = sorted(k for k, v in got.items() if not v)
    assert len(failed) == len(failing) and all(any(f in k for k in failed) for f in failing), failed


def test_fate_claim_fails_when_the_support_is_on_the_wrong_side_of_parity():
    # the counts say the collapsing rule wins in its frame: the fate claim must fail, and the
    # low/high rules are picked by measured support, not by the knob
    got = verdicts(healthy(), in_frame_rows(low=(600, 400, 3, 900)))
    assert not got["low: fate follows in-frame support (above parity -> does not collapse)"]
    # counts within sampling noise of parity make no fate claim at all
    got = verdicts(healthy(), in_frame_rows(low=(50, 45, 3, 900)))
    assert not any(k.startswith("low: fate") for k in got)
    got = verdicts(healthy(), in_frame_rows(low=(95, 5, 3, 900)))
    assert any(k.startswith("m1: high-support rule low") for k in got)


def sweep_table(pairs):
    return pd.DataFrame([dict(model=f"a{i}", support=k, in_frame_ratio=x, in_frame_rule_wins=1,
                              in_frame_prior_wins=1, final_acc=acc, final_cm=cm, verdict="D" if acc < 0.8 else "R")
                         for i, (k, x, acc, cm) in enumerate(pairs)])


def test_sweep_claims_hold_and_report_the_flip():
    checks, table = sweep_claims(sweep_table([(0.1, 0.12, 0.0, -4), (0.5, 0.9, 0.0, -1), (0.7, 2.2, 0.9, 1),
                                              (0.9, 9.0, 1.0, 4)]), rule="r", survive_min=CFG.recovered_final_min)
    assert all(c.passed for c in checks), checks
    assert "between in-frame support 0.90 and 2.20" in checks[-1].observed
    assert list(table.in_frame_ratio) == sorted(table.in_frame_ratio)


@pytest.mark.parametrize("pairs, failing", [
    # survival not monotone in support
    ([(0.1, 0.12, 1.0, 2), (0.5, 0.9, 0.0, -1), (0.7, 2.2, 1.0, 3), (0.9, 9.0, 1.0, 4)], {0, 2}),
    # margin falls with support
    ([(0.1, 0.12, 0.0, 4), (0.5, 0.9, 0.0, 3), (0.7, 2.2, 0.9, 2), (0.9, 9.0, 1.0, 1)], {1}),
    # an arm below parity in the frame survives
    ([(0.1, 0.12, 0.0, -4), (0.5, 0.9, 1.0, 1), (0.7, 2.2, 1.0, 2), (0.9, 9.0, 1.0, 4)], {2}),
])
def test_each_sweep_claim_fails_where_it_should(pairs, failing):
    checks, _ = sweep_claims(sweep_table(pairs), rule="r", survive_min=CFG.recovered_final_min)
    assert {i for i, c in enumerate(checks) if not c.passed} == failing, checks


@pytest.mark.slow
def test_rerun_resumes_without_rescoring(demo):
    from pythia_forensics.sweep.store import ResultsStore

    before = ResultsStore(demo.out).items()["written_at"].sort_values().to_numpy()
    again = run_demo(demo.out, config=reduced_config(), progress=False, jobs=1)
    after = ResultsStore(demo.out).items()["written_at"].sort_values().to_numpy()
    assert (before == after).all()  # nothing re-scored, nothing duplicated
    assert [c.passed for c in again.checks] == [c.passed for c in demo.checks]
