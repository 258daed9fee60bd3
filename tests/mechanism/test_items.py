"""Probe items through the decomposition: tidy rows that sum to each item's own gap (#30)."""
from __future__ import annotations

import torch

from pythia_forensics.mechanism.items import DECOMPOSITION_COLUMNS, decompose_items
from pythia_forensics.scoring.probes import ProbeItem
from tests.tinymodels import tiny_neox, train_bpe_tokenizer


def test_rows_sum_per_item_to_the_gap_of_an_unpadded_forward():
    tok = train_bpe_tokenizer()
    model = tiny_neox(len(tok), seed=2)
    items = [ProbeItem("a", "pronoun_gender", "conflict", "heldout", "Mia cried because", " she", " he"),
             ProbeItem("b", "pronoun_gender", "agree", "heldout", "Tom laughed because he won. Sue cried because ", " she", " he")]
    frame = decompose_items(model, tok, items)
    assert tuple(frame.columns) == DECOMPOSITION_COLUMNS
    for it in items:
        rows = frame[frame.item_id == it.item_id]
        ids = tok(it.prefix.rstrip(), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        t, f = (tok(c, add_special_tokens=False)["input_ids"][0] for c in (it.target, it.foil))
        want = float(logits[t] - logits[f])
        assert abs(rows.contribution.sum() - want) < 1e-4
        assert abs(rows.gap.iloc[0] - want) < 1e-4
