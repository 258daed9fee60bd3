"""Exact direct-logit attribution of a target-foil logit gap at the last prefix position.

The residual stream before the final norm is a sum of parts: the token embedding, each
attention head's output through its slice of the output projection, each attention
projection's bias, and each MLP's output. The final norm is affine once its realised scale
(the sigma of *this* residual vector) is held fixed, so each part's direct effect on the gap
is W_U[t - f] . (w * centre(part) / sigma), plus the norm bias's own term. The parts then sum
to the model's own gap up to fp32 rounding; a decomposition that does not is refused.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pythia_forensics.errors import MechanismError

__all__ = ["SUM_TOLERANCE", "Decomposition", "Layout", "decompose", "model_layout", "single_tokens"]

# |sum(parts) - gap| allowed, relative to max(1, sum |parts|): a few fp32 ulps of the summands.
SUM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Layout:
    """Where a model keeps the modules the decomposition hooks (one per architecture)."""

    architecture: str
    embed: Any
    layers: tuple[Any, ...]
    attn_out: tuple[Any, ...]   # output projection of each layer's attention (input = heads)
    mlp: tuple[Any, ...]
    final_norm: Any
    unembed: Any
    n_heads: int
    centred: bool               # LayerNorm (subtract the mean) vs RMSNorm


@dataclass(frozen=True)
class Decomposition:
    """Per-item direct contributions: ``parts[i, j]`` is component ``components[j]`` on item i."""

    components: tuple[str, ...]
    parts: Any          # torch.Tensor (items, components), fp32
    gap: Any            # torch.Tensor (items,): the model's own logit[target] - logit[foil]
    scale: Any          # torch.Tensor (items,): the final norm's realised sigma


def model_layout(model: Any) -> Layout:
    """The hook points of a supported causal LM, or a one-line refusal naming its architecture."""
    arch = type(model).__name__
    cfg = model.config
    if arch == "GPTNeoXForCausalLM":
        base = model.gpt_neox
        layers = tuple(base.layers)
        return Layout(arch, base.embed_in, layers, tuple(l.attention.dense for l in layers),
                      tuple(l.mlp for l in layers), base.final_layer_norm, model.get_output_embeddings(),
                      cfg.num_attention_heads, True)
    if arch in ("LlamaForCausalLM", "OlmoForCausalLM"):
        base = model.model
        layers = tuple(base.layers)
        return Layout(arch, base.embed_tokens, layers, tuple(l.self_attn.o_proj for l in layers),
                      tuple(l.mlp for l in layers), base.norm, model.get_output_embeddings(),
                      cfg.num_attention_heads, arch == "OlmoForCausalLM")
    raise MechanismError(
        f"architecture {arch} is not supported by the direct-logit decomposition "
        "(supported: GPTNeoXForCausalLM, LlamaForCausalLM, OlmoForCausalLM; OLMo 2 normalises "
        "each block's output after the heads are summed, so per-head parts are not additive)",
        param="model")


def component_names(layout: Layout) -> tuple[str, ...]:
    names = ["embed"]
    for i, out in enumerate(layout.attn_out):
        names += [f"L{i}.H{h}" for h in range(layout.n_heads)]
        if getattr(out, "bias", None) is not None:
            names.append(f"L{i}.attn_bias")
        names.append(f"L{i}.mlp")
    if getattr(layout.final_norm, "bias", None) is not None:
        names.append("norm_bias")
    return tuple(names)


def _norm_parts(layout: Layout) -> tuple[Any, Any, float]:
    norm = layout.final_norm
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = getattr(norm, "variance_epsilon", None)
    if eps is None and type(norm).__name__ == "OlmoLayerNorm":
        eps = 1e-5  # OLMo's parameter-free LayerNorm hard-codes its eps
    if eps is None:
        raise MechanismError(f"final norm {type(norm).__name__} has no eps", param="model")
    return getattr(norm, "weight", None), getattr(norm, "bias", None), float(eps)


def decompose(model: Any, input_ids: Any, attention_mask: Any, last: Sequence[int],
              targets: Sequence[int], foils: Sequence[int]) -> Decomposition:
    """Decompose logit[target] - logit[foil] at position ``last[i]`` of each row, in fp32.

    ``input_ids``/``attention_mask``: (items, seq), right-padded. ``targets``/``foils``: one
    token id each (multi-token candidates are refused by the caller's encoding, see
    `single_tokens`).

    Raises:
        MechanismError: unsupported architecture, non-fp32 model, or parts that do not sum to
            the gap within `SUM_TOLERANCE`.
    """
    import torch

    layout = model_layout(model)
    if next(model.parameters()).dtype != torch.float32:
        raise MechanismError("the decomposition runs in fp32; load the model with dtype=fp32",
                             param="dtype")
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    last_t = torch.as_tensor(list(last), device=input_ids.device)
    grab: dict[str, Any] = {}

    def keep(name: str, pre: bool):
        def hook(module, args, *out):
            value = args[0] if pre else out[0]
            if isinstance(value, tuple):
                value = value[0]
            grab[name] = value[rows, last_t].detach().float()
        return hook

    handles = [layout.embed.register_forward_hook(keep("embed", False)),
               layout.final_norm.register_forward_pre_hook(keep("resid", True))]
    for i, (out, mlp) in enumerate(zip(layout.attn_out, layout.mlp)):
        handles.append(out.register_forward_pre_hook(keep(f"z{i}", True)))
        handles.append(mlp.register_forward_hook(keep(f"mlp{i}", False)))
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        for h in handles:
            h.remove()

    t = torch.as_tensor(list(targets), device=input_ids.device)
    f = torch.as_tensor(list(foils), device=input_ids.device)
    last_logits = logits[rows, last_t].float()
    gap = last_logits[rows, t] - last_logits[rows, f]
    w_u = layout.unembed.weight.float()
    direction = w_u[t] - w_u[f]                                   # (items, d)
    weight, bias, eps = _norm_parts(layout)
    resid = grab["resid"]
    if layout.centred:
        sigma = torch.sqrt(resid.var(-1, unbiased=False) + eps)
    else:
        sigma = torch.sqrt(resid.pow(2).mean(-1) + eps)
    readout = direction * (weight.float() if weight is not None else 1.0) / sigma[:, None]

    def direct(vec):                                             # (items, d) -> (items,)
        if layout.centred:
            vec = vec - vec.mean(-1, keepdim=True)
        return (vec * readout).sum(-1)

    cols = [direct(grab["embed"])]
    n_heads = layout.n_heads
    for i, out in enumerate(layout.attn_out):
        z = grab[f"z{i}"]
        d_head = z.shape[-1] // n_heads
        w_o = out.weight.float()                                  # (d, n_heads * d_head)
        for h in range(n_heads):
            sl = slice(h * d_head, (h + 1) * d_head)
            cols.append(direct(z[:, sl] @ w_o[:, sl].T))
        if getattr(out, "bias", None) is not None:
            cols.append(direct(out.bias.float().expand_as(resid)))
        cols.append(direct(grab[f"mlp{i}"]))
    if bias is not None:
        cols.append((direction * bias.float()).sum(-1))
    parts = torch.stack(cols, dim=1)
    err = (parts.sum(1) - gap).abs()
    bound = SUM_TOLERANCE * torch.clamp(parts.abs().sum(1), min=1.0)
    if bool((err > bound).any()):
        worst = int(torch.argmax(err / bound))
        raise MechanismError(
            f"the decomposition does not add up on item {worst}: parts sum to "
            f"{float(parts.sum(1)[worst]):.6g} but the model's gap is {float(gap[worst]):.6g}; "
            "this architecture's residual stream is not what the decomposition assumes",
            param="model")
    return Decomposition(component_names(layout), parts, gap, sigma)


def single_tokens(tokenizer: Any, candidates: Sequence[str]) -> list[int]:
    """The one token id of each candidate (e.g. " she"), or a one-line refusal: a direct-logit
    decomposition is defined for one logit, not for a multi-token continuation."""
    ids = []
    for text in candidates:
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise MechanismError(
                f"candidate {text!r} is {len(toks)} tokens; the decomposition needs single-token "
                "target and foil (choose probes whose candidates are one token each)",
                param="probes")
        ids.append(int(toks[0]))
    return ids
