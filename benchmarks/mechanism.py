"""Mechanism cost at a Pythia-160m shape (random weights): decomposition and all-heads
ablation beside one plain forward pass over the same items (the least work scoring does).

    .venv/bin/python -m benchmarks.mechanism [--items N] [--tokens T] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import time


def measure(items: int = 32, tokens: int = 12, shape_name: str = "pythia-160m") -> dict:
    import torch

    from benchmarks.suite import random_model, registry_shape
    from pythia_forensics.mechanism import ablate_heads, decompose
    from pythia_forensics.mechanism.ablate import gap_of

    shape = registry_shape(shape_name)
    model = random_model(shape)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, shape.vocab_size, (items, tokens), generator=gen)
    mask = torch.ones_like(ids)
    last, t, f = [tokens - 1] * items, [5] * items, [7] * items
    gap_of(model, ids, mask, last, t, f)  # warm-up
    rows = {}
    for name, fn in (("forward", lambda: gap_of(model, ids, mask, last, t, f)),
                     ("decompose", lambda: decompose(model, ids, mask, last, t, f)),
                     ("ablate_all_heads", lambda: ablate_heads(model, ids, mask, last, t, f))):
        start = time.perf_counter()
        fn()
        rows[name] = time.perf_counter() - start
    return {"shape": shape_name, "items": items, "tokens": tokens, "seconds": rows,
            "decompose_over_forward": rows["decompose"] / rows["forward"],
            "ablation_over_forward": rows["ablate_all_heads"] / rows["forward"],
            "heads": shape.layers * shape.heads, "loadavg_before": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = measure(args.items, args.tokens)
    result["loadavg_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
