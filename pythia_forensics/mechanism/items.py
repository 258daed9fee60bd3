"""Probe items in, one tidy row per (item, component) out: the decomposition on a probe set."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pythia_forensics.errors import MechanismError
from pythia_forensics.mechanism.decompose import decompose, single_tokens

__all__ = ["DECOMPOSITION_COLUMNS", "decompose_items", "encode_items"]

DECOMPOSITION_COLUMNS = ("item_id", "rule", "condition", "split", "component", "contribution",
                         "gap")


def encode_items(tokenizer: Any, items: Sequence[Any]) -> tuple[Any, Any, list[int], list[int], list[int]]:
    """Right-padded prefix ids, mask, last positions and single-token target/foil ids.

    Trailing whitespace of a prefix belongs to the candidates (as in scoring), so the prefix
    is stripped on the right and each candidate keeps its leading space.
    """
    import torch

    if not items:
        raise MechanismError("no probe items to decompose", param="probes")
    prefixes = [tokenizer(it.prefix.rstrip(), add_special_tokens=False)["input_ids"] for it in items]
    if any(len(p) == 0 for p in prefixes):
        raise MechanismError("a prefix tokenizes to nothing", param="probes")
    targets = single_tokens(tokenizer, [it.target for it in items])
    foils = single_tokens(tokenizer, [it.foil for it in items])
    width = max(len(p) for p in prefixes)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, p in enumerate(prefixes):
        ids[r, :len(p)] = torch.tensor(p)
        mask[r, :len(p)] = 1
    return ids, mask, [len(p) - 1 for p in prefixes], targets, foils


def decompose_items(model: Any, tokenizer: Any, items: Sequence[Any]) -> Any:
    """pandas frame, `DECOMPOSITION_COLUMNS`, one row per (item, component)."""
    import pandas as pd

    ids, mask, last, targets, foils = encode_items(tokenizer, items)
    device = next(model.parameters()).device
    dec = decompose(model, ids.to(device), mask.to(device), last, targets, foils)
    parts, gap = dec.parts.cpu().tolist(), dec.gap.cpu().tolist()
    rows = [(it.item_id, it.rule, it.condition, it.split, comp, parts[r][j], gap[r])
            for r, it in enumerate(items) for j, comp in enumerate(dec.components)]
    return pd.DataFrame(rows, columns=list(DECOMPOSITION_COLUMNS))
