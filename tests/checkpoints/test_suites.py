"""Suites beyond Pythia: the shipped suite files, branch grammars, discovery from refs, tokens
per row, and exactness of the tree plan on OLMo, OLMo 2 and Llama architectures.

Every expected number is computed here independently: parameter counts by transformers'
own model classes (on the meta device, from the suite file's config values), log-probs by a
plain fp32 one-item-at-a-time loop (tests/reference.py `reference_logp`), tokens from the
branch names the test wrote.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hubserver import HubServer
from pythia_forensics.constants import package_file
from pythia_forensics.scoring.plan import SCORING_TREE_MODEL_TYPES
from pythia_forensics.checkpoints.registry import (
    ModelSpec,
    branch_grid,
    decoder_params,
    get_suite,
    hub_branch_patterns,
    known_suites,
    resolve_model,
)
from pythia_forensics.scoring.score import plan_reason, score
from reference import as_set as _set, mixed_items as _items, reference_logp as _reference

TOL = 1e-4
URL = re.compile(r"^https://(huggingface\.co|github\.com|arxiv\.org)/\S+$")


# --- tiny models of each added architecture -------------------------------------------------
def _scale(model, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():  # default init is tiny: scale up so log-probs are far from uniform
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


def tiny_decoder(kind: str, vocab: int, *, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
                 tie: bool = False):
    """A random tiny OlmoForCausalLM / Olmo2ForCausalLM / LlamaForCausalLM (fp32, eval)."""
    import transformers as tf

    config_cls, model_cls = {"olmo": (tf.OlmoConfig, tf.OlmoForCausalLM),
                             "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM),
                             "llama": (tf.LlamaConfig, tf.LlamaForCausalLM)}[kind]
    config = config_cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
                        tie_word_embeddings=tie, pad_token_id=1, bos_token_id=0, eos_token_id=0,
                        attn_implementation="sdpa")
    torch.manual_seed(seed)
    return _scale(model_cls(config), seed)


# --- the suite files --------------------------------------------------------------------------
LISTED = [s for s in known_suites() if s != "pythia"]


def test_shipped_suites_include_olmo_olmo2_and_amber():
    assert {"olmo", "olmo2", "llm360"} <= set(known_suites())
    olmo = get_suite("olmo")
    assert {"allenai/OLMo-1B", "allenai/OLMo-7B", "allenai/OLMo-1B-hf", "allenai/OLMo-7B-hf"} <= {
        m.repo for m in olmo.models}
    assert resolve_model("allenai/OLMo-1B-hf").suite == "olmo"
    assert resolve_model("OLMo-2-1124-7B").repo == "allenai/OLMo-2-1124-7B"


@pytest.mark.parametrize("name", LISTED)
def test_every_fact_group_cites_a_url(name):
    data = yaml.safe_load(package_file("data", "suites", f"{name}.yaml").read_text())
    sources = data["sources"]
    assert sources and all(URL.match(u) for u in sources.values()), sources
    cited = set()
    for entry in [data["branch_grammar"], *data.get("notes", ()), *data["models"],
                  *(n for m in data["models"] for n in m.get("notes", ()))]:
        keys = entry["cite"] if isinstance(entry["cite"], list) else [entry["cite"]]
        assert keys and set(keys) <= set(sources), entry
        cited |= set(keys)
    assert cited == set(sources), f"sources never cited: {set(sources) - cited}"


def test_a_fact_without_source_is_refused(tmp_path):
    from pythia_forensics.checkpoints.suite_yaml import suite_from_yaml

    data = {"suite": "x", "publisher": {"orgs": ["x"]}, "sources": {"a": "https://huggingface.co/x"},
            "branch_grammar": {"pattern": r"s(?P<step>\d+)", "cite": "a"},
            "models": [{"name": "m", "repo": "o/m", "layers": 2}]}
    with pytest.raises(ValueError, match="cites no source"):
        suite_from_yaml(data, tmp_path / "x.yaml")
    data["models"][0]["cite"] = "nope"
    with pytest.raises(ValueError, match="unknown source"):
        suite_from_yaml(data, tmp_path / "x.yaml")


def _meta_count(model_type: str, spec: ModelSpec) -> tuple[int, int]:
    import transformers as tf

    config_cls, model_cls = {"olmo": (tf.OlmoConfig, tf.OlmoForCausalLM),
                             "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM)}[model_type]
    config = config_cls(vocab_size=spec.vocab_size, hidden_size=spec.d_model, num_hidden_layers=spec.layers,
                        num_attention_heads=spec.heads, num_key_value_heads=spec.arch["num_key_value_heads"],
                        intermediate_size=spec.arch["intermediate_size"],
                        tie_word_embeddings=spec.arch["tie_word_embeddings"])
    with torch.device("meta"):
        model = model_cls(config)
    # parameters() yields a tied weight once: the total counts it once
    total = sum(p.numel() for p in model.parameters())
    emb = {id(p): p.numel() for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    return total, total - sum(emb.values())


@pytest.mark.parametrize("name", ["OLMo-1B-hf", "OLMo-7B-hf", "OLMo-2-1124-7B", "OLMo-2-1124-13B"])
def test_parameter_counts_equal_transformers_model_of_the_cited_config(name):
    spec = resolve_model(name)
    assert spec.params_total is not None
    assert (spec.params_total, spec.params_nonembedding) == _meta_count(spec.model_type, spec)


@pytest.mark.parametrize("kind", ["olmo", "olmo2", "llama"])
@pytest.mark.parametrize("tie", [False, True])
def test_decoder_params_formula_on_real_tiny_models(kind, tie):
    model = tiny_decoder(kind, 97, hidden=16, layers=3, heads=4, tie=tie)
    total = sum(p.numel() for p in model.parameters())
    emb = {id(p): p.numel() for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    assert decoder_params(kind, vocab_size=97, d_model=16, layers=3, intermediate=48,
                          tie_word_embeddings=tie) == (total, total - sum(emb.values()))


def test_sizes_not_in_a_source_are_left_unknown():
    amber = resolve_model("LLM360/Amber")
    assert amber.params_total is None and amber.layers is None and amber.tokens_per_step is None
    assert amber.steps == tuple(range(360)) and amber.step_of("ckpt_042") == 42 and amber.step_of("main") == 359
    raw = resolve_model("allenai/OLMo-1B")
    assert raw.params_total is None and any("trust_remote_code" in n for n in raw.notes)


# --- branch grammars ----------------------------------------------------------------------------
def test_olmo_grammar_parses_step_and_tokens():
    spec = resolve_model("allenai/OLMo-1B-hf")
    assert spec.step_of("step20000-tokens84B") == 20000
    assert spec.tokens_seen(20000, "step20000-tokens84B") == 84 * 10**9
    assert spec.step_of("step556000-tokens2460B") == 556000
    assert spec.step_of("main") is None and spec.step_of("step20000") is None
    assert spec.tokens_seen(20000) is None  # no tokens per step in the suite file: never guessed
    olmo2 = resolve_model("allenai/OLMo-2-1124-7B")
    assert olmo2.step_of("stage1-step150-tokens1B") == 150 and olmo2.step_of("step2150-tokens10B") == 2150
    assert olmo2.step_of("stage2-ingredient3-step11931-tokens50B") is None  # its own run: not on this axis


def test_pythia_tokens_still_step_times_tokens_per_step():
    spec = resolve_model("pythia-160m")
    assert spec.step_of("step1000") == 1000 and spec.tokens_seen(1000, "step1000") == 1000 * 1024 * 2048


def test_branch_grid_reports_parsed_unparsed_duplicates_and_gaps():
    spec = ModelSpec(name="x", suite="hub", source="hub", repo="o/x", branch_patterns=hub_branch_patterns())
    names = ["main", "step0-tokens0B", "step1000-tokens4B", "step2000-tokens8B", "step5000-tokens21B",
             "step6000-tokens25B", "step6000", "stage2-ingredient1-step10-tokens1B", "ckpt_x"]
    grid = branch_grid(names, spec)
    assert list(grid.steps) == [0, 1000, 2000, 5000, 6000]
    assert grid.tokens["step5000-tokens21B"] == 21 * 10**9
    assert grid.spacing == 1000 and grid.gaps == ((2000, 5000, 2),) and grid.missing == 2
    assert grid.duplicates == ((6000, "step6000-tokens25B"),) or grid.duplicates == ((6000, "step6000"),)
    assert set(grid.unparsed) == {"main", "stage2-ingredient1-step10-tokens1B", "ckpt_x"}


def test_step_pattern_replaces_the_grammar_and_bad_patterns_are_refused(monkeypatch):
    from pythia_forensics.errors import UnknownModelError

    monkeypatch.delenv("PF_STEP_PATTERN", raising=False)
    spec = resolve_model("org/run", step_pattern=r"iter_(?P<step>\d+)")
    assert spec.step_of("iter_0300") == 300 and spec.step_of("step300") is None
    with pytest.raises(UnknownModelError, match="not a regular expression"):
        resolve_model("org/run", step_pattern="iter_(")
    with pytest.raises(UnknownModelError, match="has no group"):
        resolve_model("org/run", step_pattern=r"iter_\d+")


# --- scoring: tree plan exact on the added architectures --------------------------------------
@pytest.fixture(scope="module")
def items():
    return _items()


@pytest.mark.parametrize("kind", ["olmo", "olmo2", "llama"])
def test_tree_plan_equals_plain_fp32_loop(kind, tiny_tokenizer, items):
    assert kind in SCORING_TREE_MODEL_TYPES
    model = tiny_decoder(kind, len(tiny_tokenizer), seed=7)
    frame = score(model, _set(items), tokenizer=tiny_tokenizer, batch_size=5, bos=False, revision="step1")
    assert frame.attrs["plan"] == "tree" and frame.attrs["plan_reason"] == ""
    assert frame.attrs["forward_sequences"] < len(items)  # many items' sequences packed per tree row
    ref_t = np.array([_reference(model, tiny_tokenizer, i, i.target, bos=False) for i in items])
    ref_f = np.array([_reference(model, tiny_tokenizer, i, i.foil, bos=False) for i in items])
    assert np.abs(frame["logp_target"].to_numpy() - ref_t).max() < TOL
    assert np.abs(frame["logp_foil"].to_numpy() - ref_f).max() < TOL


def test_unsupported_architecture_falls_back_to_causal_plan_with_reason(tiny_tokenizer, items):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    model = _scale(GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=4,
                                              n_positions=128)), 3)
    assert "gpt2" not in SCORING_TREE_MODEL_TYPES
    assert "not one of the tree-tested" in plan_reason(model)
    frame = score(model, _set(items), tokenizer=tiny_tokenizer, batch_size=4, bos=False)
    assert frame.attrs["plan"] == "causal" and "gpt2" in frame.attrs["plan_reason"]
    ref = np.array([_reference(model, tiny_tokenizer, i, i.target, bos=False) for i in items])
    assert np.abs(frame["logp_target"].to_numpy() - ref).max() < TOL


# --- the loopback hub: discover and replay an OLMo-style repo ----------------------------------
OLMO_REPO = "tiny-org/OLMo-tiny-hf"
# tokens per step differ along the run (as OLMo-7B's names show): tokens come from the names
BRANCHES = {0: "step0-tokens0B", 1000: "step1000-tokens4B", 2000: "step2000-tokens9B", 4000: "step4000-tokens17B"}


@pytest.fixture(scope="module")
def olmo_dirs(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("olmo-tiny")
    dirs = {}
    for i, (step, name) in enumerate(BRANCHES.items()):
        model = tiny_decoder("olmo", len(tiny_tokenizer), hidden=32, layers=2, seed=100 + i)
        folder = root / name
        # sharded, as the real OLMo -hf checkpoints are
        model.save_pretrained(folder, safe_serialization=True, max_shard_size="40KB")
        tiny_tokenizer.save_pretrained(folder)
        dirs[name] = folder
    return dirs


@pytest.fixture()
def olmo_hub(olmo_dirs):
    with HubServer() as server:
        for name, folder in olmo_dirs.items():
            server.add_branch(OLMO_REPO, name, folder)
        server.add_branch(OLMO_REPO, "main", olmo_dirs[BRANCHES[4000]])
        server.add_branch(OLMO_REPO, "stage2-ingredient1-step10-tokens1B", olmo_dirs[BRANCHES[0]])
        yield server


def test_tiny_olmo_checkpoints_are_sharded(olmo_dirs):
    shards = sorted(p.name for p in olmo_dirs[BRANCHES[0]].glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (olmo_dirs[BRANCHES[0]] / "model.safetensors.index.json").is_file()


def test_discover_lists_the_grid_from_refs_without_a_weight_byte(olmo_hub, run_cli, monkeypatch, tmp_path):
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "ENDPOINT", olmo_hub.endpoint)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PF_STEP_PATTERN", raising=False)
    code, out, err = run_cli(["suite", "discover", OLMO_REPO])
    assert code == 0, err
    text = " ".join(out.split())
    assert "parsed steps (4): step0, step1000, step2000, step4000" in text
    assert "tokens seen (from branch names): 0 at step0 .. 17B at step4000" in text
    assert "gaps: 1 (1 missing checkpoints)" in text and "step2000 -> step4000 (1 missing)" in text
    assert "unparsed (2): main, stage2-ingredient1-step10-tokens1B" in text
    # the server log: branch listing only; no tree, resolve or CDN request, no weight byte
    kinds = {r.kind for r in olmo_hub.requests()}
    assert kinds == {"refs"}, kinds
    assert olmo_hub.bytes_sent(file="*.safetensors") == 0
    # a pattern that reads nothing leaves every name unparsed
    code, out, _ = run_cli(["suite", "discover", OLMO_REPO, "--step-pattern", r"ckpt_(\d+)"])
    assert code == 0 and "parsed steps (0)" in out and "unparsed (6)" in " ".join(out.split())


def test_replay_olmo_style_repo_equals_fp32_reference_with_tokens_per_row(olmo_hub, olmo_dirs, tiny_tokenizer,
                                                                         items, tmp_path, monkeypatch):
    from transformers import OlmoForCausalLM

    from pythia_forensics.sweep.replay import replay
    from pythia_forensics.sweep.store import ResultsStore

    monkeypatch.delenv("PF_STEP_PATTERN", raising=False)
    results = tmp_path / "res"
    summary = replay(OLMO_REPO, _set(items), results=results, cache_dir=tmp_path / "cache", dtype="float32",
                     device="cpu", batch_size=4, hub_options={"endpoint": olmo_hub.endpoint, "token": False},
                     progress=False)
    assert summary.revisions_scored == 4  # main and the stage-2 branch are not on the step axis
    rows = ResultsStore(results).items()
    assert sorted(rows["revision"].unique()) == sorted(BRANCHES.values())
    for step, name in BRANCHES.items():
        got = rows[rows["revision"] == name].set_index("item_id").loc[[i.item_id for i in items]]
        assert (got["step"] == step).all()
        assert (got["tokens"] == int(re.search(r"tokens(\d+)B", name).group(1)) * 10**9).all()
        model = OlmoForCausalLM.from_pretrained(olmo_dirs[name], torch_dtype=torch.float32).eval()
        ref_t = np.array([_reference(model, tiny_tokenizer, i, i.target, bos=False) for i in items])
        ref_f = np.array([_reference(model, tiny_tokenizer, i, i.foil, bos=False) for i in items])
        assert np.abs(got["logp_target"].to_numpy() - ref_t).max() < TOL, name
        assert np.abs(got["logp_foil"].to_numpy() - ref_f).max() < TOL, name
    # a repo outside the registry: sizes from the fetched checkpoint's config and tensors
    sizes = ResultsStore(results).models().set_index("model").loc["OLMo-tiny-hf"]
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    assert (sizes["params_total"], sizes["params_nonembedding"]) == (total, total - emb)
    assert (sizes["layers"], sizes["d_model"]) == (2, 32) and pd.isna(sizes["tokens_per_step"])


# --- figures on a tokens axis across two suites ------------------------------------------------
def test_tokens_axis_puts_two_suites_on_one_axis():
    from pythia_forensics.analysis.step_axis import step_axis

    traj = pd.DataFrame({"model": ["pythia-a"] * 3 + ["olmo-b"] * 3, "step": [0, 1000, 2000, 0, 1000, 2000],
                         "used": True})
    pythia_tps = 2_097_152
    olmo_tokens = {0: 0.0, 1000: 4e9, 2000: 9e9}  # from branch names: not a constant per step
    axis = step_axis(traj, x="tokens", tokens_per_step={"pythia-a": pythia_tps}, tokens_at={"olmo-b": olmo_tokens})
    assert axis.values([1000, 2000], "pythia-a").tolist() == [1000 * pythia_tps, 2000 * pythia_tps]
    assert axis.values([1000, 2000], "olmo-b").tolist() == [4e9, 9e9]
    assert axis.values([1500], "olmo-b").tolist() == [6.5e9]  # an event between stored steps
    assert axis.hi == 9e9 and axis.label.startswith("training tokens")
    from pythia_forensics.errors import StoreError

    with pytest.raises(StoreError, match="tokens per step unknown for olmo-b"):
        step_axis(traj, x="tokens", tokens_per_step={"pythia-a": pythia_tps})


@pytest.mark.slow
def test_figures_x_tokens_from_stored_rows_of_two_suites(tmp_path, tiny_tokenizer, items, olmo_hub, olmo_dirs):
    """Render from a store holding an OLMo-style run (tokens per row, no tokens per step) and a
    Pythia-style run (tokens per step only): one tokens axis covers both."""
    from pythia_forensics.analysis.figures import render_figures
    from pythia_forensics.sweep.replay import replay
    from pythia_forensics.sweep.store import ResultsStore
    from hub_fixtures import build_local_suite

    from pythia_forensics.scoring.probes import ProbeItem

    # every rule with conflict and agree items in both splits, as the analysis reads them
    pairs = [(" she", " he"), (" he", " she"), (" an apple", " a apple"), (" a table", " an table")]
    grid = [ProbeItem(f"r{r}.{c}.{sp}.{k}", f"rule{r}", cond, sp, prefix, *pairs[(r * 2 + k + c) % 4])
            for r in range(2) for c, cond in enumerate(("conflict", "agree")) for sp in ("train", "heldout")
            for k, prefix in enumerate(("Mia cried because", "Tom laughed because", "I ate"))]
    items = grid
    results = tmp_path / "res"
    replay(OLMO_REPO, _set(items), results=results, cache_dir=tmp_path / "cache", dtype="float32", device="cpu",
           hub_options={"endpoint": olmo_hub.endpoint, "token": False}, progress=False)
    local = build_local_suite(tmp_path / "suite", tiny_tokenizer, model="pythia-like", steps=(0, 1000, 2000, 4000),
                              tokens_per_step=2_097_152)
    replay(str(local), _set(items), results=results, dtype="float32", device="cpu", progress=False)
    store = ResultsStore(results)
    rows = store.items()
    assert set(rows["model"]) == {"OLMo-tiny-hf", "pythia-like"}
    written = render_figures(results, tmp_path / "figs", x="tokens")
    assert any(p.suffix == ".png" for p in written)
    from pythia_forensics.analysis.figures import _tokens_at

    at = _tokens_at(store)
    assert at["OLMo-tiny-hf"] == {0: 0.0, 1000: 4e9, 2000: 9e9, 4000: 17e9}
    assert at["pythia-like"][4000] == 4000 * 2_097_152


def test_health_census_of_olmo_style_repo_reads_no_weights(olmo_hub, tmp_path, monkeypatch):
    from pythia_forensics.checkpoints.health import check_health
    from pythia_forensics.checkpoints.sources import HubSource

    monkeypatch.delenv("PF_STEP_PATTERN", raising=False)
    spec = resolve_model(OLMO_REPO)
    src = HubSource(spec, cache_dir=tmp_path / "cache", endpoint=olmo_hub.endpoint, token=False)
    frame = check_health(spec, source=src, progress=False).to_frame()
    by_rev = frame.set_index("revision")
    assert set(BRANCHES.values()) <= set(by_rev.index)
    assert (by_rev.loc[list(BRANCHES.values()), "status"] == "ok").all(), frame.to_string()
    assert (by_rev.loc[list(BRANCHES.values()), "step"] == list(BRANCHES)).all()
    assert olmo_hub.bytes_sent(file="*.safetensors") == 0


def test_replay_amber_style_llama_repo_scores_the_grid_branch_not_its_alias(tiny_tokenizer, items, tmp_path,
                                                                           monkeypatch):
    """LLM360/Amber's grammar (ckpt_NNN, main = ckpt_359) on a tiny LlamaForCausalLM repo."""
    from transformers import LlamaForCausalLM

    from pythia_forensics.sweep.replay import replay
    from pythia_forensics.sweep.store import ResultsStore

    monkeypatch.delenv("PF_STEP_PATTERN", raising=False)
    folders = {}
    for i, name in enumerate(("ckpt_358", "ckpt_359")):
        folders[name] = tmp_path / name
        tiny_decoder("llama", len(tiny_tokenizer), seed=200 + i).save_pretrained(folders[name], safe_serialization=True)
        tiny_tokenizer.save_pretrained(folders[name])
    with HubServer() as hub:
        hub.add_branch("LLM360/Amber", "main", folders["ckpt_359"])  # listed first: must still lose to ckpt_359
        for name, folder in folders.items():
            hub.add_branch("LLM360/Amber", name, folder)
        from pythia_forensics.checkpoints.health import check_health
        from pythia_forensics.checkpoints.sources import HubSource

        spec = resolve_model("Amber")
        assert spec.revisions[:2] == ("ckpt_000", "ckpt_001") and spec.revisions[-1] == "ckpt_359"
        src = HubSource(spec, cache_dir=tmp_path / "c", endpoint=hub.endpoint, token=False)
        report = check_health(spec, source=src, steps="358:359", progress=False).to_frame().set_index("revision")
        assert (report.loc[["ckpt_358", "ckpt_359"], "status"] == "ok").all(), report.to_string()
        full = check_health(spec, source=src, progress=False).to_frame().set_index("revision")
        assert full.loc["ckpt_000", "status"] == "bad" and "missing" in full.loc["ckpt_000", "reasons"]
        summary = replay("Amber", _set(items), steps="358:359", results=tmp_path / "res", cache_dir=tmp_path / "c",
                         dtype="float32", device="cpu", hub_options={"endpoint": hub.endpoint, "token": False},
                         progress=False)
    assert summary.revisions_scored == 2
    rows = ResultsStore(tmp_path / "res").items()
    assert sorted(rows["revision"].unique()) == ["ckpt_358", "ckpt_359"]
    assert rows["tokens"].isna().all()  # the card states no tokens per checkpoint: none recorded
    got = rows[rows["revision"] == "ckpt_359"].set_index("item_id").loc[[i.item_id for i in items]]
    model = LlamaForCausalLM.from_pretrained(folders["ckpt_359"], torch_dtype=torch.float32).eval()
    ref = np.array([_reference(model, tiny_tokenizer, i, i.target, bos=False) for i in items])
    assert (got["step"] == 359).all() and np.abs(got["logp_target"].to_numpy() - ref).max() < TOL


def test_custom_code_checkpoint_is_refused_with_the_hf_twin_named(tmp_path):
    import json

    from pythia_forensics.errors import ModelLoadError
    from pythia_forensics.scoring.score import load_model

    folder = tmp_path / "step1000-tokens4B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "hf_olmo", "architectures": ["OLMoForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_olmo.OLMoForCausalLM"}}))
    with pytest.raises(ModelLoadError, match=r"'hf_olmo' needs the repo's own code .*allenai/OLMo-1B-hf"):
        load_model(folder)


@pytest.mark.parametrize("name", ["olmo", "olmo2", "llm360"])
def test_every_shipped_source_is_the_publishers_own(name):
    """Each listed suite names its publisher and cites only the publisher's cards, configs and
    papers: the hub or GitHub under its organisations, or arXiv (checked here from the URLs)."""
    from urllib.parse import urlparse

    data = yaml.safe_load(package_file("data", "suites", f"{name}.yaml").read_text())
    orgs = {o.lower() for o in data["publisher"]["orgs"]}
    for key, url in data["sources"].items():
        parts = urlparse(url)
        assert parts.scheme == "https", (key, url)
        on_own_repo = parts.hostname in ("huggingface.co", "github.com") and parts.path.split("/")[1].lower() in orgs
        assert on_own_repo or parts.hostname == "arxiv.org", (key, url)
    assert not any(word in url.lower() for url in data["sources"].values() for word in ("gguf", "onnx"))


@pytest.mark.parametrize("url", [
    "https://huggingface.co/onnx-community/OLMo-1B-hf/blob/main/config.json",   # a third party's conversion
    "https://huggingface.co/mav23/OLMo-1B-0724-hf-GGUF",                       # a quantised copy
    "http://huggingface.co/allenai/OLMo-1B",                                   # not https
    "https://example.com/allenai/OLMo-1B",                                     # not the publisher's host
])
def test_a_source_that_is_not_the_publishers_is_refused(tmp_path, url):
    from pythia_forensics.checkpoints.suite_yaml import suite_from_yaml

    data = {"suite": "x", "publisher": {"orgs": ["allenai"]},
            "sources": {"card": "https://huggingface.co/allenai/OLMo-1B", "bad": url},
            "branch_grammar": {"pattern": r"s(?P<step>\d+)", "cite": ["card", "bad"]},
            "models": [{"name": "m", "repo": "allenai/m", "layers": 2, "cite": "card"}]}
    with pytest.raises(ValueError, match="'bad'.*not the publisher's own"):
        suite_from_yaml(data, tmp_path / "x.yaml")
    data["sources"]["bad"] = "https://arxiv.org/abs/2402.00838"  # a paper is fine
    assert suite_from_yaml(data, tmp_path / "x.yaml").name == "x"
    del data["publisher"]
    with pytest.raises(ValueError, match="name the publisher"):
        suite_from_yaml(data, tmp_path / "x.yaml")
