"""Default scores equal the peers' on a repo in the real Pythia file layout (issue #13 point 4).

The loopback hub serves `EleutherAI/pythia-14m` the way the real one is laid out: step branches
holding only an fp16 `pytorch_model.bin` with transformers-4.24 key names (`embed_out.weight`)
and the legacy `attention.bias` / `attention.masked_bias` / `attention.rotary_emb.inv_freq`
buffers; 50,304 output rows for the 50,277-token GPT-NeoX-20B tokenizer; Pythia's
`config.json` (`torch_dtype: float16`, `rotary_pct`); `main` with both the `.bin` and a
`model.safetensors`. `replay` and `probe` with default options must equal a plain fp32
reference over the full output distribution (one item, one forward per candidate) to 1e-4.
The untrained padding rows carry real mass here, so the old default (tokenizer rows) misses.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hubserver import HubServer
from tinymodels import neox_tokenizer, tiny_neox
from paths import DATA, REPO as CHECKOUT

pytestmark = pytest.mark.slow

REPO = "EleutherAI/pythia-14m"  # a registry name, so `main` is known to be step 143000
ROWS = 50304
HIDDEN, LAYERS, HEADS, MAX_POS = 16, 1, 2, 64
BRANCHES = {"step0": 0, "step512": 1, "main": 2}  # branch -> model seed
PROBE_YAML = DATA / "probes" / "small.yaml"
PYTHIA_CONFIG = {  # pythia-14m's config.json, shrunk (key names and dtype as shipped)
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
    "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": 4 * HIDDEN, "layer_norm_eps": 1e-05,
    "max_position_embeddings": MAX_POS, "model_type": "gpt_neox", "num_attention_heads": HEADS,
    "num_hidden_layers": LAYERS, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True, "use_parallel_residual": True,
    "vocab_size": ROWS,
}


def _fp16_model(seed: int, n_tokens: int):
    """A random GPT-NeoX whose weights are exactly fp16 values; padding rows with real mass."""
    import torch

    net = tiny_neox(ROWS, hidden=HIDDEN, layers=LAYERS, heads=HEADS, max_positions=MAX_POS, seed=seed)
    with torch.no_grad():
        net.get_output_embeddings().weight[n_tokens:] *= 2.0  # untrained rows: not near zero
        for p in net.parameters():
            p.copy_(p.half().float())
    return net


def _legacy_state(net) -> dict:
    """The fp16 state dict a transformers-4.24 `save_pretrained` pickled, buffers included."""
    import torch

    state = {}
    for name, tensor in net.state_dict().items():
        state["embed_out.weight" if name == "lm_head.weight" else name] = tensor.half().clone()
    rot = int(HIDDEN // HEADS * PYTHIA_CONFIG["rotary_pct"])
    for i in range(LAYERS):
        pre = f"gpt_neox.layers.{i}.attention."
        state[pre + "bias"] = torch.tril(torch.ones(MAX_POS, MAX_POS, dtype=torch.bool)).view(1, 1, MAX_POS, MAX_POS)
        state[pre + "masked_bias"] = torch.tensor(-1e9)
        state[pre + "rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    return state


def _branch_files(folder: Path, net, tokenizer, *, safetensors: bool) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(PYTHIA_CONFIG, indent=2))
    state = _legacy_state(net)
    torch.save(state, folder / "pytorch_model.bin")
    if safetensors:  # the hub's later conversion: current names, no buffers
        save_file({k: v.contiguous() for k, v in state.items() if not k.endswith(
            ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq"))}, folder / "model.safetensors",
            metadata={"format": "pt"})
    assert {p.name for p in folder.glob("*.bin")} == {"pytorch_model.bin"}
    return folder


def _reference(net, tokenizer, items, rows: int | None = None) -> pd.DataFrame:
    """Plain fp32: one item, one forward per candidate, log-softmax over `rows` (None = all)."""
    import torch

    out = []
    for item in items:
        prefix = item.prefix.rstrip()
        vals = []
        for cand in (item.target, item.foil):
            p = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            c = tokenizer(item.prefix[len(prefix):] + cand, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = net(torch.tensor([p + c])).logits[0].float()
            logp = torch.log_softmax(logits[:, :rows] if rows else logits, dim=-1)
            vals.append(float(sum(logp[len(p) - 1 + k, t] for k, t in enumerate(c))))
        out.append({"item_id": item.item_id, "logp_target": vals[0], "logp_foil": vals[1]})
    return pd.DataFrame(out).set_index("item_id")


@pytest.fixture(scope="module")
def pythia_hub(tmp_path_factory):
    tokenizer = neox_tokenizer()  # skips without the real tokenizer file
    assert len(tokenizer) == 50277
    root = tmp_path_factory.mktemp("pythia-layout")
    nets = {}
    with HubServer() as hub:
        for branch, seed in BRANCHES.items():
            nets[branch] = _fp16_model(seed, len(tokenizer))
            folder = _branch_files(root / branch, nets[branch], tokenizer, safetensors=branch == "main")
            hub.add_branch(REPO, branch, folder)
        yield hub, nets, tokenizer, root


def _cli(hub, tmp_path, *args):
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1",
           "PYTHONPATH": str(CHECKOUT)}
    return subprocess.run([sys.executable, "-m", "pythia_forensics", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)


def test_default_replay_and_probe_equal_full_distribution_reference(pythia_hub, tmp_path):
    from pythia_forensics.scoring.probes import load_probes
    from pythia_forensics.sweep.store import ResultsStore

    hub, nets, tokenizer, _ = pythia_hub
    items = load_probes(PROBE_YAML).items
    refs = {b: _reference(copy.deepcopy(n).float().eval(), tokenizer, items) for b, n in nets.items()}
    # the fixture can tell the defaults apart: tokenizer-row normalisation is off by far more
    text_only = _reference(nets["step0"], tokenizer, items, rows=len(tokenizer))
    assert (refs["step0"] - text_only).abs().to_numpy().max() > 1e-3

    run = _cli(hub, tmp_path, "replay", REPO, "-p", str(PROBE_YAML), "--cache-dir", str(tmp_path / "cache"))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = ResultsStore(tmp_path / "results").items()  # the default ./results of the working dir
    assert set(rows["revision"]) == set(BRANCHES) and rows["vocab_rows"].eq("all").all()
    assert set(rows.loc[rows.revision == "main", "step"]) == {143000}
    for branch in ("step0", "main"):
        got = rows[rows.revision == branch].set_index("item_id").loc[refs[branch].index]
        np.testing.assert_allclose(got[["logp_target", "logp_foil"]].astype(float), refs[branch], atol=1e-4, rtol=0)

    for revision, out in ((None, "main.csv"), ("step512", "s512.csv")):
        args = ["probe", REPO, "-p", str(PROBE_YAML), "--out", str(tmp_path / out)]
        run = _cli(hub, tmp_path, *args, *(["--revision", revision] if revision else []))
        assert run.returncode == 0, run.stderr[-3000:]
        got = pd.read_csv(tmp_path / out).set_index("item_id")
        ref = refs[revision or "main"]
        np.testing.assert_allclose(got.loc[ref.index, ["logp_target", "logp_foil"]], ref, atol=1e-4, rtol=0)
