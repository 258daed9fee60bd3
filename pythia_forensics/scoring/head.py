"""The LM head on the rows a plan reads: log p(token | row) = logit - log-sum-exp(logits), fp32.

Why blockwise (issue #17): materialising ``[rows, vocabulary]`` logits makes the head a memory
stream, not a matmul. The bench battery reads 3,220 rows; over Pythia's 50,304 vocabulary rows
that is 648 MB of fp32 logits written by the matmul and read again, several times, by
`torch.logsumexp` (max, shift, exp, sum). On 2 cores that cost 4-12x the matmul's own FLOPs on
the mini-s to 70m shapes. Here the normaliser runs over blocks of ``rows x vocabulary chunk``
that stay in cache: each block's logits are shifted by their row maximum and exponentiated in
place, summed, and the chunks are combined with one log-sum-exp of the per-chunk values. The
logit of a read token is the dot product of its row with that token's output embedding, so no
logits row is ever kept whole.

The numbers differ from a one-shot ``logsumexp(hidden @ W.T)`` only by float rounding (fp32
sums taken in another order, ~1e-6 on a log-prob); the blocking is a function of the device
type alone, so the same unit always computes the same numbers (README "Numerical contract").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["HEAD_BLOCKS", "HeadBlocks", "blocks_for", "log_normaliser", "read_logits"]


@dataclass(frozen=True)
class HeadBlocks:
    """How the head is blocked on one device type.

    Attributes:
        rows: hidden rows per block (the matmul's M; larger amortises the weight stream).
        vocab: vocabulary rows per chunk, or None for the whole vocabulary in one chunk.
    """

    rows: int
    vocab: int | None


# CPU: 512 x 2048 fp32 = 4 MiB per block (a 2-core EPYC slice has 1 MiB L2 per core and 32 MiB
# L3); the best of rows {64..512} x chunk {1024, 2048, 4096} for d_model 32-512 on 2 cores.
# CUDA: the whole vocabulary per chunk (bandwidth is not the limit there).
HEAD_BLOCKS = {"cpu": HeadBlocks(rows=512, vocab=2048), "cuda": HeadBlocks(rows=1024, vocab=None)}


def blocks_for(device_type: str) -> HeadBlocks:
    """The blocking for a device type (anything but CUDA blocks as the CPU does)."""
    return HEAD_BLOCKS["cuda" if device_type == "cuda" else "cpu"]


def log_normaliser(hidden: Any, weight: Any, bias: Any = None, *, blocks: HeadBlocks) -> Any:
    """``logsumexp(hidden @ weight.T + bias, dim=-1)``, without ever holding all the logits.

    Args:
        hidden: ``[n, d]`` fp32 hidden states (after the final norm).
        weight: ``[V, d]`` fp32 output embedding (the rows to normalise over).
        bias: ``[V]`` fp32 or None.
        blocks: the blocking (`blocks_for`).

    Returns:
        ``[n]`` fp32 log normalisers. A non-finite logit gives a non-finite result, which the
        scorer refuses (`score._check_finite`), never a silently clipped one.
    """
    import torch

    n, vocab = hidden.shape[0], weight.shape[0]
    chunk = blocks.vocab or vocab
    starts = list(range(0, vocab, chunk))
    out = torch.empty(n, dtype=hidden.dtype, device=hidden.device)
    # one flat buffer viewed per block shape, so every matmul writes a contiguous block in place
    flat = torch.empty(min(blocks.rows, n) * min(chunk, vocab), dtype=hidden.dtype, device=hidden.device)
    # per-chunk log-sums, chunk-major so each chunk's column is contiguous
    parts = torch.empty(len(starts), min(blocks.rows, n), dtype=hidden.dtype, device=hidden.device)
    for i in range(0, n, blocks.rows):
        h = hidden[i:i + blocks.rows]
        m = h.shape[0]
        for c, j in enumerate(starts):
            w = weight[j:j + chunk]
            block = flat[:m * w.shape[0]].view(m, w.shape[0])
            torch.mm(h, w.T, out=block)
            if bias is not None:
                block.add_(bias[j:j + chunk])
            top = block.amax(dim=-1, keepdim=True)
            block.sub_(top).exp_()
            torch.sum(block, dim=-1, out=parts[c, :m])
            parts[c, :m].log_().add_(top[:, 0])
        torch.logsumexp(parts[:, :m], dim=0, out=out[i:i + m])
    return out


def read_logits(hidden: Any, weight: Any, bias: Any, rows: Any, tokens: Any) -> Any:
    """The logits ``hidden[rows] . weight[tokens] (+ bias[tokens])``, one per (row, token) pair."""
    logits = (hidden[rows] * weight[tokens]).sum(dim=-1)
    return logits if bias is None else logits + bias[tokens]
