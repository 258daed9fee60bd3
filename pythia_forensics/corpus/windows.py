"""The window spec: how the stream's tokens map to per-window rows and training steps.

Counts are kept per stream window of ``window_tokens`` tokens. With ``tokens_per_step`` known
(a mini corpus's corpus.json, or Pythia's 1024 x 2049 stored tokens per step) a window is
``window_steps`` training steps and each row carries its step range; without it, windows are
plain token ranges. ``token_limit`` cuts the stream at the tokens a run trained on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from pythia_forensics.errors import ConfigError

__all__ = ["DEFAULT_SUPPORT_WINDOW", "DEFAULT_SUPPORT_WINDOW_STEPS", "DEFAULT_SUPPORT_WINDOW_TOKENS", "WindowSpec",
           "window_spec"]

DEFAULT_SUPPORT_WINDOW = 16  # W: tokens after (or before) a cue where a target/competitor counts
# Step windows of the per-window counts: Pythia's checkpoints are 1000 steps apart.
DEFAULT_SUPPORT_WINDOW_STEPS = 1000
# Stream windows when no tokens_per_step is known.
DEFAULT_SUPPORT_WINDOW_TOKENS = 10_000_000


@dataclass(frozen=True)
class WindowSpec:
    """Stream windows and their step ranges.

    Attributes:
        window_tokens: tokens per stream window (``tokens_per_step * window_steps`` when steps
            are known).
        tokens_per_step: stored tokens per training step, or None (token windows only).
        window_steps: training steps per window, or None.
        token_limit: count only cues before this flat offset, or None.
    """

    window_tokens: int
    tokens_per_step: int | None = None
    window_steps: int | None = None
    token_limit: int | None = None

    def n_windows(self, n_tokens: int) -> int:
        """Windows covering ``n_tokens`` stream tokens (at least one: an empty stream has a row)."""
        return max(math.ceil(n_tokens / self.window_tokens), 1)

    def bounds(self, k: int | None, n_tokens: int) -> dict[str, Any]:
        """The scope columns of window ``k`` (None: the ``"overall"`` row) of a stream of
        ``n_tokens`` counted tokens: ``scope, window, token_start, token_end,
        window_start_step, window_end_step`` (steps None without ``tokens_per_step``)."""
        tps, ws = self.tokens_per_step, self.window_steps
        last_step = int(math.ceil(n_tokens / tps)) if tps else None
        if k is None:
            return dict(scope="overall", window=None, token_start=0, token_end=n_tokens,
                        window_start_step=0 if tps else None, window_end_step=last_step)
        return dict(scope="window", window=int(k), token_start=int(k * self.window_tokens),
                    token_end=int(min((k + 1) * self.window_tokens, n_tokens)),
                    window_start_step=int(k * ws) if tps else None,
                    window_end_step=min(int((k + 1) * ws), last_step) if tps else None)


def window_spec(meta: Mapping[str, Any] | None = None, *, tokens_per_step: int | None = None,
                window_steps: int | None = None, window_tokens: int | None = None,
                token_limit: int | None = None) -> WindowSpec:
    """The window arithmetic from the caller's values, filling what is None from a mini
    corpus's corpus.json (``tokens_per_step``, ``window_steps``, ``train_tokens``).

    Raises:
        ConfigError: a non-positive value; ``window_steps`` without ``tokens_per_step``.
    """
    meta = meta or {}
    if tokens_per_step is None and meta.get("tokens_per_step"):
        tokens_per_step = int(meta["tokens_per_step"])
    if window_steps is None and meta.get("window_steps"):
        window_steps = int(meta["window_steps"])
    if token_limit is None and meta.get("train_tokens"):
        token_limit = int(meta["train_tokens"])
    if token_limit is not None and token_limit < 0:
        raise ConfigError(f"token_limit must be >= 0, got {token_limit}", param="token_limit")
    if tokens_per_step is not None:
        if tokens_per_step <= 0:
            raise ConfigError(f"tokens_per_step must be positive, got {tokens_per_step}", param="tokens_per_step")
        window_steps = window_steps or DEFAULT_SUPPORT_WINDOW_STEPS
        if window_steps <= 0:
            raise ConfigError(f"window_steps must be positive, got {window_steps}", param="window_steps")
        wt = tokens_per_step * window_steps
    else:
        if window_steps is not None:
            raise ConfigError("window_steps needs tokens_per_step (stored tokens per step: batch x seq_len)",
                              param="window_steps")
        wt = window_tokens or DEFAULT_SUPPORT_WINDOW_TOKENS
    if wt <= 0:
        raise ConfigError(f"window_tokens must be positive, got {wt}", param="window_tokens")
    return WindowSpec(int(wt), tokens_per_step, window_steps, token_limit)
