"""Golden numbers: the scorer's per-item log-probs of a fixed tiny checkpoint are pinned.

The checkpoint and the golden values live in tests/data/golden/; the values were computed by
an independent plain fp32 loop (tests/pin_golden.py), never by the tool, under the
SCORING_VERSION stored with them. A change to scoring that moves any number fails here
unless SCORING_VERSION changes too; after a bump, re-pin with ``python tests/pin_golden.py``
(the failure message says so).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from numerics import assert_fp32_close
from pin_golden import CHECKPOINT, GOLDEN_FILE, ITEMS

from pythia_forensics.scoring import score as scoring
from pythia_forensics.scoring.options import DEFAULT_VOCAB_ROWS, VOCAB_ROWS
from pythia_forensics.scoring.probes import ProbeItem, ProbeSet, probe_set_sha256

REPIN = "python tests/pin_golden.py"


@pytest.fixture(scope="module")
def golden():
    data = json.loads(GOLDEN_FILE.read_text())
    if data["scoring_version"] != scoring.SCORING_VERSION:
        pytest.fail(f"scoring.SCORING_VERSION is {scoring.SCORING_VERSION!r} but the golden log-probs were pinned "
                    f"under {data['scoring_version']!r}: check the numbers are meant to change, then re-pin with "
                    f"`{REPIN}` and commit tests/data/golden/golden.json")
    return data


@pytest.fixture(scope="module")
def loaded():
    return scoring.load_model(CHECKPOINT, dtype="float32", device="cpu")


def _probes() -> ProbeSet:
    items = [ProbeItem(i, "golden", "agree", "train", p, t, f) for i, p, t, f in ITEMS]
    return ProbeSet("golden", tuple(items), probe_set_sha256(items), "tests/pin_golden.py")


def test_golden_file_matches_the_pinned_battery(golden):
    assert [tuple(d.values()) for d in golden["items"]] == [tuple(it) for it in ITEMS]
    assert set(golden["logp"]) == set(VOCAB_ROWS)
    # the two normalisations really differ on this checkpoint (336 rows, 320-token tokenizer)
    t, a = (np.array(golden["logp"][k]) for k in ("tokenizer", "all"))
    assert (a < t).all()


@pytest.mark.parametrize("vocab_rows", VOCAB_ROWS)
@pytest.mark.parametrize("batch_size", [1, 5, "auto"])
def test_scorer_reproduces_the_golden_logprobs(golden, loaded, vocab_rows, batch_size):
    model, tok = loaded
    frame = scoring.score(model, _probes(), tokenizer=tok, vocab_rows=vocab_rows, batch_size=batch_size)
    want = np.array(golden["logp"][vocab_rows])
    got = frame[["logp_target", "logp_foil"]].to_numpy()
    # the exactness contract against an independent reference ...
    assert np.abs(got - want).max() <= 1e-4
    # ... and, on this tiny model, agreement to fp32 resolution at the value's magnitude: any
    # change to tokenization, normalisation or the plan's indexing moves numbers far more
    assert_fp32_close(got, want, ulps=64, what=f"log-probs (vocab_rows={vocab_rows}, batch_size={batch_size})")


def test_default_options_are_the_pinned_ones(golden, loaded):
    """A new default (e.g. vocab_rows) changes the numbers users get: it needs a version bump."""
    assert DEFAULT_VOCAB_ROWS == golden["default_vocab_rows"], (
        f"the default vocab_rows changed to {DEFAULT_VOCAB_ROWS!r} under the same SCORING_VERSION "
        f"{scoring.SCORING_VERSION!r}: bump SCORING_VERSION and re-pin with `{REPIN}`")
    model, tok = loaded
    frame = scoring.score(model, _probes(), tokenizer=tok)
    assert_fp32_close(frame[["logp_target", "logp_foil"]].to_numpy(),
                      np.array(golden["logp"][golden["default_vocab_rows"]]), ulps=64, what="default log-probs")
    assert frame.attrs["scoring_version"] == golden["scoring_version"]
