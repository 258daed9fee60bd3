"""Cross-checkpoint patching against plain forward passes on tiny GPT-NeoX and Llama (#30)."""
from __future__ import annotations

import pytest
import torch

from pythia_forensics.errors import MechanismError
from pythia_forensics.mechanism.ablate import gap_of
from pythia_forensics.mechanism.patch import all_components, patch, recovery
from tests.mechanism.test_decompose import V, _batch, _tiny_llama
from tests.tinymodels import tiny_neox


@pytest.mark.parametrize("arch", ["neox", "llama"])
def test_patching_everything_recovers_the_source_and_self_patch_changes_nothing(arch):
    make = (lambda s: tiny_neox(V, seed=s)) if arch == "neox" else (lambda s: _seeded_llama(s))
    peak, final = make(1), make(2)
    args = _batch()
    g_peak, g_final = gap_of(peak, *args), gap_of(final, *args)
    assert float((g_peak - g_final).abs().min()) > 1e-3
    full = patch(peak, final, all_components(final), *args)
    assert torch.allclose(full, g_peak, atol=1e-4)
    assert recovery(full, g_peak, g_final) == pytest.approx(1.0, abs=1e-4)
    for comp in all_components(final):
        assert torch.allclose(patch(final, final, [comp], *args), g_final, atol=1e-5), comp
    # reverse direction: everything from final into peak gives final
    assert torch.allclose(patch(final, peak, all_components(peak), *args), g_final, atol=1e-4)


def _seeded_llama(seed):
    torch.manual_seed(seed)
    model = _tiny_llama()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed + p.numel()))
    return model


def test_last_layer_mlp_patch_equals_a_by_hand_residual_swap():
    a, b = tiny_neox(V, seed=1), tiny_neox(V, seed=2)
    ids, mask, last, t, f = _batch()
    outs = {}
    for name, model in (("a", a), ("b", b)):
        hs = [model.gpt_neox.layers[-1].mlp.register_forward_hook(
                  lambda m, i, o, name=name: outs.__setitem__(name + "mlp", o.detach())),
              model.gpt_neox.final_layer_norm.register_forward_pre_hook(
                  lambda m, i, name=name: outs.__setitem__(name + "resid", i[0].detach()))]
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        for h in hs:
            h.remove()
    resid = outs["bresid"] - outs["bmlp"] + outs["amlp"]   # parallel block: MLP adds last
    with torch.no_grad():
        logits = b.get_output_embeddings()(b.gpt_neox.final_layer_norm(resid))
    rows = range(len(last))
    want = torch.stack([logits[r, last[r], t[r]] - logits[r, last[r], f[r]] for r in rows])
    got = patch(a, b, ["L1.mlp"], ids, mask, last, t, f)
    assert torch.allclose(got, want, atol=1e-5)
    assert float((got - gap_of(b, ids, mask, last, t, f)).abs().max()) > 1e-4


def test_patching_between_different_shapes_is_refused_in_one_line():
    with pytest.raises(MechanismError, match="different shapes") as err:
        patch(tiny_neox(V), tiny_neox(V, hidden=16), ["embed"], *_batch())
    assert "\n" not in str(err.value)
