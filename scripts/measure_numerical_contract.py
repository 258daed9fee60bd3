"""Measure the scorer's numerical contract (README "Numerical contract") on this machine.

    python scripts/measure_numerical_contract.py [--hidden 32 128] [--out FILE.json]

For tiny real GPT-NeoX checkpoints (tests/tinymodels.py) and a battery with shared prefixes and
multi-token candidates, it scores the same unit of work
  * twice in one process,
  * in two fresh processes,
  * with 1 and 2 intra-op threads (at the default batch size and at batch size 1),
  * at batch sizes 1, 7 and 64,
and against an independent plain fp32 loop (one item at a time, full forward, float64
log-softmax). It prints the largest difference of each comparison in nats and in fp32 steps at
the value's magnitude (|a - b| / (max(|a|, |b|) * 2**-23)); 0 means bit-identical.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

PAIRS = [("Mia cried because", " she", " he"), ("Tom cried because", " he", " she"),
         ("I ate", " an apple", " a apple"), ("She saw", " a cat", " an cat"),
         ("The keys to the cabinet", " are here", " is here"), ("Lily said that she would", " come", " go"),
         ("Anna hurt", " herself", " himself"), ("The dogs near the house", " were loud", " was loud")]


def _probes():
    from pythia_forensics.scoring.probes import ProbeItem, ProbeSet, probe_set_sha256

    items = [ProbeItem(f"i{k}", "r", ("agree", "conflict")[k % 2], "train", p + (" and" * (k // 8)), t, f)
             for k, (p, t, f) in enumerate(PAIRS * 6)]
    return ProbeSet("contract", tuple(items), probe_set_sha256(items), "memory")


def _model(hidden: int):
    from tinymodels import tiny_neox, train_bpe_tokenizer

    tok = train_bpe_tokenizer()
    return tiny_neox(len(tok), hidden=hidden, layers=4, seed=7), tok


def _score(hidden: int, *, threads: int | str = "auto", batch_size: int | str = "auto") -> np.ndarray:
    from pythia_forensics.scoring import score as scoring

    model, tok = _model(hidden)
    frame = scoring.score(model, _probes(), tokenizer=tok, batch_size=batch_size, threads=threads)
    return frame[["logp_target", "logp_foil"]].to_numpy()


def _reference(hidden: int) -> np.ndarray:
    import torch

    model, tok = _model(hidden)
    out = []
    for it in _probes().items:
        row = []
        for cand in (it.target, it.foil):
            p = tok(it.prefix, add_special_tokens=False)["input_ids"]
            c = tok(cand, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0, :, :len(tok)].double(), -1)
            row.append(float(sum(lp[len(p) - 1 + j, t] for j, t in enumerate(c))))
        out.append(row)
    return np.array(out)


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a - b)
    ulps = d / (np.maximum(np.abs(a), np.abs(b)) * 2.0 ** -23)
    return {"max_abs_nats": float(d.max()), "max_fp32_steps": float(ulps.max()),
            "bit_identical": bool((a == b).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", nargs=2, metavar=("HIDDEN", "NPY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        np.save(args.worker[1], _score(int(args.worker[0]), threads=2))
        return
    import torch

    report: dict[str, object] = {"torch": torch.__version__, "cpus": len(__import__("os").sched_getaffinity(0))}
    for hidden in args.hidden:
        base = _score(hidden, threads=2)
        res: dict[str, object] = {"same_process_twice": _diff(base, _score(hidden, threads=2))}
        with tempfile.TemporaryDirectory() as tmp:
            files = [Path(tmp) / f"p{k}.npy" for k in range(2)]
            for f in files:
                subprocess.run([sys.executable, __file__, "--worker", str(hidden), str(f)], check=True)
            a, b = (np.load(f) for f in files)
        res["two_processes"] = _diff(a, b)
        res["process_vs_in_process"] = _diff(a, base)
        res["threads_1_vs_2"] = _diff(_score(hidden, threads=1), base)
        res["threads_1_vs_2_batch1"] = _diff(_score(hidden, threads=1, batch_size=1),
                                             _score(hidden, threads=2, batch_size=1))
        by_bs = {bs: _score(hidden, threads=2, batch_size=bs) for bs in (1, 7, 64)}
        res["batch_1_vs_7"] = _diff(by_bs[1], by_bs[7])
        res["batch_1_vs_64"] = _diff(by_bs[1], by_bs[64])
        res["batch_7_vs_64"] = _diff(by_bs[7], by_bs[64])
        ref = _reference(hidden)
        res["vs_plain_fp32_loop"] = max((_diff(v, ref) for v in by_bs.values()), key=lambda d: d["max_abs_nats"])
        res["logp_magnitude_max"] = float(np.abs(ref).max())
        report[f"hidden{hidden}_layers4"] = res
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
