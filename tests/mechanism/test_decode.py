"""Cue decodability against a plain-Python loop, and residual capture against HF (#30)."""
from __future__ import annotations

import pytest
import torch

from pythia_forensics.errors import MechanismError
from pythia_forensics.mechanism.decode import decodability, residuals
from tests.mechanism.test_decompose import V, _batch
from tests.tinymodels import tiny_neox


def _loop(vectors, labels, frames):
    right = 0
    for i, (v, y, g) in enumerate(zip(vectors.tolist(), labels, frames)):
        sums = {0: None, 1: None}
        counts = {0: 0, 1: 0}
        for w, c, h in zip(vectors.tolist(), labels, frames):
            if h == g:
                continue
            sums[c] = w if sums[c] is None else [a + b for a, b in zip(sums[c], w)]
            counts[c] += 1
        dists = [sum((a - s / counts[c]) ** 2 for a, s in zip(v, sums[c])) for c in (0, 1)]
        right += int((0 if dists[0] <= dists[1] else 1) == y)
    return right / len(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_plain_loop_on_noisy_data(seed):
    g = torch.Generator().manual_seed(seed)
    labels = [i % 2 for i in range(24)]
    frames = [i // 4 for i in range(24)]
    vectors = torch.randn(24, 5, generator=g) + 0.7 * torch.tensor(labels)[:, None].float()
    got = decodability(vectors, labels, frames)
    assert got == pytest.approx(_loop(vectors, labels, frames))


def test_separated_classes_decode_perfectly_and_unseparated_do_not():
    labels = [i % 2 for i in range(12)]
    frames = [i // 2 for i in range(12)]
    sep = torch.tensor(labels)[:, None].float().repeat(1, 3) * 10 + torch.randn(12, 3) * 0.01
    assert decodability(sep, labels, frames) == 1.0
    assert decodability(torch.zeros(12, 3), labels, frames) == 0.5  # ties go to class 0


def test_one_frame_is_refused():
    with pytest.raises(MechanismError, match="two frames"):
        decodability(torch.zeros(4, 2), [0, 1, 0, 1], [0, 0, 0, 0])


def test_residuals_equal_hf_hidden_states():
    model = tiny_neox(V)
    ids, mask, last, _, _ = _batch()
    got = residuals(model, ids, mask, last)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    rows = range(ids.shape[0])
    # HF's last hidden state is after the final norm; the ones before are block outputs.
    for layer in range(len(hs) - 1):
        want = torch.stack([hs[layer][r, last[r]] for r in rows])
        assert torch.allclose(got[layer], want, atol=1e-6)
    assert got.shape[0] == model.config.num_hidden_layers + 1
