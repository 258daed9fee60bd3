"""The independent reference the scorer is tested against: a plain fp32 loop that scores one item
at a time with a full forward pass, plus the mixed probe items several test modules share."""
from __future__ import annotations

import torch

from pythia_forensics.scoring.probes import ProbeItem, ProbeSet, probe_set_sha256

# Mixed prefix lengths, shared prefixes, trailing spaces, single- and multi-token candidates.
PREFIXES = [
    "Mia cried because",
    "Tom cried because",
    "Sue laughed because she won and then ",
    "I ate",
    "The keys to the cabinet",
    "Anna hurt",
    "Lily said that she would come. Jack said that",
    "The dogs near the house",
    "an",
]
CANDIDATES = [(" she", " he"), (" herself", " himself"), (" an apple", " a apple"), (" were", " was loud"),
              (" an umbrella, an orange", " a table"), (" he", " she")]


def mixed_items() -> list[ProbeItem]:
    items = []
    for k, prefix in enumerate(PREFIXES):
        for j, (target, foil) in enumerate(CANDIDATES):
            if (k + j) % 2 == 0:
                continue
            cond, split = ("conflict", "agree")[j % 2], ("train", "heldout")[k % 2]
            items.append(ProbeItem(f"i{k}.{j}", f"rule{j % 3}", cond, split, prefix, target, foil))
    # a prefix with a trailing space and bare candidates: the space must move into them
    items.append(ProbeItem("space.1", "rule0", "agree", "train", "Mia cried because ", "she", "he"))
    return items


def as_set(items) -> ProbeSet:
    return ProbeSet("test", tuple(items), probe_set_sha256(items), "memory")


def reference_logp(model, tokenizer, item: ProbeItem, candidate: str, *, bos: bool, rows: int | None = None) -> float:
    """One item at a time, fp32: full forward of prefix+candidate ids, log_softmax, sum."""
    prefix = item.prefix.rstrip()
    cont = item.prefix[len(prefix):] + candidate
    p_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
    if bos:
        p_ids = [tokenizer.bos_token_id] + p_ids
    with torch.no_grad():
        logits = model(torch.tensor([p_ids + c_ids])).logits[0].float()
    if rows is not None:
        logits = logits[:, :rows]
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[len(p_ids) - 1 + j, tok]) for j, tok in enumerate(c_ids))
