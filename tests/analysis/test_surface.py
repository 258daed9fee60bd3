"""LM-n-gram agreement against a loop written here over hand-made item rows."""
import numpy as np
import pandas as pd

from pythia_forensics.analysis.surface import agreement_onset, surface_agreement


def tables(seed=0):
    rng = np.random.default_rng(seed)
    lm, ng = [], []
    for step in (0, 10, 20, 30):
        for i in range(12):
            cond = "conflict" if i % 3 else "agree"
            lm.append(dict(model="m", rule="r", condition=cond, split="heldout", item_id=f"i{i}", step=step,
                           correct=bool(rng.random() < 0.5)))
    for step in (10, 25):
        for order in (2, 5):
            for i in range(12):
                ng.append(dict(rule="r", condition="conflict" if i % 3 else "agree", split="heldout", item_id=f"i{i}",
                               step=step, order=order, correct=bool(rng.random() < 0.5)))
    return pd.DataFrame(lm), pd.DataFrame(ng)


def test_agreement_equals_a_plain_loop():
    lm, ng = tables()
    got = surface_agreement(lm, ng).set_index(["step", "order"])
    assert sorted(set(got.index.get_level_values(0))) == [10, 20, 30]  # step 0 precedes every budget
    for step in (10, 20, 30):
        budget = max(b for b in (10, 25) if b <= step)
        for order in (2, 5):
            pairs = []
            for r in lm[(lm.step == step) & (lm.condition == "conflict")].itertuples():
                n = ng[(ng.step == budget) & (ng.order == order) & (ng.item_id == r.item_id)].iloc[0]
                pairs.append((r.correct, n.correct))
            row = got.loc[(step, order)]
            assert row.ngram_step == budget and row.n_items == len(pairs) == 8
            assert row.agreement == sum(a == b for a, b in pairs) / len(pairs)
            assert row.lm_accuracy == sum(a for a, _ in pairs) / len(pairs)
            assert row.ngram_accuracy == sum(b for _, b in pairs) / len(pairs)


def test_onset_is_the_first_step_of_the_final_agreeing_run():
    t = pd.DataFrame(dict(model="m", rule="r", split="heldout", order=2, step=[1, 2, 3, 4, 5],
                          agreement=[0.9, 0.2, 0.8, 0.7, 0.9]))
    assert agreement_onset(t, threshold=0.75).onset_step.iloc[0] == 5.0
    assert agreement_onset(t, threshold=0.6).onset_step.iloc[0] == 3.0
    assert np.isnan(agreement_onset(t.assign(agreement=0.1), threshold=0.6).onset_step.iloc[0])
