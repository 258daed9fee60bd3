"""README "Numerical contract" (a): what a unit's numbers may depend on.

The batch plan is a function of the sequence lengths and the batch size only; an out-of-memory
back-off restarts the unit, so every number comes from one plan; the kernel settings that move
fp32 results (intra-op threads, deterministic algorithms, matmul precision) are pinned for the
call whatever the process set before, recorded, and restored.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from numerics import assert_fp32_close
from pin_golden import CHECKPOINT

from pythia_forensics.scoring import score as scoring
from pythia_forensics.scoring.plan import SCORING_BATCH_ROW_TOKENS, batches as plan_batches
from pythia_forensics.errors import ScoringError
from pythia_forensics.scoring.probes import ProbeItem, ProbeSet, probe_set_sha256

NAMES = ["Mia", "Tom", "Sue", "Bob", "Lily", "Jack", "Anna", "John", "Ella", "Max"]
VERBS = ["cried", "laughed", "said that", "hurt"]


@pytest.fixture(scope="module")
def loaded():
    return scoring.load_model(CHECKPOINT, dtype="float32", device="cpu")


def _probes() -> ProbeSet:
    """40 distinct prefixes of different lengths: many forward rows, several batches."""
    items = [ProbeItem(f"c{k}", "r", "agree", "train", f"{n} {v}" + " because" * (k % 3), " she", " he")
             for k, (n, v) in enumerate((n, v) for n in NAMES for v in VERBS)]
    return ProbeSet("contract", tuple(items), probe_set_sha256(items), "memory")


def _record_forwards(model, *, fail_above: int | None = None):
    """Forward pre-hook on the body: records (rows, threads, deterministic) of each forward;
    raises an out-of-memory error for batches of more than `fail_above` padded tokens."""
    seen: list[tuple[int, int, bool]] = []

    def hook(module, args, kwargs):
        rows = int(kwargs["input_ids"].shape[0])
        if fail_above is not None and kwargs["input_ids"].numel() > fail_above:
            raise RuntimeError(f"out of memory (injected: {kwargs['input_ids'].numel()} tokens)")
        seen.append((rows, torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()))

    return seen, model.base_model.register_forward_pre_hook(hook, with_kwargs=True)


def test_batches_depend_on_lengths_and_batch_size_only():
    lengths = [40, 33, 20, 20, 9, 9, 9, 3, 3, 2, 1]
    got = plan_batches(lengths, 4)
    # budget 4 x 32 = 128 padded tokens: width 40 -> 3 rows, width 20 -> 4 rows, ...
    assert got == [(0, 3), (3, 4), (7, 4)]
    assert plan_batches(lengths, 4) == got and plan_batches(lengths, 1) == [(k, 1) for k in range(11)]
    for bs in (1, 2, 7, 64):
        batches = plan_batches(lengths, bs)
        assert [s for s, _ in batches] == list(np.cumsum([0] + [c for _, c in batches])[:-1])
        assert sum(c for _, c in batches) == len(lengths)
        assert all(c <= bs and (c == 1 or c * lengths[s] <= bs * SCORING_BATCH_ROW_TOKENS) for s, c in batches)


def test_threads_are_pinned_for_the_call_recorded_and_restored(loaded, monkeypatch):
    model, tok = loaded
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    seen, handle = _record_forwards(model)
    try:
        results = {}
        for earlier in (1, 2):  # what some earlier caller (a trainer, a test) left behind
            torch.set_num_threads(earlier)
            frame = scoring.score(model, _probes(), tokenizer=tok)
            assert torch.get_num_threads() == earlier  # restored
            assert not torch.are_deterministic_algorithms_enabled()
            results[earlier] = frame
        frame = scoring.score(model, _probes(), tokenizer=tok, threads=1)
    finally:
        handle.remove()
        torch.set_num_threads(before)
    assert {s[1] for s in seen[:-len(seen) // 3]} == {2} and {s[1] for s in seen[-len(seen) // 3:]} == {1}
    assert all(s[2] for s in seen)  # deterministic algorithms on during every forward
    assert results[1].attrs["threads"] == results[2].attrs["threads"] == 2 and frame.attrs["threads"] == 1
    assert results[1].attrs["deterministic_algorithms"] and results[1].attrs["float32_matmul_precision"] == "highest"
    assert results[1].attrs["attn_implementation"] == model.config._attn_implementation
    # same unit, same pinned settings: the same numbers, whatever ran before
    cols = ["logp_target", "logp_foil"]
    assert_fp32_close(results[1][cols].to_numpy(), results[2][cols].to_numpy(), ulps=1, what="log-probs")


def test_side_by_side_batches_give_the_numbers_of_one_thread_bit_for_bit(loaded):
    """On CPU a call's threads run batches side by side, each on single-threaded kernels: the
    numbers are those of one thread exactly, and the split is recorded."""
    model, tok = loaded
    seen, handle = _record_forwards(model)
    try:
        one, two = (scoring.score(model, _probes(), tokenizer=tok, batch_size=1, threads=t) for t in (1, 2))
    finally:
        handle.remove()
    assert (one.attrs["workers"], one.attrs["kernel_threads"]) == (1, 1)
    assert (two.attrs["workers"], two.attrs["kernel_threads"], two.attrs["threads"]) == (2, 1, 2)
    assert two.attrs["forward_sequences"] >= 2 and {s[1] for s in seen} == {1}  # every forward: 1 kernel thread
    cols = ["logp_target", "logp_foil"]
    assert (one[cols].to_numpy() == two[cols].to_numpy()).all()


def test_auto_threads_follow_the_environment_not_the_process(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert scoring.resolve_threads("auto") == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert scoring.resolve_threads("auto") == len(__import__("os").sched_getaffinity(0))
    finally:
        torch.set_num_threads(torch_before)
    assert scoring.resolve_threads(5) == 5
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ScoringError, match="threads must be a positive integer"):
            scoring.ScoreOptions(threads=bad)


def test_out_of_memory_restarts_the_unit_with_one_plan(loaded):
    model, tok = loaded
    oom_seen, handle = _record_forwards(model, fail_above=100)  # one ~90-token tree row per batch passes
    try:
        backed_off = scoring.score(model, _probes(), tokenizer=tok, batch_size="auto")
    finally:
        handle.remove()
    direct_seen, handle = _record_forwards(model)
    try:
        direct = scoring.score(model, _probes(), tokenizer=tok, batch_size=4)
    finally:
        handle.remove()
    assert backed_off.attrs["batch_size"] == 4  # 64 -> 32 -> 16 -> 8 -> 4, recorded
    # after the restart, every sequence ran exactly once, in the batches a batch size of 4 makes
    assert [r for r, _, _ in oom_seen] == [r for r, _, _ in direct_seen]
    assert sum(r for r, _, _ in oom_seen) == backed_off.attrs["forward_sequences"] == len(oom_seen) > 1
    cols = ["logp_target", "logp_foil"]
    assert_fp32_close(backed_off[cols].to_numpy(), direct[cols].to_numpy(), ulps=1, what="log-probs")


def test_out_of_memory_at_a_fixed_batch_size_is_an_error(loaded):
    model, tok = loaded
    _, handle = _record_forwards(model, fail_above=100)
    try:
        with pytest.raises(ScoringError, match="out of memory at batch size 16"):
            scoring.score(model, _probes(), tokenizer=tok, batch_size=16)
    finally:
        handle.remove()
