"""The scorer against independent computations: a plain fp32 one-item loop and minicons."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pythia_forensics.errors import ModelLoadError, ScoringError, TokenizationError
from pythia_forensics.scoring.head import HEAD_BLOCKS, HeadBlocks
from pythia_forensics.scoring.probes import ProbeItem, ProbeSet, probe_set_sha256
from pythia_forensics.scoring.score import (
    FRAME_COLUMNS,
    ScoreOptions,
    encode_items,
    load_model,
    load_weights_into,
    resolve_dtype,
    score,
    score_encoded,
    summarize,
)
from numerics import assert_fp32_close
from reference import PREFIXES, as_set as _set, mixed_items as _items, reference_logp as _reference
from tinymodels import neox_tokenizer, save_checkpoint, tiny_neox

TOL = 1e-4

@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    torch.manual_seed(0)
    return tiny_neox(len(tiny_tokenizer), seed=7, layers=2)


@pytest.fixture(scope="module")
def references(model, tiny_tokenizer):
    items = _items()
    return {bos: (np.array([_reference(model, tiny_tokenizer, i, i.target, bos=bos) for i in items]),
                  np.array([_reference(model, tiny_tokenizer, i, i.foil, bos=bos) for i in items]))
            for bos in (False, True)}


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_equals_plain_fp32_loop(model, tiny_tokenizer, references, batch_size, bos):
    items = _items()
    frame = score(model, _set(items), tokenizer=tiny_tokenizer, batch_size=batch_size, bos=bos, revision="step9")
    ref_t, ref_f = references[bos]
    assert np.abs(frame["logp_target"].to_numpy() - ref_t).max() < TOL
    assert np.abs(frame["logp_foil"].to_numpy() - ref_f).max() < TOL
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert (frame["margin"] == frame["logp_target"] - frame["logp_foil"]).all()
    assert (frame["correct"] == (frame["margin"] > 0)).all()
    assert np.allclose(frame["mean_logp_target"], frame["logp_target"] / frame["n_target_tokens"])
    assert frame["n_foil_tokens"].max() > 1 and frame["n_target_tokens"].min() == 1  # both kinds present
    assert frame.attrs["bos"] is bos and frame.attrs["batch_size"] == batch_size
    assert frame.attrs["dtype"] == "float32" and frame.attrs["device"] == "cpu"
    assert frame["revision"].eq("step9").all() and frame["item_id"].tolist() == [i.item_id for i in items]


@pytest.mark.parametrize("bos", [False, True])
# batch 7 (several batches, padding on both sides) in the fast suite; our batch-size
# independence is checked against the plain loop above, minicons' own at 1 and 64 in `make test`
@pytest.mark.parametrize("batch_size", [pytest.param(1, marks=pytest.mark.slow), 7,
                                        pytest.param(64, marks=pytest.mark.slow)])
def test_equals_minicons(model, tiny_tokenizer, batch_size, bos):
    from minicons import scorer

    items = _items()
    frame = score(model, _set(items), tokenizer=tiny_tokenizer, batch_size=batch_size, bos=bos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = scorer.IncrementalLMScorer(model, tokenizer=tiny_tokenizer, device="cpu")
    # minicons joins prefix + separator + stimulus: no separator, and the trailing space of the
    # prefix goes to the front of the stimulus, as our scorer does
    prefixes = [i.prefix.rstrip() for i in items]
    for column, attr in (("logp_target", "target"), ("logp_foil", "foil")):
        stimuli = [i.prefix[len(i.prefix.rstrip()):] + getattr(i, attr) for i in items]
        theirs = []
        for k in range(0, len(items), batch_size):
            theirs += lm.conditional_score(prefixes[k:k + batch_size], stimuli[k:k + batch_size], separator="",
                                           reduction=lambda x: x.sum(0).item(), bos_token=bos)
        assert np.abs(frame[column].to_numpy() - np.array(theirs)).max() < TOL


def test_shared_prefixes_cost_one_forward_row(model, tiny_tokenizer):
    items = [ProbeItem(f"s{k}", "r", "agree", "train", "Mia cried because", t, f)
             for k, (t, f) in enumerate([(" she", " he"), (" he", " she"), (" an", " a")])]
    frame = score(model, _set(items), tokenizer=tiny_tokenizer)
    assert frame.attrs["forward_sequences"] == 1 and frame.attrs["logit_rows"] == 1
    # a multi-token candidate's row also serves the single-token ones after the same prefix
    items.append(ProbeItem("s9", "r", "agree", "train", "Mia cried because", " she was", " he was"))
    frame = score(model, _set(items), tokenizer=tiny_tokenizer)
    # tree rows: the prefix and both branches (" she", " he") share ONE row; 3 logit rows
    assert frame.attrs["forward_sequences"] == 1 and frame.attrs["logit_rows"] == 3


@pytest.mark.slow
def test_tree_rows_equal_plain_causal_sequences(model, tiny_tokenizer):
    """The tree-row plan (GPT-NeoX) and the causal-sequence plan (other architectures) give
    the same numbers, and the tree runs fewer body tokens on items that share prefixes."""
    from pythia_forensics.scoring.plan import make_plan, make_tree_plan

    items = _items() + [ProbeItem(f"m{k}", "r", "agree", "train", p, " she was", " he was")
                        for k, p in enumerate(PREFIXES)]
    encoded = encode_items(items, tiny_tokenizer)
    kw = {"n_rows": len(tiny_tokenizer), "pad_id": 0}
    for batch_size, row_tokens in ((1, 96), (7, 8), (64, 96), (64, 12)):  # small rows: many packed pieces
        tree = score_encoded(model, encoded, batch_size=batch_size, plan=make_tree_plan(encoded, row_tokens=row_tokens),
                             **kw)
        plain = score_encoded(model, encoded, batch_size=batch_size, plan=make_plan(encoded), **kw)
        for column in ("logp_target", "logp_foil"):
            assert np.abs(tree[column] - plain[column]).max() < 1e-5
        assert tree["tokens"] < plain["tokens"]


@pytest.mark.parametrize("row_tokens", [8, 20, 96])
def test_tree_rows_are_packed_nearly_full_and_pieces_never_see_each_other(tiny_tokenizer, row_tokens):
    """Trie pieces are packed into rows of at most the row budget (best fit: at most one row
    half empty or worse); in the mask each token sees exactly its ancestors in its own piece,
    at the position id of its depth, and every candidate's read sits at its history's end."""
    from pythia_forensics.scoring.plan import batch_inputs, make_tree_plan

    encoded = encode_items(_items(), tiny_tokenizer)
    plan = make_tree_plan(encoded, row_tokens=row_tokens)
    cap = max(row_tokens, max(len(e.context_ids) + max(len(e.target_ids), len(e.foil_ids)) - 1 for e in encoded))
    lengths = [len(seq) for seq in plan.sequences]
    assert lengths == sorted(lengths, reverse=True) and max(lengths) <= cap
    assert sum(n <= cap / 2 for n in lengths) <= 1
    _, mask, positions = batch_inputs(plan, 0, len(lengths), 0, torch.float32)
    for b, par in enumerate(plan.parents):
        for i in range(len(par)):
            ancestors, j = {i}, par[i]
            while j >= 0:
                ancestors.add(int(j))
                j = par[j]
            assert set(np.flatnonzero(mask[b, 0, i].numpy() == 0)) == ancestors
            assert positions[b, i] == len(ancestors) - 1
    # every candidate token is read after its own history: context + the candidate's earlier tokens
    histories = [seq for e in encoded for cand in (e.target_ids, e.foil_ids)
                 for seq in [tuple(e.context_ids) + tuple(cand[:k]) for k in range(len(cand))]]
    got = []
    for row, pos in zip(plan.row_seq, plan.row_pos):
        par, toks, path, j = plan.parents[row], plan.sequences[row], [], int(pos)
        while j >= 0:
            path.append(toks[j])
            j = int(par[j])
        got.append(tuple(reversed(path)))
    assert set(got) == set(histories)


def test_padding_token_never_reaches_real_positions(model, tiny_tokenizer):
    encoded = encode_items(_items(), tiny_tokenizer)
    runs = [score_encoded(model, encoded, n_rows=len(tiny_tokenizer), pad_id=pad, batch_size=64) for pad in (1, 0, 57)]
    for run in runs[1:]:
        assert np.abs(run["logp_target"] - runs[0]["logp_target"]).max() < 1e-6
        assert np.abs(run["logp_foil"] - runs[0]["logp_foil"]).max() < 1e-6


def test_full_forward_path_gives_the_same_numbers(model, tiny_tokenizer, references, monkeypatch):
    """A config field that scales logits sends the model down the full-forward path (logits
    from the model itself); GPT-NeoX's forward ignores the field, so the numbers must not move."""
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(model.config, "logit_scale", 0.5, raising=False)
    try:
        frame = score(model, _set(_items()), tokenizer=tiny_tokenizer, batch_size=7)
    finally:
        hook.remove()
    assert calls, "the full forward did not run"
    assert np.abs(frame["logp_target"].to_numpy() - references[False][0]).max() < TOL


def test_auto_batch_backs_off_on_out_of_memory(model, tiny_tokenizer, references, monkeypatch):
    body = model.base_model
    original = body.forward

    def small_memory(*args, **kwargs):
        # tree rows hold up to 96 tokens: batch size 4 (128 tokens) runs one per batch, 8 two
        if kwargs["input_ids"].numel() > 100:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(body, "forward", small_memory)
    frame = score(model, _set(_items()), tokenizer=tiny_tokenizer, batch_size="auto")
    assert frame.attrs["batch_size"] == 4
    assert np.abs(frame["logp_foil"].to_numpy() - references[False][1]).max() < TOL
    with pytest.raises(ScoringError, match="out of memory at batch size 16"):
        score(model, _set(_items()), tokenizer=tiny_tokenizer, batch_size=16)


def test_auto_batch_follows_a_memory_budget_deterministically(model, tiny_tokenizer, references, monkeypatch):
    """batch_size=auto: a token budget per batch, lowered by the batch's estimated memory; the
    same options give the same batches (never the free memory), and the numbers stay exact."""
    from pythia_forensics.scoring import plan
    from pythia_forensics.scoring.plan import SCORING_BATCH_ROW_TOKENS

    rows: list[tuple[int, int]] = []
    hook = model.base_model.register_forward_pre_hook(
        lambda m, a, kw: rows.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        roomy = score(model, _set(_items()), tokenizer=tiny_tokenizer, batch_size="auto")
        roomy_rows, rows[:] = list(rows), []
        cfg = model.config
        width = max(w for _, w in roomy_rows)  # the plan's longest sequence
        # the estimate written out here: activations, attention rows and the fp32 hidden row per
        # token, plus one fp32 logits block of the head
        per_token = 4 * (8 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.num_attention_heads * width) \
            + 4 * cfg.hidden_size
        head = 4 * HEAD_BLOCKS["cpu"].rows * min(HEAD_BLOCKS["cpu"].vocab, roomy.attrs["vocab_rows_n"])
        budget = head + 3 * SCORING_BATCH_ROW_TOKENS * per_token  # room for 3 rows of the token budget
        monkeypatch.setitem(plan.SCORING_AUTO_BATCH_BYTES, "cpu", budget)
        tight = [score(model, _set(_items()), tokenizer=tiny_tokenizer, batch_size="auto") for _ in range(2)]
        tight_rows = list(rows)
    finally:
        hook.remove()
    assert roomy.attrs["batch_size"] == 64 and roomy.attrs["batch_tokens"] == 64 * SCORING_BATCH_ROW_TOKENS
    assert [f.attrs["batch_size"] for f in tight] == [3, 3] and tight[0].attrs["batch_tokens"] == 3 * SCORING_BATCH_ROW_TOKENS
    # the same batches twice (two workers may start them in either order)
    assert sorted(tight_rows[:len(tight_rows) // 2]) == sorted(tight_rows[len(tight_rows) // 2:])
    # tight: one row per batch or at most 3 rows' token budget; roomy: batches beyond it
    assert max(b * w for b, w in roomy_rows) > 3 * SCORING_BATCH_ROW_TOKENS and len(tight_rows) > 2 * len(roomy_rows)
    assert all(b == 1 or b * w <= 3 * SCORING_BATCH_ROW_TOKENS for b, w in tight_rows)
    for frame in (roomy, *tight):
        assert np.abs(frame["logp_target"].to_numpy() - references[False][0]).max() < TOL
        assert np.abs(frame["logp_foil"].to_numpy() - references[False][1]).max() < TOL


def test_prepared_plan_reused_across_weights_gives_the_same_numbers(model, tiny_tokenizer, references):
    """One preparation, many scorings (replay's revisions): the cached batch inputs are never
    changed by a forward, so every call equals a fresh unprepared one and the fp32 loop."""
    from pythia_forensics.scoring import score as scoring

    probes = _set(_items())
    prepared = scoring.prepare(model, probes, tokenizer=tiny_tokenizer)
    fresh = score(model, probes, tokenizer=tiny_tokenizer, batch_size=7)
    cols = ["logp_target", "logp_foil"]
    for _ in range(3):
        again = score(model, probes, tokenizer=tiny_tokenizer, batch_size=7, prepared=prepared)
        np.testing.assert_array_equal(again[cols].to_numpy(), fresh[cols].to_numpy())
    assert len(prepared.plan.inputs) > 1  # batches kept for the next call
    assert np.abs(again["logp_target"].to_numpy() - references[False][0]).max() < TOL
    other = tiny_neox(len(tiny_tokenizer), seed=11, layers=2)  # other weights, same architecture
    np.testing.assert_array_equal(
        score(other, probes, tokenizer=tiny_tokenizer, batch_size=7, prepared=prepared)[cols].to_numpy(),
        score(other, probes, tokenizer=tiny_tokenizer, batch_size=7)[cols].to_numpy())


def test_prepared_plan_still_refuses_a_model_with_a_shorter_context(model, tiny_tokenizer):
    """A preparation remembers which context lengths its items fit; a model of the same type
    with fewer positions is checked again and refused, not scored past its positions."""
    from pythia_forensics.errors import CheckpointError
    from pythia_forensics.scoring import score as scoring

    probes = _set(_items())
    prepared = scoring.prepare(model, probes, tokenizer=tiny_tokenizer)
    score(model, probes, tokenizer=tiny_tokenizer, prepared=prepared)
    longest = max(len(e.context_ids) + max(len(e.target_ids), len(e.foil_ids)) - 1 for e in prepared.encoded)
    short = tiny_neox(len(tiny_tokenizer), max_positions=longest - 1)
    with pytest.raises(CheckpointError, match="positions"):
        score(short, probes, tokenizer=tiny_tokenizer, prepared=prepared)
    score(tiny_neox(len(tiny_tokenizer), max_positions=longest), probes, tokenizer=tiny_tokenizer,
          prepared=prepared)  # exactly full still scores


def test_stage_timings_are_recorded_and_a_prepared_plan_costs_no_planning(model, tiny_tokenizer):
    """frame.attrs["timings"]: every stage's seconds (structure only, never a magnitude): all
    keys, non-negative floats, the parts within the total; reuse of `prepare` plans nothing."""
    import json

    from pythia_forensics.scoring import score as scoring

    probes = _set(_items())
    fresh = score(model, probes, tokenizer=tiny_tokenizer, batch_size=7)
    prepared = scoring.prepare(model, probes, tokenizer=tiny_tokenizer)
    reused = score(model, probes, tokenizer=tiny_tokenizer, batch_size=7, prepared=prepared)
    for frame in (fresh, reused):
        t = frame.attrs["timings"]
        assert tuple(t) == scoring.TIMING_KEYS == ("load_s", "tokenize_s", "plan_s", "forward_s", "head_s", "total_s")
        assert all(isinstance(v, float) and v >= 0.0 for v in t.values()), t
        assert sum(v for k, v in t.items() if k != "total_s") <= t["total_s"], t
        assert t["forward_s"] > 0.0 and t["head_s"] > 0.0 and t["load_s"] == 0.0  # both stages ran, timed
        assert frame.attrs["wall_s"] == round(t["total_s"], 4)
        json.dumps(frame.attrs)  # JSON-able, as the store records it
    assert fresh.attrs["timings"]["tokenize_s"] > 0.0 and fresh.attrs["timings"]["plan_s"] > 0.0
    assert reused.attrs["timings"]["tokenize_s"] == 0.0 and reused.attrs["timings"]["plan_s"] == 0.0


def test_candidate_that_tokenizes_to_nothing_names_the_item(model, tiny_tokenizer):
    bad = ProbeItem("empty.1", "r", "agree", "train", "Mia cried because", "", " he")
    with pytest.raises(TokenizationError, match="item 'empty.1': target '' tokenizes to no tokens"):
        score(model, _set([bad]), tokenizer=tiny_tokenizer)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"dtype": "fp8"}, "unknown dtype"), ({"device": "tpu"}, "unknown device"),
    ({"vocab_rows": "some"}, "unknown vocab_rows"), ({"batch_size": 0}, "positive integer"),
])
def test_bad_options(kwargs, fragment):
    with pytest.raises(ScoringError, match=fragment):
        ScoreOptions(**kwargs)


def test_resolve_dtype():
    assert resolve_dtype("auto", device="cpu", params=10**10) == "float32"
    assert resolve_dtype("auto", device="cuda", params=10**9) == "float32"
    assert resolve_dtype("auto", device="cuda", params=7 * 10**9) == "bfloat16"
    assert resolve_dtype("bfloat16") == "bfloat16"


def test_summarize_counts_accuracy_and_margin(model, tiny_tokenizer):
    frame = score(model, _set(_items()), tokenizer=tiny_tokenizer)
    table = summarize(frame)
    for row in table.itertuples():
        cell = frame[(frame.rule == row.rule) & (frame.condition == row.condition) & (frame.split == row.split)]
        assert row.n == len(cell)
        assert row.accuracy == pytest.approx(float(np.mean([m > 0 for m in cell.margin])))
        assert row.mean_margin == pytest.approx(float(np.mean(cell.margin)))
    assert table["n"].sum() == len(frame)


# --- loading -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def revisions(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("revs")
    a = save_checkpoint(root / "step1", tiny_neox(len(tiny_tokenizer), seed=11), tiny_tokenizer)
    b = save_checkpoint(root / "step2", tiny_neox(len(tiny_tokenizer), seed=12), tiny_tokenizer)
    b_bin = root / "bin" / "step2"
    # a .bin-only revision (old Pythia branches): same tensors and names, pickled by torch.save
    from safetensors.torch import load_file

    b_bin.mkdir(parents=True)
    torch.save(load_file(b / "model.safetensors"), b_bin / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (b_bin / name).write_bytes((b / name).read_bytes())
    other = save_checkpoint(root / "wide", tiny_neox(len(tiny_tokenizer), hidden=48, seed=1), tiny_tokenizer)
    return root, a, b, b_bin, other


def test_load_weights_into_equals_fresh_load(revisions, tiny_tokenizer):
    root, a, b, b_bin, _ = revisions
    probes = _set(_items())
    fresh = score(b, probes)
    model, tok = load_model(a)
    before = score(model, probes, tokenizer=tok)
    assert fresh.attrs["timings"]["load_s"] > 0.0 and before.attrs["timings"]["load_s"] == 0.0  # loaded here or not
    assert np.abs(before["logp_target"] - fresh["logp_target"]).max() > 0.1  # different weights
    load_weights_into(model, b)
    assert np.abs(score(model, probes, tokenizer=tok)["logp_target"] - fresh["logp_target"]).max() < 1e-6
    load_weights_into(model, a)
    load_weights_into(model, b_bin)  # .bin: torch.load(weights_only=True)
    assert np.abs(score(model, probes, tokenizer=tok)["logp_target"] - fresh["logp_target"]).max() < 1e-6
    assert not list(b_bin.glob("*.safetensors"))
    from_bin = score(b_bin, probes)  # load_model from .bin only (transformers: weights_only=True)
    assert np.abs(from_bin["logp_target"] - fresh["logp_target"]).max() < 1e-6
    # a local folder of revisions + --revision
    via_rev = score(root, probes, revision="step2")
    assert np.abs(via_rev["logp_foil"] - fresh["logp_foil"]).max() < 1e-6 and via_rev.attrs["revision"] == "step2"


def test_load_weights_into_refuses_another_architecture(revisions):
    _, a, _, _, other = revisions
    model, _ = load_model(a)
    with pytest.raises(ModelLoadError, match="different architecture"):
        load_weights_into(model, other)


def test_config_check_is_remembered_by_content_not_by_folder(revisions, tmp_path):
    """A config.json that passed once is not parsed again, but an edited one is: the check
    is remembered by the file's bytes (and the loaded model's type), not by where it lives."""
    import json
    import shutil

    _, a, b, _, _ = revisions
    model, _ = load_model(a)
    load_weights_into(model, b)  # b's config passes (and is remembered)
    edited = tmp_path / "edited"
    shutil.copytree(b, edited)
    config = json.loads((edited / "config.json").read_text())
    for model_type, match in (("llama", "config.json says model_type 'llama'"), ("bert", "bert")):
        config["model_type"] = model_type
        (edited / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelLoadError, match=match):
            load_weights_into(model, edited)
    shutil.copy(b / "config.json", edited / "config.json")  # the same bytes as b's again
    load_weights_into(model, edited)


def test_load_errors(revisions, tmp_path):
    root = revisions[0]
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="revision 'step7' not found .* step1, step2"):
        load_model(root, revision="step7")
    with pytest.raises(ModelLoadError, match="no model"):
        load_weights_into(load_model(revisions[1])[0], tmp_path)


def test_reduced_precision_keeps_fp32_log_sum_exp(revisions):
    _, a, *_ = revisions
    probes = _set(_items())
    ref = score(a, probes)
    half, tok = load_model(a, dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    frame = score(half, probes, tokenizer=tok)
    assert frame.attrs["dtype"] == "bfloat16" and np.isfinite(frame["logp_target"]).all()
    # bf16 weights move the numbers a little, not wholesale
    assert np.abs(frame["logp_target"] - ref["logp_target"]).median() < 0.5
    with pytest.raises(ScoringError, match="loaded in bfloat16 but dtype 'float32'"):
        score(half, probes, tokenizer=tok, dtype="float32")


# --- the real NeoX tokenizer and a Pythia-shaped model ----------------------------------------
def test_neox_tokenization_edge_cases():
    tok = neox_tokenizer()
    assert tok(" she", add_special_tokens=False)["input_ids"] == [703]
    assert tok("she", add_special_tokens=False)["input_ids"] == [6689]
    items = [ProbeItem("a", "r", "agree", "train", "Sue cried because ", "she", "he"),
             ProbeItem("b", "r", "agree", "train", "Sue cried because", " she", " he")]
    spaced, plain = encode_items(items, tok)
    assert spaced == plain  # the trailing space moved into the candidates: no stray "Ġ" token
    assert spaced.target_ids == (703,) and spaced.foil_ids == (344,)
    assert spaced.context_ids[:2] == (52, 489)  # "Sue" at sequence start splits in two
    assert tok(" Sue", add_special_tokens=False)["input_ids"] == [34876]
    with_bos = encode_items(items[:1], tok, bos=True)[0]
    assert with_bos.context_ids == (0,) + spaced.context_ids


@pytest.mark.slow
def test_pythia_shaped_padding_rows_are_a_recorded_choice():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = neox_tokenizer()
    assert len(tok) == 50277
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                           intermediate_size=2048, rotary_pct=0.25, max_position_embeddings=2048,
                           use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=0,
                           eos_token_id=0, pad_token_id=1)
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        # padding rows with large logits: a fixed direction in the final norm's output
        u = torch.nn.functional.normalize(torch.randn(512), dim=0)
        model.gpt_neox.final_layer_norm.bias.copy_(3 * u)
        model.get_output_embeddings().weight[50277:] = 20 * u
    items = [ProbeItem("p1", "pronoun_gender", "conflict", "heldout", "Mia cried because", " she", " he"),
             ProbeItem("p2", "pronoun_gender", "agree", "train", "Yesterday Tom said that ", "he", "she"),
             ProbeItem("a1", "indefinite_article", "conflict", "train", "I ate", " an apple", " a apple")]
    frames = {rows: score(model, _set(items), tokenizer=tok, vocab_rows=rows, batch_size=2)
              for rows in ("tokenizer", "all")}
    for rows, n in (("tokenizer", 50277), ("all", 50304)):
        frame = frames[rows]
        assert frame.attrs["vocab_rows"] == rows and frame.attrs["vocab_rows_n"] == n
        for item, got_t, got_f in zip(items, frame["logp_target"], frame["logp_foil"]):
            assert abs(got_t - _reference(model, tok, item, item.target, bos=False, rows=n)) < TOL
            assert abs(got_f - _reference(model, tok, item, item.foil, bos=False, rows=n)) < TOL
    shift = frames["tokenizer"]["logp_target"] - frames["all"]["logp_target"]
    assert (shift > 1.0).all()  # the padding rows soak up probability under "all"


# --- CPU threads and the OpenMP wait policy (issue #17) -----------------------------------
def test_cgroup_quota_and_available_cpus(tmp_path):
    from pythia_forensics.scoring import cpus

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_cpu_limit(v2) == 2  # 1.5 CPUs of quota round up
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpu_limit(v1) == 3
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.cgroup_cpu_limit(v1) is None
    assert cpus.cgroup_cpu_limit(tmp_path / "absent") is None
    assert cpus.available_cpus(affinity=8, quota=3) == 3
    assert cpus.available_cpus(affinity=2, quota=None) == 2
    assert cpus.available_cpus(affinity=2, quota=16) == 2


def test_thread_count_precedence(monkeypatch):
    from pythia_forensics.scoring import cpus
    from pythia_forensics.scoring import score as scoring

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("PF_THREADS", "5")
    assert scoring.resolve_threads("auto") == 5 and scoring.resolve_threads(2) == 2  # explicit beats env
    monkeypatch.delenv("PF_THREADS")
    assert scoring.resolve_threads("auto") == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert scoring.resolve_threads("auto") == cpus.available_cpus()
    for bad in ("0", "two", "1.5", "-1"):
        monkeypatch.setenv("PF_THREADS", bad)
        with pytest.raises(ScoringError, match="PF_THREADS"):
            scoring.resolve_threads("auto")


def test_wait_policy_is_set_only_before_torch_and_never_over_the_user(monkeypatch):
    from pythia_forensics.scoring import cpus

    monkeypatch.setattr(cpus, "_policy_at_import", cpus._policy_at_import)  # restored afterwards

    env: dict[str, str] = {}
    assert cpus.set_wait_policy(env, {}) == "PASSIVE" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert cpus.set_wait_policy(env, {}) == "ACTIVE" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {}
    assert cpus.set_wait_policy(env, {"torch": object()}) is None and "OMP_WAIT_POLICY" not in env
    assert cpus.wait_policy() == "unknown"  # torch came first: libgomp read an unknown policy


@pytest.mark.slow
def test_fresh_interpreter_scores_under_the_passive_policy_and_records_it(tiny_checkpoint):
    """Importing pythia_forensics before torch sets the policy libgomp reads; score records it."""
    import subprocess
    import sys

    ckpt = tiny_checkpoint
    code = ("import os, pythia_forensics as pf\n"
            "import torch\n"
            "from pythia_forensics.scoring.probes import ProbeSet, probe_set_sha256\n"
            "items = (pf.ProbeItem(item_id='a', rule='r', condition='agree', split='train', "
            "prefix='Mia cried because', target=' she', foil=' he'),)\n"
            "f = pf.score(%r, ProbeSet('t', items, probe_set_sha256(items), 'memory'), threads=1)\n"
            "print(os.environ['OMP_WAIT_POLICY'], f.attrs['omp_wait_policy'], f.attrs['threads'])\n") % str(ckpt)
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["PASSIVE", "PASSIVE", "1"]


@pytest.mark.parametrize("blocks", [HeadBlocks(rows=4, vocab=37), HeadBlocks(rows=5, vocab=None)])
@pytest.mark.parametrize("threads", [1, 2])
def test_head_blocks_and_side_by_side_batches_keep_the_numbers(model, tiny_tokenizer, references, monkeypatch,
                                                               blocks, threads):
    """The head runs over partial row blocks and vocabulary chunks, on batches that run one at
    a time or side by side on two workers: the numbers equal the plain fp32 loop (the default
    blocking covers the tiny vocabulary in one chunk, so this is where chunks are combined)."""
    monkeypatch.setitem(HEAD_BLOCKS, "cpu", blocks)
    frame = score(model, _set(_items()), tokenizer=tiny_tokenizer, batch_size=3, threads=threads)
    assert (frame.attrs["workers"], frame.attrs["kernel_threads"], frame.attrs["threads"]) == (threads, 1, threads)
    assert np.abs(frame["logp_target"].to_numpy() - references[False][0]).max() < TOL
    assert np.abs(frame["logp_foil"].to_numpy() - references[False][1]).max() < TOL


def test_sets_scored_in_one_pass_equal_each_set_scored_alone(model, tiny_tokenizer, references):
    """score_sets: one plan for several sets (a shared prefix across sets runs once), one frame
    per set with that set's own attrs, numbers equal to scoring each set alone and to the
    plain fp32 loop."""
    from pythia_forensics.scoring.score import merged_probe_set, prepare, score_sets

    items = _items()
    a = ProbeSet("a", tuple(items[::2]), probe_set_sha256(items[::2]), "memory")
    b = ProbeSet("b", tuple(items[1::2]), probe_set_sha256(items[1::2]), "memory")
    merged = merged_probe_set([a, b])
    assert merged.sha256 != merged_probe_set([b, a]).sha256 and len(merged.items) == len(items)
    assert merged_probe_set([a]) is a
    prepared = prepare(model, merged, tokenizer=tiny_tokenizer)
    frames = score_sets(model, [a, b], tokenizer=tiny_tokenizer, prepared=prepared)
    alone = [score(model, p, tokenizer=tiny_tokenizer) for p in (a, b)]
    ref_t = np.empty(len(items))
    ref_t[0::2], ref_t[1::2] = references[False][0][0::2], references[False][0][1::2]
    for k, (frame, single, p) in enumerate(zip(frames, alone, (a, b))):
        assert frame["item_id"].tolist() == [i.item_id for i in p.items] and list(frame.index) == list(range(len(p.items)))
        assert (frame.attrs["probeset"], frame.attrs["probeset_sha256"], frame.attrs["scored_with"]) == (p.name, p.sha256, ["a", "b"])
        for col in ("logp_target", "logp_foil", "margin"):
            assert_fp32_close(frame[col].to_numpy(), single[col].to_numpy(), what=col)
        assert np.abs(frame["logp_target"].to_numpy() - ref_t[k::2]).max() < TOL
    assert frames[0].attrs["forward_tokens"] < alone[0].attrs["forward_tokens"] + alone[1].attrs["forward_tokens"]
    with pytest.raises(ScoringError, match="does not fit"):
        score_sets(model, [b, a], tokenizer=tiny_tokenizer, prepared=prepared)  # another combination
