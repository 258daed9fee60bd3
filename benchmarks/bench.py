"""Side-by-side benchmark: our replay vs minicons, lm-evaluation-harness and a full-logits
scorer, on the same locally built Pythia-shaped checkpoints and the same items (issue #9).

What one run does (`run_bench`, `make bench` = `python -m benchmarks`):

1. builds (or reuses) a local suite `OUT/suite/<shape>/step<N>/` per Pythia shape: random
   GPT-NeoX weights with the registry's layer shape, vocabulary padded to 50304 rows, the real
   GPT-NeoX-20B tokenizer, `save_pretrained` layout (safetensors);
2. builds a battery of >= 2,000 items from the shipped probe sets: single- and multi-token
   candidates, mixed prefix lengths, many items sharing a prefix (`build_battery`);
3. runs each competitor in a fresh subprocess (its peak RSS is its own), alternating the
   order every round and repeating; every competitor sweeps the same revisions: it loads
   each one and scores every item (target and foil). Medians over rounds are reported with
   the ratio of each competitor's wall time to ours, and the max |delta logp| of each
   competitor's per-item log-probs against ours from the same round;
4. profiles our own time (weight loading, tokenization, forward, LM head, gather, store) and
   sets it against this machine's floor (forward FLOPs over the distinct prefix tokens plus
   the needed LM-head rows, over measured matmul FLOP/s; weight bytes over measured disk
   read speed);
5. measures the support counter's tokens/s, and a GPU section when CUDA is present;
6. writes `OUT/bench.md` and `OUT/bench.csv`.

Our replay is run with `vocab_rows="all"`: the competitors normalise over every row of the
output embedding, and random weights give the 27 padding rows real probability mass, so the
tool's default (`"tokenizer"` rows only) would differ from them by design, not by error.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pythia_forensics.constants import (
    BENCH_BATCH_SIZE,
    BENCH_COMPETING_MATMUL,
    BENCH_COMPETING_THREADS,
    BENCH_COMPETITORS,
    BENCH_GPU_CHECKPOINT_DTYPES,
    BENCH_GPU_CHECKPOINT_SHAPE,
    BENCH_GPU_SHAPES,
    BENCH_MAX_ABS_DELTA,
    BENCH_MIN_ITEMS,
    BENCH_QUICK_ITEMS,
    BENCH_QUICK_REVISIONS,
    BENCH_QUICK_SHAPE,
    BENCH_REVISIONS,
    BENCH_SEED,
    BENCH_SHAPES,
    BENCH_SUPPORT_TOKENS,
    BENCH_TARGET_RATIOS,
    BENCH_WEIGHT_STD,
    STEP_DIR_PREFIX,
    neox_tokenizer_file,
)
from pythia_forensics.errors import PFError
from pythia_forensics.checkpoints.manifest import Manifest, read_manifest, write_manifest

__all__ = [
    "BenchShape", "BatteryStats", "RunResult", "bench_shapes", "build_suite", "build_battery",
    "battery_stats", "lower_bound", "measure_matmul_flops", "measure_disk_read", "run_bench",
    "BenchmarkError",
]


class BenchmarkError(PFError, RuntimeError):
    """The benchmark cannot run as asked (missing tokenizer or competitor library, bad option)."""


# Context sentences prepended to some items: real batteries mix short and long prefixes.
_CONTEXTS = (
    "It was late. ",
    "The rain had not stopped for three days, and the small town by the river was quiet. ",
    "Everyone in the family still remembers that long summer at the lake house, when the power "
    "went out for a week and the children played board games by candlelight every evening. ",
)
_PAD_ID = 1  # GPT-NeoX <|padding|>


# --- shapes and the local suite ---------------------------------------------------------------
@dataclass(frozen=True)
class BenchShape:
    """A GPT-NeoX layer shape (Pythia's, or a tiny one for --quick and tests)."""

    name: str
    layers: int
    d_model: int
    heads: int
    vocab_size: int = 50304

    @property
    def params_nonembedding(self) -> int:
        d, n = self.d_model, self.layers
        return 12 * d * d * n + 13 * d * n + 2 * d

    @property
    def params_total(self) -> int:
        return self.params_nonembedding + 2 * self.vocab_size * self.d_model


def bench_shapes(names: Sequence[str] = BENCH_SHAPES, *, quick: bool = False) -> tuple[BenchShape, ...]:
    """The benchmark's shapes, read from the Pythia registry (one source of the numbers).

    Args:
        names: registry model names (`pythia-70m`).
        quick: return one tiny shape with Pythia's padded vocabulary instead.
    """
    from pythia_forensics.checkpoints.registry import get_suite

    from pythia_forensics.experiments.mini.config import demo_config

    suite = get_suite("pythia")
    vocab = suite.model("pythia-70m").vocab_size or 50304
    if quick:
        return (BenchShape(name="tiny", vocab_size=vocab, **BENCH_QUICK_SHAPE),)
    minis = {m.name: m for m in demo_config().models}
    out = []
    for name in names:
        if name in minis:  # the mini suite's body, with Pythia's vocabulary (one tokenizer for all)
            m = minis[name]
            out.append(BenchShape(name=name, layers=m.layers, d_model=m.d_model, heads=m.heads, vocab_size=vocab))
            continue
        m = suite.model(name)
        out.append(BenchShape(name=name, layers=int(m.layers), d_model=int(m.d_model), heads=int(m.heads),
                              vocab_size=int(m.vocab_size)))
    return tuple(out)


def _require_tokenizer() -> Path:
    path = neox_tokenizer_file()
    if path is None or not path.is_file():
        where = "PF_NEOX_TOKENIZER is not set" if path is None else f"GPT-NeoX-20B tokenizer not found at {path}"
        raise BenchmarkError(
            f"{where}: the benchmark needs Pythia's real tokenizer; "
            "set PF_NEOX_TOKENIZER to its tokenizer.json"
        )
    return path


def neox_tokenizer():
    """Pythia's GPT-NeoX-20B fast tokenizer (pad = <|padding|>, no BOS added)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(_require_tokenizer()), bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|padding|>")


def _neox_config(shape: BenchShape):
    from transformers import GPTNeoXConfig

    # Pythia's architecture: rotary on a quarter of each head, parallel residual, untied head.
    return GPTNeoXConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.d_model, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=4 * shape.d_model, max_position_embeddings=2048,
        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False,
        layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=0, pad_token_id=_PAD_ID, dtype="float32",
    )


def _randomise(model: Any, seed: int, std: float) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, std, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)  # LayerNorm gains


def build_suite(directory: str | Path, shape: BenchShape, *, revisions: int = BENCH_REVISIONS,
                seed: int = BENCH_SEED, std: float = BENCH_WEIGHT_STD, progress: bool = True) -> Path:
    """Write (or reuse) a local suite `DIR/<shape>/step<N>/` of random revisions.

    Each revision has its own random weights (seeded), so revisions really differ. A suite
    already built with the same shape, revisions, seed and std is reused.

    Args:
        directory: the suite folder (`DIR`).
        shape: the layer shape.
        revisions: how many `step<N>` revisions (steps 1000, 2000, ...).
        seed: base seed (revision k uses seed + k).
        std: weight standard deviation.
        progress: show a progress bar.

    Returns:
        The model folder `DIR/<shape.name>`.

    Raises:
        BenchmarkError: the GPT-NeoX tokenizer is missing.
    """
    from tqdm.auto import tqdm
    from transformers import GPTNeoXForCausalLM

    tokenizer = neox_tokenizer()
    model_dir = Path(directory) / shape.name
    steps = [1000 * (k + 1) for k in range(revisions)]
    recipe = {"shape": asdict(shape), "revisions": revisions, "seed": seed, "std": std}
    try:
        old = read_manifest(model_dir)
    except PFError:
        old = None
    if old is not None:
        if old.bench == recipe and all((model_dir / f"{STEP_DIR_PREFIX}{s}" / "model.safetensors").exists()
                                              for s in steps):
            return model_dir
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model = GPTNeoXForCausalLM(_neox_config(shape)).eval()
    for k, step in enumerate(tqdm(steps, desc=f"build {shape.name}", unit="rev", disable=not progress)):
        _randomise(model, seed + k, std)
        out = model_dir / f"{STEP_DIR_PREFIX}{step}"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    write_manifest(model_dir, Manifest(  # last: marks the suite complete
        model=shape.name, params_total=shape.params_total, params_nonembedding=shape.params_nonembedding,
        layers=shape.layers, d_model=shape.d_model, heads=shape.heads, vocab_size=shape.vocab_size,
        seed=seed, steps=tuple(steps), precision="float32", bench=recipe,
    ))
    return model_dir


def revision_dirs(model_dir: Path) -> list[Path]:
    """The `step<N>` folders of a model, in step order."""
    from pythia_forensics.checkpoints.registry import checkpoint_folders

    return [Path(model_dir) / name for name in checkpoint_folders(model_dir)]


# --- the battery ------------------------------------------------------------------------------
def build_battery(*, min_items: int = BENCH_MIN_ITEMS, name: str = "bench") -> Any:
    """A benchmark battery built from the shipped probe sets.

    Every shipped item (single-token candidates, and a/an items whose candidates include the
    noun), plus for each one a multi-token variant sharing its prefix (the first word of one
    of the lexicon's conflict tails appended to both candidates: " she was" vs " he was"), plus long-prefix
    variants with a context sentence of 4 to 40 tokens prepended. Deterministic. Fewer than
    the full count (`min_items` small) takes an evenly spread subset, so every kind stays.

    Args:
        min_items: at least this many items (the full battery has ~2,700; more are made by
            combining further tails and contexts).
        name: the ProbeSet name.

    Returns:
        A `ProbeSet`.
    """
    from pythia_forensics.corpus.lexicon import load_lexicon
    from pythia_forensics.scoring.probes import ProbeSet, load_probes, probe_set_sha256

    base = load_probes("all").items
    lexicon = load_lexicon()
    tails = {rule: tuple(spec.get("conflict_tails", ()) or (".",)) for rule, spec in lexicon.templates.items()
             if isinstance(spec, dict)}
    items: list[Any] = list(base)
    seen = {i.item_id for i in items}

    def add(item: Any) -> None:
        if item.item_id not in seen:
            seen.add(item.item_id)
            items.append(item)

    def variants(round_: int) -> None:
        for k, it in enumerate(base):
            rule_tails = tails.get(it.rule, (".",))
            # the tail's first word only: two-token candidates, as in real batteries
            tail = " " + rule_tails[(k + round_) % len(rule_tails)].split()[0]
            add(replace(it, item_id=f"{it.item_id}.tail{round_}", target=it.target + tail, foil=it.foil + tail))
            if k % 4 == round_ % 4:
                ctx = _CONTEXTS[(k // 4 + round_) % len(_CONTEXTS)]
                add(replace(it, item_id=f"{it.item_id}.ctx{round_}", prefix=ctx + it.prefix))

    round_ = 0
    while len(items) < max(min_items, len(base) * 2) and round_ < 64:
        variants(round_)
        round_ += 1
    if min_items < len(items):
        # an evenly spread subset keeps every kind (plain, tail, context) in proportion
        stride = len(items) / min_items
        items = [items[int(i * stride)] for i in range(min_items)]
    items_t = tuple(items)
    return ProbeSet(name=name, items=items_t, sha256=probe_set_sha256(items_t), source="benchmarks.bench")


def write_battery(probes: Any, path: str | Path) -> Path:
    """Write a ProbeSet as a JSONL probe file (what `load_probes` reads back)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for it in probes.items:
            fh.write(json.dumps({"item_id": it.item_id, "rule": it.rule, "condition": it.condition,
                                 "split": it.split, "prefix": it.prefix, "target": it.target, "foil": it.foil,
                                 "template": it.template, "meta": dict(it.meta)}, ensure_ascii=False) + "\n")
    return path


@dataclass(frozen=True)
class BatteryStats:
    """How much distinct work a battery holds (for the machine's floor).

    Attributes:
        items: items (each has a target and a foil).
        single_token_items / multi_token_items: both candidates one token / either longer.
        distinct_prefixes: distinct prefix token sequences.
        distinct_contexts: distinct token contexts whose next-token log-prob is read (one
            LM-head row each).
        distinct_tokens: nodes of the token trie of every prefix + candidate[:-1] (positions
            whose hidden state a forward must compute at least once).
        attention_positions: sum over those nodes of their depth (attention work grows with it).
        prefix_tokens_min / max / mean: prefix lengths in tokens.
        naive_tokens: tokens a scorer that runs every (item, candidate) as its own sequence
            processes.
    """

    items: int
    single_token_items: int
    multi_token_items: int
    distinct_prefixes: int
    distinct_contexts: int
    distinct_tokens: int
    attention_positions: int
    prefix_tokens_min: int
    prefix_tokens_max: int
    prefix_tokens_mean: float
    naive_tokens: int


def _split_trailing_space(prefix: str, cont: str) -> tuple[str, str]:
    # As lm-eval and our scorer do: a prefix's trailing whitespace belongs to the continuation.
    stripped = prefix.rstrip()
    return stripped, prefix[len(stripped):] + cont


def battery_stats(probes: Any, tokenizer: Any) -> BatteryStats:
    """Count the distinct computation in a battery under a tokenizer (prefix and candidate
    encoded separately, no BOS, as the scorer does)."""
    nodes: set[tuple[int, ...]] = set()
    rows: set[tuple[int, ...]] = set()
    prefixes: set[tuple[int, ...]] = set()
    lengths = []
    single = naive = 0
    texts = sorted({_split_trailing_space(it.prefix, "")[0] for it in probes.items}
                   | {_split_trailing_space(it.prefix, c)[1] for it in probes.items for c in (it.target, it.foil)})
    enc = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"]))
    for it in probes.items:
        lens = []
        for cand in (it.target, it.foil):
            p, c = _split_trailing_space(it.prefix, cand)
            pids, cids = tuple(enc[p]), tuple(enc[c])
            prefixes.add(pids)
            seq = pids + cids
            naive += len(seq)
            for k in range(1, len(seq)):
                nodes.add(seq[:k])
            for k in range(len(pids), len(seq)):
                rows.add(seq[:k])
            lens.append(len(cids))
        lengths.append(len(pids))
        single += max(lens) == 1
    return BatteryStats(
        items=len(probes.items), single_token_items=single, multi_token_items=len(probes.items) - single,
        distinct_prefixes=len(prefixes), distinct_contexts=len(rows), distinct_tokens=len(nodes),
        attention_positions=sum(len(n) for n in nodes), prefix_tokens_min=min(lengths),
        prefix_tokens_max=max(lengths), prefix_tokens_mean=sum(lengths) / len(lengths), naive_tokens=naive,
    )


def plan_stats(probes: Any, tokenizer: Any, *, batch_size: int | None = None) -> dict[str, int]:
    """Tokens our scorer's body actually runs on a battery, per plan it offers.

    ``causal_*``: one causal sequence per maximal history (`scoring._make_plan`); ``tree_*``:
    the trie packed into tree rows (`scoring._make_tree_plan`, when the scorer has it);
    ``*_padded``: with the batching `scoring._run_plan` does (longest first, at most
    `batch_size` rows and `batch_size x SCORING_BATCH_ROW_TOKENS` padded tokens a batch).
    """
    from pythia_forensics.scoring import plan as constants
    from pythia_forensics.scoring import score as scoring

    bs = batch_size or constants.DEFAULT_BATCH_SIZE_CPU
    row_tokens = getattr(constants, "SCORING_BATCH_ROW_TOKENS", None)
    encoded = scoring.encode_items(probes.items, tokenizer)

    def padded(lengths: list[int]) -> int:
        total = ptr = 0
        while ptr < len(lengths):
            width = lengths[ptr]
            n = bs if row_tokens is None else min(bs, max(1, bs * row_tokens // width))
            total += width * len(lengths[ptr:ptr + n])
            ptr += n
        return total

    out: dict[str, int] = {}
    for label, maker in (("causal", getattr(scoring, "_make_plan", None)),
                         ("tree", getattr(scoring, "_make_tree_plan", None))):
        if maker is None:
            continue
        plan = maker(encoded)
        lengths = [len(x) for x in plan.sequences]
        out[f"{label}_rows"] = len(lengths)
        out[f"{label}_tokens"] = sum(lengths)
        out[f"{label}_padded"] = padded(lengths)
    return out


# --- the machine's floor ----------------------------------------------------------------------
def measure_matmul_flops(*, size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 matmul FLOP/s of this process's torch threads (size^3 products)."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def measure_disk_read(path: str | Path, *, chunk: int = 16 << 20) -> float:
    """Bytes/s reading a file after asking the kernel to drop it from the page cache
    (posix_fadvise DONTNEED; a VM's host may still cache it, so this is an upper bound)."""
    path = Path(path)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        while os.read(fd, chunk):
            pass
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    return size / max(dt, 1e-9)


def lower_bound(shape: BenchShape, stats: BatteryStats, *, flops_per_s: float, read_bytes_per_s: float,
                weight_bytes: int) -> dict[str, float]:
    """This machine's floor for scoring one revision of `shape` on the battery.

    Compute: 2 x non-embedding params per distinct trie token (QKV, output, MLP matmuls),
    plus 4 x layers x d_model x depth per token for attention scores and values, plus
    2 x d_model x vocab rows per distinct context (the LM-head rows actually read).
    Loading: the revision's weight bytes over the measured disk read speed.

    Returns:
        ``{"body_flops", "head_flops", "flops", "compute_s", "load_s", "floor_s"}`` per
        revision; `floor_s` assumes loading overlaps compute (the max of the two).
    """
    body = 2.0 * shape.params_nonembedding * stats.distinct_tokens + 4.0 * shape.layers * shape.d_model * stats.attention_positions
    head = 2.0 * shape.d_model * shape.vocab_size * stats.distinct_contexts
    compute_s = (body + head) / flops_per_s
    load_s = weight_bytes / read_bytes_per_s
    return {"body_flops": body, "head_flops": head, "flops": body + head, "compute_s": compute_s,
            "load_s": load_s, "floor_s": max(compute_s, load_s)}


# --- competitors (each sweeps the same revisions; run in a fresh process) ---------------------
@dataclass(frozen=True)
class RunResult:
    """One competitor's sweep over one shape's revisions in one round.

    Times are wall-clock seconds inside the process, after imports: `wall_s` covers the whole
    sweep, `load_s` the weight loading in it, `score_s` the scoring. `peak_rss_bytes` is the
    process's own peak resident set (a fresh process per run), None when run in-process.
    """

    competitor: str
    shape: str
    round: int
    revisions: int
    items: int
    wall_s: float
    load_s: float
    score_s: float
    peak_rss_bytes: int | None
    status: str = "ok"
    logp_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _item_pairs(probes: Any) -> tuple[list[str], list[str]]:
    """(contexts, continuations) for every item's target then foil, trailing space moved."""
    ctxs, conts = [], []
    for it in probes.items:
        for cand in (it.target, it.foil):
            p, c = _split_trailing_space(it.prefix, cand)
            ctxs.append(p)
            conts.append(c)
    return ctxs, conts


def _sweep_ours(rev_dirs: Sequence[Path], probes: Any, *, battery: Path, work: Path, batch_size: int,
                profile: bool = False) -> tuple[Any, float, float, dict[str, Any]]:
    import numpy as np

    from pythia_forensics.checkpoints.registry import step_of_revision
    from pythia_forensics.sweep.replay import replay
    from pythia_forensics.sweep.store import ResultsStore

    model_dir = rev_dirs[0].parent
    results = work / "results"
    steps = [step_of_revision(p.name) for p in rev_dirs]
    probe = _StageTimer() if profile else None
    with (probe or contextlib.nullcontext()):
        summary = replay(str(model_dir), str(battery), steps=steps, results=results, dtype="float32",
                         device="cpu", batch_size="auto", vocab_rows="all", progress=False)
    frame = ResultsStore(results).items()
    index = {it.item_id: i for i, it in enumerate(probes.items)}
    logp = np.full((len(rev_dirs), len(probes.items), 2), np.nan)
    rev_index = {p.name: r for r, p in enumerate(rev_dirs)}
    rows = frame["revision"].map(rev_index).to_numpy()
    cols = frame["item_id"].map(index).to_numpy()
    logp[rows, cols, 0] = frame["logp_target"].to_numpy()
    logp[rows, cols, 1] = frame["logp_foil"].to_numpy()
    extra = {"replay_wall_s": summary.wall_s, "replay_score_s": summary.score_s, "replay_fetch_s": summary.fetch_s}
    if probe is not None:
        extra["stages"] = probe.totals()
    load_s = probe.totals().get("load", float("nan")) if probe is not None else float("nan")
    return logp, load_s, summary.score_s, extra


def _timed_revisions(rev_dirs: Sequence[Path], n: int, load: Callable[[Path], Any],
                     score: Callable[[Any], list[float]]) -> tuple[Any, float, float, dict]:
    """Load and score each revision in turn, timing the two phases apart.

    Returns log-probs shaped (revisions, items, 2) (target, foil), load seconds, score seconds
    and no extras, the shape every competitor sweep returns."""
    import numpy as np

    out = np.empty((len(rev_dirs), n))
    load_s = score_s = 0.0
    for r, rev in enumerate(rev_dirs):
        t0 = time.perf_counter()
        scorer_obj = load(rev)
        t1 = time.perf_counter()
        out[r] = score(scorer_obj)
        load_s += t1 - t0
        score_s += time.perf_counter() - t1
        del scorer_obj
    return out.reshape(len(rev_dirs), -1, 2), load_s, score_s, {}


def _sweep_minicons(rev_dirs: Sequence[Path], probes: Any, *, batch_size: int, **_: Any) -> tuple[Any, float, float, dict]:
    import torch
    from minicons import scorer

    ctxs, conts = _item_pairs(probes)

    def score(lm: Any) -> list[float]:
        vals: list[float] = []
        for i in range(0, len(ctxs), batch_size):
            # separator="" : the continuation carries its own leading space
            vals.extend(lm.conditional_score(ctxs[i:i + batch_size], conts[i:i + batch_size], separator="",
                                             reduction=lambda x: x.sum(0).item()))
        return vals

    return _timed_revisions(rev_dirs, len(ctxs),
                            lambda rev: scorer.IncrementalLMScorer(str(rev), device="cpu", dtype=torch.float32), score)


def _sweep_lm_eval(rev_dirs: Sequence[Path], probes: Any, *, batch_size: int, **_: Any) -> tuple[Any, float, float, dict]:
    import logging

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    ctxs, conts = _item_pairs(probes)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
                for i, (c, x) in enumerate(zip(ctxs, conts))]
    return _timed_revisions(
        rev_dirs, len(ctxs),
        lambda rev: HFLM(pretrained=str(rev), device="cpu", batch_size=batch_size, dtype="float32"),
        lambda lm: [ll for ll, _greedy in lm.loglikelihood(requests, disable_tqdm=True)])


def _sweep_full_logits(rev_dirs: Sequence[Path], probes: Any, *, batch_size: int, **_: Any) -> tuple[Any, float, float, dict]:
    """What most research scripts do: run prefix+candidate as one sequence, log-softmax over
    [batch, sequence, vocabulary], sum the candidate's token log-probs in a Python loop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctxs, conts = _item_pairs(probes)

    def load(rev: Path) -> tuple[Any, Any]:
        return (AutoModelForCausalLM.from_pretrained(str(rev), dtype=torch.float32).eval(),
                AutoTokenizer.from_pretrained(str(rev)))

    def score(loaded: tuple[Any, Any]) -> list[float]:
        model, tok = loaded
        vals: list[float] = []
        with torch.no_grad():
            for i in range(0, len(ctxs), batch_size):
                seqs, starts = [], []
                for c, x in zip(ctxs[i:i + batch_size], conts[i:i + batch_size]):
                    p_ids = tok(c, add_special_tokens=False)["input_ids"]
                    c_ids = tok(x, add_special_tokens=False)["input_ids"]
                    seqs.append(p_ids + c_ids)
                    starts.append(len(p_ids))
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), _PAD_ID, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for j, s in enumerate(seqs):  # right padding: positions stay 0..n-1
                    ids[j, :len(s)] = torch.tensor(s)
                    mask[j, :len(s)] = 1
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
                for j, s in enumerate(seqs):
                    vals.append(sum(logp[j, t - 1, s[t]].item() for t in range(starts[j], len(s))))
        return vals

    return _timed_revisions(rev_dirs, len(ctxs), load, score)


_SWEEPS: dict[str, Callable[..., tuple[Any, float, float, dict]]] = {
    "ours": _sweep_ours, "lm-eval": _sweep_lm_eval, "minicons": _sweep_minicons, "full-logits": _sweep_full_logits,
}


_PRELOAD = {
    "ours": ("pythia_forensics.sweep.replay", "pythia_forensics.scoring.score", "pythia_forensics.sweep.store",
             "pythia_forensics.checkpoints.sources", "pythia_forensics.checkpoints.registry"),
    "lm-eval": ("lm_eval.api.instance", "lm_eval.models.huggingface"),
    "minicons": ("minicons.scorer",),
    "full-logits": (),
}


class _StageTimer:
    """Times our own pipeline by wrapping its stages for the duration of one replay.

    Stages: `load` (load_model / load_weights_into), `tokenize` (encode_items), `plan`
    (the de-duplication plan), `forward` (the transformer body), `lm_head` (the fp32 head on
    the needed rows), `gather` (the rest of the batched loop: padding, index building,
    log-sum-exp, reads), `frame` (the rest of score(): sums, DataFrame), `store`
    (ResultsStore.write). Wrapping is by attribute replacement, restored on exit; it adds a
    few microseconds per call, nothing per token.
    """

    def __init__(self) -> None:
        self._t: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []
        self._in_body = 0

    def _add(self, stage: str, dt: float) -> None:
        self._t[stage] = self._t.get(stage, 0.0) + dt

    def _wrap(self, owner: Any, name: str, stage: str, *, on_result: Callable[[Any], Any] | None = None) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = original(*args, **kwargs)
            finally:
                self._add(stage, time.perf_counter() - t0)
            return on_result(out) if on_result is not None else out

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def _instrument_model(self, model: Any) -> None:
        body = model.base_model
        if getattr(body, "_pf_timed", False):
            return
        original = body.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            self._in_body += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._in_body -= 1
                self._add("forward", time.perf_counter() - t0)

        body.forward = forward  # instance attribute: nn.Module.__call__ finds it first
        body._pf_timed = True

    def __enter__(self) -> _StageTimer:
        import torch.nn.functional as F

        from pythia_forensics.scoring import score as scoring
        from pythia_forensics.sweep.store import ResultsStore

        def loaded(out: Any) -> Any:
            self._instrument_model(out[0])
            return out

        self._wrap(scoring, "load_model", "load", on_result=loaded)
        self._wrap(scoring, "load_weights_into", "load")
        self._wrap(scoring, "encode_items", "tokenize")
        self._wrap(scoring, "_make_plan", "plan")
        self._wrap(scoring, "_run_plan", "run_plan")
        self._wrap(scoring, "score", "score")
        self._wrap(ResultsStore, "write", "store")
        linear = F.linear

        def head_linear(*args: Any, **kwargs: Any) -> Any:
            if self._in_body:
                return linear(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return linear(*args, **kwargs)
            finally:
                self._add("lm_head", time.perf_counter() - t0)

        self._undo.append((F, "linear", linear))
        F.linear = head_linear
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def totals(self) -> dict[str, float]:
        t = dict(self._t)
        run_plan = t.pop("run_plan", 0.0)
        score = t.pop("score", 0.0)
        out = {k: t.get(k, 0.0) for k in ("load", "tokenize", "plan", "forward", "lm_head")}
        out["gather"] = max(0.0, run_plan - out["forward"] - out["lm_head"])
        out["frame"] = max(0.0, score - run_plan - out["tokenize"] - out["plan"])
        out["store"] = t.get("store", 0.0)
        return out


def _peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB, macOS in bytes
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one competitor's sweep as `spec` says; write its log-probs; return its record."""
    import numpy as np
    import torch

    from pythia_forensics.scoring.probes import load_probes

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    probes = load_probes(spec["battery"])
    rev_dirs = [Path(p) for p in spec["revisions"]]
    # import every competitor's code before the clock starts: library import time is not sweep time
    import importlib

    for module in _PRELOAD.get(spec["competitor"], ()) + ("transformers.models.gpt_neox.modeling_gpt_neox",):
        importlib.import_module(module)
    t0 = time.perf_counter()
    c0 = time.process_time()
    logp, load_s, score_s, extra = _SWEEPS[spec["competitor"]](
        rev_dirs, probes, battery=Path(spec["battery"]), work=work, batch_size=int(spec["batch_size"]),
        profile=bool(spec.get("profile")))
    wall = time.perf_counter() - t0
    extra["cpu_s"] = time.process_time() - c0  # all threads; robust to other processes' load
    logp_file = work / "logp.npy"
    np.save(logp_file, np.asarray(logp, dtype=np.float64))
    return {"wall_s": wall, "load_s": load_s, "score_s": score_s, "logp_file": str(logp_file), "extra": extra,
            "threads": torch.get_num_threads()}


def _worker_main(argv: Sequence[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    record = _run_spec(spec)
    record["peak_rss_bytes"] = _peak_rss_bytes()
    Path(spec["work"], "result.json").write_text(json.dumps(record))
    return 0


def run_competitor(competitor: str, rev_dirs: Sequence[Path], battery: Path, *, work: Path, shape: str,
                   round_: int, items: int, batch_size: int = BENCH_BATCH_SIZE, isolate: bool = True,
                   profile: bool = False, threads: int | None = None) -> RunResult:
    """Run one competitor over `rev_dirs` (in a fresh subprocess unless `isolate=False`).

    A competitor that fails is recorded with `status="failed: <last error line>"`, so one
    broken library never loses the other rows.
    """
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    spec = {"competitor": competitor, "revisions": [str(p) for p in rev_dirs], "battery": str(battery),
            "work": str(work), "batch_size": batch_size, "profile": profile, "threads": threads}
    base = dict(competitor=competitor, shape=shape, round=round_, revisions=len(rev_dirs), items=items)
    if isolate:
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "DISABLE_SAFETENSORS_CONVERSION": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
               # the worker imports benchmarks/ from this clone whatever the working directory
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", str(spec_path)],
                              capture_output=True, text=True, env=env)
        result_path = work / "result.json"
        if proc.returncode != 0 or not result_path.exists():
            lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            (work / "stderr.txt").write_text(proc.stderr or "")
            return RunResult(**base, wall_s=math.nan, load_s=math.nan, score_s=math.nan, peak_rss_bytes=None,
                             status=f"failed: {why[:200]}")
        record = json.loads(result_path.read_text())
    else:
        try:
            record = _run_spec(spec)
        except Exception as exc:  # noqa: BLE001 - recorded in the table, the other rows go on
            return RunResult(**base, wall_s=math.nan, load_s=math.nan, score_s=math.nan, peak_rss_bytes=None,
                             status=f"failed: {type(exc).__name__}: {str(exc)[:200]}")
        record["peak_rss_bytes"] = None
    return RunResult(**base, wall_s=record["wall_s"], load_s=record["load_s"], score_s=record["score_s"],
                     peak_rss_bytes=record["peak_rss_bytes"], logp_file=record["logp_file"],
                     extra={**record.get("extra", {}), "threads": record.get("threads")})



# --- the contention condition ------------------------------------------------------------------
_COMPETING_JOB = """
import sys, torch
torch.set_num_threads({threads})
a = torch.randn({n}, {n})
b = torch.randn({n}, {n})
print("ready", flush=True)
while True:
    a = torch.tanh(a @ b)
"""


class CompetingJob:
    """Another torch job on the machine: a subprocess doing `threads`-thread matmuls until stopped.

    It runs with the OpenMP wait policy an unrelated job has (ours is not imported there), and
    is started before and stopped after the measurement it competes with. Use as a context
    manager; it only ever stops the process it started.
    """

    def __init__(self, threads: int = BENCH_COMPETING_THREADS, size: int = BENCH_COMPETING_MATMUL) -> None:
        self.threads, self.size = threads, size
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> CompetingJob:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        self.proc = subprocess.Popen([sys.executable, "-c", _COMPETING_JOB.format(threads=self.threads, n=self.size)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.__exit__(None, None, None)
            raise BenchmarkError("the competing torch job did not start; run the benchmark without contention")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# --- the whole benchmark --------------------------------------------------------------------
@dataclass(frozen=True)
class BenchPlan:
    """How much a run measures (chosen so `make bench` fits 15 minutes on 2 cores).

    Attributes:
        shapes: layer shapes.
        revisions: revisions per shape in the suite; ours sweeps all of them every round.
        lm_eval_revisions / slow_revisions: revisions lm-eval / minicons and the full-logits
            scorer sweep per round (they are 5-20x slower than ours; each round takes the
            next ones, so rounds cover different revisions). Ratios are per revision.
        rounds: alternating rounds (each round runs every competitor once per shape, in an
            order rotated by one each round).
        items: battery size.
        budget_s: stop starting new rounds when the next would end past this (>= 1 round).
        support_tokens: tokens for the support counter's throughput (0: skip).
        contention: each round, run ours once more beside a `CompetingJob` (the slowdown
            column: contended / quiet wall time per revision).
    """

    shapes: tuple[BenchShape, ...]
    revisions: int = BENCH_REVISIONS
    lm_eval_revisions: int = 1
    slow_revisions: int = 1
    rounds: int = 3
    items: int = BENCH_MIN_ITEMS
    budget_s: float = 780.0
    support_tokens: int = BENCH_SUPPORT_TOKENS
    competitors: tuple[str, ...] = BENCH_COMPETITORS
    batch_size: int = BENCH_BATCH_SIZE
    contention: bool = True


def default_plan(*, quick: bool = False) -> BenchPlan:
    """The plan `make bench` runs (quick: a tiny shape, 2 revisions, 120 items, one round)."""
    if quick:
        return BenchPlan(shapes=bench_shapes(quick=True), revisions=BENCH_QUICK_REVISIONS, lm_eval_revisions=1,
                         slow_revisions=1,
                         rounds=1, items=BENCH_QUICK_ITEMS, budget_s=120.0, support_tokens=1_000_000)
    return BenchPlan(shapes=bench_shapes())


def _slow_subset(revs: Sequence[Path], round_: int, n: int) -> list[Path]:
    n = min(n, len(revs))
    return [revs[(round_ * n + j) % len(revs)] for j in range(n)]


def _max_abs_delta(ours: RunResult, other: RunResult, all_revs: Sequence[Path], sub_revs: Sequence[Path]) -> float:
    import numpy as np

    if ours.logp_file is None or other.logp_file is None:
        return math.nan
    a = np.load(ours.logp_file)
    b = np.load(other.logp_file)
    pick = [list(all_revs).index(p) for p in sub_revs]
    a = a[pick]
    if a.shape != b.shape or np.isnan(a).any() or np.isnan(b).any():
        return math.inf  # missing numbers count as a mismatch, never as agreement
    return float(np.abs(a - b).max())


def _machine() -> dict[str, Any]:
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for mod in ("minicons", "lm_eval"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001 - a missing optional library is reported, not fatal
            versions[mod] = "not installed"
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "cuda": torch.cuda.is_available(), "loadavg_start": os.getloadavg(), **versions}


def _median(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def run_bench(out: str | Path, *, quick: bool = False, plan: BenchPlan | None = None, isolate: bool = True,
              suite_dir: str | Path | None = None, gpu: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run the side-by-side benchmark and write `OUT/bench.md`, `OUT/bench.csv`, `OUT/bench.json`.

    Args:
        out: output folder (the suite is built under `OUT/suite` unless `suite_dir`).
        quick: a tiny shape, 2 revisions, 120 items, one round (about a minute).
        plan: what to measure (default: `default_plan(quick=quick)`).
        isolate: run each competitor in a fresh subprocess (own peak RSS). False runs them
            in this process (faster start; RSS not reported).
        suite_dir: where to build / reuse the random suites.
        gpu: run the GPU section when CUDA is present.
        progress: show progress.

    Returns:
        The report as a dict (`table` rows, `battery`, `breakdown`, `floor`, `support`,
        `gpu`, `machine`, `notes`, `paths`).

    Raises:
        BenchmarkError: the GPT-NeoX tokenizer is missing, or a competitor library is not
            installed (`pip install minicons lm-eval`).
    """
    import pandas as pd
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    plan = plan or default_plan(quick=quick)
    unknown = sorted(set(plan.competitors) - set(_SWEEPS))
    if unknown or "ours" not in plan.competitors:
        raise BenchmarkError(f"unknown or missing competitors {unknown or ['ours']}; use some of "
                             f"{', '.join(_SWEEPS)} and always 'ours'")
    for comp, module in (("minicons", "minicons"), ("lm-eval", "lm_eval")):
        if comp in plan.competitors:
            import importlib.util

            if importlib.util.find_spec(module) is None:
                raise BenchmarkError(f"competitor {comp} needs the {module} package, which is not installed; "
                                     "run `pip install minicons lm-eval` (the `bench` extra) or leave it out")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suite = Path(suite_dir) if suite_dir is not None else out / "suite"
    work = out / "work"
    tokenizer = neox_tokenizer()
    machine = _machine()

    # 1. checkpoints and battery
    model_dirs = {s.name: build_suite(suite, s, revisions=plan.revisions, progress=progress) for s in plan.shapes}
    probes = build_battery(min_items=plan.items)
    battery_path = write_battery(probes, out / "battery.jsonl")
    stats = battery_stats(probes, tokenizer)
    plans = plan_stats(probes, tokenizer)
    revs = {name: revision_dirs(d)[:plan.revisions] for name, d in model_dirs.items()}

    # 2. alternating rounds
    runs: list[tuple[RunResult, list[Path]]] = []
    contended: list[RunResult] = []  # ours beside a competing torch job
    deltas: dict[tuple[str, str], list[float]] = {}
    rounds_done = 0
    per_round = len(plan.shapes) * len(plan.competitors)
    bar = tqdm(total=plan.rounds * per_round, desc="bench", unit="run", disable=not progress)
    round_s: list[float] = []
    for r in range(plan.rounds):
        elapsed = time.perf_counter() - started
        if r > 0 and elapsed + max(round_s) > plan.budget_s:
            break  # the next round would end past the budget
        t_round = time.perf_counter()
        for shape in plan.shapes:
            k = r % len(plan.competitors)
            order = list(plan.competitors[k:] + plan.competitors[:k])
            this: dict[str, tuple[RunResult, list[Path]]] = {}
            for comp in order:
                n_sub = {"ours": plan.revisions, "lm-eval": plan.lm_eval_revisions}.get(comp, plan.slow_revisions)
                sub = _slow_subset(revs[shape.name], r, n_sub)
                bar.set_postfix_str(f"round {r + 1} {shape.name} {comp}", refresh=True)
                # ours is profiled in its timed runs: the stage timers cost microseconds per
                # call (a few hundred calls per revision), nothing per token
                res = run_competitor(comp, sub, battery_path, work=work / shape.name / comp / f"round{r}",
                                     shape=shape.name, round_=r, items=len(probes.items),
                                     batch_size=plan.batch_size, isolate=isolate, profile=comp == "ours")
                this[comp] = (res, sub)
                runs.append((res, sub))
                bar.update(1)
            if plan.contention:
                bar.set_postfix_str(f"round {r + 1} {shape.name} ours beside a torch job", refresh=True)
                sub = this["ours"][1]
                with CompetingJob():
                    res = run_competitor("ours", sub, battery_path, work=work / shape.name / "ours-contended" / f"round{r}",
                                         shape=shape.name, round_=r, items=len(probes.items),
                                         batch_size=plan.batch_size, isolate=isolate)
                contended.append(res)
            ours_res = this["ours"][0]
            for comp, (res, sub) in this.items():
                if comp != "ours":
                    deltas.setdefault((shape.name, comp), []).append(
                        _max_abs_delta(ours_res, res, revs[shape.name], sub))
        round_s.append(time.perf_counter() - t_round)
        rounds_done += 1
    bar.close()

    # 3. our breakdown and the machine's floor
    flops = measure_matmul_flops()
    breakdown: dict[str, dict[str, float]] = {}
    floors: dict[str, dict[str, float]] = {}
    for shape in plan.shapes:
        profiled = [res for res, _ in runs if res.shape == shape.name and res.competitor == "ours"
                    and res.status == "ok" and res.extra.get("stages")]
        if profiled:
            # per revision, median over rounds of each stage; "other" = replay's own bookkeeping
            per_round = []
            for res in profiled:
                st = dict(res.extra["stages"])
                st["other"] = max(0.0, res.wall_s - sum(st.values()))
                st["total"] = res.wall_s
                per_round.append({k: v / res.revisions for k, v in st.items()})
            breakdown[shape.name] = {k: _median([pr[k] for pr in per_round]) for k in per_round[0]}
        else:
            breakdown[shape.name] = {}
        weights = revs[shape.name][-1] / "model.safetensors"
        read = measure_disk_read(weights)
        floors[shape.name] = {**lower_bound(shape, stats, flops_per_s=flops, read_bytes_per_s=read,
                                            weight_bytes=weights.stat().st_size),
                              "read_bytes_per_s": read, "flops_per_s": flops}

    # 4. the table
    rows = []
    for shape in plan.shapes:
        by_comp: dict[str, list[RunResult]] = {}
        for res, _sub in runs:
            if res.shape == shape.name:
                by_comp.setdefault(res.competitor, []).append(res)
        ours_per_rev = _median([x.wall_s / x.revisions for x in by_comp.get("ours", [])])
        for comp in plan.competitors:
            rs = by_comp.get(comp, [])
            ok = [x for x in rs if x.status == "ok"]
            per_rev = _median([x.wall_s / x.revisions for x in ok])
            nrev = ok[0].revisions if ok else (rs[0].revisions if rs else 0)
            delta = max(deltas.get((shape.name, comp), [math.nan])) if comp != "ours" else 0.0
            ratio = per_rev / ours_per_rev if comp != "ours" else 1.0
            target = BENCH_TARGET_RATIOS.get(comp)
            rss = [x.peak_rss_bytes for x in ok if x.peak_rss_bytes]
            rows.append({
                "shape": shape.name, "competitor": comp, "rounds": len(ok), "revisions_per_round": nrev,
                "items": len(probes.items),
                "wall_s": _median([x.wall_s for x in ok]),
                "wall_per_revision_s": per_rev,
                "load_per_revision_s": _median([x.load_s / x.revisions for x in ok]),
                "score_per_revision_s": _median([x.score_s / x.revisions for x in ok]),
                "items_per_s": len(probes.items) / per_rev if per_rev else math.nan,
                "cpu_per_revision_s": _median([x.extra.get("cpu_s", math.nan) / x.revisions for x in ok]),
                "peak_rss_mib": max(rss) / 2**20 if rss else math.nan,
                "ratio_vs_ours": ratio,
                "cpu_ratio_vs_ours": math.nan,  # filled below, once ours' CPU time is known
                "max_abs_delta_logp": delta,
                "target_ratio": target if target is not None else math.nan,
                "target_met": (bool(ratio >= target and delta <= BENCH_MAX_ABS_DELTA) if target is not None
                               else None),
                "status": "ok" if len(ok) == len(rs) and rs else "; ".join(sorted({x.status for x in rs if x.status != "ok"})) or "not run",
                "wall_s_rounds": " ".join(f"{x.wall_s:.2f}" for x in rs),
            })
    for row in rows:
        ours_cpu = next(r["cpu_per_revision_s"] for r in rows if r["shape"] == row["shape"] and r["competitor"] == "ours")
        row["cpu_ratio_vs_ours"] = row["cpu_per_revision_s"] / ours_cpu if ours_cpu else math.nan
        floor_s = floors[row["shape"]]["floor_s"]
        row["ratio_to_floor"] = row["wall_per_revision_s"] / floor_s if floor_s else math.nan
        beside = [x for x in contended if x.shape == row["shape"] and x.status == "ok"] if row["competitor"] == "ours" else []
        row["contended_wall_per_revision_s"] = _median([x.wall_s / x.revisions for x in beside])
        row["slowdown_contended"] = (row["contended_wall_per_revision_s"] / row["wall_per_revision_s"]
                                     if beside and row["wall_per_revision_s"] else math.nan)
    table = pd.DataFrame(rows)

    # 5. support counter and GPU
    support = _support_section(plan.support_tokens)
    gpu_rows = _gpu_section(probes) if gpu else {"status": "skipped: disabled (--no-gpu)"}
    gpu_rows["checkpoint"] = (_checkpoint_section(probes, out / "gpu-checkpoint") if gpu
                              else {"status": "skipped: disabled (--no-gpu)"})
    machine["loadavg_end"] = os.getloadavg()
    report = {
        "plan": {"shapes": [s.name for s in plan.shapes], "revisions": plan.revisions,
                 "lm_eval_revisions": plan.lm_eval_revisions, "slow_revisions": plan.slow_revisions, "rounds_planned": plan.rounds, "rounds_done": rounds_done,
                 "items": len(probes.items), "batch_size": plan.batch_size, "budget_s": plan.budget_s,
                 "isolated": isolate, "contention": plan.contention,
                 "competing_threads": BENCH_COMPETING_THREADS},
        "machine": machine, "battery": asdict(stats), "plans": plans, "table": rows, "breakdown": breakdown, "floor": floors,
        "support": support, "gpu": gpu_rows, "wall_s": time.perf_counter() - started,
        "contended": [asdict(x) for x in contended],
    }
    report["notes"] = _notes(report)
    paths = _write_report(out, report, table)
    report["paths"] = {k: str(v) for k, v in paths.items()}
    shutil.rmtree(work, ignore_errors=True)
    return report



def _support_section(n_tokens: int) -> dict[str, Any]:
    """The support counter's throughput (`support.benchmark`), if that module offers it."""
    if n_tokens <= 0:
        return {"status": "skipped: support_tokens = 0"}
    try:
        from pythia_forensics.corpus import support
    except ImportError as exc:
        return {"status": f"skipped: support module not importable ({exc})"}
    fn = getattr(support, "benchmark", None)
    if fn is None:
        return {"status": "skipped: pythia_forensics.corpus.support has no benchmark()"}
    result = dict(fn(n_tokens))
    result["status"] = "ok"
    return result


def _gpu_section(probes: Any, *, device: str = "cuda", shapes: Sequence[BenchShape] | None = None,
                 memory_bytes: int | None = None) -> dict[str, Any]:
    """Items/s on the largest Pythia shape that fits the device (random weights built on the
    device, dtype as `auto` resolves it there, batch size auto-tuned by the scorer), plus the
    smallest shape for scale. Skipped cleanly without CUDA.

    Args:
        probes: the battery.
        device: ``cuda`` (the report's section); ``cpu`` exercises the same code in tests.
        shapes: candidate shapes, largest first (default: `BENCH_GPU_SHAPES` from the registry).
        memory_bytes: memory to fit into (default: the GPU's free memory).
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return {"status": "skipped: no CUDA device visible to torch"}
    from transformers import GPTNeoXForCausalLM

    from pythia_forensics.scoring import score as scoring

    if shapes is None:
        from pythia_forensics.checkpoints.registry import get_suite

        suite = get_suite("pythia")
        shapes = [BenchShape(name=n, layers=int(m.layers), d_model=int(m.d_model), heads=int(m.heads),
                             vocab_size=int(m.vocab_size)) for n in BENCH_GPU_SHAPES for m in [suite.model(n)]]
    cuda = device.startswith("cuda")
    if memory_bytes is None:
        memory_bytes = torch.cuda.mem_get_info()[0] if cuda else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tokenizer = neox_tokenizer()
    rows: list[dict[str, Any]] = []
    fitted = False

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for k, shape in enumerate(shapes):
        if fitted and k != len(shapes) - 1:
            continue  # after the largest that fits, only the smallest (for scale)
        dtype = scoring.resolve_dtype("auto", params=shape.params_total, device="cuda" if cuda else "cpu")
        tdtype = getattr(torch, dtype)
        need = shape.params_total * torch.finfo(tdtype).bits // 8
        if need > 0.6 * memory_bytes:  # weights plus an auto-sized batch's activations must fit
            rows.append({"shape": shape.name, "status": f"skipped: needs {need / 2**30:.1f} GiB of "
                                                        f"{memory_bytes / 2**30:.1f} GiB free"})
            continue
        model = None
        try:
            previous = torch.get_default_dtype()
            torch.set_default_dtype(tdtype)  # build directly in the target dtype (no fp32 copy)
            try:
                with torch.device(device):
                    model = GPTNeoXForCausalLM(_neox_config(shape)).eval()
            finally:
                torch.set_default_dtype(previous)
            _randomise(model, BENCH_SEED, BENCH_WEIGHT_STD)
            opts = scoring.ScoreOptions(dtype=dtype, device="cuda" if cuda else "cpu", batch_size="auto",
                                        vocab_rows="all")
            scoring.score(model, probes, tokenizer=tokenizer, options=opts)  # warm-up: kernels, batch size
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            frame = scoring.score(model, probes, tokenizer=tokenizer, options=opts)
            sync()
            dt = time.perf_counter() - t0
            rows.append({"shape": shape.name, "status": "ok", "dtype": dtype, "batch_size": frame.attrs.get("batch_size"),
                         "seconds": dt, "items_per_s": len(probes.items) / dt,
                         "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan})
            fitted = True
        except Exception as exc:  # noqa: BLE001 - an OOM at one size means: try the next
            rows.append({"shape": shape.name, "status": f"failed: {type(exc).__name__}: {str(exc)[:160]}"})
        finally:
            model = None
            if cuda:
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    return {"status": "ok", "device": name, "memory_gib": memory_bytes / 2**30, "rows": rows}


def _checkpoint_section(probes: Any, folder: str | Path, *, device: str = "cuda", shape: BenchShape | None = None,
                        dtypes: Sequence[str] = BENCH_GPU_CHECKPOINT_DTYPES) -> dict[str, Any]:
    """One saved checkpoint (default `BENCH_GPU_CHECKPOINT_SHAPE`, random weights, fp16
    safetensors as Pythia ships them) loaded from disk and scored in each dtype: load time,
    first and second scoring time, peak device memory. Skipped cleanly without CUDA.

    Loading does not overlap scoring here: replay overlaps *downloads* with scoring (its
    prefetch thread); a local checkpoint is read by the scoring thread, so load + score is
    the per-revision cost of a local replay.

    Args:
        probes: the battery.
        folder: where to write the checkpoint (removed afterwards).
        device: ``cuda``; ``cpu`` exercises the same code in tests.
        shape: the shape (default: `BENCH_GPU_CHECKPOINT_SHAPE` from the registry).
        dtypes: dtypes to load and score in.
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return {"status": "skipped: no CUDA device visible to torch"}
    from transformers import GPTNeoXForCausalLM

    from pythia_forensics.scoring import score as scoring

    if shape is None:
        from pythia_forensics.checkpoints.registry import get_suite

        m = get_suite("pythia").model(BENCH_GPU_CHECKPOINT_SHAPE)
        shape = BenchShape(name=BENCH_GPU_CHECKPOINT_SHAPE, layers=int(m.layers), d_model=int(m.d_model),
                           heads=int(m.heads), vocab_size=int(m.vocab_size))
    cuda = device.startswith("cuda")
    folder = Path(folder)
    tokenizer = neox_tokenizer()
    rows: list[dict[str, Any]] = []
    try:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float16)
        try:
            with torch.device(device):
                model = GPTNeoXForCausalLM(_neox_config(shape)).eval()
        finally:
            torch.set_default_dtype(previous)
        _randomise(model, BENCH_SEED, BENCH_WEIGHT_STD)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        weight_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        model = None
        for dtype in dtypes:
            model = None
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                t0 = time.perf_counter()
                model, tok = scoring.load_model(folder, dtype=dtype, device=device)
                if cuda:
                    torch.cuda.synchronize()
                load_s = time.perf_counter() - t0
                opts = scoring.ScoreOptions(dtype=dtype, device=device, batch_size="auto", vocab_rows="all")
                times = []
                for _ in range(2):  # first call pays kernel selection; the second is a later revision's
                    t0 = time.perf_counter()
                    frame = scoring.score(model, probes, tokenizer=tok, options=opts)
                    if cuda:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                rows.append({"shape": shape.name, "dtype": dtype, "status": "ok", "load_s": load_s,
                             "first_score_s": times[0], "score_s": times[1], "batch_size": frame.attrs.get("batch_size"),
                             "items_per_s": len(probes.items) / times[1], "weight_mb": weight_bytes / 1e6,
                             "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan})
            except Exception as exc:  # noqa: BLE001 - one dtype failing (OOM) leaves the other's row
                rows.append({"shape": shape.name, "dtype": dtype, "status": f"failed: {type(exc).__name__}: {str(exc)[:160]}"})
    finally:
        model = None
        shutil.rmtree(folder, ignore_errors=True)
        if cuda:
            torch.cuda.empty_cache()
    return {"status": "ok", "rows": rows}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e6):
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    return str(v)


def _notes(report: dict[str, Any]) -> list[str]:
    """Plain statements read off the numbers: targets met or missed, and where our time goes."""
    notes = []
    for row in report["table"]:
        if row["competitor"] == "ours":
            continue
        target = BENCH_TARGET_RATIOS.get(row["competitor"])
        if target is None:
            continue
        shape = row["shape"]
        verdict = "met" if row["target_met"] else "MISSED"
        why = ""
        if not row["target_met"]:
            stages = report["breakdown"].get(shape, {})
            total = stages.get("total") or math.nan
            parts = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])
                              if k != "total" and v > 0.02 * total)
            floor = report["floor"].get(shape, {})
            why = (f"; our time per revision goes to: {parts}; machine floor {_fmt(floor.get('floor_s'))} s/revision"
                   if parts else "")
            if row["max_abs_delta_logp"] > BENCH_MAX_ABS_DELTA:
                why += f"; numbers differ by {_fmt(row['max_abs_delta_logp'])} > {BENCH_MAX_ABS_DELTA}"
        why += f"; CPU-time ratio {_fmt(row['cpu_ratio_vs_ours'])}x" if not row["target_met"] else ""
        notes.append(f"{shape} vs {row['competitor']}: {_fmt(row['ratio_vs_ours'])}x (target {target:g}x), "
                     f"max |delta logp| {_fmt(row['max_abs_delta_logp'])}: {verdict}{why}")
    return notes


def _write_report(out: Path, report: dict[str, Any], table: Any) -> dict[str, Path]:
    """bench.csv (the side-by-side table), bench.json (everything), bench.md (readable)."""
    paths = {"md": out / "bench.md", "csv": out / "bench.csv", "json": out / "bench.json"}
    table.to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    p, m, b = report["plan"], report["machine"], report["battery"]
    lines = [
        "# pythia-forensics benchmark",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {report['wall_s']:.0f} s in all. "
        f"{m['cpu_count']} CPU cores, {m['torch_threads']} torch threads, load average "
        f"{m['loadavg_start'][0]:.1f} at start and {m['loadavg_end'][0]:.1f} at the end (the machine is shared: "
        "absolute times move with load, ratios from alternating rounds much less). "
        f"torch {m['torch']}, transformers {m['transformers']}, minicons {m['minicons']}, lm-eval {m['lm_eval']}.",
        "",
        f"Checkpoints: random GPT-NeoX weights in the shapes {', '.join(p['shapes'])} (vocabulary padded to 50304 "
        f"rows, real GPT-NeoX-20B tokenizer), {p['revisions']} revisions each, fp32, CPU. Battery: {b['items']} items "
        f"({b['single_token_items']} with single-token candidates, {b['multi_token_items']} multi-token; prefixes "
        f"{b['prefix_tokens_min']}-{b['prefix_tokens_max']} tokens, mean {b['prefix_tokens_mean']:.1f}); "
        f"{b['distinct_prefixes']} distinct prefixes, {b['distinct_contexts']} distinct contexts needing an "
        f"LM-head row, {b['distinct_tokens']} distinct tokens in the prefix trie vs {b['naive_tokens']} tokens "
        "if every (item, candidate) ran as its own sequence.",
        "",
        f"Each competitor runs in a fresh process (peak RSS is its own) and sweeps the revisions: load each, "
        f"score every item's target and foil. {p['rounds_done']} alternating rounds (of {p['rounds_planned']} "
        f"planned within a {p['budget_s']:.0f} s budget), the order rotated each round; medians. Ours sweeps "
        f"all {p['revisions']} revisions every round; lm-eval {p['lm_eval_revisions']} and minicons and the "
        f"full-logits scorer {p['slow_revisions']} per round (the next ones each round; they take 5-20x longer), "
        f"so every ratio is per revision. Competitors use batch size {p['batch_size']}; ours `auto`. Ours runs the replay engine "
        "end to end (plan, content keys, load, score, atomic Parquet writes) with `vocab_rows=\"all\"`, the "
        "normalisation the others use. max |delta logp| compares every item's target and foil log-prob with "
        "ours on the same revisions in the same round (max over rounds).",
        "",
        "| shape | competitor | rev/round | rounds | wall s/revision | load s/rev | score s/rev | items/s | "
        "peak RSS MiB | CPU s/rev | ours is x faster (wall) | (CPU) | x floor | max abs delta logp | target | met | "
        "s/rev beside a torch job | slowdown |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["table"]:
        target = r["target_ratio"]
        lines.append(
            f"| {r['shape']} | {r['competitor']}{'' if r['status'] == 'ok' else ' (' + r['status'] + ')'} | "
            f"{r['revisions_per_round']} | {r['rounds']} | {_fmt(r['wall_per_revision_s'])} | "
            f"{_fmt(r['load_per_revision_s'])} | {_fmt(r['score_per_revision_s'])} | {_fmt(r['items_per_s'], 0)} | "
            f"{_fmt(r['peak_rss_mib'], 0)} | {_fmt(r['cpu_per_revision_s'])} | {_fmt(r['ratio_vs_ours'], 1)} | "
            f"{_fmt(r['cpu_ratio_vs_ours'], 1)} | {_fmt(r.get('ratio_to_floor', math.nan), 1)} | "
            f"{_fmt(r['max_abs_delta_logp'])} | "
            f"{'' if math.isnan(target) else f'{target:g}x'} | {_fmt(r['target_met'])} | "
            f"{_fmt(r.get('contended_wall_per_revision_s', math.nan))} | {_fmt(r.get('slowdown_contended', math.nan), 1)} |")
    if p.get("contention"):
        lines += ["", f"Contention: each round ours runs once more beside one other torch job ({p['competing_threads']} "
                  "threads of matmuls with the default OpenMP wait policy, started before and stopped after the "
                  "measurement); slowdown = that wall time per revision / the quiet one (a fair share of the cores "
                  "predicts about 2x). x floor = wall time per revision / the machine's floor below."]
    lines += ["", "## Targets", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "## Where our time goes (stage timers in our timed runs; seconds per revision, median over rounds)", "",
              "| shape | " + " | ".join(_STAGES) + " | total |", "|---" * (len(_STAGES) + 2) + "|"]
    for shape, st in report["breakdown"].items():
        lines.append(f"| {shape} | " + " | ".join(_fmt(st.get(k), 3) for k in _STAGES) + f" | {_fmt(st.get('total'), 3)} |")
    lines += ["", "load = load_model (first revision) / load_weights_into (the rest, into one skeleton); tokenize = "
              "encode_items; plan = de-duplication plan; forward = transformer body; lm_head = fp32 head on the "
              "needed rows only; gather = the rest of the batch loop (padding, index building, log-sum-exp, "
              "reads); frame = sums and DataFrame; store = atomic Parquet write; other = replay's planning, "
              "content keys and summary refresh.", "",
              ]
    pl = report.get("plans", {})
    if pl:
        lines += ["Body tokens our scorer runs on this battery (per revision): "
                  + "; ".join(f"{label} plan {pl[label + '_rows']} rows, {pl[label + '_tokens']} tokens "
                              f"({pl[label + '_padded']} with batch padding)"
                              for label in ("causal", "tree") if label + "_rows" in pl)
                  + f"; the prefix trie has {b['distinct_tokens']} distinct tokens, running every (item, candidate) "
                  f"alone {b['naive_tokens']}.", ""]
    lines += ["## The machine's floor (per revision)", "",
              "| shape | body TFLOP | head TFLOP | matmul GFLOP/s | compute floor s | weight MB | disk read MB/s | "
              "load floor s | floor s | ours s | ours / floor |", "|---" * 11 + "|"]
    for shape, f in report["floor"].items():
        ours = next((r for r in report["table"] if r["shape"] == shape and r["competitor"] == "ours"), None)
        ours_s = ours["wall_per_revision_s"] if ours else math.nan
        weight_mb = f["load_s"] * f["read_bytes_per_s"] / 1e6
        lines.append(f"| {shape} | {f['body_flops'] / 1e12:.3f} | {f['head_flops'] / 1e12:.3f} | "
                     f"{f['flops_per_s'] / 1e9:.0f} | {_fmt(f['compute_s'], 3)} | {weight_mb:.0f} | "
                     f"{f['read_bytes_per_s'] / 1e6:.0f} | {_fmt(f['load_s'], 3)} | {_fmt(f['floor_s'], 3)} | "
                     f"{_fmt(ours_s, 3)} | {_fmt(ours_s / f['floor_s'], 1)} |")
    lines += ["", "Floor: 2 x non-embedding parameters per distinct token of the prefix trie, plus attention "
              "(4 x layers x d_model x depth per token), plus 2 x d_model x 50304 per distinct context whose "
              "next-token row is read, over the best measured fp32 matmul rate; loading: weight bytes over the "
              "disk read rate measured after dropping the file from the page cache (posix_fadvise; a VM host may "
              "still cache it). Floor = the larger of the two (loading can overlap compute).", ""]
    s = report["support"]
    lines += ["## Support counter", ""]
    if s.get("status") == "ok":
        lines.append(f"`support.benchmark`: {s['n_tokens']:,} tokens in {s['seconds']:.2f} s = "
                     f"{s['tokens_per_second'] / 1e6:.1f} M tokens/s (window {s.get('window')}, {s.get('events', 0):,} events).")
    else:
        lines.append(s.get("status", "skipped"))
    g = report["gpu"]
    lines += ["", "## GPU", ""]
    if g.get("status") == "ok":
        lines += [f"{g['device']} ({g['memory_gib']:.0f} GiB), random weights built on the device, `auto` dtype and "
                  f"batch size, {b['items']} items.", "",
                  "| shape | dtype | batch size | s | items/s | peak GPU MiB | status |", "|---" * 7 + "|"]
        for r in g["rows"]:
            lines.append(f"| {r['shape']} | {r.get('dtype', '')} | {r.get('batch_size', '')} | {_fmt(r.get('seconds'))} | "
                         f"{_fmt(r.get('items_per_s'), 0)} | {_fmt(r.get('peak_gpu_mib'), 0)} | {r['status']} |")
    else:
        lines.append(g.get("status", "skipped"))
    c = g.get("checkpoint", {})
    lines += ["", "### A saved checkpoint, loaded and scored per dtype", ""]
    if c.get("status") == "ok":
        lines += ["Random weights saved as fp16 safetensors (Pythia's layout), loaded with `load_model`, scored twice "
                  "(the first call pays kernel selection). A local checkpoint is read by the scoring thread: load + "
                  "score is a local replay's cost per revision (replay overlaps only downloads with scoring).", "",
                  "| shape | dtype | weight MB | load s | first score s | score s | items/s | batch size | "
                  "peak GPU MiB | status |", "|---" * 10 + "|"]
        for r in c["rows"]:
            lines.append(f"| {r['shape']} | {r['dtype']} | {_fmt(r.get('weight_mb'), 0)} | {_fmt(r.get('load_s'))} | "
                         f"{_fmt(r.get('first_score_s'))} | {_fmt(r.get('score_s'))} | {_fmt(r.get('items_per_s'), 0)} | "
                         f"{r.get('batch_size', '')} | {_fmt(r.get('peak_gpu_mib'), 0)} | {r['status']} |")
    else:
        lines.append(c.get("status", "skipped"))
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths


_STAGES = ("load", "tokenize", "plan", "forward", "lm_head", "gather", "frame", "store", "other")


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
