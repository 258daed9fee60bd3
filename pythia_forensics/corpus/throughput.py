"""Throughput of the support counters on a Pythia-shaped synthetic stream (`benchmark`), used
by the repository's benchmarks/ (``make bench``)."""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from pythia_forensics.corpus.battery import BATTERY_MODE, SequenceCounter
from pythia_forensics.corpus.counting import run_count
from pythia_forensics.corpus.rules import FRAME_CANDIDATE, FRAME_CUE, FRAME_GAP
from pythia_forensics.corpus.streams import SUPPORT_BLOCK_TOKENS, IndexedSource
from pythia_forensics.corpus.support import count_token_stream
from pythia_forensics.corpus.vocab import CompiledFrame, CompiledRule, TokenForm, Vocab
from pythia_forensics.corpus.windows import (
    DEFAULT_SUPPORT_WINDOW,
    DEFAULT_SUPPORT_WINDOW_TOKENS,
)

__all__ = ["synthetic_stream", "benchmark"]


def synthetic_stream(n_tokens: int, *, seed: int = 0, vocab_size: int = 50277,
                     block_tokens: int = SUPPORT_BLOCK_TOKENS) -> tuple[np.ndarray, np.ndarray, tuple[CompiledRule, ...], Vocab, list[tuple[int, ...]]]:
    """A Pythia-shaped synthetic stream and rules for throughput measurements.

    Zipf-like (exponent 1.1) uint16 ids over a 50,277-token vocabulary (frequent ids stand in
    for " he", " a", " was"), in 2049-token items (Pythia's stored sequences); four rules of 36
    cue words each (a third of them two-token forms), each with a gapped frame
    ``<cue> ... X <candidate>`` (X a frequent id, as "because"); 60 two- and three-token battery
    patterns over frequent ids.

    Returns:
        ``(tokens, item_offsets, rules, vocab, battery_sequences)``.
    """
    rng = np.random.default_rng(seed)
    # Zipf-like unigram law by inverse CDF (id = frequency rank), as natural text
    cdf = np.cumsum(1.0 / np.arange(1, vocab_size + 1) ** 1.1)
    tokens = np.empty(n_tokens, np.uint16)
    for a in range(0, n_tokens, block_tokens):
        u = rng.random(min(block_tokens, n_tokens - a)) * cdf[-1]
        tokens[a : a + u.size] = np.searchsorted(cdf, u)
    doc_offsets = np.arange(0, n_tokens + 1, 2049, dtype=np.int64)
    starts = rng.random(vocab_size) < 0.4
    ends = rng.random(vocab_size) < 0.4
    vocab = Vocab(vocab_size, starts, ends)
    compiled = []
    # cue words drawn from frequency ranks 50-3000: denser than names in web text, so the
    # candidate checks weigh at least as much as on real data
    pool = rng.permutation(np.arange(50, 3000))
    for r in range(4):
        cue_ids = pool[r * 60 : r * 60 + 60]
        cues = tuple(TokenForm("c", " c", (int(i),)) for i in cue_ids[:24]) + tuple(
            TokenForm("c", "c", (int(i), int(j))) for i, j in zip(cue_ids[24:36], cue_ids[36:48])
        )
        direction = "before" if r == 2 else "after"
        trigger = (TokenForm("x", " x", (20 + r,)),)
        elements = ((FRAME_CUE, FRAME_GAP, trigger, FRAME_CANDIDATE) if direction == "after"
                    else (FRAME_CANDIDATE, FRAME_GAP, trigger, FRAME_CUE))
        compiled.append(CompiledRule(f"rule{r}", direction, cues, (TokenForm("t", " t", (5 + 2 * r,)),),
                                     (TokenForm("p", " p", (6 + 2 * r,)),),
                                     frames=(CompiledFrame("frame", elements),)))
    battery = [tuple(int(x) for x in rng.integers(1, 200, size=2 + (i % 2))) for i in range(60)]
    return tokens, doc_offsets, tuple(compiled), vocab, battery


def benchmark(n_tokens: int = 50_000_000, *, window: int = DEFAULT_SUPPORT_WINDOW, seed: int = 0,
              vocab_size: int = 50277, block_tokens: int = SUPPORT_BLOCK_TOKENS, repeats: int = 1,
              modes: Sequence[str] = ("windowed", "bigram", "in-frame", BATTERY_MODE)) -> dict[str, Any]:
    """Tokens per second of each counter on `synthetic_stream` (one thread: numpy's kernels).

    Modes: ``windowed`` (W = `window`, no frames), ``bigram`` (W = 1), ``in-frame`` (windowed
    plus each rule's gapped frame), ``battery`` (exact token-sequence counts of 60 patterns).

    Returns:
        ``{"n_tokens", "seconds", "tokens_per_second", "events", "window", "cpu_count",
        "modes": {mode: {"seconds", "tokens_per_second", "events"}}}``; the top-level numbers are
        the windowed mode's (best of ``repeats`` runs each).
    """
    tokens, doc_offsets, framed, vocab, battery = synthetic_stream(n_tokens, seed=seed, vocab_size=vocab_size,
                                                                   block_tokens=block_tokens)
    plain = tuple(CompiledRule(r.name, r.direction, r.cues, r.targets, r.competitors) for r in framed)

    def run(mode: str) -> int:
        if mode == BATTERY_MODE:
            counter = SequenceCounter(battery)
            source = IndexedSource(tokens, doc_offsets, block_tokens, int(tokens.shape[0]))
            tallies, _ = run_count(source, lambda b, t, lim: counter.count(b, t, lim, DEFAULT_SUPPORT_WINDOW_TOKENS),
                                   len(battery), key="", halo=counter.max_len + 1, token_limit=None)
            return int(sum(t.counts.sum() for t in tallies))
        rules = framed if mode == "in-frame" else plain

        counts = count_token_stream(tokens, doc_offsets, rules, vocab, window=1 if mode == "bigram" else window,
                                    window_tokens=DEFAULT_SUPPORT_WINDOW_TOKENS, block_tokens=block_tokens)
        if mode == "in-frame":
            return int(sum(f["rule_wins"].sum() + f["prior_wins"].sum()
                           for c in counts.values() for f in c["frames"].values()))
        return int(sum(c["rule_wins"].sum() + c["prior_wins"].sum() for c in counts.values()))

    results = {}
    for mode in modes:
        best, events = None, 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            events = run(mode)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        results[mode] = {"seconds": best, "tokens_per_second": n_tokens / best, "events": events}
    top = results.get("windowed") or next(iter(results.values()))
    # numpy runs these kernels on one thread; cpu_count says what the machine had
    return {"n_tokens": n_tokens, "seconds": top["seconds"], "tokens_per_second": top["tokens_per_second"],
            "events": top["events"], "window": window, "cpu_count": os.cpu_count(), "modes": results}
