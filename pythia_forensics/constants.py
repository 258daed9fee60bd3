"""Defaults, environment variables, names and the figure palette: defined once, imported
everywhere. Analysis thresholds (emergence, collapse, verdicts) are not here: they live in
`analysis.yaml`, whose hash every analysis output records.

Environment variables are read when a function runs (not at import), so tests can
monkeypatch them.
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

# --- locations ---------------------------------------------------------------------------
# Everything read at run time ships inside the package (see `package_file`); the only other
# default location is `./results` under the working directory. Nothing defaults to a path
# beside the checkout: an installed wheel has no checkout.
PACKAGE_NAME = "pythia_forensics"
# Shipped probe sets, rule definitions and lexicon (data, not code): `data/probes/` in the package.
PROBES_DATA_DIR = ("data", "probes")
ENV_PROBES_DIR = "PF_PROBES_DIR"  # a folder laid out like data/probes/, used instead
# Pythia's real GPT-NeoX-20B tokenizer (tests and Pythia-shaped benchmarks); no default: it is
# not shipped, so a caller names it through this variable.
ENV_TOKENIZER_FILE = "PF_NEOX_TOKENIZER"
# Where the mini suite is trained to / reused from.
ENV_MINI_DIR = "PF_MINI_DIR"
# Relative on purpose: resolved against the working directory when a command runs.
DEFAULT_RESULTS_DIR = Path("results")


def package_file(*parts: str) -> Path:
    """A file or folder shipped inside the package, found through `importlib.resources`.

    pip unpacks wheels, so the resource is a real file and its path is returned as a `Path`.

    Args:
        parts: path components below the package folder, e.g. ``("data", "suites", "pythia.yaml")``.

    Returns:
        The path (it may not exist: callers report what is missing).
    """
    return Path(os.fspath(importlib.resources.files(PACKAGE_NAME).joinpath(*parts)))


def probes_dir() -> Path:
    """The probe data folder: `$PF_PROBES_DIR` if set, else the shipped `data/probes/`."""
    override = os.environ.get(ENV_PROBES_DIR)
    return Path(override).expanduser() if override else package_file(*PROBES_DATA_DIR)


def neox_tokenizer_file() -> Path | None:
    """Path of the GPT-NeoX-20B tokenizer.json named by `$PF_NEOX_TOKENIZER`, None if unset."""
    value = os.environ.get(ENV_TOKENIZER_FILE)
    return Path(value).expanduser() if value else None


# --- probe schema ------------------------------------------------------------------------
CONDITIONS = ("conflict", "agree")
SPLITS = ("train", "heldout")
# Probe files: `data/probes/<NAME>.yaml|.yml|.jsonl`; `all` loads every shipped set. Files in the
# probes folder that are data but not batteries are skipped by `all`.
PROBE_SUFFIXES = (".yaml", ".yml", ".jsonl")
PROBE_SET_ALL = "all"
PROBE_NON_BATTERY_FILES = ("lexicon.yaml",)
# Spellings of the held-out split other tools write; read as "heldout".
SPLIT_ALIASES = {"held_out": "heldout", "held-out": "heldout"}

# --- scoring defaults --------------------------------------------------------------------
# (the scoring knobs live with their stage: scoring/options.py, plan.py, model.py, cpus.py)
THREADS_ENV = "PF_THREADS"  # intra-op threads for scoring; beats OMP_NUM_THREADS, loses to threads=

# --- Pythia ------------------------------------------------------------------------------
PYTHIA_TOKENS_PER_STEP = 1024 * 2048  # 1024 sequences x 2048 tokens
PYTHIA_TOKENIZER_VOCAB = 50277  # real tokens; embedding rows beyond are untrained padding
# Pythia's pre-shuffled document.bin stores each training sequence as 2049 tokens (2048 inputs
# + the last label), so one step spans 1024 x 2049 tokens of the stored stream (indexed.py).
PYTHIA_SEQ_ITEM_TOKENS = 2049
PYTHIA_STORED_TOKENS_PER_STEP = 1024 * PYTHIA_SEQ_ITEM_TOKENS

# --- local suite layout ------------------------------------------------------------------
# A model folder is any folder of checkpoint subfolders: DIR/<model>/step<N>/ (save_pretrained),
# DIR/<model>/checkpoint-<N>/ (Hugging Face Trainer), or names matched by --step-pattern.
# DIR/<model>/manifest.json is optional (manifest.py; see docs/ARCHITECTURE.md).
MANIFEST_FILE = "manifest.json"
STEP_DIR_PREFIX = "step"
# Checkpoint folder names recognised without --step-pattern; group 1 is the step.
CHECKPOINT_DIR_PATTERNS = (r"step(\d+)", r"checkpoint-(\d+)")
# A Trainer checkpoint's own step count (wins over the number in the folder name).
TRAINER_STATE_FILE = "trainer_state.json"
# --step-pattern REGEX (group 1 or group `step` = the step), also read from this variable so
# array workers and subprocesses see the pattern their command was given.
ENV_STEP_PATTERN = "PF_STEP_PATTERN"

# --- registry / sources (issue #4) -------------------------------------------------------
SUITES_SUBDIR = ("data", "suites")  # <package>/data/suites/<name>.yaml: suite facts (data)
MAIN_REVISION = "main"
# What a revision fetch downloads: config, tokenizer and weights, nothing else.
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json",
)
# Weight formats in order of preference (safetensors never unpickles anything).
SAFETENSORS_WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
BIN_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")
# Retry policy for transient hub failures: `checkpoints/sources_hub.py` (HUB_RETRY_STATUS, ...).
# Workers sharing one hub cache (fetch.py, lease.py): every hold on a revision and the
# ledger lock are files created atomically (O_CREAT|O_EXCL, safe on NFS/Lustre where flock
# may silently succeed for everyone) whose mtime a heartbeat thread refreshes. A lease whose
# mtime is older than the timeout belongs to a dead worker and is broken (timeouts and polls:
# `checkpoints/lease.py`). These variables override the timeout and heartbeat (tests use short ones).
ENV_LEASE_TIMEOUT = "PF_LEASE_TIMEOUT_S"
ENV_LEASE_HEARTBEAT = "PF_LEASE_HEARTBEAT_S"
# Beside the cache: CACHE/.pf-ledger/{ledger.lock, holds/}; in the results folder: claims.
LEDGER_DIR = ".pf-ledger"
CLAIMS_DIR = ".pf-claims"
# Beside the cache: CACHE/.pf-revisions/<repo folder>.json, each repo's branch -> commit as the
# hub last listed it and what `fetch` staged, so an offline node knows the grid after eviction.
REVISIONS_DIR = ".pf-revisions"
# Fault hook for tests: kill this process (SIGKILL) right after it has fetched N revisions.
ENV_KILL_AFTER_FETCHES = "PF_TEST_KILL_AFTER_FETCHES"
# Where LocalSource keeps sha256 hashes keyed by (path, size, mtime_ns) so rescans are cheap.
ENV_HASH_CACHE = "PF_HASH_CACHE"
HASH_CACHE_FILE = ".pf-sha256.json"

# --- checkpoint health and numerical audit (health.py, audit.py; #6) ----------------------
# health.parquet (HEALTH_FILE above): model, revision, step, status, reasons.
HEALTH_STATUSES = ("ok", "flagged", "bad")  # worst last
# Weight files a revision may carry; a sharded set is "<stem>-00001-of-00003.<ext>".
WEIGHT_SUFFIXES = {".safetensors": "safetensors", ".bin": "bin"}
# Health thresholds live with their checks: size tolerance in `checkpoints/health_census.py`,
# spike factors in `checkpoints/health_deep.py`, known upstream faults in `health_records.py`.
# Input-embedding tensor names (GPT-NeoX, GPT-2, Llama/OLMo) for the embedding-norm series.
EMBEDDING_TENSOR_KEYS = ("embed_in.weight", "wte.weight", "embed_tokens.weight")
# Output-embedding (unembedding) tensor names, when stored separately from the input one.
OUTPUT_EMBEDDING_TENSOR_KEYS = ("embed_out.weight", "lm_head.weight")
# Non-parameter buffers old .bin files pickle (causal masks); ignored when comparing formats.
IGNORED_TENSOR_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")
# (the numerical audit's knobs live in scoring/audit.py)

# --- support counters (corpus/, issue #7) ------------------------------------------------
# File names only; the counters' knobs live in their modules (corpus/windows.py, streams.py,
# counting.py).
SUPPORT_RULES_SUBDIR = "rules"  # probes/rules/<rule>.yaml
LEXICON_FILE = "lexicon.yaml"  # probes/lexicon.yaml: the word classes (corpus/lexicon.py reads it)
# Mini-suite corpus folder layout (docs/ARCHITECTURE.md): written by experiments/mini/corpus.py,
# read by the support counter.
CORPUS_TOKENS_FILE = "tokens"  # tokens.bin / tokens.idx
CORPUS_META_FILE = "corpus.json"
CORPUS_TOKENIZER_FILE = "tokenizer.json"  # what save_pretrained writes

# --- figures ---------------------------------------------------------------------------
# Palette, DPI, formats and the x-axis choices live with the figures (analysis/figure_style.py,
# analysis/config.py X_UNITS / X_SCALES); the figure folder's name is under "analysis outputs".

# --- results store and replay (sweep/) --------------------------------------------------
ITEMS_DIR = "items"
SUMMARY_FILE = "summary.parquet"
MODELS_FILE = "models.parquet"
HEALTH_FILE = "health.parquet"
# Summary grain: ARCHITECTURE's (model, step, rule, condition, split), refined by revision and
# probe set so that `main` next to `step143000`, or two batteries of one rule, never mix.
SUMMARY_KEYS = ("model", "step", "revision", "probeset", "rule", "condition", "split")
# Damaged store files are moved here (outside items/, so no Parquet reader picks them up),
# each next to a `<name>.reason.txt` saying what was wrong.
QUARANTINE_DIR = "quarantine"
# Key of the store's own record in every Parquet file's key-value metadata (row count,
# content sha256, work key); STORE_FORMAT 2 = per-model folders without `model=`, checksums.
STORE_METADATA_KEY = "pythia_forensics"
STORE_FORMAT = 2
# Deterministic fault injection for interruption tests (sweep/itemfile.py): PF_FAULT="store-write:N"
# exits the process hard (os._exit) right after the N-th durable store write of the process
# completes; "store-write-mid:N" exits in the middle of the N-th write, leaving a partial temp
# file. Unset in normal use. FAULT_EXIT_STATUS is the status such an exit returns.
FAULT_ENV = "PF_FAULT"
FAULT_EXIT_STATUS = 86
# Revisions a sweep could not use (unreadable, truncated, mismatched, non-finite): one JSON
# record per revision under RESULTS/failures/, read back as one table; replay exits 1.
FAILURES_DIR = "failures"
REPLAY_EXIT_SOME_FAILED = 1

# --- analysis outputs (dynamics.py, prereg.py, figures.py, report.py; #5) -------------------
# Thresholds are NOT here: they live in analysis.yaml (hash recorded in every output).
ANALYSIS_CONFIG = ("data", "analysis.yaml")  # in the package: constants.package_file(*ANALYSIS_CONFIG)
DYNAMICS_FILE = "dynamics.parquet"  # + dynamics.csv: one row per (model, probeset, rule, split)
DYNAMICS_CSV = "dynamics.csv"
TRAJECTORIES_FILE = "trajectories.parquet"  # per step: accuracies, CM, smoothed, CIs, used/dropped
SCALE_FILE = "scale.csv"  # Spearman rho of depth/final vs parameter count per rule
PREREG_LOCK_FILE = "prereg.lock.json"
# Optional support table from `pythia-forensics support --out` (rule, window_start_step, ...).
SUPPORT_TABLE_FILES = ("support.parquet", "support.csv")
REPORT_FILE = "report.md"
# A job's measured claims (experiments/demo.py writes it; report.md shows it): claim, precondition,
# result (yes | no | not applicable), observed, config_sha256.
CHECKS_FILE = "checks.csv"
FIGURES_SUBDIR = "figures"
