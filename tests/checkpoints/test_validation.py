"""check_finite: its one-pass sum test never lets a NaN or inf through, nor refuses finite weights."""
from __future__ import annotations

import pytest
import torch

from pythia_forensics.checkpoints.validation import check_finite
from pythia_forensics.errors import CheckpointError


def _model(dtype: torch.dtype) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(dtype)
    model.register_buffer("steps", torch.arange(3))  # integer buffers are never checked
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_finite_weights_pass_even_when_their_sum_overflows(dtype):
    model = _model(dtype)
    with torch.no_grad():
        big = torch.finfo(dtype).max
        model[0].weight.fill_(big)  # every value finite, the sum is not
    check_finite(model, "ckpt")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_single_non_finite_value_is_named_with_its_count(dtype, bad):
    model = _model(dtype)
    with torch.no_grad():
        model[1].bias[2] = bad
    with pytest.raises(CheckpointError, match=r"1\.bias \(1 of 3 values\)"):
        check_finite(model, "ckpt")
