"""Per-layer cue decodability: can the cue class (e.g. girl- vs boy-name prefix) be read off
the residual stream after each block, by nearest class mean, held out across frames?

Held out by frame so a probe cannot win by memorising a frame's wording: every item of frame
g is classified with class means computed from the other frames only.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pythia_forensics.errors import MechanismError
from pythia_forensics.mechanism.decompose import model_layout

__all__ = ["decodability", "residuals"]


def residuals(model: Any, input_ids: Any, attention_mask: Any, last: Sequence[int]) -> Any:
    """Residual stream at each row's last position after the embedding and each block:
    tensor (layers + 1, items, d), fp32."""
    import torch

    layout = model_layout(model)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    last_t = torch.as_tensor(list(last), device=input_ids.device)
    got: list[Any] = []

    def keep(module, args, out):
        value = out[0] if isinstance(out, tuple) else out
        got.append(value[rows, last_t].detach().float().cpu())

    handles = [layout.embed.register_forward_hook(keep)]
    handles += [layer.register_forward_hook(keep) for layer in layout.layers]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(got)


def decodability(vectors: Any, labels: Sequence[int], frames: Sequence[Any]) -> float:
    """Leave-one-frame-out nearest-class-mean accuracy of ``labels`` (two classes) from
    ``vectors`` (items, d). Refuses fewer than two frames or a class missing from training."""
    import torch

    labels_t = torch.as_tensor(list(labels))
    frame_ids = list(frames)
    groups = sorted(set(frame_ids), key=str)
    if len(groups) < 2 or sorted(set(labels_t.tolist())) != [0, 1]:
        raise MechanismError("cue decodability needs two cue classes over at least two frames",
                             param="probes")
    correct = 0
    for g in groups:
        test = torch.tensor([f == g for f in frame_ids])
        train = ~test
        means = []
        for c in (0, 1):
            pick = train & (labels_t == c)
            if not bool(pick.any()):
                raise MechanismError(f"frame {g!r} holds every item of cue class {c}; "
                                     "decodability needs each class in several frames",
                                     param="probes")
            means.append(vectors[pick].mean(0))
        dist = torch.stack([(vectors[test] - m).pow(2).sum(-1) for m in means], dim=1)
        correct += int((dist.argmin(1) == labels_t[test]).sum())
    return correct / len(frame_ids)
