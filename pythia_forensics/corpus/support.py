"""Support frequency: how often a training stream shows each rule winning against its prior.

A rule (``probes/rules/<rule>.yaml``) names a cue class (girls' names), the rule's target
forms (" she") and the prior's competitor forms (" he"). The windowed counter looks, for every
cue occurrence, at the next W tokens of the same document (``direction: before``: the W tokens
before it): the nearest target is a *rule win*, the nearest competitor a *prior win*, neither
is no event. The support ratio is ``(rule_wins + 1) / (prior_wins + 1)``. The bigram counter is
the same with W = 1. The exact event definition is in docs/ARCHITECTURE.md ("Corpus and support
ground truth"); the mini-suite generator records its ground truth under the same definition.

Words are matched on token ids, in every form a tokenizer gives them: ``" Sue"`` and ``"Sue"``
tokenize differently (and ``"Sue"`` may take two tokens at a sequence start), so each word is
compiled to the token sequences of both forms and matched as a whole word (the neighbouring
tokens must start/end with a non-alphanumeric character). A word whose forms cannot be matched
(it tokenizes to nothing, to an unknown token, or -- with ``multi_token=False`` -- to several
tokens) is REPORTED by name (warning, ``unmatched`` column, ``frame.attrs["unmatched"]``): the
paper's windowed counter silently counted zero because its girl-name cue class tokenized to
nothing.

Context-conditioned (in-frame) support: a rule may name ``frames`` -- whole-word patterns
such as ``[<cue>, cried, because, <candidate>]`` or ``[<cue>, "...", because, <candidate>]`` --
and every windowed event whose cue and chosen form stand in the frame is counted again under
that frame's name (``frame`` column; ``"corpus"`` rows count every event). This isolates the
frame where rule and prior conflict on any corpus; on the mini corpus the ``conflict`` frame
recovers the generator's conflict-frame ground truth exactly.

The paper's battery bigram counter (`count_battery`, ``support --mode battery --probes P``):
for each probe item the patterns ``" <last word of prefix>" + target`` and ``+ foil`` are
counted as exact token sequences, summed per (rule, condition) over the distinct patterns.

A row with no events on either side has ratio NaN and note "no events" (never 1.0).

The stages, one module each: `corpus.rules` (rule YAMLs, cue classes, frames) -> `corpus.vocab`
(rules compiled to token ids for a tokenizer) -> `corpus.streams` (opening the input as blocks)
-> `corpus.windows` (the window spec) -> `corpus.matching` (the vectorised event counter) and
`corpus.battery` (the sequence counter) -> `corpus.counting` (the one resumable counting loop)
-> here: the counts frame. This module re-exports the names callers import from it.

Example::

    frame = count_support("corpus/", "all")            # mini corpus: tokenizer and steps from corpus.json
    frame[frame.scope == "overall"][["rule", "rule_wins", "prior_wins", "ratio"]]
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from pythia_forensics.corpus.battery import (BATTERY_COLUMNS, BATTERY_MODE, BatteryCell, battery_cells,
                                             battery_pattern, count_battery)
from pythia_forensics.corpus.counting import NO_EVENTS, Tally, counts_frame, rules_spec, run_count, support_ratio
from pythia_forensics.corpus.counting import state_key as count_key  # `state_key` is an argument below
from pythia_forensics.corpus.matching import Matcher, count_block
from pythia_forensics.corpus.rules import (CORPUS_FRAME, FRAME_CANDIDATE, FRAME_CUE, FRAME_GAP, ROLES, Frame,
                                           SupportRule, WordClass, load_rules)
from pythia_forensics.corpus.streams import SUPPORT_BLOCK_TOKENS, IndexedSource, TokenSource, locate_corpus, open_stream
from pythia_forensics.corpus.vocab import (CompiledFrame, CompiledRule, SupportCueWarning, TokenForm, UnmatchedCue,
                                           Vocab, compile_rules, load_tokenizer)
from pythia_forensics.corpus.windows import (DEFAULT_SUPPORT_WINDOW, DEFAULT_SUPPORT_WINDOW_TOKENS, WindowSpec,
                                             window_spec)
from pythia_forensics.errors import ConfigError, TokenizationError

__all__ = [
    "WordClass",
    "Frame",
    "SupportRule",
    "TokenForm",
    "CompiledRule",
    "CompiledFrame",
    "UnmatchedCue",
    "Vocab",
    "SupportCueWarning",
    "load_rules",
    "load_tokenizer",
    "compile_rules",
    "count_support",
    "count_token_stream",
    "count_battery",
    "BatteryCell",
    "battery_cells",
    "battery_pattern",
    "support_ratio",
    "WindowSpec",
    "ROLES",
    "FRAME_CUE",
    "FRAME_CANDIDATE",
    "FRAME_GAP",
    "CORPUS_FRAME",
    "NO_EVENTS",
    "BATTERY_MODE",
    "BATTERY_COLUMNS",
    "WINDOWED_COLUMNS",
    "SUPPORT_MODES",
]

SUPPORT_MODES = ("windowed", "bigram")  # bigram = windowed with W = 1
WINDOWED_COLUMNS = ["rule", "frame", "scope", "window", "token_start", "token_end", "window_start_step",
                    "window_end_step", "cues", "rule_wins", "prior_wins", "no_event", "ratio", "note", "direction",
                    "mode", "W", "unmatched"]


def count_token_stream(
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    rules: Sequence[CompiledRule],
    vocab: Vocab,
    *,
    window: int = DEFAULT_SUPPORT_WINDOW,
    window_tokens: int = DEFAULT_SUPPORT_WINDOW_TOKENS,
    block_tokens: int = SUPPORT_BLOCK_TOKENS,
    token_limit: int | None = None,
    state_file: str | os.PathLike | None = None,
    state_key: str = "",
    offset_unit: int = 1,
    progress: bool = False,
    eod_id: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Count support events in a flat token array (memmap welcome) with document offsets.

    Args:
        tokens: flat token ids.
        doc_offsets: sorted document start offsets (0 first; a trailing end offset is fine).
        rules, vocab: from `compile_rules` (or built directly from ids).
        window: W (1 = bigram).
        window_tokens: stream-window width for the per-window counts.
        block_tokens: tokens per block (memory bound).
        token_limit: count only cues before this flat offset (the tokens a run trained on).
        state_file: where to save progress (JSON, atomically, every few seconds); a rerun with
            the same inputs resumes from it, and it is removed when the count completes.
        state_key: identity of the stream (e.g. its path and size) folded into the state key.
        offset_unit: a document starts at token ``doc_offsets[i] // offset_unit`` (pass an
            index's byte ``pointers`` and its token size to avoid materialising token offsets).
        progress: show a tqdm bar.
        eod_id: a token that ends a document inside an item (events never cross it).

    Returns:
        ``{rule: {"cues", "rule_wins", "prior_wins", "n_tokens", "frames"}}``: int64 arrays per
        stream window; ``"frames"`` maps each frame name to the same three arrays counted over
        the events inside that frame.
    """
    n = int(tokens.shape[0])
    end = n if token_limit is None else min(n, token_limit)
    source = IndexedSource(tokens, doc_offsets, block_tokens, end, offset_unit=offset_unit, eod_id=eod_id,
                           identity=f"{state_key}|{n}|{end}|{block_tokens}|{eod_id}")
    return _count_windowed(source, rules, vocab, window=window, window_tokens=window_tokens, token_limit=end,
                           state_file=state_file, progress=progress)


def _count_windowed(source: TokenSource, rules: Sequence[CompiledRule], vocab: Vocab, *, window: int,
                    window_tokens: int, token_limit: int | None, state_file: str | os.PathLike | None,
                    progress: bool, on_block: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
    """The windowed counter over any opened stream: per rule the counts per stream window
    (see `count_token_stream` for the shape)."""
    matcher = Matcher(rules, vocab)
    halo = window + 2 * matcher.max_len + matcher.frame_extent + 2

    def block_fn(block, tallies: list[Tally], limit: int | None) -> None:
        count_block(matcher, block, window=window, tallies=tallies, window_tokens=window_tokens, limit=limit)

    key = count_key(rules_spec(rules), source.identity, window, window_tokens)
    n_tallies = sum(1 + len(r.frames) for r in rules)
    tallies, n_tokens = run_count(source, block_fn, n_tallies, key=key, halo=halo, token_limit=token_limit,
                                  state_file=state_file, progress=progress, on_block=on_block)
    return _per_rule(rules, tallies, n_tokens, window_tokens)


def _per_rule(rules: Sequence[CompiledRule], tallies: list[Tally], n_tokens: int,
              window_tokens: int) -> dict[str, dict[str, Any]]:
    """Per rule: corpus-wide counts per stream window, and under ``"frames"`` the same per frame."""
    n_win = WindowSpec(window_tokens).n_windows(n_tokens)
    out: dict[str, dict[str, Any]] = {}
    it = iter(tallies)
    for rule in rules:
        cues, wins, losses = next(it).totals(n_win)
        out[rule.name] = {"cues": cues, "rule_wins": wins, "prior_wins": losses, "n_tokens": np.int64(n_tokens),
                          "frames": {}}
        for fr in rule.frames:
            f_cues, f_wins, f_losses = next(it).totals(n_win)
            out[rule.name]["frames"][fr.name] = {"cues": f_cues, "rule_wins": f_wins, "prior_wins": f_losses}
    return out


def count_support(
    corpus: str | os.PathLike,
    rules: str | os.PathLike | Sequence[Any] = "all",
    *,
    window: int = DEFAULT_SUPPORT_WINDOW,
    tokenizer: Any = None,
    tokens_per_step: int | None = None,
    window_steps: int | None = None,
    window_tokens: int | None = None,
    mode: str = "windowed",
    text_field: str = "text",
    multi_token: bool = True,
    strict: bool = False,
    token_limit: int | None = None,
    state_file: str | os.PathLike | None = None,
    block_tokens: int = SUPPORT_BLOCK_TOKENS,
    progress: bool = True,
    eod_id: int | None = None,
    on_block: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Count rule-winning and prior-winning events in a corpus, overall and per window,
    corpus-wide and inside each frame the rules define (context-conditioned support).

    Args:
        corpus: a mini-suite corpus folder, a ``.bin``/``.idx`` prefix, a text/JSONL/Parquet
            file, or a ``datasets`` ``save_to_disk`` folder.
        rules: rule YAML file(s), shipped names, ``"all"``, or `SupportRule` objects.
        window: W, tokens looked at after (or before) each cue (bigram mode forces 1).
        tokenizer: tokenizer.json / model folder / name / HF tokenizer. Needed for everything
            except a mini corpus folder (which carries its tokenizer.json).
        tokens_per_step: stored tokens per training step; adds step windows. A mini corpus
            supplies it from corpus.json; Pythia's pre-shuffled files: 1024 x 2049.
        window_steps: training steps per window (default: corpus.json's, else
            ``windows.DEFAULT_SUPPORT_WINDOW_STEPS``).
        window_tokens: stream-window width when no ``tokens_per_step`` is known.
        mode: ``"windowed"`` or ``"bigram"``.
        text_field: the text field/column of JSONL, Parquet and `datasets` inputs.
        multi_token: match words that take several tokens (False reproduces a single-token
            counter, and reports every word it cannot see).
        strict: raise `TokenizationError` instead of warning about unmatched words.
        token_limit: count only cues before this flat token offset (a mini corpus sets it to
            the tokens its training read, ``corpus.json`` ``train_tokens``).
        state_file: progress file: an interrupted count resumes from it when rerun with the
            same inputs and options (the CLI puts it next to ``--out``); removed on completion.
        block_tokens: tokens per processing block (bounds memory).
        progress: tqdm progress bar.
        eod_id: in a ``.bin``/``.idx`` stream, a token id that ends a document inside an item
            (Pythia's pre-shuffled items are 2049-token windows over EOD-joined documents: 0).
        on_block: called after each counted block (its progress saved) with the resume
            position: a progress hook, and where a test interrupts a count.

    Returns:
        One row per (rule, frame, scope): frame ``"corpus"`` counts every event, each frame
        of the rule (rule YAML ``frames:``) counts the events standing in it; scope
        ``"overall"`` and one ``"window"`` row per stream window. Columns ``rule, frame, scope,
        window, token_start, token_end, window_start_step, window_end_step, cues, rule_wins,
        prior_wins, no_event, ratio, note, direction, mode, W, unmatched``. In frame rows
        ``cues`` counts the in-frame events. ``ratio`` is NaN and ``note`` "no events" when a
        row has no events on either side. ``frame.attrs["unmatched"]`` lists every unmatched
        word (strings).

    Raises:
        CorpusError: unreadable input or a missing text field.
        ConfigError: bad rules, mode, window or step options.
        TokenizationError: no tokenizer for a text input, or ``strict`` and an unmatched word.

    Example::

        count_support("web.jsonl", "pronoun_gender", tokenizer="tokenizer.json", mode="bigram")
    """
    if mode not in SUPPORT_MODES:
        raise ConfigError(f"mode must be one of {SUPPORT_MODES}, got {mode!r}", param="mode")
    if window < 1:
        raise ConfigError(f"window must be >= 1 token, got {window}", param="window")
    w = 1 if mode == "bigram" else int(window)
    rule_defs = load_rules(rules)
    inp = locate_corpus(corpus, tokenizer)
    spec = window_spec(inp.meta, tokens_per_step=tokens_per_step, window_steps=window_steps,
                       window_tokens=window_tokens, token_limit=token_limit)
    tok = load_tokenizer(inp.tokenizer)
    compiled, vocab = compile_rules(rule_defs, tok, multi_token=multi_token)
    unmatched = _report_unmatched(compiled, strict=strict)
    source = open_stream(inp, tokenizer=tok, text_field=text_field, block_tokens=block_tokens,
                         token_limit=spec.token_limit, eod_id=eod_id)
    counts = _count_windowed(source, compiled, vocab, window=w, window_tokens=spec.window_tokens,
                             token_limit=spec.token_limit, state_file=state_file, progress=progress, on_block=on_block)
    return _frame(compiled, counts, spec, mode=mode, window=w, unmatched=unmatched)


def _report_unmatched(compiled: Sequence[CompiledRule], *, strict: bool) -> list[UnmatchedCue]:
    """Every word the counter cannot match: a `SupportCueWarning` naming them (``strict``: a
    `TokenizationError`)."""
    unmatched = [u for r in compiled for u in r.unmatched]
    if unmatched:
        msg = "; ".join(str(u) for u in unmatched)
        if strict:
            raise TokenizationError(f"unmatched rule words: {msg}; fix the rule file or the tokenizer", param="rules")
        # stacklevel 3: the warning points at count_support's caller
        warnings.warn(f"unmatched rule words (they count zero): {msg}", SupportCueWarning, stacklevel=3)
    return unmatched


def _frame(compiled: Sequence[CompiledRule], counts: dict[str, dict[str, Any]], spec: WindowSpec, *, mode: str,
           window: int, unmatched: Sequence[UnmatchedCue]) -> pd.DataFrame:
    """The counts frame: per (rule, frame) an ``"overall"`` row and one row per window."""
    rows = []
    for rule in compiled:
        c_rule = counts[rule.name]
        n_tok = int(c_rule["n_tokens"])
        miss = "; ".join(str(u) for u in rule.unmatched)
        for fname, c in ((CORPUS_FRAME, c_rule), *c_rule["frames"].items()):
            base = dict(rule=rule.name, frame=fname, direction=rule.direction, mode=mode, W=window, unmatched=miss)
            for k in (None, *range(c["cues"].size)):
                sl = slice(None) if k is None else k
                row = dict(base, **spec.bounds(k, n_tok),
                           cues=int(np.sum(c["cues"][sl])), rule_wins=int(np.sum(c["rule_wins"][sl])),
                           prior_wins=int(np.sum(c["prior_wins"][sl])))
                row["no_event"] = row["cues"] - row["rule_wins"] - row["prior_wins"]
                row["ratio"], row["note"] = support_ratio(row["rule_wins"], row["prior_wins"])
                rows.append(row)
    return counts_frame(rows, WINDOWED_COLUMNS, spec, unmatched=[str(u) for u in unmatched])
