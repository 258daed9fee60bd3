"""Corpus edits (issue #8): token counts kept exactly, support realised and counted,
determinism, refusal. No training here (the experiment runner trains; `make experiments`)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pythia_forensics.corpus.indexed import IndexedDataset
from pythia_forensics.experiments.interventions import (InterventionError, apply_edits, build_edited_corpus,
                                            document_lengths, event_counts, flip, inject, verify_support)
from pythia_forensics.experiments.mini.config import reduced_config
from pythia_forensics.experiments.mini.corpus import TOKENS_FILE, estimate_sentences, load_lexicon, sample_records
from pythia_forensics.experiments.mini.tokenizer import build_tokenizer

RULE = "reflexive_gender"


@pytest.fixture(scope="module")
def setup():
    cfg = reduced_config()
    train = replace(cfg.train, steps=60)
    return cfg, train, build_tokenizer(vocab_size=cfg.tokenizer_vocab), load_lexicon()


@pytest.fixture(scope="module")
def base_corpus(setup, tmp_path_factory):
    """The unedited corpus (seed 7) and its record; shared, read only."""
    cfg, train, tok, lex = setup
    path = tmp_path_factory.mktemp("base")
    return path, build_edited_corpus(path, [], corpus_config=cfg.corpus, train=train, tokenizer=tok, seed=7,
                                     tolerance=1, lexicon=lex)


@pytest.fixture(scope="module")
def flipped_corpus(setup, tmp_path_factory):
    """The same stream with half of RULE's rule wins flipped, and its record; shared, read only."""
    cfg, train, tok, lex = setup
    path = tmp_path_factory.mktemp("flip")
    return path, build_edited_corpus(path, [flip(RULE, 0.5)], corpus_config=cfg.corpus, train=train, tokenizer=tok,
                                     seed=7, tolerance=1, lexicon=lex)


def _tokens(path):
    ds = IndexedDataset(path / TOKENS_FILE)
    return [np.asarray(ds[i]) for i in range(len(ds))]


def test_flip_keeps_every_position_and_realises_support(base_corpus, flipped_corpus):
    (base_dir, base), (flip_dir, rec) = base_corpus, flipped_corpus
    a, b = _tokens(base_dir), _tokens(flip_dir)
    assert [len(x) for x in a] == [len(x) for x in b]  # same documents, same lengths: same positions
    changed = [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)]
    e = rec["edits"][0]
    assert len(changed) == e["n_flipped"] > 0
    assert all(int((a[i] != b[i]).sum()) == 1 for i in changed)  # exactly one token (the form) swapped
    assert abs(e["realised_p"] - 0.5) <= 1 / e["pool"]
    # The independent counter sees the flip: rule wins move to prior wins, other rules untouched.
    cb, cf = base["support"], rec["support"]
    assert cf[RULE]["counted"][0] == pytest.approx(cb[RULE]["counted"][0] - e["n_flipped"], abs=1)
    assert cf[RULE]["counted"][1] == pytest.approx(cb[RULE]["counted"][1] + e["n_flipped"], abs=1)
    for r in cb:
        if r != RULE:
            assert cf[r]["counted"] == cb[r]["counted"]


def test_flip_is_deterministic_and_full_flip_leaves_no_rule_wins(setup):
    cfg, train, tok, lex = setup
    recs = sample_records(cfg.corpus, n_sentences=estimate_sentences(train), lexicon=lex)
    n = document_lengths(recs, tokenizer=tok, lexicon=lex)
    kw = dict(lengths=n, tokens_per_step=train.tokens_per_step, train_tokens=train.steps * train.tokens_per_step,
              seed=3)
    one, r1 = apply_edits(recs, [flip(RULE, 0.75)], **kw)
    two, r2 = apply_edits(recs, [flip(RULE, 0.75)], **kw)
    assert one == two and r1 == r2
    full, _ = apply_edits(recs, [flip(RULE, 1.0)], **kw)
    assert event_counts(full, n, train_tokens=kw["train_tokens"])[RULE][0] == 0


def test_inject_keeps_tokens_per_step_and_adds_events_after_start(setup, base_corpus, tmp_path):
    cfg, train, tok, lex = setup
    start = 30
    rec = build_edited_corpus(tmp_path / "inj", [inject("pronoun_gender", 0.05, start)], corpus_config=cfg.corpus,
                              train=train, tokenizer=tok, seed=7, tolerance=1, lexicon=lex)
    a, b = _tokens(base_corpus[0]), _tokens(tmp_path / "inj")
    assert [len(x) for x in a] == [len(x) for x in b]
    offsets = np.cumsum([0] + [len(x) for x in a])[:-1]
    changed = [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)]
    e = rec["edits"][0]
    assert len(changed) == e["n_injected"] > 0
    assert all(offsets[i] >= start * train.tokens_per_step for i in changed)
    assert abs(e["realised_dose"] - 0.05) <= 1 / e["region_documents"]
    got = rec["support"]["pronoun_gender"]["counted"][0] - rec["baseline"]["pronoun_gender"][0]
    assert abs(got - e["n_injected"]) <= 1


def test_refuses_when_counted_support_differs(flipped_corpus):
    path, rec = flipped_corpus
    want = {r: list(v["counted"]) for r, v in rec["support"].items()}
    verify_support(path, want, tolerance=0)  # the counts it recorded are what it holds
    want[RULE][0] += 5  # ask for five more rule wins than the corpus holds
    with pytest.raises(InterventionError, match="differ from the requested"):
        verify_support(path, want, tolerance=1)


def test_bad_doses_are_refused():
    with pytest.raises(InterventionError):
        flip(RULE, 1.5)
    with pytest.raises(InterventionError):
        inject(RULE, -0.1, 10)


@pytest.mark.parametrize("args", [["experiment", "kill", "--doses", "0,2"],
                                  ["experiment", "kill", "--doses", "0,x"],
                                  ["experiment", "kill", "--doses", "0.5"]])
def test_cli_user_mistakes_are_one_line_exit_2(args, tmp_path, run_cli):
    code, _out, err = run_cli(args + ["--out", str(tmp_path)])
    err = err.strip()
    assert code == 2 and err.startswith("error: --doses: ") and "\n" not in err, err
    assert not (tmp_path / "suite").exists() or not any((tmp_path / "suite").iterdir())


def _synthetic_scores(final_target: float, final_other: float):
    import pandas as pd

    from pythia_forensics.experiments.mini.config import RULES

    steps = list(range(0, 820, 20))
    rows = []
    for r in RULES:
        for s in steps:
            acc = (final_target if r == RULE else final_other) if s >= 600 else (1.0 if s >= 200 else 0.0)
            rows.append({"step": s, "rule": r, "conflict_acc": acc, "agree_acc": 1.0,
                         "conflict_cm": 2.0 if acc > 0.5 else -1.0})
    return pd.DataFrame(rows)


def test_summary_off_target_and_figures(tmp_path):
    from pythia_forensics.experiments.interventions import ArmSpec, _off_target, _summarise, arm_metrics
    from pythia_forensics.analysis.intervention_figures import dose_response_figure, trajectories_figure

    specs = [ArmSpec("a0", "kill", 0.0, 1, ()), ArmSpec("a1", "kill", 1.0, 1, (flip(RULE, 1.0),))]
    scores = {"a0": _synthetic_scores(1.0, 1.0), "a1": _synthetic_scores(0.0, 0.5)}
    m = arm_metrics(scores["a1"], RULE)
    assert m["final_acc"] == 0.0 and m["final_cm"] == -1.0 and m["letter"] == "D"  # emerged, then lost
    assert arm_metrics(scores["a0"], RULE)["letter"] == "R"
    summary = _summarise(specs, scores, RULE)
    off = _off_target(summary, 0.15)
    assert len(off) == 6 and sum(not o["within"] for o in off) == 3  # the three other rules at 0.5 vs 1.0
    dose_response_figure(summary[summary["target"]], tmp_path / "dr", rule=RULE, xlabel="flip fraction p")
    traj = scores["a0"].assign(arm="a0", dose=0.0, seed=1)
    trajectories_figure(traj[traj["rule"] == RULE], tmp_path / "tr", rule=RULE)
    assert all((tmp_path / f).stat().st_size > 0 for f in ("dr.pdf", "dr.png", "tr.pdf", "tr.png"))
