"""The benchmark: its quick path end to end, its battery, its floor arithmetic, its baseline.

The quick path runs every competitor (ours, lm-eval, minicons, full-logits) on a tiny GPT-NeoX
with Pythia's padded vocabulary and the real NeoX tokenizer; the table must name each one and
every competitor's log-probs must agree with ours to 1e-4 (the benchmark computes that delta
itself, from independent implementations; here we also check the full-logits baseline against
a plain one-item loop written in this file).
"""
from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest

from tinymodels import neox_tokenizer

from benchmarks import battery, competitors, floor, gpu, report, run, suite
from benchmarks.settings import BENCH_COMPETITORS, BENCH_MAX_ABS_DELTA, BENCH_MIN_ITEMS


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    neox_tokenizer()  # skip cleanly without the real tokenizer
    out = tmp_path_factory.mktemp("bench")
    plan = replace(run.default_plan(quick=True), items=48, support_tokens=200_000)
    # in-process: one import of torch/lm-eval instead of four fresh interpreters (RSS not measured)
    return out, run.run_bench(out, plan=plan, isolate=False, gpu=False, progress=False)


@pytest.mark.slow  # the quick benchmark end to end: every competitor, several rounds
def test_quick_table_names_every_competitor_and_agrees_with_ours(quick_report):
    out, report = quick_report
    table = pd.read_csv(out / "bench.csv")
    assert set(table["competitor"]) == set(BENCH_COMPETITORS)
    assert (table["status"] == "ok").all(), table[["competitor", "status"]]
    others = table[table["competitor"] != "ours"]
    assert others["max_abs_delta_logp"].notna().all()
    assert (others["max_abs_delta_logp"] <= BENCH_MAX_ABS_DELTA).all(), others[["competitor", "max_abs_delta_logp"]]
    assert (table["wall_per_revision_s"] > 0).all()
    assert (table.loc[table["competitor"] == "ours", "ratio_vs_ours"] == 1.0).all()
    md = (out / "bench.md").read_text()
    for comp in BENCH_COMPETITORS:
        assert f"| {comp} |" in md
    assert "## Where our time goes" in md and "## The machine's floor" in md
    assert "skipped" in md  # GPU section disabled here, said so


def _nonembedding_params(model) -> tuple[int, int]:
    """(non-embedding, total) parameter counts of a real model, counted from its tensors."""
    emb = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    params = list(model.parameters())
    return sum(p.numel() for p in params if id(p) not in emb), sum(p.numel() for p in params)


@pytest.mark.slow  # the quick benchmark end to end: every competitor, several rounds
def test_quick_plans_breakdown_and_floor_recomputed_from_the_checkpoint(quick_report):
    import json

    from safetensors import safe_open

    out, report = quick_report
    plans = report["plans"]
    # the scorer offers both plans on GPT-NeoX: a missing tree plan is a failure, never a skip
    assert {"causal_rows", "causal_tokens", "tree_rows", "tree_tokens"} <= set(plans)
    counted = report["battery"]
    # the hand-free trie count (battery_stats) bounds what any plan must run
    assert counted["distinct_tokens"] <= plans["tree_tokens"] < plans["causal_tokens"] < counted["naive_tokens"]

    # ours' stages come from a profiled sweep of public calls: each stage was measured (NaN
    # only where score() does not record forward / head times), and their sum is the total
    stages = report["breakdown"]["tiny"]
    assert stages["load"] > 0 and stages["prepare"] > 0 and stages["store"] > 0 and stages["score_other"] > 0
    measured = [v for k, v in stages.items() if k != "total" and not math.isnan(v)]
    assert min(measured) >= 0 and stages["total"] == pytest.approx(sum(measured), rel=1e-9)

    # the floor, recomputed from the checkpoint the benchmark scored: parameters counted from
    # its tensors (not from the shape's formula), layers and width from its config
    rev = suite.revision_dirs(out / "suite" / "tiny")[: report["plan"]["revisions"]][-1]
    weights = rev / "model.safetensors"
    config = json.loads((rev / "config.json").read_text())
    nonemb = vocab = 0
    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            if "embed_in" in name or "embed_out" in name or "lm_head" in name:
                vocab = shape[0] if ("embed_out" in name or "lm_head" in name) else vocab
                continue
            if name.endswith(("attention.bias", "masked_bias", "rotary_emb.inv_freq")):
                continue  # buffers, not parameters
            nonemb += math.prod(shape)
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    flops = (2 * nonemb * counted["distinct_tokens"] + 4 * layers * d * counted["attention_positions"]
             + 2 * d * vocab * counted["distinct_contexts"])
    floor = report["floor"]["tiny"]
    assert floor["flops"] == pytest.approx(flops, rel=1e-12)
    exps = vocab * counted["distinct_contexts"]
    assert floor["exps"] == exps and floor["exp_s"] == pytest.approx(exps / floor["exps_per_s"], rel=1e-12)
    assert floor["compute_s"] == pytest.approx(flops / floor["flops_per_s"] + exps / floor["exps_per_s"], rel=1e-12)
    assert floor["load_s"] == pytest.approx(weights.stat().st_size / floor["read_bytes_per_s"], rel=1e-12)
    assert floor["floor_s"] == max(floor["compute_s"], floor["load_s"]) > 0


def test_battery_mixes_lengths_candidates_and_shared_prefixes():
    tok = neox_tokenizer()
    probes = battery.build_battery()
    assert len(probes.items) >= BENCH_MIN_ITEMS
    assert len({i.item_id for i in probes.items}) == len(probes.items)
    stats = battery.battery_stats(probes, tok)
    assert stats.single_token_items > 200 and stats.multi_token_items > 200
    assert stats.distinct_prefixes < 0.7 * stats.items  # many items share a prefix
    assert stats.prefix_tokens_min <= 4 and stats.prefix_tokens_max >= 30
    # the trie never has more tokens than running every (item, candidate) on its own
    assert stats.distinct_tokens < stats.naive_tokens


def test_battery_stats_count_a_hand_made_trie():
    tok = neox_tokenizer()
    from pythia_forensics.scoring.probes import ProbeItem, ProbeSet

    items = (
        ProbeItem("a", "pronoun_gender", "conflict", "train", "Sue cried because", " she", " he"),
        ProbeItem("b", "pronoun_gender", "conflict", "train", "Sue cried because", " she was", " he was"),
    )
    stats = battery.battery_stats(ProbeSet("t", items, "x", "test"), tok)
    prefix = tok("Sue cried because", add_special_tokens=False)["input_ids"]
    n = len(prefix)
    assert stats.distinct_prefixes == 1
    # rows read: after the prefix (shared by all four candidates), after " she", after " he"
    assert stats.distinct_contexts == 3
    # trie of prefix + candidate[:-1]: the prefix's n tokens, then " she" and " he" branches
    assert stats.distinct_tokens == n + 2
    assert stats.naive_tokens == 2 * (n + 1) + 2 * (n + 2)


def test_lower_bound_from_a_real_model_and_a_hand_counted_trie():
    """Parameter counts from a real GPT-NeoX built from the shape; trie counts by hand."""
    from transformers import GPTNeoXForCausalLM

    from pythia_forensics.scoring.probes import ProbeItem, ProbeSet

    shape = suite.BenchShape("s", layers=2, d_model=8, heads=2, vocab_size=100)
    nonemb, total = _nonembedding_params(GPTNeoXForCausalLM(suite.neox_config(shape)))
    assert shape.params_nonembedding == nonemb and shape.params_total == total
    tok = neox_tokenizer()
    items = (ProbeItem("a", "r", "conflict", "train", "Sue cried because", " she", " he"),
             ProbeItem("b", "r", "conflict", "train", "Sue cried because", " she was", " he was"))
    stats = battery.battery_stats(ProbeSet("t", items, "x", "test"), tok)
    n = len(tok("Sue cried because", add_special_tokens=False)["input_ids"])
    # trie: the prefix's n tokens (depths 1..n), then " she" and " he" (depth n+1 each);
    # logits read after the prefix, after " she" and after " he"
    tokens, positions, contexts = n + 2, n * (n + 1) // 2 + 2 * (n + 1), 3
    f = floor.lower_bound(shape, stats, flops_per_s=1e6, read_bytes_per_s=1e3, weight_bytes=4 * total, exps_per_s=50.0)
    want = 2 * nonemb * tokens + 4 * 2 * 8 * positions + 2 * 8 * 100 * contexts
    assert f["flops"] == want and f["body_flops"] + f["head_flops"] == want
    assert f["exps"] == 100 * contexts and f["exp_s"] == pytest.approx(100 * contexts / 50.0)
    assert f["compute_s"] == pytest.approx(want / 1e6 + 100 * contexts / 50.0)
    assert f["load_s"] == pytest.approx(4 * total / 1e3)
    assert f["floor_s"] == max(f["compute_s"], f["load_s"])


def test_missing_numbers_count_as_mismatch(tmp_path):
    import numpy as np

    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.zeros((2, 3, 2)))
    np.save(b, np.full((1, 3, 2), np.nan))
    revs = [tmp_path / "step1", tmp_path / "step2"]
    ours = competitors.RunResult("ours", "s", 0, 2, 3, 1.0, 0.0, 1.0, None, logp_file=str(a))
    other = competitors.RunResult("x", "s", 0, 1, 3, 1.0, 0.0, 1.0, None, logp_file=str(b))
    assert run.max_abs_delta(ours, other, revs, revs[1:]) == math.inf
    np.save(b, np.full((1, 3, 2), 0.25))
    assert run.max_abs_delta(ours, other, revs, revs[1:]) == 0.25


@pytest.mark.slow
def test_full_logits_baseline_matches_a_plain_loop(tiny_suite):
    """The baseline the table compares against is itself right: one item at a time, fp32."""
    import numpy as np
    import torch

    tok = neox_tokenizer()
    revs, probes = tiny_suite
    rev = revs[0]
    logp, _, _ = competitors.SWEEPS["full-logits"]([rev], probes, batch_size=5)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(rev), dtype=torch.float32).eval()
    for k, it in enumerate(probes.items[:6]):
        for j, cand in enumerate((it.target, it.foil)):
            p = tok(it.prefix, add_special_tokens=False)["input_ids"]
            c = tok(cand, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].double(), -1)
            want = sum(lp[len(p) - 1 + t, c[t]].item() for t in range(len(c)))
            assert logp[0, k, j] == pytest.approx(want, abs=1e-4)
    assert not np.isnan(logp).any()


def test_cli_without_tokenizer_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from benchmarks.__main__ import main

    monkeypatch.setenv("PF_NEOX_TOKENIZER", str(tmp_path / "missing.json"))
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "o"), "--quick"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "PF_NEOX_TOKENIZER" in err and "\n" not in err


def test_device_section_picks_the_largest_shape_that_fits():
    """The GPU section's logic, run on CPU: too-big shapes are skipped, the largest that fits
    is scored, then the smallest for scale; without CUDA the real section says it skipped."""
    import torch

    neox_tokenizer()  # the battery is tokenized with Pythia's tokenizer: skip cleanly without it

    tiny = suite.bench_shapes(quick=True)[0]
    big = replace(tiny, name="big", d_model=4096, layers=64)
    small = replace(tiny, name="small", layers=1)
    probes = battery.build_battery(min_items=8)
    out = gpu.gpu_section(probes, device="cpu", shapes=[big, tiny, small], memory_bytes=2**30)
    rows = {r["shape"]: r for r in out["rows"]}
    assert rows["big"]["status"].startswith("skipped: needs")
    assert rows["tiny"]["status"] == "ok" and rows["tiny"]["dtype"] == "float32" and rows["tiny"]["items_per_s"] > 0
    assert rows["small"]["status"] == "ok"
    if not torch.cuda.is_available():
        assert gpu.gpu_section(probes)["status"].startswith("skipped: no CUDA")


def test_shapes_cover_the_mini_suite_body_and_pythia_14m():
    from pythia_forensics.experiments.mini.config import demo_config
    from pythia_forensics.checkpoints.registry import get_suite

    shapes = {s.name: s for s in suite.bench_shapes()}
    assert list(shapes) == ["mini-s", "pythia-14m", "pythia-31m", "pythia-70m"]
    mini = next(m for m in demo_config().models if m.name == "mini-s")
    assert (shapes["mini-s"].layers, shapes["mini-s"].d_model, shapes["mini-s"].heads) == \
        (mini.layers, mini.d_model, mini.heads)
    p14 = get_suite("pythia").model("pythia-14m")
    assert (shapes["pythia-14m"].layers, shapes["pythia-14m"].d_model) == (int(p14.layers), int(p14.d_model))
    assert {s.vocab_size for s in shapes.values()} == {50304}  # one tokenizer, Pythia's padded rows
    (large,) = suite.bench_shapes(large=True)
    p160 = get_suite("pythia").model("pythia-160m")
    assert large.name == "pythia-160m"
    assert (large.layers, large.d_model, large.heads) == (int(p160.layers), int(p160.d_model), int(p160.heads))
    assert run.default_plan().large.shapes == (large,)


@pytest.mark.slow  # starts an interpreter
def test_competing_job_burns_cpu_while_held_and_is_gone_after():
    import time
    from pathlib import Path

    with run.CompetingJob(threads=2, size=128) as job:
        pid = job.proc.pid
        stat = Path(f"/proc/{pid}/stat")

        def cpu_ticks() -> int:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime

        first = cpu_ticks()
        deadline = time.monotonic() + 60
        while cpu_ticks() == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cpu_ticks() > first
    assert job.proc is None
    assert not stat.exists() or "Z" in stat.read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow  # the quick benchmark end to end: every competitor, several rounds
def test_quick_large_tier_runs_only_its_competitors_and_agrees_with_ours(quick_report):
    """The large tier (Pythia-160m in `make bench`; a second tiny shape here) runs after the
    rounds: only its competitors, its own revisions, ours beside the torch job too, a floor."""
    out, report = quick_report
    large = run.default_plan(quick=True).large
    table = pd.read_csv(out / "bench.csv")
    rows = table[table["shape"] == large.shapes[0].name].set_index("competitor")
    assert list(rows.index) == list(large.competitors) == ["ours", "lm-eval"]
    assert (rows["status"] == "ok").all() and (rows["rounds"] == large.rounds).all()
    assert rows.loc["ours", "revisions_per_round"] == large.revisions
    assert rows.loc["lm-eval", "max_abs_delta_logp"] <= BENCH_MAX_ABS_DELTA
    assert rows.loc["ours", "contended_wall_per_revision_s"] > 0
    assert report["floor"][large.shapes[0].name]["floor_s"] > 0
    assert report["plan"]["large"]["shapes"] == [large.shapes[0].name]
    assert "Large tier" in (out / "bench.md").read_text()
    # the main tier's shape keeps every competitor
    assert set(table.loc[table["shape"] == "tiny", "competitor"]) == set(BENCH_COMPETITORS)


def test_a_shape_planned_in_two_tiers_is_refused():
    plan = run.default_plan(quick=True)
    twice = replace(plan, large=replace(plan.large, shapes=plan.shapes))
    with pytest.raises(suite.BenchmarkError, match="planned twice"):
        run.run_bench("unused", plan=twice, gpu=False, progress=False)


@pytest.mark.slow  # the quick benchmark end to end: every competitor, several rounds
def test_quick_contention_and_floor_columns(quick_report):
    out, report = quick_report
    table = pd.read_csv(out / "bench.csv")
    ours = table[table["competitor"] == "ours"].iloc[0]
    assert ours["contended_wall_per_revision_s"] > 0
    assert ours["slowdown_contended"] == pytest.approx(ours["contended_wall_per_revision_s"] / ours["wall_per_revision_s"])
    for row in table.itertuples():
        floor = report["floor"][row.shape]
        assert floor["floor_s"] == pytest.approx(max(floor["compute_s"], floor["load_s"]))
        assert row.ratio_to_floor == pytest.approx(row.wall_per_revision_s / floor["floor_s"])
    assert table.loc[table["competitor"] != "ours", "slowdown_contended"].isna().all()
    assert "beside one other torch job" in (out / "bench.md").read_text()


@pytest.mark.slow  # writes a checkpoint and loads it twice; gpu_section's test covers the scoring path fast
def test_checkpoint_section_loads_and_scores_each_dtype(tmp_path):
    """The GPU checkpoint section's code, on CPU with the tiny shape: both dtypes load from the
    saved folder and score, each row says what it measured, the folder is cleaned up."""
    import torch

    neox_tokenizer()
    tiny = suite.bench_shapes(quick=True)[0]
    probes = battery.build_battery(min_items=8)
    out = gpu.checkpoint_section(probes, tmp_path / "ck", device="cpu", shape=tiny)
    rows = {r["dtype"]: r for r in out["rows"]}
    assert set(rows) == {"float32", "bfloat16"}
    for r in rows.values():
        assert r["status"] == "ok" and r["load_s"] > 0 and r["score_s"] > 0 and r["weight_mb"] > 0
    assert not (tmp_path / "ck").exists()  # the checkpoint is removed afterwards
    if not torch.cuda.is_available():
        assert gpu.checkpoint_section(probes, tmp_path / "x")["status"].startswith("skipped: no CUDA")


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    """Two random revisions of the tiny shape (real NeoX tokenizer) and a 12-item battery."""
    neox_tokenizer()
    shape = suite.bench_shapes(quick=True)[0]
    model_dir = suite.build_suite(tmp_path_factory.mktemp("suite"), shape, revisions=2, progress=False)
    return suite.revision_dirs(model_dir), battery.build_battery(min_items=12)


def test_profile_ours_scores_and_stores_what_a_fresh_load_scores(tiny_suite, tmp_path):
    """The profiled sweep loads the second revision into the first one's skeleton; what it
    stores must equal scoring each revision loaded on its own, and every stage is timed."""
    import numpy as np

    from pythia_forensics.scoring import score as scoring
    from pythia_forensics.sweep.store import ResultsStore

    revs, probes = tiny_suite
    stages = competitors.profile_ours(revs, probes, tmp_path)
    assert set(stages) == {*competitors.STAGES, "total"}
    assert stages["load"] > 0 and stages["prepare"] > 0 and stages["store"] > 0
    stored = ResultsStore(tmp_path / "profile-results").items()
    assert sorted(set(stored["revision"])) == [r.name for r in revs]
    for rev in revs:
        want = scoring.score(str(rev), probes, dtype="float32", device="cpu", vocab_rows="all")
        got = stored[stored["revision"] == rev.name].set_index("item_id").loc[want["item_id"]]
        np.testing.assert_array_equal(got["logp_target"].to_numpy(), want["logp_target"].to_numpy())
        np.testing.assert_array_equal(got["logp_foil"].to_numpy(), want["logp_foil"].to_numpy())


def test_score_split_uses_what_score_recorded_and_refuses_to_guess():
    stages: dict[str, float] = {}
    timings = {"tokenize_s": 0.0, "plan_s": 0.0, "forward_s": 0.5, "head_s": 0.25, "total_s": 0.9}
    competitors._split_score(stages, 1.0, timings)
    competitors._split_score(stages, 2.0, timings)
    assert stages == {"forward": 1.0, "lm_head": 0.5, "score_other": 1.5}  # (1 - .75) + (2 - .75)
    with pytest.raises(KeyError):  # a scorer that records no head time: no made-up split
        competitors._split_score({}, 1.0, {"forward_s": 0.5})


def test_summary_rows_against_hand_arithmetic():
    """Two rounds of ours (4 revisions) and lm-eval (1 revision), ours once beside a torch job."""
    def res(comp, r, revs, wall, cpu, status="ok"):
        return competitors.RunResult(comp, "s", r, revs, 10, wall, 0.1 * wall, 0.9 * wall, 2**20,
                                     status=status, extra={"cpu_s": cpu})

    runs = [res("ours", 0, 4, 2.0, 4.0), res("ours", 1, 4, 4.0, 4.0),
            res("lm-eval", 0, 1, 3.0, 6.0), res("lm-eval", 1, 1, 5.0, 6.0)]
    contended = [res("ours", 0, 4, 6.0, 4.0)]
    floors = {"s": {"floor_s": 0.25, "compute_s": 0.25, "load_s": 0.125}}
    rows = {r["competitor"]: r for r in report.summary_rows(
        runs, contended, {("s", "lm-eval"): [1e-6, 3e-5]}, floors, shapes=["s"],
        competitors=["ours", "lm-eval"], items=10)}
    ours, peer = rows["ours"], rows["lm-eval"]
    assert ours["wall_per_revision_s"] == 0.75          # median of 0.5 and 1.0
    assert peer["wall_per_revision_s"] == 4.0           # median of 3 and 5
    assert peer["ratio_vs_ours"] == pytest.approx(4.0 / 0.75)
    assert peer["cpu_ratio_vs_ours"] == pytest.approx(6.0 / 1.0)
    assert peer["max_abs_delta_logp"] == 3e-5 and peer["target_met"] is True
    assert ours["ratio_to_floor"] == pytest.approx(3.0) and ours["ratio_to_floor_plus_load"] == pytest.approx(2.0)
    assert ours["slowdown_contended"] == pytest.approx(1.5 / 0.75)
    assert math.isnan(peer["slowdown_contended"]) and ours["items_per_s"] == pytest.approx(10 / 0.75)
    runs[3] = res("lm-eval", 1, 1, math.nan, math.nan, status="failed: boom")
    rows = {r["competitor"]: r for r in report.summary_rows(
        runs, [], {}, floors, shapes=["s"], competitors=["ours", "lm-eval"], items=10)}
    assert rows["lm-eval"]["status"] == "failed: boom" and rows["lm-eval"]["rounds"] == 1
    assert math.isnan(rows["lm-eval"]["max_abs_delta_logp"]) and rows["lm-eval"]["target_met"] is False
