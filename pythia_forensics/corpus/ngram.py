"""The surface model: a stupid-backoff n-gram model of the exact training stream (``support
--mode ngram --probes P --orders 2,5``), scored on the probe battery at every window's
cumulative token budget.

Stupid backoff (Brants et al., 2007), alpha 0.4: ``S(w|h) = c(h w) / c(h)`` when ``c(h w) > 0``,
else ``alpha * S(w|h[1:])``; ``S(w) = c(w) / N`` with ``N`` the tokens counted, and a floor of
``UNSEEN_UNIGRAM_COUNT / N`` for a token never seen (such items are counted in ``n_unseen``).
Only the n-grams the probe items need are counted (query-restricted), inside documents, by the
same streaming loop as the other counters (`counting.run_count`: bounded memory, resumable). An
n-gram belongs to the budget that holds its last token. A candidate's score is its summed
continuation log-score; the item is solved when the target's exceeds the foil's (a tie is not).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia_forensics.corpus.battery import SequenceCounter
from pythia_forensics.corpus.counting import Tally, run_count, state_key
from pythia_forensics.corpus.streams import SUPPORT_BLOCK_TOKENS, Block, locate_corpus, open_stream
from pythia_forensics.corpus.vocab import encode_form, load_tokenizer
from pythia_forensics.corpus.windows import window_spec
from pythia_forensics.errors import ConfigError, TokenizationError

__all__ = ["NGRAM_MODE", "NGRAM_ALPHA", "NGRAM_MAX_ORDER", "UNSEEN_UNIGRAM_COUNT", "NGRAM_COLUMNS",
           "NgramItem", "ngram_items", "needed_ngrams", "backoff_logp", "score_items", "count_ngram"]

NGRAM_MODE = "ngram"
NGRAM_ALPHA = 0.4  # Brants et al. (2007)
NGRAM_MAX_ORDER = 8  # the longest n-gram the counter is asked for (cost grows with the order)
UNSEEN_UNIGRAM_COUNT = 0.5  # an unseen token scores as half an occurrence: finite, below any seen token
NGRAM_COLUMNS = ["rule", "condition", "split", "order", "step", "tokens", "accuracy", "mean_norm_logp_diff",
                 "n_items", "n_unseen", "mode"]


@dataclass(frozen=True)
class NgramItem:
    """A probe item as token ids: the context and each candidate's continuation."""

    item_id: str
    rule: str
    condition: str
    split: str
    context: tuple[int, ...]
    target: tuple[int, ...]
    foil: tuple[int, ...]


def ngram_items(probes: Any, tokenizer: Any) -> tuple[NgramItem, ...]:
    """The probe items tokenized as the battery does: the prefix without its trailing
    whitespace is the context, the whitespace moves into each candidate.

    Raises:
        TokenizationError: a candidate that tokenizes to nothing.
    """
    from pythia_forensics.scoring.probes import load_probes

    tok = load_tokenizer(tokenizer)
    out = []
    for item in load_probes(probes).items:
        stripped = item.prefix.rstrip()
        ws = item.prefix[len(stripped):]
        cands = []
        for cand in (item.target, item.foil):
            ids = encode_form(tok, ws + cand)
            if not ids:
                raise TokenizationError(f"probe item {item.item_id}: candidate {cand!r} tokenizes to nothing; "
                                        "check the probe set and the tokenizer", param="probes")
            cands.append(ids)
        out.append(NgramItem(item.item_id, item.rule, item.condition, item.split, encode_form(tok, stripped),
                             cands[0], cands[1]))
    return tuple(out)


def _histories(item: NgramItem, cont: tuple[int, ...], order: int):
    for j, w in enumerate(cont):
        hist = (item.context + cont[:j])[max(len(item.context) + j - (order - 1), 0):]
        yield hist, w


def needed_ngrams(items: Sequence[NgramItem], orders: Sequence[int]) -> list[tuple[int, ...]]:
    """Every n-gram a score can read: each history suffix with and without the next token."""
    need: dict[tuple[int, ...], None] = {}
    for item in items:
        for order in orders:
            for cont in (item.target, item.foil):
                for hist, w in _histories(item, cont, order):
                    for k in range(len(hist) + 1):
                        h = hist[len(hist) - k:]
                        need[h + (w,)] = None
                        if h:
                            need[h] = None
    return list(need)


def backoff_logp(counts: Mapping[tuple[int, ...], int], n_tokens: int, hist: tuple[int, ...], w: int) -> float:
    """``log S(w | hist)`` under stupid backoff (see the module docstring)."""
    scale = 0.0
    for k in range(len(hist), 0, -1):
        h = hist[len(hist) - k:]
        c = counts.get(h + (w,), 0)
        if c > 0:
            return scale + math.log(c / counts[h])
        scale += math.log(NGRAM_ALPHA)
    c = counts.get((w,), 0)
    return scale + math.log((c if c > 0 else UNSEEN_UNIGRAM_COUNT) / n_tokens)


def score_items(items: Sequence[NgramItem], counts: Mapping[tuple[int, ...], int], n_tokens: int,
                order: int) -> pd.DataFrame:
    """Per item: target/foil summed log-score, normalised difference, choice, unseen flag."""
    rows = []
    for item in items:
        lp = {}
        for side, cont in (("target", item.target), ("foil", item.foil)):
            lp[side] = sum(backoff_logp(counts, n_tokens, h, w) for h, w in _histories(item, cont, order))
        unseen = any(counts.get((w,), 0) == 0 for w in item.target + item.foil)
        rows.append(dict(item_id=item.item_id, rule=item.rule, condition=item.condition, split=item.split,
                         order=order, logp_target=lp["target"], logp_foil=lp["foil"],
                         norm_logp_diff=lp["target"] / len(item.target) - lp["foil"] / len(item.foil),
                         correct=bool(lp["target"] > lp["foil"]), unseen=unseen))
    return pd.DataFrame(rows)


def parse_orders(orders: str | Sequence[int]) -> tuple[int, ...]:
    """``"2,5"`` or ``[2, 5]`` as orders, each in ``1..NGRAM_MAX_ORDER``."""
    try:
        vals = [int(x) for x in (orders.split(",") if isinstance(orders, str) else orders)]
    except ValueError:
        raise ConfigError(f"--orders must be comma-separated integers, got {orders!r}", param="orders") from None
    if not vals or any(not 1 <= v <= NGRAM_MAX_ORDER for v in vals):
        raise ConfigError(f"--orders must lie in 1..{NGRAM_MAX_ORDER}, got {orders!r}", param="orders")
    return tuple(dict.fromkeys(vals))


def _beyond(budget: int, n_tokens: int) -> None:
    raise ConfigError(f"token budget {budget:,} is beyond the stream ({n_tokens:,} tokens); lower --token-limit",
                      param="token_limit")


def count_ngram(corpus: str | os.PathLike, probes: Any, *, orders: str | Sequence[int] = (2, 5),
                tokenizer: Any = None, tokens_per_step: int | None = None, window_steps: int | None = None,
                window_tokens: int | None = None, text_field: str = "text", token_limit: int | None = None,
                state_file: str | os.PathLike | None = None, block_tokens: int = SUPPORT_BLOCK_TOKENS,
                progress: bool = True, eod_id: int | None = None,
                per_item: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The stupid-backoff surface model of the stream, scored at every window's cumulative
    budget (``step`` = window end step, ``tokens`` = the first that many stream tokens).

    Returns:
        ``NGRAM_COLUMNS`` per (rule, condition, split, order, budget); with ``per_item`` also
        the per-item rows (plus ``step, tokens``).

    Raises:
        ConfigError: an order outside ``1..NGRAM_MAX_ORDER``; a token limit beyond the stream.
        TokenizationError: a candidate that tokenizes to nothing.
    """
    order_list = parse_orders(orders)
    inp = locate_corpus(corpus, tokenizer)
    spec = window_spec(inp.meta, tokens_per_step=tokens_per_step, window_steps=window_steps,
                       window_tokens=window_tokens, token_limit=token_limit)
    tok = load_tokenizer(inp.tokenizer)
    items = ngram_items(probes, tok)
    seqs = needed_ngrams(items, order_list)
    counter = SequenceCounter(seqs)
    source = open_stream(inp, tokenizer=tok, text_field=text_field, block_tokens=block_tokens,
                         token_limit=spec.token_limit, eod_id=eod_id)

    if spec.token_limit is not None and source.unit == "tok" and source.total is not None \
            and spec.token_limit > source.total:
        _beyond(spec.token_limit, source.total)  # known before reading: refused before counting

    def block_fn(block: Block, tallies: list[Tally], limit: int | None) -> None:
        counter.count(block, tallies, limit, spec.window_tokens, by_last=True)

    key = state_key([NGRAM_MODE, [list(s) for s in seqs]], source.identity, spec.window_tokens)
    tallies, n_tok = run_count(source, block_fn, len(seqs), key=key, halo=counter.max_len + 1,
                               token_limit=spec.token_limit, state_file=state_file, progress=progress)
    if spec.token_limit is not None and n_tok < spec.token_limit:
        _beyond(spec.token_limit, n_tok)  # a text input: its size is known once read
    n_win = spec.n_windows(n_tok)
    cum = np.cumsum(np.stack([t.totals(n_win)[0] for t in tallies]), axis=1) if seqs else np.zeros((0, n_win))
    summary, per = [], []
    for k in range(n_win):
        budget = int(min((k + 1) * spec.window_tokens, n_tok))
        step = int(spec.bounds(k, n_tok)["window_end_step"]) if spec.tokens_per_step else None
        counts = {s: int(cum[i, k]) for i, s in enumerate(seqs)}
        for order in order_list:
            scored = score_items(items, counts, max(budget, 1), order).assign(step=step, tokens=budget)
            per.append(scored)
            for (r, c, sp), g in scored.groupby(["rule", "condition", "split"], sort=False):
                summary.append(dict(rule=r, condition=c, split=sp, order=order, step=step, tokens=budget,
                                    accuracy=float(g.correct.mean()),
                                    mean_norm_logp_diff=float(g.norm_logp_diff.mean()),
                                    n_items=len(g), n_unseen=int(g.unseen.sum()), mode=NGRAM_MODE))
    frame = pd.DataFrame(summary, columns=NGRAM_COLUMNS)
    frame["step"] = frame["step"].astype("Int64")
    return (frame, pd.concat(per, ignore_index=True)) if per_item else frame
