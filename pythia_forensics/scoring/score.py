"""Batched exact log-probs: model + probe items in, one frame row per item out.

For each item the scorer returns log p(target | prefix) and log p(foil | prefix), each the sum
of the candidate's token log-probs (the per-token mean is reported too). The stages, one
module each:

  * `encode` — tokenization made explicit (`encode_items`: whitespace moves into the
    candidates, no special tokens, BOS only when asked);
  * `plan` — which token rows to run and which logits to read (`make_plan`, `make_tree_plan`:
    shared prefixes run once), and how to batch them;
  * `model` — loading, refusals, weights copied into a reused skeleton;
  * `head` — the LM head only on the (row, position) pairs some candidate needs, in fp32
    whatever the model dtype: a blockwise log-sum-exp over the chosen vocabulary rows
    (`ScoreOptions.vocab_rows`) and the read logits;
  * here — running the plan: per batch, the transformer body, then the head on its rows;
    on CPU batches run side by side on worker threads (`cpus.split_threads`); and the frame,
    its attrs, `prepare` (plan once, score many) and `summarize`.

Vocabulary rows: Pythia's output embedding has 50304 rows for a 50277-token tokenizer; the 27
padding rows are never a label. ``vocab_rows="all"`` (default) normalises over every row, the
model's own output distribution, as minicons, lm-eval and the Pythia paper's scorer do;
``"tokenizer"`` over the tokenizer's rows only, i.e. the distribution over text. For trained
Pythias the padding rows carry negligible mass; for random or very early checkpoints they can
carry a lot (2.2e-3 nats per item measured on a Pythia-layout checkpoint), so the choice is
recorded with every result.

Determinism (README "Numerical contract"): the numbers of a unit of work are a pure function
of (model weights, probe set, tokenizer, options). The batch plan (`plan.batches`) depends only
on the plan's sequence lengths and the batch size; an out-of-memory back-off under
``batch_size="auto"`` restarts the unit at the smaller size, so every number of a unit comes
from one plan, and the size that ran is recorded. CPU matmul kernels pick their blocking by
thread count (1 vs 2 threads moved fp32 log-probs by ~1 ulp), so on CPU each batch runs on
single-threaded kernels and a call's `ScoreOptions.threads` (``auto``: `cpus.resolve_threads`)
become workers that run batches side by side (`cpus.split_threads`): the numbers are then the
same whatever the thread count. Scoring pins torch's intra-op threads for the call
(`cpus.pinned_kernels`) instead of inheriting whatever an earlier caller set, pins the fp32
matmul precision to "highest" (no TF32) and enables torch's deterministic algorithms; all of
it is recorded in ``frame.attrs`` and restored afterwards.

Options used are returned in ``frame.attrs`` (see `score`).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pythia_forensics.checkpoints import validation
from pythia_forensics.constants import CONDITIONS, SPLITS
from pythia_forensics.errors import ScoringError
from pythia_forensics.scoring.cpus import pinned_kernels, resolve_threads, split_threads
from pythia_forensics.scoring.encode import EncodedItem, encode_items
from pythia_forensics.scoring.head import blocks_for, log_normaliser, read_logits
from pythia_forensics.scoring.model import load_model, load_weights_into, resolve_device, resolve_dtype
from pythia_forensics.scoring.options import ScoreOptions
from pythia_forensics.scoring.plan import (
    SCORING_BATCH_ROW_TOKENS,
    Plan,
    auto_batch_size,
    batch_inputs,
    batches,
    plan_for,
    plan_reason,
    uses_tree,
)
from pythia_forensics.scoring.probes import ProbeItem, ProbeSet, load_probes

__all__ = [
    "SCORING_VERSION", "FRAME_COLUMNS", "TIMING_KEYS", "ScoreOptions", "EncodedItem", "encode_items", "load_model",
    "load_weights_into", "resolve_device", "resolve_dtype", "resolve_threads", "score", "score_encoded", "summarize",
    "Prepared", "prepare", "plan_reason", "uses_tree", "merged_probe_set", "score_sets",
    "score_tables", "ScoredTable", "item_arrow",
]

# Bump when a change could alter any number the scorer returns (part of the results' work key).
# 2: tree rows (numbers move by float rounding only, ~1e-6); 3: default vocab_rows "all", so
# results stored under the old default are never reused as if scored the new way; 4: the
# blockwise LM head, packed tree rows and batches side by side on single-threaded kernels
# (float rounding only, ~1e-6).
SCORING_VERSION = "4"

FRAME_COLUMNS = (
    "model", "revision", "item_id", "rule", "condition", "split", "prefix", "target", "foil",
    "logp_target", "logp_foil", "margin", "correct", "n_target_tokens", "n_foil_tokens",
    "mean_logp_target", "mean_logp_foil", "target_ids", "foil_ids", "template",
)
# frame.attrs["timings"] keys (seconds; see `score`)
TIMING_KEYS = ("load_s", "tokenize_s", "plan_s", "forward_s", "head_s", "total_s")
# Config fields that make logits differ from `lm_head(last_hidden_state)`; such models take the
# full-forward path instead of the head-only-where-needed one.
_HEAD_MODIFIERS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


# --- running a plan ------------------------------------------------------------------------
class _StageClock:
    """Seconds spent per stage of a run. On CPU, `time.perf_counter` around each stage, added
    up over the worker threads (a lock: several workers run batches at once); on CUDA, events
    recorded around each stage and read once at the end (one synchronize per run, not one per
    batch, so timing does not serialise the stream)."""

    def __init__(self, device_type: str) -> None:
        self.cuda = device_type == "cuda"
        self.seconds = {"forward_s": 0.0, "head_s": 0.0}
        self._events: list[tuple[str, Any, Any]] = []
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        t0 = time.perf_counter()
        yield
        with self._lock:
            self.seconds[name] += time.perf_counter() - t0

    def read(self, wall_s: float, workers: int) -> dict[str, float]:
        """Stage seconds; with several workers, the batch loop's wall time ``wall_s`` split in
        proportion to the worker-seconds each stage took (so the stages add up to wall time)."""
        if self._events:
            import torch

            torch.cuda.synchronize()
            for name, start, end in self._events:
                self.seconds[name] += start.elapsed_time(end) / 1000.0
            self._events.clear()
        spent = sum(self.seconds.values())
        if workers == 1 or spent <= 0:
            return dict(self.seconds)
        return {name: wall_s * s / spent for name, s in self.seconds.items()}


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _head_is_plain(model: Any) -> bool:
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _HEAD_MODIFIERS):
        return False
    return getattr(model, "base_model", model) is not model and model.get_output_embeddings() is not None


class _Runner:
    """Runs one batch of a plan on one model: the body forward, then the LM head on the rows
    the batch's reads need (`head.log_normaliser`, blocked to stay in cache). Batches write
    disjoint entries of ``values``, so several workers may run batches at once."""

    def __init__(self, model: Any, plan: Plan, *, n_rows: int, pad_id: int, clock: _StageClock) -> None:
        self.model, self.plan, self.n_rows, self.pad_id, self.clock = model, plan, n_rows, pad_id, clock
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.plain = _head_is_plain(model)
        self.blocks = blocks_for(self.device.type)
        self.weight = self.bias = None
        if self.plain:
            head = model.get_output_embeddings()
            # fp32 head whatever the model dtype: margins of small models drift in bf16/fp16
            self.weight = head.weight[:n_rows].float()
            self.bias = head.bias[:n_rows].float() if getattr(head, "bias", None) is not None else None
        # rows of each sequence and reads of each row, grouped once (numpy, no per-item Python)
        self.order = np.argsort(plan.row_seq, kind="stable")
        self.starts = np.searchsorted(plan.row_seq[self.order], np.arange(len(plan.sequences) + 1))
        self.read_order = np.argsort(plan.read_row, kind="stable")
        self.read_starts = np.searchsorted(plan.read_row[self.read_order], np.arange(len(plan.row_seq) + 1))
        self.values = np.empty(len(plan.read_row), dtype=np.float64)

    def batch(self, ptr: int, count: int) -> int:
        """log-prob of every read of sequences [ptr, ptr + count), into ``self.values``;
        returns ``count``."""
        import torch

        plan, dev = self.plan, self.device
        rows = self.order[self.starts[ptr]:self.starts[ptr + count]]
        with self.clock.stage("forward_s"):
            ids, mask, positions = (t.to(dev) for t in batch_inputs(plan, ptr, count, self.pad_id, self.dtype))
            b_idx = torch.as_tensor(plan.row_seq[rows] - ptr, device=dev)
            p_idx = torch.as_tensor(plan.row_pos[rows], device=dev)
            if self.plain:
                hidden = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                               use_cache=False).last_hidden_state[b_idx, p_idx]
            else:
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        with self.clock.stage("head_s"):
            # reads of these rows: local row index -> token
            local = np.empty(int(rows.max()) + 1 if len(rows) else 0, dtype=np.int64)
            local[rows] = np.arange(len(rows))
            read_ids = np.concatenate([self.read_order[self.read_starts[r]:self.read_starts[r + 1]] for r in rows])
            r_local = torch.as_tensor(local[plan.read_row[read_ids]], device=dev)
            r_tok = torch.as_tensor(plan.read_tok[read_ids], device=dev)
            if self.plain:
                hidden = hidden.float()
                lse = log_normaliser(hidden, self.weight, self.bias, blocks=self.blocks)
                logits = read_logits(hidden, self.weight, self.bias, r_local, r_tok)
            else:
                full = out.logits[b_idx, p_idx].float()[:, :self.n_rows]
                lse, logits = torch.logsumexp(full, dim=-1), full[r_local, r_tok]
            self.values[read_ids] = (logits - lse[r_local]).double().cpu().numpy()
        return count


def _run_batches(runner: _Runner, plan_batches: Sequence[tuple[int, int]], workers: int, bar: Any) -> None:
    """Every batch, in order on one worker, or spread over `workers` threads. Each batch's
    numbers come from single-threaded kernels then (`cpus.pinned_kernels`), whichever thread
    runs it, so they do not depend on the order the batches finish in."""
    import torch

    def run(ptr: int, count: int) -> int:
        with torch.inference_mode():  # thread-local: entered in the thread that runs the batch
            return runner.batch(ptr, count)

    if workers == 1:
        for ptr, count in plan_batches:
            bar.update(run(ptr, count))
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="pf-score")
    try:
        for done in as_completed([pool.submit(run, ptr, count) for ptr, count in plan_batches]):
            bar.update(done.result())
    finally:
        # on an error (out of memory, Ctrl-C) drop the batches not started; wait for the rest
        pool.shutdown(wait=True, cancel_futures=True)


def _run_plan(runner: _Runner, *, batch_size: int, auto_batch: bool, progress: bool,
              workers: int = 1) -> int:
    """Run every batch of the plan (values land in ``runner.values``); the batch size that ran.

    Raises:
        ScoringError: out of memory at a fixed batch size, or at batch size 1.
    """
    import torch
    from tqdm.auto import tqdm

    lengths = [len(s) for s in runner.plan.sequences]
    bar = tqdm(total=len(lengths), desc="scoring", unit="seq", disable=not progress, leave=False)
    while True:
        try:
            _run_batches(runner, batches(lengths, batch_size), workers, bar)
            break
        except (RuntimeError, MemoryError) as exc:
            if not _is_oom(exc):
                raise
            if not auto_batch or batch_size == 1:
                raise ScoringError(f"out of memory at batch size {batch_size}; use a smaller batch size "
                                   "(or 'auto'), or dtype bfloat16 on GPU", param="batch_size") from exc
            # restart the whole unit at the smaller size: every number then comes from one
            # batch plan (a function of the recorded batch size), never from a mix of two
            batch_size = max(1, batch_size // 2)
            bar.reset()
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
    bar.close()
    return batch_size


def _model_dtype_name(model: Any) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def score_encoded(model: Any, encoded: Sequence[EncodedItem], *, n_rows: int, pad_id: int,
                  batch_size: int | str = "auto", progress: bool = False, plan: Plan | None = None,
                  threads: int | str = "auto") -> dict[str, Any]:
    """Summed and mean log-probs of already tokenized items (the scorer's numeric core).

    Args:
        model: a causal LM in eval mode.
        encoded: items from `encode_items`.
        n_rows: vocabulary rows the log-sum-exp runs over (the first ``n_rows``).
        pad_id: token id used for padding (never seen by a real position).
        batch_size: sequences per forward or ``auto``.
        progress: show a progress bar.
        plan: a plan built for exactly these items (`prepare`, `plan.plan_for`); None builds it.
        threads: CPUs for the call, or ``auto`` (`resolve_threads`); spent as worker threads
            that run batches side by side, each with single-threaded kernels, on CPU
            (`cpus.split_threads`).

    Returns:
        Dict of numpy arrays ``logp_target, logp_foil, n_target, n_foil``, stats
        ``batch_size, sequences, tokens, rows, batch_tokens``, the pinned kernel settings
        (`cpus.pinned_kernels`) with ``threads, workers, kernel_threads``, and the stage
        seconds ``plan_s`` (0.0 when ``plan`` is given), ``forward_s, head_s``.

    Raises:
        ScoringError: a candidate token id outside the scored rows, or out of memory.
    """
    plan_s = 0.0
    if plan is None:
        t0 = time.perf_counter()
        plan = plan_for(model, encoded)
        plan_s = time.perf_counter() - t0
    for e in encoded:
        if max(e.target_ids + e.foil_ids) >= n_rows:
            raise ScoringError(f"a candidate token id ({max(e.target_ids + e.foil_ids)}) is outside the "
                               f"{n_rows} scored vocabulary rows; the tokenizer does not fit this model")
    device = next(model.parameters()).device
    auto = batch_size == "auto"
    bs = auto_batch_size(model, plan, n_rows, device.type) if auto else int(batch_size)
    clock = _StageClock(device.type)
    n_threads = resolve_threads(threads)
    workers, kernel_threads = split_threads(n_threads, len(batches([len(s) for s in plan.sequences], bs)),
                                            device.type)
    with pinned_kernels(kernel_threads, device.type) as kernels:
        runner = _Runner(model, plan, n_rows=n_rows, pad_id=pad_id, clock=clock)
        t_run = time.perf_counter()
        bs = _run_plan(runner, batch_size=bs, auto_batch=auto, progress=progress, workers=workers)
        run_s = time.perf_counter() - t_run
    kernels = {**kernels, "threads": n_threads, "workers": workers, "kernel_threads": kernel_threads}
    sums = np.bincount(plan.tok_cand, weights=runner.values[plan.tok_read], minlength=2 * len(encoded))
    return {
        "logp_target": sums[0::2], "logp_foil": sums[1::2],
        "n_target": np.array([len(e.target_ids) for e in encoded], dtype=np.int64),
        "n_foil": np.array([len(e.foil_ids) for e in encoded], dtype=np.int64),
        "batch_size": bs, "sequences": len(plan.sequences), "tokens": sum(len(s) for s in plan.sequences),
        "rows": len(plan.row_seq), "batch_tokens": bs * SCORING_BATCH_ROW_TOKENS, **kernels,
        "plan_s": plan_s, **clock.read(run_s, workers),
    }


# --- the public scorer ---------------------------------------------------------------------
def _resolve_model(model_or_path: Any, tokenizer: Any, revision: str | None,
                   opts: ScoreOptions) -> tuple[Any, Any, str]:
    """(model, tokenizer, model name): loaded from a path or id, or a loaded model checked
    against the options."""
    if isinstance(model_or_path, (str, Path)):
        model, loaded_tok = load_model(model_or_path, revision=revision, dtype=opts.dtype, device=opts.device)
        return model, tokenizer or loaded_tok, str(model_or_path)
    model = model_or_path
    if tokenizer is None:
        raise ScoringError("score() was given a loaded model without a tokenizer; pass its tokenizer",
                           param="tokenizer")
    have = _model_dtype_name(model)
    if opts.dtype != "auto" and opts.dtype != have:
        raise ScoringError(f"the model is loaded in {have} but dtype {opts.dtype!r} was asked; "
                           f"load it in {opts.dtype} or use dtype 'auto'", param="dtype")
    where = next(model.parameters()).device.type
    if opts.device != "auto" and str(opts.device).split(":")[0] != where:
        raise ScoringError(f"the model is on {where} but device {opts.device!r} was asked; "
                           "move the model or use device 'auto'", param="device")
    return model, tokenizer, str(getattr(model, "name_or_path", "") or type(model).__name__)


def _scored_rows(model: Any, tokenizer: Any, vocab_rows: str) -> int:
    """Vocabulary rows of the log-sum-exp: every output row, or the tokenizer's only."""
    head = model.get_output_embeddings()
    emb_rows = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
    return min(len(tokenizer), emb_rows) if vocab_rows == "tokenizer" else emb_rows


def _check_finite(res: dict[str, Any], items: Sequence[ProbeItem], model: Any) -> None:
    bad = ~(np.isfinite(res["logp_target"]) & np.isfinite(res["logp_foil"]))
    if bad.any():
        # a NaN margin compares False: it would be reported as "wrong", an accuracy of garbage
        ids = [items[k].item_id for k in np.flatnonzero(bad)[:3]]
        raise ScoringError(f"{int(bad.sum())} of {len(items)} item(s) got a non-finite log-prob "
                           f"(e.g. {', '.join(map(repr, ids))}) in {_model_dtype_name(model)}; the weights or "
                           "the dtype overflow: rerun in float32, or check the checkpoint (a deep health check)",
                           param="dtype")


def _item_values(items: Sequence[ProbeItem], encoded: Sequence[EncodedItem]) -> dict[str, list]:
    return {
        "item_id": [i.item_id for i in items], "rule": [i.rule for i in items],
        "condition": [i.condition for i in items], "split": [i.split for i in items],
        "prefix": [i.prefix for i in items], "target": [i.target for i in items], "foil": [i.foil for i in items],
        "target_ids": [json.dumps(list(e.target_ids)) for e in encoded],
        "foil_ids": [json.dumps(list(e.foil_ids)) for e in encoded],
        "template": [i.template for i in items],
    }


def item_columns(items: Sequence[ProbeItem], encoded: Sequence[EncodedItem]) -> dict[str, pd.Series]:
    """The frame columns that depend on the items alone (text, labels, token ids), built once
    per `Prepared` and shared by every revision's frame (pandas copies on write)."""
    return {name: pd.Series(values, name=name) for name, values in _item_values(items, encoded).items()}


def item_arrow(items: Sequence[ProbeItem], encoded: Sequence[EncodedItem]) -> pa.Table:
    """`item_columns` as an Arrow table of strings (`score_tables`' static columns)."""
    return pa.table({name: pa.array(values, type=pa.string())
                     for name, values in _item_values(items, encoded).items()})


def _dynamic_columns(res: dict[str, Any]) -> dict[str, np.ndarray]:
    lt, lf = res["logp_target"], res["logp_foil"]
    margin = lt - lf
    return {"logp_target": lt, "logp_foil": lf, "margin": margin, "correct": margin > 0,
            "n_target_tokens": res["n_target"], "n_foil_tokens": res["n_foil"],
            "mean_logp_target": lt / res["n_target"], "mean_logp_foil": lf / res["n_foil"]}


def _frame(model_name: str, revision: str | None, static: dict[str, pd.Series], res: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"model": model_name, "revision": revision if revision is not None else "", **static,
                         **_dynamic_columns(res)}, columns=list(FRAME_COLUMNS))


def _attrs(model: Any, model_name: str, revision: str | None, opts: ScoreOptions, probe_set: ProbeSet,
           n_rows: int, res: dict[str, Any]) -> dict[str, Any]:
    reason = plan_reason(model)
    return {
        "model": model_name, "revision": revision, "dtype": _model_dtype_name(model),
        "device": next(model.parameters()).device.type, "batch_size": int(res["batch_size"]),
        "bos": bool(opts.bos), "vocab_rows": opts.vocab_rows, "vocab_rows_n": int(n_rows),
        "padding_side": "right", "scoring_version": SCORING_VERSION, "probeset": probe_set.name,
        "probeset_sha256": probe_set.sha256, "forward_sequences": int(res["sequences"]),
        "forward_tokens": int(res["tokens"]), "logit_rows": int(res["rows"]),
        "batch_tokens": int(res["batch_tokens"]),
        "threads": int(res["threads"]), "workers": int(res["workers"]), "kernel_threads": int(res["kernel_threads"]),
        "interop_threads": int(res["interop_threads"]),
        "omp_wait_policy": str(res["omp_wait_policy"]),
        "deterministic_algorithms": bool(res["deterministic_algorithms"]),
        "float32_matmul_precision": str(res["float32_matmul_precision"]),
        # eager and sdpa attention round differently: part of what a unit's numbers depend on
        "attn_implementation": str(getattr(model.config, "_attn_implementation", None) or ""),
        # which forward plan ran and, for the plain one, why (an architecture outside the list)
        "plan": "causal" if reason else "tree", "plan_reason": reason or "",
    }


def score(model_or_path: Any, probes: Any, *, tokenizer: Any = None, revision: str | None = None,
          options: ScoreOptions | None = None, progress: bool = False, prepared: Prepared | None = None,
          **overrides: Any) -> pd.DataFrame:
    """Score probe items on one checkpoint: one row per item.

    Args:
        model_or_path: a loaded causal LM (then pass ``tokenizer``), a checkpoint folder, or a
            hub repo id (loaded with `load_model`).
        probes: a `ProbeSet`, or anything `load_probes` accepts (file, shipped name, list).
        tokenizer: the tokenizer, required with a loaded model.
        revision: the hub revision / local sub-folder to load; with a loaded model, only the
            label written to the ``revision`` column.
        options: `ScoreOptions`; keyword ``overrides`` (``dtype=``, ``batch_size=``, ...)
            replace its fields.
        progress: show a progress bar.
        prepared: tokenization and plan from `prepare` for this probe set, tokenizer and model
            (a training monitor scores the same items many times).

    Returns:
        A DataFrame with the columns `FRAME_COLUMNS` (ARCHITECTURE.md "Per-item score frame"),
        in probe-set order. ``frame.attrs`` records what was used: ``dtype, device, batch_size``
        (the one that ran), ``bos, vocab_rows, vocab_rows_n`` (rows in the log-sum-exp),
        ``padding_side, scoring_version, probeset, probeset_sha256, model, revision``,
        ``forward_sequences, forward_tokens, logit_rows, batch_tokens`` (padded-token budget of a
        batch), the pinned kernel settings ``threads, interop_threads, omp_wait_policy,
        deterministic_algorithms, float32_matmul_precision``, the model's
        ``attn_implementation``, ``plan`` ("tree" or "causal") and ``plan_reason``, ``wall_s``
        (= ``timings["total_s"]``, rounded) and ``timings``, float seconds of this call's stages
        (`TIMING_KEYS`):

        * ``load_s``: `load_model` (0.0 when given a loaded model);
        * ``tokenize_s``: `encode_items`; ``plan_s``: building the forward plan (both 0.0 when
          ``prepared`` supplies them);
        * ``forward_s``: the transformer body, batch inputs included (for a model whose head is
          not a plain projection, the full forward with its logits);
        * ``head_s``: the LM head on the needed rows, the log-sum-exp and the gathers;
        * ``total_s``: the whole call, >= the sum of the others.

        Measured with `time.perf_counter`; on CUDA, forward and head come from CUDA events read
        after the last batch (one synchronize per call, not per batch). Example::

            frame = score("EleutherAI/pythia-70m", "pronoun_gender", revision="step3000")
            frame.groupby(["condition", "split"]).correct.mean()

    Raises:
        ModelLoadError, TokenizationError, ScoringError, ProbeFormatError, UnknownProbeSetError.
    """
    t0 = time.perf_counter()
    opts = replace(options or ScoreOptions(), **overrides)
    probe_set = probes if isinstance(probes, ProbeSet) else load_probes(probes)
    run = _score_pass(model_or_path, probe_set, tokenizer, revision, opts, progress, prepared)
    frame = _frame(run.model_name, revision, run.static_columns(), run.res)
    frame.attrs.update(run.attrs)
    run.timings["total_s"] = time.perf_counter() - t0
    frame.attrs["wall_s"] = round(run.timings["total_s"], 4)
    frame.attrs["timings"] = run.timings
    return frame


@dataclass
class _Pass:
    """One scoring pass over a probe set: the raw results and what describes them."""

    model_name: str
    items: Sequence[ProbeItem]
    encoded: Sequence[EncodedItem]
    prepared: Prepared | None
    res: dict[str, Any]
    attrs: dict[str, Any]
    timings: dict[str, float]

    def static_columns(self) -> dict[str, pd.Series]:
        return self.prepared.columns if self.prepared is not None else item_columns(self.items, self.encoded)

    def static_arrow(self) -> pa.Table:
        return self.prepared.arrow_columns if self.prepared is not None else item_arrow(self.items, self.encoded)


def _score_pass(model_or_path: Any, probe_set: ProbeSet, tokenizer: Any, revision: str | None, opts: ScoreOptions,
                progress: bool, prepared: Prepared | None) -> _Pass:
    """Load (if given a path), tokenize or reuse `prepared`, run the plan, check the results
    (``timings`` lacks ``total_s``: the caller's whole call sets it)."""
    t_load = time.perf_counter()
    model, tokenizer, model_name = _resolve_model(model_or_path, tokenizer, revision, opts)
    load_s = time.perf_counter() - t_load if isinstance(model_or_path, (str, Path)) else 0.0
    n_rows = _scored_rows(model, tokenizer, opts.vocab_rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    items = probe_set.items
    t1 = time.perf_counter()
    if prepared is not None:
        prepared.check(probe_set, tokenizer, model, bos=opts.bos)
        encoded, plan, tokenize_s = prepared.encoded, prepared.plan, 0.0
        prepared.check_context(model)
    else:
        encoded, plan = encode_items(items, tokenizer, bos=opts.bos), None
        tokenize_s = time.perf_counter() - t1
        validation.check_context(encoded, items, model)
    res = score_encoded(model, encoded, n_rows=n_rows, pad_id=int(pad_id), batch_size=opts.batch_size,
                        progress=progress, plan=plan, threads=opts.threads)
    _check_finite(res, items, model)
    attrs = _attrs(model, model_name, revision, opts, probe_set, n_rows, res)
    timings = {"load_s": load_s, "tokenize_s": tokenize_s, "plan_s": res["plan_s"], "forward_s": res["forward_s"],
               "head_s": res["head_s"]}
    return _Pass(model_name, items, encoded, prepared, res, attrs, timings)


def merged_probe_set(probe_sets: Sequence[ProbeSet]) -> ProbeSet:
    """Several probe sets as one, their items in order, for one scoring pass (`score_sets`);
    its sha256 names the member sets in order, so a preparation is never reused for another
    combination. One set is returned as it is."""
    if len(probe_sets) == 1:
        return probe_sets[0]
    digest = hashlib.sha256("\n".join(p.sha256 for p in probe_sets).encode()).hexdigest()
    return ProbeSet("+".join(p.name for p in probe_sets), tuple(it for p in probe_sets for it in p.items), digest,
                    "merged: " + ", ".join(p.name for p in probe_sets))


@dataclass(frozen=True)
class ScoredTable:
    """One probe set's per-item results in Arrow: what the results store writes, without the
    pandas frame (a replay of many small checkpoints spends more on frames than on scoring).

    Attributes:
        table: the columns `FRAME_COLUMNS`, strings as ``string``, in probe-set order.
        attrs: what `score` puts in ``frame.attrs`` for this set alone, plus ``scored_with``.
    """

    table: pa.Table
    attrs: dict[str, Any]

    def frame(self) -> pd.DataFrame:
        """The table as the score frame `score` returns (same columns, dtypes and attrs)."""
        frame = self.table.to_pandas()
        frame.attrs = dict(self.attrs)
        return frame


def score_tables(model: Any, probe_sets: Sequence[ProbeSet], *, tokenizer: Any, options: ScoreOptions | None = None,
                 prepared: Prepared | None = None, progress: bool = False) -> list[ScoredTable]:
    """Score several probe sets of one checkpoint in ONE pass; one `ScoredTable` per set.

    The sets' items share one plan (`prepare` on `merged_probe_set`): prefixes shared across
    sets run once, and the batches fill up, so on 2 cores the four shipped batteries of a mini
    model score in about half the time of four `score` calls. Each set's table holds the
    values `score` gives for that set alone, its attrs carry the set's own ``probeset`` and
    ``probeset_sha256``; the numbers are equal up to float rounding, and measured
    bit-identical on the shipped batteries, since each batch runs on single-threaded kernels.
    ``attrs["scored_with"]`` lists the sets that shared the pass, and the plan counts
    (``forward_tokens``...) and ``timings`` are the pass's.

    Args:
        model, tokenizer, options, progress: as for `score`.
        probe_sets: the sets, each a `ProbeSet`.
        prepared: `prepare(model, merged_probe_set(probe_sets), ...)`, reusable across revisions;
            its item columns are then converted to Arrow once, not per call.

    Returns:
        The tables, in the order of `probe_sets`.
    """
    t0 = time.perf_counter()
    opts = options or ScoreOptions()
    run = _score_pass(model, merged_probe_set(probe_sets), tokenizer, None, opts, progress, prepared)
    n = len(run.items)
    constant = {"model": pa.repeat(pa.scalar(run.model_name, pa.string()), n),
                "revision": pa.repeat(pa.scalar("", pa.string()), n)}
    static = run.static_arrow()
    dynamic = _dynamic_columns(run.res)
    whole = pa.table({name: constant[name] if name in constant else
                      static.column(name) if name in static.column_names else pa.array(dynamic[name])
                      for name in FRAME_COLUMNS})
    run.timings["total_s"] = time.perf_counter() - t0
    attrs = {**run.attrs, "wall_s": round(run.timings["total_s"], 4), "timings": run.timings,
             "scored_with": [p.name for p in probe_sets]}
    out, start = [], 0
    for p in probe_sets:
        out.append(ScoredTable(whole.slice(start, len(p.items)),
                               {**attrs, "probeset": p.name, "probeset_sha256": p.sha256}))
        start += len(p.items)
    return out


def score_sets(model: Any, probe_sets: Sequence[ProbeSet], *, tokenizer: Any, options: ScoreOptions | None = None,
               prepared: Prepared | None = None, progress: bool = False) -> list[pd.DataFrame]:
    """`score_tables` as score frames: one frame per set, the one `score` gives for that set
    alone (rows, columns, dtypes, attrs with its own ``probeset``), plus ``attrs["scored_with"]``.

    Returns:
        The frames, in the order of `probe_sets`.
    """
    return [t.frame() for t in score_tables(model, probe_sets, tokenizer=tokenizer, options=options,
                                            prepared=prepared, progress=progress)]


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, condition, split): ``n``, ``accuracy`` (share with margin > 0), ``mean_margin``.

    Args:
        frame: a score frame (`score`).

    Returns:
        One row per cell, sorted by rule, then condition and split in schema order.
    """
    out = (frame.groupby(["rule", "condition", "split"], sort=False)
           .agg(n=("item_id", "size"), accuracy=("correct", "mean"), mean_margin=("margin", "mean"))
           .reset_index())
    out["_c"] = out["condition"].map({c: k for k, c in enumerate(CONDITIONS)})
    out["_s"] = out["split"].map({s: k for k, s in enumerate(SPLITS)})
    return out.sort_values(["rule", "_c", "_s"]).drop(columns=["_c", "_s"]).reset_index(drop=True)


# --- prepare once, score many (a training monitor scores the same items every N steps) -------
@dataclass(frozen=True)
class Prepared:
    """Tokenized items and their forward plan, reusable across weights of one architecture.

    Attributes:
        probe_set: the items prepared.
        tokenizer_id: ``id`` of the tokenizer used (tokenization depends on it).
        bos: whether a BOS token was prepended.
        tree: whether the plan packs tree rows (depends on the model type, not its weights).
        encoded: the items' token ids.
        plan: the de-duplicated forward plan.
    """

    probe_set: ProbeSet
    tokenizer_id: int
    bos: bool
    tree: bool
    encoded: tuple[EncodedItem, ...]
    plan: Plan

    # model context lengths these items were checked to fit (`validation.check_context`)
    _fits: set[int | None] = field(default_factory=set, compare=False, repr=False)

    @cached_property
    def columns(self) -> dict[str, pd.Series]:
        """The frame's item columns (`item_columns`), built on first use."""
        return item_columns(self.probe_set.items, self.encoded)

    @cached_property
    def arrow_columns(self) -> pa.Table:
        """The item columns in Arrow (`item_arrow`), built on first use."""
        return item_arrow(self.probe_set.items, self.encoded)

    def check_context(self, model: Any) -> None:
        """`validation.check_context` for these items, once per context length."""
        limit = validation.context_length(model)
        if limit not in self._fits:
            validation.check_context(self.encoded, self.probe_set.items, model)
            self._fits.add(limit)

    def check(self, probe_set: ProbeSet, tokenizer: Any, model: Any, *, bos: bool) -> None:
        """Raise ScoringError unless this preparation fits these items, tokenizer and model."""
        if (probe_set.sha256 != self.probe_set.sha256 or id(tokenizer) != self.tokenizer_id
                or bool(bos) != self.bos or uses_tree(model) != self.tree):
            raise ScoringError(f"prepared scoring of {self.probe_set.name!r} does not fit this call (other probe "
                               "set, tokenizer, bos or model type); call prepare() again")


def prepare(model: Any, probes: Any, *, tokenizer: Any, bos: bool = False) -> Prepared:
    """Tokenize a probe set and build its forward plan once, for `score(..., prepared=)`.

    Args:
        model: the model the plan is for (only its architecture matters, not its weights).
        probes: a `ProbeSet` or anything `load_probes` accepts.
        tokenizer: the tokenizer `score` will be given.
        bos: prepend the BOS token (must match the ``bos`` option of the scoring calls).

    Returns:
        A `Prepared`; scores with it equal scores without it exactly.

    Raises:
        TokenizationError: an item encodes to no tokens.
    """
    probe_set = probes if isinstance(probes, ProbeSet) else load_probes(probes)
    encoded = tuple(encode_items(probe_set.items, tokenizer, bos=bos))
    return Prepared(probe_set, id(tokenizer), bool(bos), uses_tree(model), encoded, plan_for(model, encoded))
