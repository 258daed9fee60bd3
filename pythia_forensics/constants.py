"""Defaults, environment variables, names and the figure palette: defined once, imported
everywhere. Analysis thresholds (emergence, collapse, verdicts) are not here: they live in
`analysis.yaml`, whose hash every analysis output records.

Environment variables are read when a function runs (not at import), so tests can
monkeypatch them.
"""
from __future__ import annotations

import os
from pathlib import Path

# --- locations ---------------------------------------------------------------------------
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
# Shipped probe sets and rule definitions (data, not code). Overridable for installed use.
ENV_PROBES_DIR = "PF_PROBES_DIR"
DEFAULT_PROBES_DIR = REPO_DIR / "probes"
# Pythia's real GPT-NeoX-20B tokenizer, used by tests and Pythia-shaped benchmarks.
ENV_TOKENIZER_FILE = "PF_NEOX_TOKENIZER"
DEFAULT_TOKENIZER_FILE = REPO_DIR.parent / "shared" / "tokenizers" / "gpt-neox-20b.json"
# Where the mini suite is trained to / reused from.
ENV_MINI_DIR = "PF_MINI_DIR"
DEFAULT_RESULTS_DIR = REPO_DIR / "results"


def probes_dir() -> Path:
    return Path(os.environ.get(ENV_PROBES_DIR, DEFAULT_PROBES_DIR))


def neox_tokenizer_file() -> Path:
    """Path of the GPT-NeoX-20B tokenizer.json (may not exist on a bare clone)."""
    return Path(os.environ.get(ENV_TOKENIZER_FILE, DEFAULT_TOKENIZER_FILE))


# --- probe schema ------------------------------------------------------------------------
CONDITIONS = ("conflict", "agree")
SPLITS = ("train", "heldout")

# --- scoring defaults --------------------------------------------------------------------
# fp32 up to this many parameters even on GPU: bf16/fp16 move small Pythias' margins
# (pythia-160m: >10% of token probabilities change between batch 1 and 8 in bf16).
FP32_MAX_PARAMS = 3_000_000_000
DEFAULT_BATCH_SIZE_CPU = 64
DEFAULT_BATCH_SIZE_CUDA = 256

# --- Pythia ------------------------------------------------------------------------------
PYTHIA_TOKENS_PER_STEP = 1024 * 2048  # 1024 sequences x 2048 tokens
PYTHIA_TOKENIZER_VOCAB = 50277  # real tokens; embedding rows beyond are untrained padding
# Pythia's pre-shuffled document.bin stores each training sequence as 2049 tokens (2048 inputs
# + the last label), so one step spans 1024 x 2049 tokens of the stored stream (indexed.py).
PYTHIA_SEQ_ITEM_TOKENS = 2049
PYTHIA_STORED_TOKENS_PER_STEP = 1024 * PYTHIA_SEQ_ITEM_TOKENS

# --- local suite layout ------------------------------------------------------------------
# DIR/<model>/step<N>/ (save_pretrained: config.json, model.safetensors, tokenizer files)
# DIR/<model>/manifest.json (see docs/ARCHITECTURE.md)
MANIFEST_FILE = "manifest.json"
STEP_DIR_PREFIX = "step"

# --- figures -----------------------------------------------------------------------------
# Okabe-Ito: colour-blind-safe categorical palette.
PALETTE = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
CONDITION_COLORS = {"conflict": PALETTE[1], "agree": PALETTE[0]}
FIGURE_DPI = 200

# --- results store and replay (store.py, replay.py) ----------------------------------------
ITEMS_DIR = "items"
SUMMARY_FILE = "summary.parquet"
MODELS_FILE = "models.parquet"
HEALTH_FILE = "health.parquet"
# Summary grain: ARCHITECTURE's (model, step, rule, condition, split), refined by revision and
# probe set so that `main` next to `step143000`, or two batteries of one rule, never mix.
SUMMARY_KEYS = ("model", "step", "revision", "probeset", "rule", "condition", "split")
# A temp file this old is a dead writer's leftover even when its host cannot be checked.
STORE_TEMP_MAX_AGE_S = 24 * 3600
# Revisions per work unit for array executors (one Slurm task scores one chunk).
DEFAULT_REPLAY_CHUNK = 8
# Health statuses replay acts on with `--health skip` (health.py writes health.parquet).
HEALTH_SKIP_STATUSES = ("bad",)
