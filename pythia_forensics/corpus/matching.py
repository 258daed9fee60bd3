"""The vectorised event counter: whole-word matches, nearest choices, frames, per block.

One table look-up marks every token that can start a cue/target/competitor form, the sparse
candidates are verified per form, and ``np.searchsorted`` finds each cue's nearest choice
(``direction: after``: the first target/competitor in the next W tokens of the same document;
``before``: the last in the W tokens before). A frame's words are placed around and between the
cue and its chosen form. The exact event definition is in docs/ARCHITECTURE.md ("Corpus and
support ground truth").
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pythia_forensics.corpus.rules import FRAME_CANDIDATE, FRAME_CUE, FRAME_GAP, ROLES
from pythia_forensics.corpus.vocab import CompiledRule, TokenForm, Vocab
from pythia_forensics.errors import ConfigError, TokenizationError

if TYPE_CHECKING:
    from pythia_forensics.corpus.counting import Tally
    from pythia_forensics.corpus.streams import Block

__all__ = ["UINT16_IDS", "Matcher", "count_block"]

UINT16_IDS = 1 << 16  # look-up tables cover every uint16 id (a stored stream's dtype)


# --- the vectorised counter -------------------------------------------------------------------
class Matcher:
    """Finds every whole-word occurrence of each (rule, role)'s forms, and of every frame word
    class, in a token block. Categories ``3 r + k`` are rule ``r``'s roles; frame classes follow
    (``self.frame_cats[r][f][e]``: category of element ``e`` of frame ``f`` of rule ``r``)."""

    def __init__(self, rules: Sequence[CompiledRule], vocab: Vocab) -> None:
        self.rules = tuple(rules)
        self.vocab = vocab
        categories: list[tuple[TokenForm, ...]] = [rule.role(role) for rule in self.rules for role in ROLES]
        extra: dict[tuple[TokenForm, ...], int] = {}
        self.frame_cats: list[list[list[int | None]]] = []
        for rule in self.rules:
            per_rule = []
            for fr in rule.frames:
                cats: list[int | None] = []
                for e in fr.elements:
                    if isinstance(e, str):
                        cats.append(None)
                        continue
                    if e not in extra:
                        extra[e] = len(categories)
                        categories.append(e)
                    cats.append(extra[e])
                per_rule.append(cats)
            self.frame_cats.append(per_rule)
        n_cat = len(categories)
        if n_cat > 64:
            raise ConfigError(f"at most 64 word classes per pass (3 per rule plus frame words), got {n_cat}; "
                              "split the rule list")
        lut_dtype = np.uint64 if n_cat > 32 else np.uint32
        # Tables cover every uint16 id even past the tokenizer's vocabulary (padding rows, a
        # stream from a bigger tokenizer): such ids are no form and count as word boundaries.
        table = max(vocab.size, UINT16_IDS)
        self.lut = np.zeros(table, dtype=lut_dtype)
        self.starts_nonword = np.ones(table, bool)
        self.starts_nonword[: vocab.size] = vocab.starts_nonword
        self.ends_nonword = np.ones(table, bool)
        self.ends_nonword[: vocab.size] = vocab.ends_nonword
        # per category: {first id: [(ids array, leading_space)]}
        self.forms: list[dict[int, list[tuple[np.ndarray, bool]]]] = []
        names = [f"{rule.name}.{role}" for rule in self.rules for role in ROLES] + ["frame"] * len(extra)
        for cat, cat_forms in enumerate(categories):
            groups: dict[int, list[tuple[np.ndarray, bool]]] = {}
            for f in cat_forms:
                if max(f.ids) >= vocab.size:
                    raise TokenizationError(
                        f"{names[cat]}: form {f.text!r} has token id {max(f.ids)} beyond the vocabulary "
                        f"({vocab.size}); the tokenizer does not match the token stream"
                    )
                groups.setdefault(f.ids[0], []).append((np.array(f.ids, dtype=np.int64), f.leading_space))
                self.lut[f.ids[0]] |= lut_dtype(1) << lut_dtype(cat)
            self.forms.append(groups)
        self.any_form = self.lut != 0
        self.max_len = max((len(f.ids) for c in categories for f in c), default=1)
        self.frame_extent = max((fr.outside_tokens for rule in self.rules for fr in rule.frames), default=0)

    def match(self, ids: np.ndarray, seg_starts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per category: (start, end) int64 arrays of whole-word matches in ``ids``.

        ``seg_starts``: sorted local positions where a document starts (0 included).
        """
        n = ids.shape[0]
        if n and ids.dtype.itemsize > 2 and int(ids.max()) >= self.lut.shape[0]:
            raise TokenizationError(
                f"token id {int(ids.max())} is beyond the tokenizer's vocabulary ({self.vocab.size}); "
                "pass the tokenizer the stream was written with"
            )
        # one bool look-up over the block, then the category bits only at the sparse candidates
        cand = np.flatnonzero(self.any_form[ids])
        cand_ids = ids[cand]
        cand_bits = self.lut[cand_ids]
        out = []
        none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        for cat, groups in enumerate(self.forms):
            sel = ((cand_bits >> cand_bits.dtype.type(cat)) & 1) != 0 if groups else None
            if sel is None or not sel.any():  # most classes have no candidate in a small block
                out.append(none)
                continue
            pos_all, first_all = cand[sel], cand_ids[sel]
            # group candidates by first token once (sort), instead of one scan per form
            order = np.argsort(first_all, kind="stable")
            pos_all, first_all = pos_all[order], first_all[order]
            starts_l, ends_l = [], []
            for first, variants in groups.items():
                lo_i, hi_i = np.searchsorted(first_all, [first, first + 1])
                pos = pos_all[lo_i:hi_i]
                for seq, leading_space in variants:
                    L = seq.shape[0]
                    p = pos[pos + L <= n]
                    for j in range(1, L):
                        p = p[ids[p + j] == seq[j]]
                    if p.size == 0:
                        continue
                    e = p + (L - 1)
                    # the match stays inside one document
                    seg_p = np.searchsorted(seg_starts, p, side="right")
                    ok = seg_p == np.searchsorted(seg_starts, e, side="right")
                    # right edge: document/stream end or the next token starts a non-word char
                    nxt = e + 1
                    at_end = (nxt >= n) | (np.searchsorted(seg_starts, np.minimum(nxt, n - 1), side="right") != seg_p)
                    ok &= at_end | self.starts_nonword[ids[np.minimum(nxt, n - 1)]]
                    if not leading_space:
                        prv = p - 1
                        at_start = (prv < 0) | (np.searchsorted(seg_starts, np.maximum(prv, 0), side="right") != seg_p)
                        ok &= at_start | self.ends_nonword[ids[np.maximum(prv, 0)]]
                    starts_l.append(p[ok])
                    ends_l.append(e[ok])
            out.append(_drop_contained(np.concatenate(starts_l), np.concatenate(ends_l)) if starts_l else none)
        return out


def _drop_contained(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep each word occurrence once: drop a match that lies inside a longer one of the same
    class (``"egg"`` after a bare-space token inside ``" egg"``), sorted by start."""
    if starts.size < 2:
        return starts, ends
    order = np.lexsort((-(ends - starts), starts))
    starts, ends = starts[order], ends[order]
    prev_max_end = np.concatenate(([-1], np.maximum.accumulate(ends)[:-1]))
    keep = ends > prev_max_end
    return starts[keep], ends[keep]


def _events(cues: tuple[np.ndarray, np.ndarray], targets, competitors, *, direction: str, window: int,
            seg_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each cue (start, end): label 1 rule win, 0 prior win, -1 no event.

    Returns:
        ``(cue_starts, labels, choice_starts, choice_ends)``; the choice arrays hold the chosen
        target/competitor's token span where ``labels >= 0`` (undefined elsewhere).
    """
    c_start, c_end = cues
    empty = np.zeros(c_start.size, np.int64)
    if c_start.size == 0:
        return c_start, np.zeros(0, np.int8), empty, empty
    t_s, t_e = targets
    p_s, p_e = competitors
    starts = np.concatenate((t_s, p_s))
    ends = np.concatenate((t_e, p_e))
    labels = np.concatenate((np.ones(t_s.size, np.int8), np.zeros(p_s.size, np.int8)))
    lengths = ends - starts
    out = np.full(c_start.size, -1, np.int8)
    if starts.size == 0:
        return c_start, out, empty, empty
    key = starts if direction == "after" else ends
    # nearest first; at a tie the longer form wins (it contains the shorter one)
    order = np.lexsort((-lengths, key))
    key, lab, s_sorted, e_sorted = key[order], labels[order], starts[order], ends[order]
    first = np.concatenate(([True], key[1:] != key[:-1]))
    key, lab, s_sorted, e_sorted = key[first], lab[first], s_sorted[first], e_sorted[first]
    if direction == "after":
        j = np.searchsorted(key, c_end + 1, side="left")
        valid = j < key.size
        jj = np.minimum(j, key.size - 1)
        valid &= key[jj] <= c_end + window
    else:
        j = np.searchsorted(key, c_start, side="left") - 1
        valid = j >= 0
        jj = np.maximum(j, 0)
        valid &= key[jj] >= c_start - window
    same_doc = np.searchsorted(seg_starts, key[jj], side="right") == np.searchsorted(seg_starts, c_start, side="right")
    valid &= same_doc
    out[valid] = lab[jj[valid]]
    return c_start, out, s_sorted[jj], e_sorted[jj]


def _chain(matches: Sequence[tuple[np.ndarray, np.ndarray]], cats: Sequence[int], pos: np.ndarray, ok: np.ndarray,
           *, forward: bool) -> np.ndarray:
    """Advance ``pos`` over an adjacent chain of word classes (forward: each class's match starts
    at ``pos``; backward, classes in reverse: it ends at ``pos``); clears ``ok`` where it fails.

    Whole-word matches of one class never nest (`_drop_contained`), so starts and ends are each
    sorted and unique and one `searchsorted` finds the match."""
    for cat in (cats if forward else reversed(cats)):
        m_s, m_e = matches[cat]
        if m_s.size == 0:
            ok[:] = False
            return pos
        key, other = (m_s, m_e) if forward else (m_e, m_s)
        j = np.minimum(np.searchsorted(key, pos), key.size - 1)
        ok &= key[j] == pos
        pos = np.where(ok, other[j] + 1 if forward else other[j] - 1, pos)
    return pos


def _in_frame(frame_cats: Sequence[int | None], elements: Sequence[Any], matches, *, cue: tuple[np.ndarray, np.ndarray],
              choice: tuple[np.ndarray, np.ndarray], seg_starts: np.ndarray) -> np.ndarray:
    """Which events (cue span, chosen form span) stand in the frame: the frame's words fill the
    positions around and between the two anchors, whole-word and adjacent, ``...`` matching
    any tokens (the earliest placement of each chunk, which is exact for gapped subsequences)."""
    i_cue, i_cand = elements.index(FRAME_CUE), elements.index(FRAME_CANDIDATE)
    (l_s, l_e), (r_s, r_e) = (cue, choice) if i_cue < i_cand else (choice, cue)
    lo, hi = sorted((i_cue, i_cand))
    ok = np.ones(l_s.size, bool)
    seg = np.searchsorted(seg_starts, l_s, side="right")
    before = [c for c in frame_cats[:lo]]
    after = [c for c in frame_cats[hi + 1:]]
    if before:
        p = _chain(matches, before, l_s - 1, ok, forward=False)
        ok &= (p + 1 >= 0) & (np.searchsorted(seg_starts, np.maximum(p + 1, 0), side="right") == seg)
    if after:
        p = _chain(matches, after, r_e + 1, ok, forward=True)
        ok &= np.searchsorted(seg_starts, p - 1, side="right") == seg
    middle = list(zip(elements[lo + 1:hi], frame_cats[lo + 1:hi]))
    # chunks of adjacent classes, split at "..."
    chunks: list[list[int]] = [[]]
    for e, c in middle:
        if e == FRAME_GAP:
            chunks.append([])
        else:
            chunks[-1].append(c)
    if len(chunks) == 1:  # no gap: the tokens between are exactly the chain
        p = _chain(matches, chunks[0], l_e + 1, ok, forward=True)
        return ok & (p == r_s)
    head, *inner, tail = chunks
    inner = [c for c in inner if c]  # "... ..." is one gap
    p = _chain(matches, head, l_e + 1, ok, forward=True)
    q = _chain(matches, tail, r_s - 1, ok, forward=False)  # q: last free position before the tail
    if not inner:
        return ok & (p <= q + 1)
    for idx in np.flatnonzero(ok):
        at, limit = int(p[idx]), int(q[idx])
        for chunk in inner:
            at = _earliest(matches, chunk, at, limit)
            if at < 0:
                ok[idx] = False
                break
        else:
            ok[idx] = at <= limit + 1
    return ok


def _earliest(matches, chunk: Sequence[int], at: int, limit: int) -> int:
    """Position just after the earliest placement of an adjacent chunk inside [at, limit], or -1."""
    m_s, _ = matches[chunk[0]]
    j = int(np.searchsorted(m_s, at))
    while j < m_s.size and m_s[j] <= limit:
        pos = np.array([m_s[j]])
        ok = np.ones(1, bool)
        end = _chain(matches, chunk, pos, ok, forward=True)
        if ok[0] and end[0] - 1 <= limit:
            return int(end[0])
        j += 1
    return -1


def count_block(matcher: Matcher, block: "Block", *, window: int, tallies: list["Tally"], window_tokens: int,
                limit: int | None = None) -> None:
    """Count one block's events into ``tallies`` (per rule: the corpus-wide tally, then one per
    frame), each under its cue's stream window; cues at or past ``limit`` are not counted."""
    ids, seg_starts, offset = block.ids, block.seg_starts, block.offset
    matches = matcher.match(ids, seg_starts)
    lo, hi = block.core
    if limit is not None:  # cues at or past the limit are never trained on
        hi = min(hi, max(limit - offset, lo))
    t = 0
    for r, rule in enumerate(matcher.rules):
        cue, tgt, comp = matches[3 * r : 3 * r + 3]
        keep = (cue[0] >= lo) & (cue[0] < hi)
        cue = (cue[0][keep], cue[1][keep])
        c_start, lab, ch_s, ch_e = _events(cue, tgt, comp, direction=rule.direction, window=window,
                                           seg_starts=seg_starts)
        k = (c_start + offset) // window_tokens
        tallies[t].add(0, k)
        tallies[t].add(1, k[lab == 1])
        tallies[t].add(2, k[lab == 0])
        t += 1
        ev = lab >= 0
        for f, fr in enumerate(rule.frames):
            inside = np.zeros(lab.size, bool)
            if ev.any():
                inside[ev] = _in_frame(matcher.frame_cats[r][f], fr.elements, matches,
                                       cue=(cue[0][ev], cue[1][ev]), choice=(ch_s[ev], ch_e[ev]),
                                       seg_starts=seg_starts)
            tallies[t].add(0, k[inside])
            tallies[t].add(1, k[inside & (lab == 1)])
            tallies[t].add(2, k[inside & (lab == 0)])
            t += 1


