"""The paper's battery bigram counter (`count_battery`, ``support --mode battery --probes P``).

For each probe item the patterns ``" <last word of prefix>" + target`` and ``+ foil`` are
counted as exact token sequences (inside documents, no word-boundary test), summed per
(rule, condition) over the distinct patterns. The stream is opened and counted by the same
stages as `count_support` (`streams`, `windows`, `counting`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pythia_forensics.corpus.counting import Tally, counts_frame, run_count, state_key, support_ratio
from pythia_forensics.corpus.matching import UINT16_IDS
from pythia_forensics.corpus.streams import SUPPORT_BLOCK_TOKENS, Block, locate_corpus, open_stream
from pythia_forensics.corpus.vocab import encode_form, load_tokenizer
from pythia_forensics.corpus.windows import WindowSpec, window_spec
from pythia_forensics.errors import ConfigError, TokenizationError

__all__ = ["BATTERY_MODE", "BATTERY_COLUMNS", "BatteryCell", "SequenceCounter", "battery_pattern", "battery_cells",
           "count_battery"]

BATTERY_MODE = "battery"
BATTERY_COLUMNS = ["rule", "condition", "target_count", "foil_count", "ratio", "note", "scope", "window",
                   "token_start", "token_end", "window_start_step", "window_end_step", "n_items",
                   "target_patterns", "foil_patterns", "mode"]


@dataclass(frozen=True)
class BatteryCell:
    """One (rule, condition) of a probe battery: its distinct target and foil patterns."""

    rule: str
    condition: str
    n_items: int
    targets: tuple[tuple[str, tuple[int, ...]], ...]  # (pattern text, token ids), distinct ids
    foils: tuple[tuple[str, tuple[int, ...]], ...]


def battery_pattern(prefix: str, candidate: str) -> str:
    """The paper's pattern: a space, the prefix's last word, then the candidate as scored
    (the prefix's trailing whitespace moves into the candidate): ``" because she"``."""
    stripped = prefix.rstrip()
    words = stripped.split()
    if not words:
        raise ConfigError(f"probe prefix {prefix!r} has no word to build a battery pattern from", param="probes")
    return " " + words[-1] + prefix[len(stripped):] + candidate


def battery_cells(probes: Any, tokenizer: Any) -> tuple[BatteryCell, ...]:
    """The battery's (rule, condition) cells with their distinct patterns, tokenized.

    Args:
        probes: a probe set name, file, ``"all"`` or `ProbeSet` (see `probes.load_probes`).
        tokenizer: as `load_tokenizer`.

    Returns:
        Cells in first-seen order; within a cell a pattern is kept once per distinct token
        sequence, so 50 items sharing ``" because she"`` count it once.
    """
    from pythia_forensics.scoring.probes import load_probes

    tok = load_tokenizer(tokenizer)
    pset = load_probes(probes)
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for item in pset.items:
        cell = cells.setdefault((item.rule, item.condition), {"n": 0, "targets": {}, "foils": {}})
        cell["n"] += 1
        for side, cand in (("targets", item.target), ("foils", item.foil)):
            text = battery_pattern(item.prefix, cand)
            ids = encode_form(tok, text)
            if not ids:
                raise TokenizationError(f"battery pattern {text!r} tokenizes to nothing; check the tokenizer")
            cell[side].setdefault(ids, text)
    return tuple(BatteryCell(r, c, v["n"], tuple((t, i) for i, t in v["targets"].items()),
                             tuple((t, i) for i, t in v["foils"].items()))
                 for (r, c), v in cells.items())


class SequenceCounter:
    """Exact occurrences of token sequences inside documents (no word-boundary test: the
    paper counts token sequences), by one look-up table of first ids."""

    def __init__(self, sequences: Sequence[tuple[int, ...]]) -> None:
        self.sequences = [np.array(s, dtype=np.int64) for s in sequences]
        top = max((int(x.max()) for x in self.sequences), default=0) + 1
        self.lut = np.zeros(max(top, UINT16_IDS), bool)
        self.by_first: dict[int, list[int]] = {}
        for i, seq in enumerate(self.sequences):
            self.lut[seq[0]] = True
            self.by_first.setdefault(int(seq[0]), []).append(i)
        self.max_len = max((x.size for x in self.sequences), default=1)

    def count(self, block: Block, tallies: list[Tally], limit: int | None, window_tokens: int, *,
              by_last: bool = False) -> None:
        """Add each sequence's occurrences whose first token lies in the block's core (and
        before ``limit``) to its tally, under that token's stream window (``by_last``: the
        window of its last token, so a cumulative budget holds only whole occurrences)."""
        ids = block.ids
        n = ids.shape[0]
        lo, hi = block.core
        if limit is not None:
            hi = min(hi, max(limit - block.offset, lo))
        if n == 0 or hi <= lo:
            return
        core = ids[lo:hi]
        if core.dtype.itemsize > 2:
            core = np.where(core < self.lut.size, core, 0)
        cand = np.flatnonzero(self.lut[core]) + lo
        first = ids[cand]
        order = np.argsort(first, kind="stable")
        cand, first = cand[order], first[order]
        for f, members in self.by_first.items():
            a, b = np.searchsorted(first, [f, f + 1])
            pos0 = cand[a:b]
            for i in members:
                seq = self.sequences[i]
                L = seq.size
                p = pos0[pos0 + L <= n]
                for j in range(1, L):
                    p = p[ids[p + j] == seq[j]]
                # inside one document
                p = p[np.searchsorted(block.seg_starts, p, side="right")
                      == np.searchsorted(block.seg_starts, p + L - 1, side="right")]
                if by_last and limit is not None:
                    p = p[p + (L - 1) + block.offset < limit]  # a whole occurrence, inside the trained range
                tallies[i].add(0, (p + (L - 1 if by_last else 0) + block.offset) // window_tokens)


def count_battery(
    corpus: str | os.PathLike,
    probes: Any = "all",
    *,
    tokenizer: Any = None,
    tokens_per_step: int | None = None,
    window_steps: int | None = None,
    window_tokens: int | None = None,
    text_field: str = "text",
    token_limit: int | None = None,
    state_file: str | os.PathLike | None = None,
    block_tokens: int = SUPPORT_BLOCK_TOKENS,
    progress: bool = True,
    eod_id: int | None = None,
) -> pd.DataFrame:
    """The paper's battery-derived bigram support: for every probe item the patterns
    ``" <last word of prefix>" + target`` and ``+ foil``, counted as exact token sequences
    (inside documents) over the stream, summed per (rule, condition) over its distinct patterns.

    Args:
        corpus, tokenizer, tokens_per_step, window_steps, window_tokens, text_field, token_limit,
            state_file, block_tokens, progress, eod_id: as `count_support` (a pattern belongs to the
            window, and the trained range, of its first token).
        probes: probe set name / file / ``"all"`` / `ProbeSet`.

    Returns:
        Columns ``rule, condition, target_count, foil_count, ratio, note, scope, window,
        token_start, token_end, window_start_step, window_end_step, n_items, target_patterns,
        foil_patterns, mode``: one ``"overall"`` row per cell and one ``"window"`` row per stream
        window; ``ratio = (target_count + 1) / (foil_count + 1)``, NaN with note "no events"
        when both counts are 0. ``*_patterns`` list the distinct patterns, ``|``-separated.

    Raises:
        CorpusError, ConfigError, TokenizationError: as `count_support`; a prefix with no word.
    """
    inp = locate_corpus(corpus, tokenizer)
    spec = window_spec(inp.meta, tokens_per_step=tokens_per_step, window_steps=window_steps,
                       window_tokens=window_tokens, token_limit=token_limit)
    tok = load_tokenizer(inp.tokenizer)
    cells = battery_cells(probes, tok)
    seqs = list(dict.fromkeys(ids for c in cells for _, ids in c.targets + c.foils))
    counter = SequenceCounter(seqs)
    source = open_stream(inp, tokenizer=tok, text_field=text_field, block_tokens=block_tokens,
                         token_limit=spec.token_limit, eod_id=eod_id)

    def block_fn(block: Block, tallies: list[Tally], limit: int | None) -> None:
        counter.count(block, tallies, limit, spec.window_tokens)

    key = state_key([BATTERY_MODE, [list(s) for s in seqs]], source.identity, spec.window_tokens)
    tallies, n_tok = run_count(source, block_fn, len(seqs), key=key, halo=counter.max_len + 1,
                               token_limit=spec.token_limit, state_file=state_file, progress=progress)
    n_win = spec.n_windows(n_tok)
    per_seq = {s: t.totals(n_win)[0] for s, t in zip(seqs, tallies)}
    return _battery_frame(cells, per_seq, spec, n_tok)


def _battery_frame(cells: Sequence[BatteryCell], per_seq: dict[tuple[int, ...], np.ndarray], spec: WindowSpec,
                   n_tok: int) -> pd.DataFrame:
    """Per cell an ``"overall"`` row and one row per window: its patterns' summed counts."""
    n_win = spec.n_windows(n_tok)
    rows = []
    for cell in cells:
        t_counts = sum((per_seq[ids] for _, ids in cell.targets), np.zeros(n_win, np.int64))
        f_counts = sum((per_seq[ids] for _, ids in cell.foils), np.zeros(n_win, np.int64))
        base = dict(rule=cell.rule, condition=cell.condition, n_items=cell.n_items, mode=BATTERY_MODE,
                    target_patterns="|".join(t for t, _ in cell.targets),
                    foil_patterns="|".join(t for t, _ in cell.foils))
        for k in (None, *range(n_win)):
            sl = slice(None) if k is None else k
            row = dict(base, **spec.bounds(k, n_tok), target_count=int(np.sum(t_counts[sl])),
                       foil_count=int(np.sum(f_counts[sl])))
            row["ratio"], row["note"] = support_ratio(row["target_count"], row["foil_count"])
            rows.append(row)
    return counts_frame(rows, BATTERY_COLUMNS, spec, unmatched=[])
