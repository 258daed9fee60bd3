"""The demo pipeline end to end on a reduced mini suite, and its claim checks."""
from __future__ import annotations

import re

import numpy as np
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
    for r in in_frame[in_frame["corpus"] == in_frame["corpus"].iloc[0]].itertuples():
        fate = [c for c in demo.checks if c.claim.startswith(f"{r.rule}: fate follows")]
        # every rule with a conflict frame gets its support claim, with its counts
        assert len(fate) == 1 and f"in-frame {r.rule_wins}:{r.prior_wins} " in fate[0].observed
    assert len(pd.read_csv(demo.out / CHECKS_TABLE)) == len(demo.checks)


# --- every claim can fail, or be not applicable: synthetic metrics --------------------------------
CFG = load_config()
NAN = float("nan")
KNOBS = {"low": 0.1, "high": 0.9, "mid": 0.7}
NA = "not applicable"


def metrics_row(model, rule, *, emerged=True, final=1.0, agree=1.0, collapse=None, cm_cross=None, lag=None,
                void=False, cm_valid=True):
    return dict(model=model, rule=rule, split=CFG.primary_split, emergence_step=200 if emerged else float("nan"),
                peak_acc=1.0 if emerged else 0.3, peak_step=300, final_acc=final, agree_final=agree,
                collapse_step=collapse if collapse is not None else float("nan"),
                cm_cross_step=cm_cross if cm_cross is not None else float("nan"), cm_valid=cm_valid,
                lag_checkpoints=lag if lag is not None else float("nan"), verdict_label="X", void=void)


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


def claims(rows, in_frame=None):
    return measure_claims(pd.DataFrame(rows), CFG, KNOBS, in_frame_rows() if in_frame is None else in_frame)


def results(rows, in_frame=None):
    """claim (up to its first parenthesis) -> yes | no | not applicable."""
    return {c.claim.split(" (")[0]: c.result for c in claims(rows, in_frame)}


def test_every_claim_holds_on_the_healthy_trajectory():
    got = results(healthy())
    # collapse, CM lag, survive; fate of low, high and mid; emergence order
    assert len(got) == 3 + 3 + 1, got
    assert got.pop("mid: fate follows in-frame support") == NA  # it never emerged: nothing to follow
    assert set(got.values()) == {"yes"}, got
    assert all(c.precondition for c in claims(healthy()))  # every claim says what it needs


@pytest.mark.parametrize("breakage, failing, not_applicable", [
    # the low rule never collapses: its collapse claim and its fate claim fail; with no collapse
    # onset there is nothing for the CM crossing to be near
    (lambda r: r[0].update(final_acc=0.9, collapse_step=NAN, lag_checkpoints=NAN),
     ["m1: low-support rule low", "low: fate"], ["m1: low CM zero"]),
    (lambda r: r[0].update(agree_final=0.5), ["m1: low-support rule low"], []),  # agree control broke
    (lambda r: r[0].update(lag_checkpoints=3), ["m1: low CM zero"], []),  # CM crossed far from the collapse
    (lambda r: r[0].update(cm_cross_step=NAN, lag_checkpoints=NAN), ["m1: low CM zero"], []),  # CM never crossed
    # the high rule collapsed
    (lambda r: r[1].update(final_acc=0.1, collapse_step=500), ["m1: high-support rule high", "high: fate"], []),
    # mid, never shown at its distance outside its frame, emerged first (and so is now tested: kept)
    (lambda r: r[2].update(emergence_step=150, final_acc=1.0), ["m1: rules the corpus shows"], []),
    # low never emerged: its collapse claim fails, its CM and fate claims have nothing to test
    (lambda r: r[0].update(emergence_step=NAN), ["m1: low-support rule low", "m1: rules the corpus shows"],
     ["m1: low CM zero", "low: fate"]),
])
def test_each_claim_fails_where_it_should(breakage, failing, not_applicable):
    rows = healthy()
    breakage(rows)
    got = results(rows)
    assert sorted(k for k, v in got.items() if v == "no") == sorted(k for k in got if any(k.startswith(f) for f in failing))
    assert len([k for k, v in got.items() if v == "no"]) == len(failing), got
    want_na = {k for k in got if any(k.startswith(f) for f in not_applicable)} | {"mid: fate follows in-frame support"}
    if rows[2]["emergence_step"] == rows[2]["emergence_step"]:  # mid emerged: its fate claim is tested
        want_na.discard("mid: fate follows in-frame support")
    assert {k for k, v in got.items() if v == NA} == want_na, got


@pytest.mark.parametrize("breakage, now_na", [
    # a void verdict (control invalid): nothing about that trajectory can pass
    (lambda r: r[0].update(void=True), ["m1: low-support rule low", "m1: low CM zero", "low: fate"]),
    (lambda r: r[1].update(emergence_step=NAN, final_acc=0.3), ["m1: high-support rule high", "high: fate"]),
    (lambda r: r[0].update(cm_valid=False), ["m1: low CM zero"]),  # the margin instrument is invalid
    (lambda r: r.pop(2), ["m1: rules the corpus shows"]),  # no rule shown only inside its frame
])
def test_each_claim_is_not_applicable_where_its_precondition_fails(breakage, now_na):
    rows = healthy()
    breakage(rows)
    checks = claims(rows)
    got = {c.claim.split(" (")[0]: c for c in checks}
    for name in now_na:
        hit = [c for k, c in got.items() if k.startswith(name)]
        assert hit and all(c.result == NA and not c.passed for c in hit), (name, got)
    assert all(c.result != "yes" for c in checks if not c.applicable)


def test_not_applicable_can_never_pass():
    from pythia_forensics.experiments.demo import Check

    with pytest.raises(ValueError, match="cannot pass"):
        Check("x", True, "y", precondition="p", applicable=False)


def test_fate_claim_fails_when_the_support_is_on_the_wrong_side_of_parity():
    # the counts say the collapsing rule wins in its frame: the fate claim is a contradiction, and
    # the low/high rules are picked by measured support, not by the knob
    got = results(healthy(), in_frame_rows(low=(600, 400, 3, 900)))
    assert got["low: fate follows in-frame support"] == "no"
    got = results(healthy(), in_frame_rows(low=(95, 5, 3, 900)))
    assert any(k.startswith("m1: high-support rule low") for k in got)


def test_support_within_noise_of_parity_never_gives_yes_but_a_contradiction_shows():
    """The demo's indefinite_article: in-frame 197:247 (ratio 0.80, below parity on the point
    estimate; the 99% CI of the rule's share reaches 1/2), yet kept in every model."""
    near = in_frame_rows(low=(197, 247, 1, 900))
    # collapsed as "below parity" says: a match within noise of parity is no evidence
    check = next(c for c in claims(healthy(), near) if c.claim.startswith("low: fate"))
    assert check.result == NA and "not decisive" in check.observed
    # kept in every model: a contradiction, reported with its numbers
    rows = healthy()
    rows[0].update(final_acc=0.95, collapse_step=NAN, lag_checkpoints=NAN)
    check = next(c for c in claims(rows, near) if c.claim.startswith("low: fate"))
    assert check.result == "no" and check.observed.startswith("contradiction")
    assert "197:247" in check.observed and "ratio 0.80" in check.observed and "m1 kept" in check.observed


def test_a_rule_that_emerged_in_one_model_only_is_judged_there_and_never_passes_on_the_others():
    """The demo's subject_verb_agreement: above parity, never emerged in two models, emerged
    then fell (collapse onset) in the third."""
    rows = [metrics_row(m, "mid", emerged=False, final=0.4) for m in ("m1", "m3")]
    check = next(c for c in claims(rows) if c.claim.startswith("mid: fate"))
    assert check.result == NA and "0 of 2 models" in check.precondition
    rows.append(metrics_row("m2", "mid", final=0.66, collapse=780))
    check = next(c for c in claims(rows) if c.claim.startswith("mid: fate"))
    assert check.result == "no" and "1 of 1 model(s)" in check.observed and "m2 collapsed" in check.observed
    rows[-1].update(collapse_step=NAN, final_acc=0.9)  # kept where it emerged: now a yes (70:30 is decisive)
    assert next(c for c in claims(rows) if c.claim.startswith("mid: fate")).result == "yes"


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
    assert [c.result for c in again.checks] == [c.result for c in demo.checks]


def test_sweep_claims_not_applicable_on_too_few_arms():
    checks, _ = sweep_claims(sweep_table([(0.1, 0.12, 0.0, -4), (0.9, 9.0, 1.0, 4)]), rule="r",
                             survive_min=CFG.recovered_final_min)
    assert [c.result for c in checks] == ["yes", NA, "yes"]  # 2 arms: no rank correlation


# --- on a demo store: every result re-derived here from the stored tables ------------------------
def _stored_fate(row) -> str:
    if pd.isna(row.emergence_step):
        return "never emerged"
    if pd.notna(row.collapse_step):
        return "collapsed"
    return "kept" if row.final_acc >= CFG.recovered_final_min - CFG.tolerance else "partial"


_FATE_TEXT = re.compile(r"(\S+) (never emerged|collapsed|kept|partial) \((\w+); emerged @ (\S+), onset @ (\S+), "
                        r"final (-?[\d.]+)\)")


def _step_text(value) -> str:
    return "-" if pd.isna(value) else str(int(value))


def expected_claims(out) -> dict[str, str]:
    """claim -> the result the stored dynamics.csv and support_in_frame.csv give it, computed
    here from the claims' stated definitions (not with the demo's code), and every model fate
    the claim's text quotes checked against dynamics.csv."""
    from scipy.stats import binomtest

    from pythia_forensics.experiments.demo import DEMO_AGREE_MIN, DEMO_COLLAPSE_FINAL_MAX, SUPPORT_PARITY_CONFIDENCE

    dyn = pd.read_csv(out / "dynamics.csv")
    dyn = dyn[dyn["split"] == CFG.primary_split].set_index(["model", "rule"])
    frame = pd.read_csv(out / IN_FRAME_TABLE, keep_default_na=False, na_values=[""])
    frame = frame[frame["corpus"] == frame["corpus"].iloc[0]].set_index("rule")
    checks = pd.read_csv(out / CHECKS_TABLE, keep_default_na=False)
    assert set(checks["result"]) <= {"yes", "no", NA} and (checks["precondition"] != "").all()
    assert (checks["config_sha256"] == dyn["config_sha256"].iloc[0]).all()
    want = {}
    for claim, observed in zip(checks["claim"], checks["observed"]):
        for model, fate, verdict, emerged, onset, final in _FATE_TEXT.findall(observed):
            row = dyn.loc[(model, claim.split(":")[0])] if ":" in claim and (model, claim.split(":")[0]) in dyn.index \
                else None
            if row is not None:  # a per-rule claim quoting each model's fate: the numbers are the stored ones
                assert (fate, verdict, emerged, onset) == (_stored_fate(row), row["verdict_label"],
                                                         _step_text(row["emergence_step"]),
                                                         _step_text(row["collapse_step"])), (claim, model)
                assert float(final) == pytest.approx(row["final_acc"], abs=0.005)
        if m := re.match(r"(\S+): low-support rule (\S+) ", claim):
            row = dyn.loc[(m[1], m[2])]
            assert m[2] == frame["ratio"].idxmin()
            ok = pd.notna(row["emergence_step"]) and row["final_acc"] <= DEMO_COLLAPSE_FINAL_MAX \
                and row["agree_final"] >= DEMO_AGREE_MIN
            want[claim] = NA if row["void"] else "yes" if ok else "no"
        elif m := re.match(r"(\S+): (\S+) CM zero crossing within (\d+) checkpoint", claim):
            row = dyn.loc[(m[1], m[2])]
            assert f"CM=0 @ {_step_text(row['cm_cross_step'])}, onset @ {_step_text(row['collapse_step'])}" in observed
            applicable = not row["void"] and pd.notna(row["emergence_step"]) and pd.notna(row["collapse_step"]) \
                and row["cm_valid"]
            ok = pd.notna(row["lag_checkpoints"]) and abs(row["lag_checkpoints"]) <= int(m[3])
            want[claim] = NA if not applicable else "yes" if ok else "no"
        elif m := re.match(r"(\S+): high-support rule (\S+) ", claim):
            row = dyn.loc[(m[1], m[2])]
            assert m[2] == frame["ratio"].idxmax()
            applicable = not row["void"] and pd.notna(row["emergence_step"])
            want[claim] = NA if not applicable else "yes" if _stored_fate(row) == "kept" else "no"
        elif m := re.match(r"(\S+): fate follows in-frame support", claim):
            fr = frame.loc[m[1]]
            rows = dyn.xs(m[1], level="rule")
            tested = rows[~rows["void"].astype(bool) & rows["emergence_step"].notna()]
            goal = "collapsed" if fr["ratio"] < 1 else "kept"
            against = [r for r in tested.itertuples() if _stored_fate(r) != goal]
            ci = binomtest(int(fr["rule_wins"]), int(fr["rule_wins"] + fr["prior_wins"])).proportion_ci(
                confidence_level=SUPPORT_PARITY_CONFIDENCE)
            decisive = ci.high < 0.5 if fr["ratio"] < 1 else ci.low > 0.5
            want[claim] = NA if tested.empty else "no" if against else "yes" if decisive else NA
            assert f"in-frame {int(fr['rule_wins'])}:{int(fr['prior_wins'])} rule:prior wins" in observed
            assert not against or observed.startswith("contradiction")
        elif m := re.match(r"(\S+): rules the corpus shows", claim):
            rows = dyn.xs(m[1], level="model")
            rows = rows[~rows["void"].astype(bool) & rows.index.isin(frame.index)]
            step = rows["emergence_step"].fillna(float("inf"))
            outside = frame.loc[rows.index, "rule_wins_at_distance_outside_frame"] > 0
            applicable = outside.any() and (~outside).any()
            want[claim] = NA if not applicable else "yes" if step[outside].max() < step[~outside].min() else "no"
        else:
            raise AssertionError(f"a claim this test does not know: {claim}")
    # every rule with a conflict frame has its support claim
    assert {c.split(":")[0] for c in want if ": fate follows" in c} == set(frame.index)
    return want


def assert_claims_backed(out):
    checks = pd.read_csv(out / CHECKS_TABLE, keep_default_na=False)
    assert dict(zip(checks["claim"], checks["result"])) == expected_claims(out)
    report = (out / "report.md").read_text()
    assert "## Claims" in report
    for claim, result in zip(checks["claim"], checks["result"]):  # report.md carries the same table
        assert any(claim in line and f"| {result} |" in line for line in report.splitlines()), claim


@pytest.mark.slow
def test_demo_claims_are_backed_by_the_stored_numbers(demo):
    assert_claims_backed(demo.out)


@pytest.mark.slow
def test_full_demo_claims_are_backed_by_the_stored_numbers():
    """The same on `make demo`'s results/demo, when this checkout has one (its model list and
    numbers are read from its tables, not assumed)."""
    from paths import REPO

    out = REPO / "results" / "demo"
    if not (out / CHECKS_TABLE).is_file() or not (out / "dynamics.csv").is_file():
        pytest.skip("no results/demo in this checkout (run `make demo`)")
    if "precondition" not in pd.read_csv(out / CHECKS_TABLE, nrows=0).columns:
        pytest.skip("results/demo was written by an older version (rerun `make demo`)")
    assert_claims_backed(out)


# --- one CM crossing: dynamics.csv, the lag, the b_cm figure and report.md agree ------------------
def _report_metrics(report: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """The report's trajectory-metrics table: (model, rule, split) -> column -> cell."""
    lines = report.split("## Trajectory metrics", 1)[1].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows[(cells["model"], cells["rule"], cells["split"])] = cells
    return rows


def assert_one_cm_crossing(out):
    """For every (model, rule): the CM-zero step of dynamics.csv is the last checkpoint with
    smoothed CM >= 0 at or after emergence (recomputed here from trajectories.parquet), the lag
    is its distance in checkpoints to the collapse onset, the b_cm panel's diamond sits at that
    checkpoint (read from the Axes) with that lag in its title, and report.md prints the same."""
    import re as _re

    from pythia_forensics.analysis import figures as F
    from pythia_forensics.analysis.dynamics import analyze

    cfg = CFG
    dyn = pd.read_csv(out / "dynamics.csv")
    traj = pd.read_parquet(out / "trajectories.parquet")
    report = _report_metrics((out / "report.md").read_text())
    analysis = analyze(out)
    metrics = analysis.metrics[analysis.metrics["split"] == cfg.primary_split]
    shown = analysis.trajectories[analysis.trajectories["split"] == cfg.primary_split]
    seen = 0
    for rule, rows in dyn[dyn["split"] == cfg.primary_split].groupby("rule"):
        order = sorted(rows["model"])
        fig = F.cm_figure(shown, metrics, probeset=rows["probeset"].iloc[0], rule=rule, order=order)
        panels = {ax.get_title().split(";")[0].split(" (")[0]: ax for ax in fig.axes if ax.get_visible()}
        for row in rows.itertuples():
            t = traj[(traj["model"] == row.model) & (traj["rule"] == rule) & (traj["split"] == row.split)
                     & traj["used"]].sort_values("step")
            steps, cms = t["step"].to_numpy(), t["cm_smooth"].to_numpy()
            want = None
            if pd.notna(row.emergence_step) and row.cm_valid:
                start = int(np.flatnonzero(steps == row.emergence_step)[0])
                nonneg = np.flatnonzero(cms >= cfg.cm_zero - cfg.tolerance)
                if nonneg.size and start <= nonneg[-1] < len(cms) - 1:
                    want = int(steps[nonneg[-1]])
            got = None if pd.isna(row.cm_cross_step) else int(row.cm_cross_step)
            assert got == want, (row.model, rule)
            lag = None
            if got is not None and pd.notna(row.collapse_step):
                lag = int(np.flatnonzero(steps == got)[0] - np.flatnonzero(steps == row.collapse_step)[0])
            assert (None if pd.isna(row.lag_checkpoints) else int(row.lag_checkpoints)) == lag, (row.model, rule)
            ax = panels[row.model]
            marks = [ln for ln in ax.get_lines() if ln.get_label() == F.CROSSING]
            if got is None:
                assert not marks and "lag" not in ax.get_title(), (row.model, rule)
            else:
                assert len(marks) == 1 and list(marks[0].get_xdata()) == [got], (row.model, rule)
                assert marks[0].get_ydata()[0] == pytest.approx(cms[steps == got][0]) and cms[steps == got][0] >= 0
            title_lag = _re.search(r"lag ([+-]\d+) ckpt", ax.get_title())
            assert (None if title_lag is None else int(title_lag[1])) == lag, (row.model, rule, ax.get_title())
            cells = report[(row.model, rule, row.split)]
            assert cells["CM zero"] == ("-" if got is None else str(got)), (row.model, rule)
            assert cells["lag steps (ckpt)"] == ("-" if lag is None else f"{int(row.lag_steps)} ({lag:+d})")
            seen += 1
    assert seen == dyn[dyn["split"] == cfg.primary_split].shape[0] > 0


@pytest.mark.slow
def test_demo_cm_crossing_agrees_everywhere(demo):
    assert_one_cm_crossing(demo.out)


@pytest.mark.slow
def test_full_demo_cm_crossing_agrees_everywhere():
    from paths import REPO

    out = REPO / "results" / "demo"
    if not all((out / n).is_file() for n in ("dynamics.csv", "trajectories.parquet", "report.md")):
        pytest.skip("no results/demo in this checkout (run `make demo`)")
    if "precondition" not in pd.read_csv(out / CHECKS_TABLE, nrows=0).columns:
        pytest.skip("results/demo was written by an older version (rerun `make demo`)")
    assert_one_cm_crossing(out)
