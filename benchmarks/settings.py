"""The benchmark's knobs (moved out of `pythia_forensics.constants`: they are not the package's
business). Shapes are registry names; times are seconds."""
from __future__ import annotations

# Pythia shapes the CPU benchmark builds as random local suites (registry names).
# "mini-s" is the mini suite's body (experiments/mini/config.py) with Pythia's vocabulary and tokenizer.
BENCH_SHAPES = ("mini-s", "pythia-14m", "pythia-31m", "pythia-70m")
# The contention condition: ours again beside one other torch job with this many threads
# doing matmuls (default OpenMP wait policy, as an unrelated job has), for the measurement.
BENCH_COMPETING_THREADS = 2
BENCH_COMPETING_MATMUL = 384  # square matmul size of the competing job
BENCH_QUICK_SHAPE = {"layers": 2, "d_model": 64, "heads": 4}  # --quick / tests: tiny, same vocab
# The large tier (issue #17: "160m where time allows"): shapes measured after the main rounds
# with fewer revisions and one round, against lm-eval only. On 2 cores Pythia-160m takes ours
# ~11 s and lm-eval ~39 s a revision; minicons and the full-logits scorer would take ~100 s
# each, so they are left out and the tier adds ~2.5 minutes.
BENCH_LARGE_SHAPES = ("pythia-160m",)
BENCH_LARGE_REVISIONS = 2
BENCH_LARGE_ROUNDS = 1
BENCH_LARGE_COMPETITORS = ("ours", "lm-eval")
BENCH_QUICK_LARGE_SHAPE = {"layers": 3, "d_model": 96, "heads": 4}  # --quick's large tier ("tiny-large")
# Revisions per shape. 4 (not the 8 of issue #9) so that `make bench` with all four shapes,
# four competitors, the contention runs and two rounds fits ~20 minutes on 2 cores.
BENCH_REVISIONS = 4
BENCH_ROUNDS = 2
# No new round starts that would end past this, counted from the first round (building the
# suites, ~2 minutes once, is not measured). One round takes ~7.5 minutes on 2 cores
# (2026-12-02), so two fit; on a loaded machine the second is dropped and the report says so.
BENCH_BUDGET_S = 1020.0
BENCH_QUICK_REVISIONS = 2
BENCH_MIN_ITEMS = 2000  # the battery's floor (issue #9)
BENCH_QUICK_ITEMS = 120
# Random weights: N(0, std) for every matrix (norm weights 1, biases 0). 0.05 gives logits with
# a spread of a few nats on d=256..512, like a trained model, not uniform ones.
BENCH_WEIGHT_STD = 0.05
BENCH_SEED = 0
BENCH_BATCH_SIZE = 64  # competitors' batch size (lm-eval's orientation number used 64)
BENCH_MAX_ABS_DELTA = 1e-4  # every competitor must agree with ours to this (nats)
BENCH_COMPETITORS = ("ours", "lm-eval", "minicons", "full-logits")
# Speed targets (issue #9): competitor wall time / ours must reach at least this.
BENCH_TARGET_RATIOS = {"lm-eval": 2.0, "minicons": 10.0, "full-logits": 10.0}
BENCH_SUPPORT_TOKENS = 10_000_000  # support counter throughput is measured on this many tokens
# GPU checkpoint section (issue #17 point 5): one checkpoint of this shape saved in Pythia's
# layout (fp16 safetensors), loaded and scored in each of these dtypes.
BENCH_GPU_CHECKPOINT_SHAPE = "pythia-1.4b"
BENCH_GPU_CHECKPOINT_DTYPES = ("float32", "bfloat16")
# GPU section: the Pythia sizes tried, largest first; one that does not fit is skipped.
BENCH_GPU_SHAPES = ("pythia-12b", "pythia-6.9b", "pythia-2.8b", "pythia-1.4b", "pythia-410m", "pythia-160m",
                    "pythia-70m")
PAD_ID = 1  # GPT-NeoX <|padding|>
