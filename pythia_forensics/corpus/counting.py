"""The one counting loop: blocks of a `TokenSource` into per-window tallies, resumable.

Both counters (the windowed/bigram event counter and the battery's sequence counter) hand
`run_count` a block function; the loop owns the progress bar, the progress file (saved
atomically every `SUPPORT_STATE_EVERY_S` seconds, a rerun with the same inputs resumes from it,
removed when the count completes) and the token limit.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from pythia_forensics.atomic import write_json
from pythia_forensics.corpus.rules import ROLES
from pythia_forensics.corpus.streams import Block, TokenSource
from pythia_forensics.corpus.vocab import CompiledRule
from pythia_forensics.corpus.windows import WindowSpec

__all__ = ["SUPPORT_STATE_EVERY_S", "NO_EVENTS", "Tally", "BlockFn", "rules_spec", "state_key", "run_count",
           "support_ratio", "counts_frame"]

SUPPORT_STATE_EVERY_S = 30.0  # progress-file interval (an interrupted count resumes from it)
NO_EVENTS = "no events"  # the note of a row with 0 events on both sides (ratio is NaN, not parity)


class Tally:
    """Per-rule counts per stream window, grown as blocks arrive (memory: 3 int64 per window)."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 0), np.int64)  # rows: cues, rule wins, prior wins

    def add(self, row: int, window_index: np.ndarray) -> None:
        if window_index.size == 0:
            return
        k0 = int(window_index.min())
        binned = np.bincount(window_index - k0)
        need = k0 + binned.size
        if need > self.counts.shape[1]:
            grown = np.zeros((3, max(need, 2 * self.counts.shape[1])), np.int64)
            grown[:, : self.counts.shape[1]] = self.counts
            self.counts = grown
        self.counts[row, k0:need] += binned

    def totals(self, n_windows: int) -> np.ndarray:
        out = np.zeros((3, n_windows), np.int64)
        m = min(n_windows, self.counts.shape[1])
        out[:, :m] = self.counts[:, :m]
        return out


BlockFn = Callable[[Block, "list[Tally]", "int | None"], None]  # (block, tallies, token limit)


def rules_spec(rules: Sequence[CompiledRule]) -> list[Any]:
    """The rules' token forms and frames as plain data (what a count of them depends on)."""
    return [[r.name, r.direction, [[list(f.ids), f.leading_space] for role in ROLES for f in r.role(role)],
             [[fr.name, [e if isinstance(e, str) else [[list(f.ids), f.leading_space] for f in e]
                         for e in fr.elements]] for fr in r.frames]]
            for r in rules]


def state_key(spec: Any, *parts: Any) -> str:
    """Hash of everything a count depends on: what is counted (JSON data) and the options."""
    return hashlib.sha256(json.dumps([spec, [str(p) for p in parts]]).encode()).hexdigest()


class _State:
    """Resumable progress: tallies plus how far the stream was read, saved atomically."""

    def __init__(self, path: str | os.PathLike | None, key: str) -> None:
        self.path = Path(path) if path is not None else None
        self.key = key
        self._last = time.monotonic()

    def load(self, n_tallies: int) -> tuple[list[Tally], int, int]:
        """(tallies, position, offset) from a matching saved state, else a fresh start."""
        tallies = [Tally() for _ in range(n_tallies)]
        if self.path is None or not self.path.is_file():
            return tallies, 0, 0
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return tallies, 0, 0  # a torn or foreign file: start over (it is overwritten)
        if data.get("key") != self.key:
            return tallies, 0, 0
        for t, counts in zip(tallies, data["counts"]):
            t.counts = np.asarray(counts, dtype=np.int64).reshape(3, -1)
        return tallies, int(data["position"]), int(data["offset"])

    def save(self, tallies: list[Tally], *, position: int, offset: int) -> None:
        if self.path is None or time.monotonic() - self._last < SUPPORT_STATE_EVERY_S:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"key": self.key, "position": position, "offset": offset,
                               "counts": [t.counts.tolist() for t in tallies]}, indent=None)
        self._last = time.monotonic()

    def done(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def run_count(source: TokenSource, block_fn: BlockFn, n_tallies: int, *, key: str, halo: int,
              token_limit: int | None, state_file: str | os.PathLike | None = None, progress: bool = False,
              on_block: Callable[[int], None] | None = None) -> tuple[list[Tally], int]:
    """Count every block of ``source`` into ``n_tallies`` tallies, resuming a saved count.

    Args:
        source: the opened stream.
        block_fn: counts one block into the tallies; cues at or past the token limit are not
            counted.
        n_tallies: tallies the block function fills.
        key: `state_key` of the count (a saved state with another key is ignored).
        halo: tokens of context a block needs on each side (token streams).
        token_limit: stop at this stream offset (None: the whole stream).
        state_file: the progress file (None: no resuming).
        progress: show a tqdm bar.
        on_block: called with the resume position after each counted (and saved) block.

    Returns:
        ``(tallies, n_tokens)``: the tallies and the stream tokens counted (capped at the limit).
    """
    from tqdm.auto import tqdm

    state = _State(state_file, key)
    tallies, position, n = state.load(n_tallies)
    with tqdm(total=source.total, initial=position, unit=source.unit, unit_scale=source.unit == "tok",
              disable=not progress, desc="support") as bar:
        for block in source.blocks(position=position, offset=n, halo=halo):
            block_fn(block, tallies, token_limit)
            bar.update(block.resume - position)
            position, n = block.resume, block.end
            state.save(tallies, position=position, offset=n)
            if on_block is not None:
                on_block(position)
            if token_limit is not None and n >= token_limit:
                break
    state.done()
    return tallies, (n if token_limit is None else min(n, token_limit))


def support_ratio(wins: int, losses: int) -> tuple[float, str]:
    """``((wins + 1) / (losses + 1), "")``, or ``(nan, "no events")`` when both are 0: an empty
    row is no evidence of parity."""
    if wins == 0 and losses == 0:
        return float("nan"), NO_EVENTS
    return (wins + 1) / (losses + 1), ""


def counts_frame(rows: list[dict[str, Any]], columns: Sequence[str], spec: WindowSpec, *,
                 unmatched: list[str]) -> pd.DataFrame:
    """A counts table: the rows, nullable-integer window/step columns, and the window spec and
    unmatched words in ``frame.attrs``."""
    frame = pd.DataFrame(rows, columns=list(columns))
    for col in ("window", "window_start_step", "window_end_step"):
        frame[col] = frame[col].astype("Int64")
    frame.attrs.update(unmatched=unmatched, tokens_per_step=spec.tokens_per_step, window_steps=spec.window_steps,
                       window_tokens=spec.window_tokens)
    return frame
