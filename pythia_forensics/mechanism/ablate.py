"""Per-head zero-ablation: the model's own gap with one attention head's output removed."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pythia_forensics.mechanism.decompose import model_layout

__all__ = ["ablate_heads", "gap_of"]


def gap_of(model: Any, input_ids: Any, attention_mask: Any, last: Sequence[int],
           targets: Sequence[int], foils: Sequence[int]) -> Any:
    """logit[target] - logit[foil] at each row's last prefix position (items,)."""
    import torch

    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    last_t = torch.as_tensor(list(last), device=input_ids.device)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    at = logits[rows, last_t].float()
    return at[rows, torch.as_tensor(list(targets), device=at.device)] - \
        at[rows, torch.as_tensor(list(foils), device=at.device)]


def ablate_heads(model: Any, input_ids: Any, attention_mask: Any, last: Sequence[int],
                 targets: Sequence[int], foils: Sequence[int]) -> Any:
    """Gap with each head zeroed in turn: tensor (layers, heads, items).

    The head's input to the output projection is zeroed at every position (its output is
    gone from the whole sequence, so later layers see the ablation too); the projection's
    bias is kept, as it belongs to no head.
    """
    import torch

    layout = model_layout(model)
    n_heads = layout.n_heads
    out = torch.empty(len(layout.attn_out), n_heads, input_ids.shape[0])
    for i, proj in enumerate(layout.attn_out):
        for h in range(n_heads):
            def zero(module, args, h=h):
                z = args[0].clone()
                d_head = z.shape[-1] // n_heads
                z[..., h * d_head:(h + 1) * d_head] = 0.0
                return (z,) + tuple(args[1:])
            handle = proj.register_forward_pre_hook(zero)
            try:
                out[i, h] = gap_of(model, input_ids, attention_mask, last, targets, foils).cpu()
            finally:
                handle.remove()
    return out
