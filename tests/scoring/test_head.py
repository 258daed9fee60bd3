"""The blockwise LM head against a one-shot float64 log-sum-exp written here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from numerics import fp32_close
from pythia_forensics.scoring.head import HeadBlocks, blocks_for, log_normaliser, read_logits


def _reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> np.ndarray:
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    return torch.logsumexp(logits, dim=-1).numpy()


@pytest.mark.parametrize("blocks", [HeadBlocks(rows=3, vocab=5),    # partial last blocks
                                    HeadBlocks(rows=64, vocab=None),  # one block
                                    HeadBlocks(rows=1, vocab=1)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("scale", [1.0, 60.0])  # 60: logits of several hundred, exp overflows unshifted
def test_log_normaliser_equals_a_one_shot_float64_log_sum_exp(blocks, with_bias, scale):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(11, 8, generator=g) * scale
    weight = torch.randn(23, 8, generator=g)
    bias = torch.randn(23, generator=g) if with_bias else None
    got = log_normaliser(hidden, weight, bias, blocks=blocks).numpy()
    want = _reference(hidden, weight, bias)
    assert np.isfinite(got).all()
    assert fp32_close(got, want, scale=np.abs(hidden.numpy()).sum(-1) * 4).all()


def test_a_non_finite_logit_is_never_clipped_away():
    """NaN or +inf in a logit makes its row's normaliser non-finite, as in the one-shot
    reference (the scorer then refuses the item instead of scoring garbage)."""
    hidden = torch.rand(5, 4) + 0.5  # positive: a +inf weight gives +inf logits
    weight = torch.randn(9, 4)
    blocks = HeadBlocks(rows=2, vocab=4)
    for bad in (float("nan"), float("inf")):
        w = weight.clone()
        w[6, 2] = bad
        got = log_normaliser(hidden, w, None, blocks=blocks).numpy()
        assert not np.isfinite(_reference(hidden, w, None)).any() and not np.isfinite(got).any()


def test_read_logits_are_the_rows_dot_their_tokens():
    g = torch.Generator().manual_seed(5)
    hidden, weight, bias = torch.randn(6, 4, generator=g), torch.randn(10, 4, generator=g), torch.randn(10, generator=g)
    rows, tokens = torch.tensor([0, 0, 5, 2]), torch.tensor([9, 1, 0, 9])
    want = [float(hidden[r].double() @ weight[t].double() + bias[t]) for r, t in zip(rows.tolist(), tokens.tolist())]
    assert fp32_close(read_logits(hidden, weight, bias, rows, tokens).numpy(), np.array(want)).all()


def test_every_device_type_gets_a_blocking():
    assert blocks_for("cpu").vocab and blocks_for("mps") == blocks_for("cpu")
    assert blocks_for("cuda").vocab is None
