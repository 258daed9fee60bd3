"""Pin the golden per-item log-probs that tests/test_golden.py checks the scorer against.

    python tests/pin_golden.py            # re-pin: recompute golden.json for the stored checkpoint
    python tests/pin_golden.py --rebuild  # also rebuild the tiny checkpoint (changes every value)

Run it when `scoring.SCORING_VERSION` is bumped (a change that may move numbers on purpose),
after checking the change is intended, and commit `tests/data/golden/golden.json`. The
golden values are NOT computed by the tool: a plain fp32 loop below runs one item at a
time, full forward of ``prefix + candidate`` through transformers, float64 log-softmax, and
implements the scoring conventions itself (trailing prefix whitespace moves to the candidate,
no BOS, the log-sum-exp over the tokenizer's rows or over every row). The file records the
SCORING_VERSION and the default ``vocab_rows`` it was pinned under.

The checkpoint (tests/data/golden/checkpoint, ~80 KB) is a random GPT-NeoX with Pythia's
layout: 2 layers, d_model 16, an output embedding of 336 rows for a 320-token byte-level BPE
(so ``vocab_rows`` tokenizer and all differ, as for Pythia's 50277 vs 50304).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GOLDEN_DIR = HERE / "data" / "golden"
CHECKPOINT = GOLDEN_DIR / "checkpoint"
GOLDEN_FILE = GOLDEN_DIR / "golden.json"
EMBEDDING_ROWS = 336

# (item_id, prefix, target, foil): shared prefixes, multi-token candidates that branch late,
# a prefix with trailing whitespace, words the tokenizer has never seen whole.
ITEMS = [
    ("g01", "Mia cried because", " she", " he"),
    ("g02", "Mia cried because", " she was sad", " he was sad"),
    ("g03", "Tom cried because ", "he", "she"),
    ("g04", "Sue laughed because she", " won", " lost"),
    ("g05", "Anna hurt", " herself", " himself"),
    ("g06", "John hurt", " himself", " herself"),
    ("g07", "I ate", " an apple", " a apple"),
    ("g08", "She saw", " an owl and a cat", " a owl and a cat"),
    ("g09", "The keys to the cabinet", " are here", " is here"),
    ("g10", "The dog near the houses", " was loud", " were loud"),
    ("g11", "Lily said that", " she would come", " he would come"),
    ("g12", "an umbrella, an orange,", " an igloo", " a igloo"),
    ("g13", "Zebras quietly", " ate", " eat"),
    ("g14", "Mia", " cried", " laughed"),
]


def build_checkpoint(directory: Path = CHECKPOINT) -> Path:
    """Write the tiny checkpoint (deterministic given torch's RNG and the BPE trainer)."""
    sys.path[:0] = [str(ROOT), str(HERE)]
    from tinymodels import save_checkpoint, tiny_neox, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer()
    model = tiny_neox(EMBEDDING_ROWS, hidden=16, layers=2, heads=2, max_positions=64, seed=12)
    return save_checkpoint(directory, model, tokenizer)


def plain_fp32_logprobs(directory: Path, vocab_rows: str) -> list[list[float]]:
    """[logp(target), logp(foil)] per item of ITEMS, one forward per (item, candidate)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(directory))
    rows = len(tok) if vocab_rows == "tokenizer" else model.get_output_embeddings().weight.shape[0]
    out = []
    for _, prefix, target, foil in ITEMS:
        stripped = prefix.rstrip()
        moved = prefix[len(stripped):]
        pair = []
        for cand in (target, foil):
            p = tok(stripped, add_special_tokens=False)["input_ids"]
            c = tok(moved + cand, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([p + c])).logits[0, :, :rows].double()
            logp = torch.log_softmax(logits, dim=-1)
            pair.append(float(sum(logp[len(p) - 1 + j, t].item() for j, t in enumerate(c))))
        out.append(pair)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="re-pin tests/data/golden/golden.json")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the tiny checkpoint too")
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(HERE)]
    from pythia_forensics.scoring import score as scoring
    from pythia_forensics.scoring.options import DEFAULT_VOCAB_ROWS, VOCAB_ROWS

    if args.rebuild or not (CHECKPOINT / "config.json").exists():
        build_checkpoint()
    golden = {
        "scoring_version": scoring.SCORING_VERSION,
        "default_vocab_rows": DEFAULT_VOCAB_ROWS,
        "computed_by": "tests/pin_golden.py plain fp32 loop (one item, full forward, float64 log-softmax)",
        "items": [dict(zip(("item_id", "prefix", "target", "foil"), it)) for it in ITEMS],
        "logp": {rows: plain_fp32_logprobs(CHECKPOINT, rows) for rows in VOCAB_ROWS},
    }
    GOLDEN_FILE.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"pinned {len(ITEMS)} items x {len(VOCAB_ROWS)} vocab_rows under SCORING_VERSION "
          f"{scoring.SCORING_VERSION} -> {GOLDEN_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
