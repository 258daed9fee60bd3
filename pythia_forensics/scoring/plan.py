"""The forward plan: which token rows to run and which logits to read, and how to batch them.

Pure functions of the encoded items and the options (no model weights, no device), so a plan
built once serves every revision of a model (`score.prepare`):

  * every candidate needs the logits after ``context + candidate[:-1]``; those sequences are
    de-duplicated, and a sequence that is a prefix of another is read off the longer one
    (causal attention: its hidden states are identical). So items sharing a prefix with
    single-token candidates cost ONE forward row, and a multi-token candidate costs one row
    whose early positions also serve every shorter candidate with the same start (`make_plan`);
  * on architectures that take a custom 4D attention mask with explicit position ids
    (`SCORING_TREE_MODEL_TYPES`: GPT-NeoX/Pythia, Llama, OLMo), the token trie of all those
    sequences is packed into *tree rows* instead (`make_tree_plan`): a row holds a history's
    path and its whole subtree, each token attends to its ancestors only and sits at position
    id = its depth, so every distinct token history is computed once per row and a prefix
    shared by many items, or by a target and foil that branch after it, runs once (2-3x fewer
    body tokens than one causal sequence per history on a real battery, issue #9);
  * rows are sorted by length and batched (`batches`: little padding), RIGHT-padded
    (`batch_inputs`): real tokens sit at positions 0..n-1, so under causal attention pad
    tokens (which come after every real token) can never influence a real position.

The batch plan depends only on the sequence lengths and the batch size, so the same unit
always runs the same batches (README "Numerical contract").
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pythia_forensics.scoring.encode import EncodedItem
from pythia_forensics.scoring.head import blocks_for

__all__ = ["Plan", "auto_batch_size", "batch_inputs", "batches", "make_plan", "make_tree_plan", "plan_for",
           "plan_reason", "uses_tree"]

DEFAULT_BATCH_SIZE_CPU = 64
DEFAULT_BATCH_SIZE_CUDA = 256
# Tree rows (`make_tree_plan`, issue #9): a battery's token trie is packed into rows of at most
# this many tokens (or the longest history, if longer). On the bench battery 96 leaves ~30%
# above the trie's distinct tokens; longer rows add attention work faster than they save.
SCORING_TREE_ROW_TOKENS = 96
# Architectures whose forward honours a custom 4D attention mask with explicit position ids;
# others (ALiBi, flash-attention) run one plain causal sequence per history.
SCORING_TREE_MODEL_TYPES = ("gpt_neox", "llama", "olmo", "olmo2")
# A batch of B sequences holds at most B x this many tokens, padding included (sequences run
# longest first): on the bench battery a plain B=64 split padded 6,652 tokens to 10,734.
SCORING_BATCH_ROW_TOKENS = 32
# batch_size="auto" (`auto_batch_size`): DEFAULT_BATCH_SIZE_* x SCORING_BATCH_ROW_TOKENS tokens
# per batch, fewer when the batch's estimated working memory (body activations, attention
# scores, the head's fp32 rows and logits block) would pass this many bytes. A constant, not the
# free memory: the batches, hence the numbers, stay a function of model config and options.
SCORING_AUTO_BATCH_BYTES = {"cpu": 2 * 2**30, "cuda": 8 * 2**30}
# Padded batch inputs (ids, tree masks) a plan keeps for its next run (`batch_inputs`): at
# most this many bytes per plan; building them was ~15% of a prepared mini-s revision.
SCORING_INPUT_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Plan:
    """Which sequences run and which logits they feed (arrays index into each other).

    Attributes:
        sequences: token rows to run, sorted longest first.
        row_seq, row_pos: per needed logits row, its sequence and position there.
        read_row, read_tok: per distinct (row, token) read, the row and the token id.
        tok_cand, tok_read: per candidate token, its candidate (2*item + {0 target, 1 foil})
            and the read it uses.
        parents, positions: tree rows only (`make_tree_plan`): per sequence, each token's
            parent index in it (-1: none) and its position id (depth - 1); None for plain
            causal sequences (positions 0..n-1).
        inputs: padded batch inputs built on a batch's first run, reused by later runs of the
            same plan (a prepared plan scores every revision): (start, count, dtype, pad id)
            -> CPU tensors, plus ``"bytes"`` held.
    """

    sequences: list[tuple[int, ...]]
    row_seq: np.ndarray
    row_pos: np.ndarray
    read_row: np.ndarray
    read_tok: np.ndarray
    tok_cand: np.ndarray
    tok_read: np.ndarray
    parents: tuple[np.ndarray, ...] | None = None
    positions: tuple[np.ndarray, ...] | None = None
    inputs: dict = field(default_factory=dict, compare=False, repr=False)


def _candidates(encoded: Sequence[EncodedItem]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(context, candidate) per candidate, in candidate-index order (target, foil per item)."""
    return [(e.context_ids, c) for e in encoded for c in (e.target_ids, e.foil_ids)]


def make_plan(encoded: Sequence[EncodedItem]) -> Plan:
    """One plain causal sequence per maximal history ``context + candidate[:-1]``.

    Args:
        encoded: items from `encode_items`.

    Returns:
        A `Plan` without tree fields.
    """
    cands = _candidates(encoded)
    fulls = sorted({ctx + cont[:-1] for ctx, cont in cands})
    # A sequence that is a prefix of another is a prefix of its lexicographic successor, so one
    # backwards pass finds, for each, the longest sequence that contains it.
    owner = list(range(len(fulls)))
    for i in range(len(fulls) - 2, -1, -1):
        s, t = fulls[i], fulls[i + 1]
        if len(t) > len(s) and t[:len(s)] == s:
            owner[i] = owner[i + 1]
    maximal = sorted({owner[i] for i in range(len(fulls))}, key=lambda i: (-len(fulls[i]), fulls[i]))
    seq_index = {m: k for k, m in enumerate(maximal)}
    full_owner = {fulls[i]: seq_index[owner[i]] for i in range(len(fulls))}
    # A logits row is identified by the tokens up to it, so the row after a shared prefix is
    # computed once even when several branches (sequences) contain it.
    rows: dict[tuple[int, ...], int] = {}
    row_at: list[tuple[int, int]] = []
    reads: dict[tuple[int, int], int] = {}
    tok_cand: list[int] = []
    tok_read: list[int] = []
    for c, (ctx, cont) in enumerate(cands):
        seq = full_owner[ctx + cont[:-1]]
        for j, tok in enumerate(cont):
            row = rows.setdefault(ctx + cont[:j], len(rows))
            if row == len(row_at):
                row_at.append((seq, len(ctx) - 1 + j))
            read = reads.setdefault((row, tok), len(reads))
            tok_cand.append(c)
            tok_read.append(read)
    row_keys = np.array(row_at, dtype=np.int64).reshape(-1, 2)
    read_keys = np.array(list(reads), dtype=np.int64).reshape(-1, 2)
    return Plan([fulls[m] for m in maximal], row_keys[:, 0], row_keys[:, 1], read_keys[:, 0],
                read_keys[:, 1], np.array(tok_cand, dtype=np.int64), np.array(tok_read, dtype=np.int64))


def plan_reason(model: Any) -> str | None:
    """Why `model` is scored with plain causal rows rather than tree rows (None: tree rows).

    Tree rows need a model whose attention honours a custom 4D mask and explicit position
    ids: the architectures in `SCORING_TREE_MODEL_TYPES` (exactness-tested) under sdpa or
    eager attention. Any other causal LM still scores, exactly, on the plain plan.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SCORING_TREE_MODEL_TYPES:
        return (f"model_type {model_type!r} is not one of the tree-tested architectures "
                f"({', '.join(SCORING_TREE_MODEL_TYPES)}): plain causal rows")
    attn = getattr(config, "_attn_implementation", None)
    if attn not in ("sdpa", "eager"):
        return f"attn_implementation {attn!r} takes no custom 4D mask: plain causal rows"
    return None


def uses_tree(model: Any) -> bool:
    """Whether the model honours a custom 4D mask and explicit position ids (tree rows)."""
    return plan_reason(model) is None


def plan_for(model: Any, encoded: Sequence[EncodedItem]) -> Plan:
    """The plan `score` runs for these items on this model's architecture (tree or causal)."""
    return make_tree_plan(encoded) if uses_tree(model) else make_plan(encoded)


class _Trie:
    """The token trie of every ``context + candidate[:-1]`` and the reads candidates need.

    Node 0 is the root; every other node is one distinct token history, created after its
    parent (so a reverse sweep over node ids visits children before parents).
    """

    def __init__(self, encoded: Sequence[EncodedItem]) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.parent = [-1]
        self.token = [-1]
        self.depth = [0]
        self.row_nodes: list[int] = []  # per needed logits row: the node whose output it is
        self.reads: dict[tuple[int, int], int] = {}  # (row, token) -> read index
        self.tok_cand: list[int] = []
        self.tok_read: list[int] = []
        row_of_node: dict[int, int] = {}
        ctx_node: dict[tuple[int, ...], int] = {}
        for c, (ctx, cont) in enumerate(_candidates(encoded)):
            node = ctx_node.get(ctx)
            if node is None:
                node = 0
                for tok in ctx:
                    node = self.child(node, tok)
                ctx_node[ctx] = node
            for j, tok in enumerate(cont):
                if j:
                    node = self.child(node, cont[j - 1])
                row = row_of_node.setdefault(node, len(self.row_nodes))
                if row == len(self.row_nodes):
                    self.row_nodes.append(node)
                self.tok_cand.append(c)
                self.tok_read.append(self.reads.setdefault((row, tok), len(self.reads)))

    def child(self, node: int, tok: int) -> int:
        nxt = self.children[node].get(tok)
        if nxt is None:
            nxt = len(self.token)
            self.children[node][tok] = nxt
            self.children.append({})
            self.parent.append(node)
            self.token.append(tok)
            self.depth.append(self.depth[node] + 1)
        return nxt

    def path(self, u: int) -> list[int]:
        out = []
        while u:
            out.append(u)
            u = self.parent[u]
        return out[::-1]

    def subtree(self, u: int) -> list[int]:
        """``u`` and its descendants in preorder."""
        out, stack = [], [u]
        while stack:
            v = stack.pop()
            out.append(v)
            stack.extend(reversed(list(self.children[v].values())))
        return out

    def pack(self, row_tokens: int) -> list[list[int]]:
        """Rows of nodes: a node's path from the root, then its whole subtree, for the highest
        nodes whose row fits ``row_tokens`` (or the longest history); longest rows first."""
        size = [1] * len(self.token)
        for n in range(len(self.token) - 1, 0, -1):
            size[self.parent[n]] += size[n]
        cap = max(row_tokens, max(self.depth))
        packed: list[list[int]] = []
        stack = list(reversed(list(self.children[0].values())))
        while stack:
            u = stack.pop()
            if self.depth[u] + size[u] - 1 <= cap or not self.children[u]:
                packed.append(self.path(u)[:-1] + self.subtree(u))
            else:
                stack.extend(reversed(list(self.children[u].values())))
        packed.sort(key=lambda nodes: (-len(nodes), nodes))
        return packed


def _fill_rows(pieces: list[list[int]], cap: int) -> list[list[list[int]]]:
    """Best-fit decreasing: put the pieces (longest first) into rows of at most ``cap`` tokens,
    each into the fullest row it still fits, so rows come out nearly full and a batch of them
    pads little. Deterministic (ties go to the row opened first)."""
    rows: list[list[list[int]]] = []
    free: list[tuple[int, int]] = []  # (tokens still free, row index), sorted
    for piece in pieces:
        k = bisect.bisect_left(free, (len(piece), -1))
        if k == len(free):
            rows.append([piece])
            left, r = cap - len(piece), len(rows) - 1
        else:
            left, r = free.pop(k)
            rows[r].append(piece)
            left -= len(piece)
        if left > 0:
            bisect.insort(free, (left, r))
    rows.sort(key=lambda row: -sum(map(len, row)))  # longest first (stable), as `batches` expects
    return rows


def make_tree_plan(encoded: Sequence[EncodedItem], *, row_tokens: int = SCORING_TREE_ROW_TOKENS) -> Plan:
    """Pack the token trie of every ``context + candidate[:-1]`` into rows with tree attention.

    Items sharing a prefix share its computation: each trie node (a distinct token history)
    is a position whose hidden state depends only on its ancestors. A row holds a node's path
    from the root followed by its whole subtree (preorder); a tree mask lets every token see
    exactly its ancestors, and its position id is its depth, so its hidden state is the one
    a plain causal run of its history gives. Subtrees larger than ``row_tokens`` are split at
    their children (the shared path is then repeated per row). Compared with one causal
    sequence per maximal history, the body runs ~2-3x fewer tokens on batteries whose items
    share prefixes and whose candidates branch.

    Args:
        encoded: items from `encode_items`.
        row_tokens: the most tokens a row holds (unless one history is longer).

    Returns:
        A `Plan` with ``parents`` and ``positions``.
    """
    trie = _Trie(encoded)
    cap = max(row_tokens, max(trie.depth))
    sequences, parents, positions = [], [], []
    where: dict[int, tuple[int, int]] = {}
    for s, pieces in enumerate(_fill_rows(trie.pack(row_tokens), cap)):
        tokens, par, pos = [], [], []
        for nodes in pieces:  # each piece starts at the root: it never sees the pieces before it
            local = {v: len(tokens) + i for i, v in enumerate(nodes)}
            for v in nodes:
                where.setdefault(v, (s, len(tokens)))
                tokens.append(trie.token[v])
                par.append(local.get(trie.parent[v], -1))
                pos.append(trie.depth[v] - 1)
        sequences.append(tuple(tokens))
        parents.append(np.array(par, dtype=np.int64))
        positions.append(np.array(pos, dtype=np.int64))
    row_keys = np.array([where[n] for n in trie.row_nodes], dtype=np.int64).reshape(-1, 2)
    read_keys = np.array(list(trie.reads), dtype=np.int64).reshape(-1, 2)
    return Plan(sequences, row_keys[:, 0], row_keys[:, 1], read_keys[:, 0], read_keys[:, 1],
                np.array(trie.tok_cand, dtype=np.int64), np.array(trie.tok_read, dtype=np.int64),
                parents=tuple(parents), positions=tuple(positions))


def _tree_inputs(plan: Plan, start: int, count: int, width: int, dtype: Any) -> tuple[Any, Any]:
    """Additive 4D tree mask (0 = may attend, dtype min = may not) and position ids for
    sequences [start, start + count) padded to ``width``, as CPU tensors. A pad position sees
    only itself (no empty softmax row); no real position sees a pad."""
    import torch

    allowed = np.zeros((count, width, width), dtype=bool)
    pos = np.zeros((count, width), dtype=np.int64)
    for b in range(count):
        par = plan.parents[start + b]
        n = len(par)
        m = allowed[b]
        for i in range(n):  # preorder: a parent's row is complete before its children's
            if par[i] >= 0:
                m[i] = m[par[i]]
            m[i, i] = True
        idx = np.arange(n, width)
        m[idx, idx] = True
        pos[b, :n] = plan.positions[start + b]
    mask = torch.zeros((count, 1, width, width), dtype=dtype)
    mask.masked_fill_(~torch.from_numpy(allowed).unsqueeze(1), torch.finfo(dtype).min)
    return mask, torch.from_numpy(pos)


def batches(lengths: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """(start, count) of each forward batch: a pure function of the sequence lengths (sorted
    longest first) and the batch size, so the same unit always runs the same batches.

    A batch holds at most ``batch_size`` sequences and ``batch_size x SCORING_BATCH_ROW_TOKENS``
    padded tokens, so a few long rows never pad a whole batch of short ones to their width.
    """
    out, ptr = [], 0
    while ptr < len(lengths):
        count = min(batch_size, max(1, batch_size * SCORING_BATCH_ROW_TOKENS // lengths[ptr]), len(lengths) - ptr)
        out.append((ptr, count))
        ptr += count
    return out


def batch_inputs(plan: Plan, ptr: int, count: int, pad_id: int, dtype: Any) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and position ids of sequences [ptr, ptr + count), on
    CPU; kept in ``plan.inputs`` while they fit `SCORING_INPUT_CACHE_BYTES`, so a plan reused
    across revisions builds them once. Callers copy them to the device and never write them."""
    import torch

    key = (ptr, count, str(dtype), pad_id)
    hit = plan.inputs.get(key)
    if hit is not None:
        return hit
    seqs = plan.sequences[ptr:ptr + count]
    width = max(len(s) for s in seqs)
    ids = torch.full((count, width), pad_id, dtype=torch.long)
    mask = torch.zeros((count, width), dtype=torch.long)
    for b, s in enumerate(seqs):  # right padding: real tokens at 0..len-1
        ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, :len(s)] = 1
    if plan.parents is not None:  # tree rows: each token sees its ancestors only
        mask, positions = _tree_inputs(plan, ptr, count, width, dtype)
    else:
        positions = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(count, width)
    out = (ids, mask, positions)
    held = plan.inputs.get("bytes", 0) + sum(t.element_size() * t.nelement() for t in out)
    if held <= SCORING_INPUT_CACHE_BYTES:
        plan.inputs[key] = out
        plan.inputs["bytes"] = held
    return out


def auto_batch_size(model: Any, plan: Plan, n_rows: int, device_type: str) -> int:
    """The batch size ``auto`` starts from: a token budget (`DEFAULT_BATCH_SIZE_*` x
    `SCORING_BATCH_ROW_TOKENS` padded tokens per batch, see `batches`), lowered so that a
    batch's estimated working memory stays within `SCORING_AUTO_BATCH_BYTES`.

    A function of the model's config, dtype, the plan and the device type only (never of free
    memory), so the same options always give the same batches and the same numbers.

    Args:
        model: the model (its config and parameter dtype are read).
        plan: the plan to run (its longest row sets the attention width).
        n_rows: vocabulary rows of the log-sum-exp.
        device_type: ``cpu`` or ``cuda``.

    Returns:
        Sequences per batch, at least 1.
    """
    config = model.config
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or 1)
    width = max((len(s) for s in plan.sequences[:1]), default=1)
    item = next(model.parameters()).element_size()
    # per token: residual stream copies, q/k/v, attention output and MLP activations; one row of
    # attention scores per head; its fp32 hidden row for the head. The head's logits are one
    # fp32 block (`head.HEAD_BLOCKS`), whatever the batch.
    per_token = item * (8 * hidden + 2 * inter + heads * width) + 4 * hidden
    blocks = blocks_for(device_type)
    head_bytes = 4 * blocks.rows * min(blocks.vocab or n_rows, n_rows)
    default = DEFAULT_BATCH_SIZE_CUDA if device_type == "cuda" else DEFAULT_BATCH_SIZE_CPU
    budget = SCORING_AUTO_BATCH_BYTES["cuda" if device_type == "cuda" else "cpu"]
    return max(1, min(default, max(0, budget - head_bytes) // (SCORING_BATCH_ROW_TOKENS * per_token)))

