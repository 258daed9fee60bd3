"""Cross-checkpoint activation patching: run revision B with components cached from A.

Components: ``embed``, ``L{i}.H{h}`` (the head's output through its own slice of the output
projection, at every position), ``L{i}.attn_bias`` where the projection has one, ``L{i}.mlp`` and ``readout`` (the final norm and unembedding
have no activation of their own to cache, so ``readout`` runs B's stream through A's final
norm and unembedding). Patching all of them reproduces A exactly; patching A into itself
changes nothing. Recovery = (gap_patched - gap_B) / (gap_A - gap_B).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pythia_forensics.errors import MechanismError
from pythia_forensics.mechanism.ablate import gap_of
from pythia_forensics.mechanism.decompose import model_layout

__all__ = ["all_components", "patch", "recovery"]


def all_components(model: Any) -> tuple[str, ...]:
    layout = model_layout(model)
    names = ["embed"]
    for i in range(len(layout.layers)):
        names += [f"L{i}.H{h}" for h in range(layout.n_heads)]
        if getattr(layout.attn_out[i], "bias", None) is not None:
            names.append(f"L{i}.attn_bias")
        names.append(f"L{i}.mlp")
    return tuple(names + ["readout"])


def _check_shapes(a: Any, b: Any) -> None:
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    if type(a) is not type(b) or sa != sb:
        diff = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))[:1]
        raise MechanismError(
            f"cannot patch between models of different shapes ({type(a).__name__} vs "
            f"{type(b).__name__}, first differing tensor: {diff[0] if diff else 'class'}); "
            "patch between revisions of one model", param="revisions")


def patch(source: Any, target: Any, components: Iterable[str], input_ids: Any,
          attention_mask: Any, last: Sequence[int], targets: Sequence[int],
          foils: Sequence[int]) -> Any:
    """Gap of ``target`` with ``components`` replaced by their values in ``source`` (items,)."""
    import torch

    _check_shapes(source, target)
    wanted = set(components)
    unknown = wanted - set(all_components(target))
    if unknown:
        raise MechanismError(f"unknown component(s) {sorted(unknown)}; known: "
                             f"{', '.join(all_components(target)[:4])}, ...", param="components")
    la, lb = model_layout(source), model_layout(target)
    n_heads = lb.n_heads
    cache: dict[str, Any] = {}

    def save(name, pre):
        def hook(module, args, *out):
            cache[name] = (args[0] if pre else out[0]).detach()
        return hook

    handles = [la.embed.register_forward_hook(save("embed", False))]
    for i, (out, mlp) in enumerate(zip(la.attn_out, la.mlp)):
        handles += [out.register_forward_pre_hook(save(f"z{i}", True)),
                    mlp.register_forward_hook(save(f"mlp{i}", False))]
    try:
        with torch.no_grad():
            source(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()

    handles = []
    if "embed" in wanted:
        handles.append(lb.embed.register_forward_hook(lambda m, a, o: cache["embed"]))
    for i, (out, mlp) in enumerate(zip(lb.attn_out, lb.mlp)):
        heads = [h for h in range(n_heads) if f"L{i}.H{h}" in wanted]
        bias = f"L{i}.attn_bias" in wanted
        if heads or bias:
            # Replace each head's *output* (its z through its own W_O slice), not only z:
            # the two revisions' output projections differ.
            def swap(module, args, output, i=i, heads=heads, bias=bias):
                z_b, z_a = args[0], cache[f"z{i}"]
                w_b, w_a = module.weight, la.attn_out[i].weight
                d_head = z_b.shape[-1] // n_heads
                new = output.clone()
                for h in heads:
                    sl = slice(h * d_head, (h + 1) * d_head)
                    new = new + z_a[..., sl] @ w_a[:, sl].T - z_b[..., sl] @ w_b[:, sl].T
                if bias:
                    new = new + la.attn_out[i].bias - module.bias
                return new
            handles.append(out.register_forward_hook(swap))
        if f"L{i}.mlp" in wanted:
            handles.append(mlp.register_forward_hook(lambda m, a, o, i=i: cache[f"mlp{i}"]))
    if "readout" in wanted:
        # .forward skips hooks: in a self-patch A and B are one module
        handles += [lb.final_norm.register_forward_hook(lambda m, a, o: la.final_norm.forward(a[0])),
                    lb.unembed.register_forward_hook(lambda m, a, o: la.unembed.forward(a[0]))]
    try:
        return gap_of(target, input_ids, attention_mask, last, targets, foils)
    finally:
        for h in handles:
            h.remove()


def recovery(patched: Any, source_gap: Any, target_gap: Any) -> Any:
    """(patched - target) / (source - target), on item means (CM), as a float."""
    denom = float(source_gap.mean() - target_gap.mean())
    if denom == 0.0:
        return float("nan")
    return float(patched.mean() - target_gap.mean()) / denom
