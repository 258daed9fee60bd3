"""Direct-logit decomposition and head ablation on real tiny models (#30).

The GPT-NeoX check is against a plain-tensor re-implementation of Pythia's forward pass
written here from the state dict (TransformerLens was not installed: see the report), which
itself is first checked to reproduce the model's logits.
"""
from __future__ import annotations

import math

import pytest
import torch

from pythia_forensics.errors import MechanismError
from pythia_forensics.mechanism import ablate_heads, decompose
from pythia_forensics.mechanism.ablate import gap_of
from tests.tinymodels import tiny_neox

V = 64


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 1
    last = [6, 4, 6]
    return ids, mask, last, [5, 9, 11], [7, 3, 20]


def _tiny_llama(olmo: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM, OlmoConfig, OlmoForCausalLM

    torch.manual_seed(0)
    kw = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = OlmoForCausalLM(OlmoConfig(**kw)) if olmo else LlamaForCausalLM(LlamaConfig(**kw))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


def _plain_neox(model, ids):
    """Pythia forward from the state dict; returns logits and per-component residual parts."""
    cfg = model.config
    sd = {k: v.float() for k, v in model.state_dict().items()}
    nh, d = cfg.num_attention_heads, cfg.hidden_size
    hd = d // nh
    rope = cfg.to_dict().get("rope_parameters") or {}
    rd = int(hd * rope.get("partial_rotary_factor", getattr(cfg, "rotary_pct", 0.25)))
    base = rope.get("rope_theta", getattr(cfg, "rotary_emb_base", 10000.0))
    b, s = ids.shape
    pos = torch.arange(s, dtype=torch.float32)
    inv = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd))
    ang = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1)
    cos, sin = ang.cos(), ang.sin()

    def rot(x):
        r, rest = x[..., :rd], x[..., rd:]
        half = torch.cat([-r[..., rd // 2:], r[..., :rd // 2]], -1)
        return torch.cat([r * cos + half * sin, rest], -1)

    def ln(x, w, bias):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + cfg.layer_norm_eps) * w + bias

    x = sd["gpt_neox.embed_in.weight"][ids]
    parts = {"embed": x.clone()}
    causal = torch.tril(torch.ones(s, s, dtype=torch.bool))
    for i in range(cfg.num_hidden_layers):
        p = f"gpt_neox.layers.{i}."
        a = ln(x, sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"])
        qkv = (a @ sd[p + "attention.query_key_value.weight"].T
               + sd[p + "attention.query_key_value.bias"]).view(b, s, nh, 3 * hd)
        q, k, v = [t.transpose(1, 2) for t in qkv.split(hd, -1)]
        q, k = rot(q), rot(k)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        z = att @ v                                                 # (b, nh, s, hd)
        w_o = sd[p + "attention.dense.weight"]
        heads = [z[:, h] @ w_o[:, h * hd:(h + 1) * hd].T for h in range(nh)]
        for h in range(nh):
            parts[f"L{i}.H{h}"] = heads[h]
        parts[f"L{i}.attn_bias"] = sd[p + "attention.dense.bias"].expand(b, s, d)
        m = ln(x, sd[p + "post_attention_layernorm.weight"], sd[p + "post_attention_layernorm.bias"])
        hmid = torch.nn.functional.gelu(m @ sd[p + "mlp.dense_h_to_4h.weight"].T
                                        + sd[p + "mlp.dense_h_to_4h.bias"])
        mlp = hmid @ sd[p + "mlp.dense_4h_to_h.weight"].T + sd[p + "mlp.dense_4h_to_h.bias"]
        parts[f"L{i}.mlp"] = mlp
        x = x + sum(heads) + parts[f"L{i}.attn_bias"] + mlp
    w, bias = sd["gpt_neox.final_layer_norm.weight"], sd["gpt_neox.final_layer_norm.bias"]
    logits = ln(x, w, bias) @ model.get_output_embeddings().weight.float().T
    sigma = torch.sqrt(x.var(-1, unbiased=False) + cfg.layer_norm_eps)
    return logits, parts, sigma, w, bias, model.get_output_embeddings().weight.float()


def test_neox_parts_equal_plain_reimplementation_and_sum_to_gap():
    model = tiny_neox(V, seed=3)
    ids = torch.randint(2, V, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    last, t, f = [5, 5], [5, 9], [7, 3]
    logits, parts, sigma, w, bias, w_u = _plain_neox(model, ids)
    with torch.no_grad():
        own = model(input_ids=ids).logits
    assert torch.allclose(logits, own, atol=1e-4), "the reference forward itself is wrong"
    dec = decompose(model, ids, mask, last, t, f)
    for j, name in enumerate(dec.components):
        for r in range(2):
            direction = w_u[t[r]] - w_u[f[r]]
            if name == "norm_bias":
                want = float(direction @ bias)
            else:
                vec = parts[name][r, last[r]]
                want = float(direction @ (w * (vec - vec.mean()) / sigma[r, last[r]]))
            assert abs(float(dec.parts[r, j]) - want) < 1e-4, (name, r)
    want_gap = logits[[0, 1], last][[0, 1], t] - logits[[0, 1], last][[0, 1], f]
    assert torch.allclose(dec.gap, want_gap, atol=1e-4)
    assert torch.allclose(dec.parts.sum(1), dec.gap, atol=1e-4)
    assert len(dec.components) == 1 + 2 * (4 + 2) + 1


@pytest.mark.parametrize("arch", ["neox", "llama", "olmo"])
def test_parts_sum_to_the_gap_with_padding(arch):
    model = {"neox": lambda: tiny_neox(V), "llama": _tiny_llama,
             "olmo": lambda: _tiny_llama(olmo=True)}[arch]()
    ids, mask, last, t, f = _batch()
    dec = decompose(model, ids, mask, last, t, f)
    assert torch.allclose(dec.parts.sum(1), dec.gap, atol=1e-4)
    assert torch.allclose(dec.gap, gap_of(model, ids, mask, last, t, f), atol=1e-5)
    assert float(dec.gap.abs().min()) > 1e-3  # the gaps are not trivially zero


def test_a_broken_residual_assumption_is_refused():
    model = tiny_neox(V)
    ids, mask, last, t, f = _batch()
    # An extra term in the residual stream that no hooked component carries.
    handle = model.gpt_neox.final_layer_norm.register_forward_pre_hook(
        lambda mod, args: (args[0] + 0.5 * torch.arange(args[0].shape[-1]).float(),))
    try:
        with pytest.raises(MechanismError, match="does not add up"):
            decompose(model, ids, mask, last, t, f)
    finally:
        handle.remove()


def test_unsupported_architecture_is_one_line_naming_it():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2)).eval()
    ids, mask, last, t, f = _batch()
    with pytest.raises(MechanismError, match="GPT2LMHeadModel") as err:
        decompose(model, ids, mask, last, t, f)
    assert "\n" not in str(err.value)


def test_head_ablation_equals_forward_with_output_columns_zeroed_by_hand():
    model = tiny_neox(V, seed=5)
    ids, mask, last, t, f = _batch(2)
    got = ablate_heads(model, ids, mask, last, t, f)
    hd = model.config.hidden_size // model.config.num_attention_heads
    for i, h in [(0, 0), (0, 3), (1, 2)]:
        by_hand = tiny_neox(V, seed=5)
        with torch.no_grad():
            by_hand.gpt_neox.layers[i].attention.dense.weight[:, h * hd:(h + 1) * hd] = 0.0
        want = gap_of(by_hand, ids, mask, last, t, f)
        assert torch.allclose(got[i, h], want, atol=1e-5), (i, h)
    base = gap_of(model, ids, mask, last, t, f)
    assert float((got - base).abs().max()) > 1e-3  # ablation moved something


def test_multi_token_candidates_are_refused_in_one_line():
    from pythia_forensics.mechanism.decompose import single_tokens
    from tests.tinymodels import train_bpe_tokenizer

    tok = train_bpe_tokenizer()
    one = single_tokens(tok, [" she", " he"])
    assert one == [tok(" she", add_special_tokens=False)["input_ids"][0],
                   tok(" he", add_special_tokens=False)["input_ids"][0]]
    with pytest.raises(MechanismError, match="'Xqzv wobbly' is [0-9]+ tokens") as err:
        single_tokens(tok, [" she", "Xqzv wobbly"])
    assert "\n" not in str(err.value)
