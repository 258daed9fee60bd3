"""Tokenization made explicit: probe items -> the token ids the scorer scores.

The same choices lm-evaluation-harness makes:
  * trailing whitespace of the prefix moves to the front of both candidates ("Sue cried
    because " + "she" is scored as "Sue cried because" + " she"), so no stray "Ġ" token;
  * prefix and candidates are encoded separately, without special tokens;
  * a BOS token (the tokenizer's bos, else eos) is prepended only when asked (Pythia: none);
  * a prefix or candidate that encodes to no tokens is a `TokenizationError` naming the item.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pythia_forensics.errors import TokenizationError
from pythia_forensics.scoring.probes import ProbeItem

__all__ = ["EncodedItem", "encode_items"]


@dataclass(frozen=True)
class EncodedItem:
    """An item's token ids as scored: context (BOS + prefix) and the two candidates."""

    context_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    foil_ids: tuple[int, ...]


def _move_whitespace(prefix: str, candidate: str) -> tuple[str, str]:
    stripped = prefix.rstrip()
    return stripped, prefix[len(stripped):] + candidate


def _bos_id(tokenizer: Any) -> int:
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise TokenizationError("bos=True but the tokenizer has neither a BOS nor an EOS token; score with bos=False",
                            param="bos")


def encode_items(items: Sequence[ProbeItem], tokenizer: Any, *, bos: bool = False) -> list[EncodedItem]:
    """Tokenize items the way the scorer scores them (see the module docstring).

    Args:
        items: probe items.
        tokenizer: a Hugging Face tokenizer.
        bos: prepend the BOS (else EOS) token id to every context.

    Returns:
        One `EncodedItem` per item, in order.

    Raises:
        TokenizationError: a prefix or candidate encodes to no tokens (names the item).
    """
    moved = []
    for item in items:
        prefix, target = _move_whitespace(item.prefix, item.target)
        _, foil = _move_whitespace(item.prefix, item.foil)
        moved.append((prefix, target, foil))
    strings = sorted({s for triple in moved for s in triple})
    ids = dict(zip(strings, tokenizer(strings, add_special_tokens=False)["input_ids"])) if strings else {}
    head = (_bos_id(tokenizer),) if bos else ()
    out = []
    for item, (prefix, target, foil) in zip(items, moved):
        context = head + tuple(ids[prefix])
        for what, value, toks in (("prefix", item.prefix, context), ("target", item.target, ids[target]),
                                  ("foil", item.foil, ids[foil])):
            if not toks:
                hint = " (or score with bos=True)" if what == "prefix" else ""
                raise TokenizationError(f"item {item.item_id!r}: {what} {value!r} tokenizes to no tokens; "
                                        f"give it visible text{hint}")
        out.append(EncodedItem(context, tuple(ids[target]), tuple(ids[foil])))
    return out

