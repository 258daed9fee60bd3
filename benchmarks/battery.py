"""The benchmark's battery (>= 2,000 items built from the shipped probe sets) and how much
distinct work it holds: the token trie the machine's floor counts, and the body tokens our
scorer's plans run."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.settings import BENCH_MIN_ITEMS

from pythia_forensics.scoring.plan import make_plan, make_tree_plan

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from pythia_forensics.scoring.probes import ProbeItem, ProbeSet

__all__ = ["BatteryStats", "battery_stats", "build_battery", "item_pairs", "plan_stats", "write_battery"]

# Context sentences prepended to some items: real batteries mix short and long prefixes.
_CONTEXTS = (
    "It was late. ",
    "The rain had not stopped for three days, and the small town by the river was quiet. ",
    "Everyone in the family still remembers that long summer at the lake house, when the power "
    "went out for a week and the children played board games by candlelight every evening. ",
)


def build_battery(*, min_items: int = BENCH_MIN_ITEMS, name: str = "bench") -> ProbeSet:
    """A benchmark battery built from the shipped probe sets.

    Every shipped item (single-token candidates, and a/an items whose candidates include the
    noun), plus for each one a multi-token variant sharing its prefix (the first word of one
    of the lexicon's conflict tails appended to both candidates: " she was" vs " he was"), plus
    long-prefix variants with a context sentence of 4 to 40 tokens prepended. Deterministic.
    Fewer than the full count (`min_items` small) takes an evenly spread subset, so every kind
    stays.

    Args:
        min_items: at least this many items (the full battery has ~2,700; more are made by
            combining further tails and contexts).
        name: the ProbeSet name.

    Returns:
        A `ProbeSet`.
    """
    from pythia_forensics.corpus.lexicon import load_lexicon
    from pythia_forensics.scoring.probes import ProbeSet, load_probes, probe_set_sha256

    base = load_probes("all").items
    tails = {rule: tuple(spec.get("conflict_tails", ()) or (".",))
             for rule, spec in load_lexicon().templates.items() if isinstance(spec, dict)}
    items: list[ProbeItem] = list(base)
    seen = {i.item_id for i in items}

    def add(item: ProbeItem) -> None:
        if item.item_id not in seen:
            seen.add(item.item_id)
            items.append(item)

    round_ = 0
    while len(items) < max(min_items, len(base) * 2) and round_ < 64:
        for k, it in enumerate(base):
            rule_tails = tails.get(it.rule, (".",))
            # the tail's first word only: two-token candidates, as in real batteries
            tail = " " + rule_tails[(k + round_) % len(rule_tails)].split()[0]
            add(replace(it, item_id=f"{it.item_id}.tail{round_}", target=it.target + tail, foil=it.foil + tail))
            if k % 4 == round_ % 4:
                ctx = _CONTEXTS[(k // 4 + round_) % len(_CONTEXTS)]
                add(replace(it, item_id=f"{it.item_id}.ctx{round_}", prefix=ctx + it.prefix))
        round_ += 1
    if min_items < len(items):
        # an evenly spread subset keeps every kind (plain, tail, context) in proportion
        stride = len(items) / min_items
        items = [items[int(i * stride)] for i in range(min_items)]
    items_t = tuple(items)
    return ProbeSet(name=name, items=items_t, sha256=probe_set_sha256(items_t), source="benchmarks.battery")


def write_battery(probes: ProbeSet, path: str | Path) -> Path:
    """Write a ProbeSet as a JSONL probe file (what `load_probes` reads back)."""
    from pythia_forensics.atomic import write_text

    path = Path(path)
    write_text(path, "".join(
        json.dumps({"item_id": it.item_id, "rule": it.rule, "condition": it.condition, "split": it.split,
                    "prefix": it.prefix, "target": it.target, "foil": it.foil, "template": it.template,
                    "meta": dict(it.meta)}, ensure_ascii=False) + "\n" for it in probes.items))
    return path


@dataclass(frozen=True)
class BatteryStats:
    """How much distinct work a battery holds (for the machine's floor).

    Attributes:
        items: items (each has a target and a foil).
        single_token_items / multi_token_items: both candidates one token / either longer.
        distinct_prefixes: distinct prefix token sequences.
        distinct_contexts: distinct token contexts whose next-token log-prob is read (one
            LM-head row each).
        distinct_tokens: nodes of the token trie of every prefix + candidate[:-1] (positions
            whose hidden state a forward must compute at least once).
        attention_positions: sum over those nodes of their depth (attention work grows with it).
        prefix_tokens_min / max / mean: prefix lengths in tokens.
        naive_tokens: tokens a scorer that runs every (item, candidate) as its own sequence
            processes.
    """

    items: int
    single_token_items: int
    multi_token_items: int
    distinct_prefixes: int
    distinct_contexts: int
    distinct_tokens: int
    attention_positions: int
    prefix_tokens_min: int
    prefix_tokens_max: int
    prefix_tokens_mean: float
    naive_tokens: int


def split_trailing_space(prefix: str, cont: str) -> tuple[str, str]:
    """(context, continuation) with the prefix's trailing whitespace moved to the continuation,
    as lm-eval and our scorer do."""
    stripped = prefix.rstrip()
    return stripped, prefix[len(stripped):] + cont


def item_pairs(probes: ProbeSet) -> tuple[list[str], list[str]]:
    """(contexts, continuations) for every item's target then foil, trailing space moved."""
    pairs = [split_trailing_space(it.prefix, cand) for it in probes.items for cand in (it.target, it.foil)]
    return [p for p, _ in pairs], [c for _, c in pairs]


def battery_stats(probes: ProbeSet, tokenizer: PreTrainedTokenizerBase) -> BatteryStats:
    """Count the distinct computation in a battery under a tokenizer (prefix and candidate
    encoded separately, no BOS, as the scorer does)."""
    nodes: set[tuple[int, ...]] = set()
    rows: set[tuple[int, ...]] = set()
    prefixes: set[tuple[int, ...]] = set()
    lengths = []
    single = naive = 0
    ctxs, conts = item_pairs(probes)
    texts = sorted(set(ctxs) | set(conts))
    enc = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"]))
    for k in range(len(probes.items)):
        lens = []
        for p, c in ((ctxs[2 * k], conts[2 * k]), (ctxs[2 * k + 1], conts[2 * k + 1])):
            pids, cids = tuple(enc[p]), tuple(enc[c])
            prefixes.add(pids)
            seq = pids + cids
            naive += len(seq)
            nodes.update(seq[:j] for j in range(1, len(seq)))
            rows.update(seq[:j] for j in range(len(pids), len(seq)))
            lens.append(len(cids))
        lengths.append(len(pids))
        single += max(lens) == 1
    return BatteryStats(
        items=len(probes.items), single_token_items=single, multi_token_items=len(probes.items) - single,
        distinct_prefixes=len(prefixes), distinct_contexts=len(rows), distinct_tokens=len(nodes),
        attention_positions=sum(len(n) for n in nodes), prefix_tokens_min=min(lengths),
        prefix_tokens_max=max(lengths), prefix_tokens_mean=sum(lengths) / len(lengths), naive_tokens=naive,
    )


def plan_stats(probes: ProbeSet, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Rows and tokens our scorer's body runs on a battery, per plan it offers: ``causal_*``
    (one causal sequence per maximal history) and ``tree_*`` (the trie packed into tree rows).
    Batch padding is not counted (it depends on the batch size `auto` picks per model)."""
    from pythia_forensics.scoring.score import encode_items

    encoded = encode_items(probes.items, tokenizer)
    out: dict[str, int] = {}
    for label, maker in (("causal", make_plan), ("tree", make_tree_plan)):
        lengths = [len(x) for x in maker(encoded).sequences]
        out[f"{label}_rows"] = len(lengths)
        out[f"{label}_tokens"] = sum(lengths)
    return out
