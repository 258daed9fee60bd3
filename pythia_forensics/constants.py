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
# How many individual problems a ProbeFormatError message lists before "... and N more".
PROBE_ERRORS_SHOWN = 8

# --- scoring defaults --------------------------------------------------------------------
# fp32 up to this many parameters even on GPU: bf16/fp16 move small Pythias' margins
# (pythia-160m: >10% of token probabilities change between batch 1 and 8 in bf16).
FP32_MAX_PARAMS = 3_000_000_000
DEFAULT_BATCH_SIZE_CPU = 64
DEFAULT_BATCH_SIZE_CUDA = 256
# Tree rows (scoring._make_tree_plan, issue #9): a battery's token trie is packed into rows of
# at most this many tokens (or the longest history, if longer). On the bench battery 96 leaves
# ~30% above the trie's distinct tokens; longer rows add attention work faster than they save.
SCORING_TREE_ROW_TOKENS = 96
# Architectures whose forward honours a custom 4D attention mask with explicit position ids;
# others (ALiBi, flash-attention) run one plain causal sequence per history.
SCORING_TREE_MODEL_TYPES = ("gpt_neox", "llama", "olmo", "olmo2")
# A batch of B sequences holds at most B x this many tokens, padding included (sequences run
# longest first): on the bench battery a plain B=64 split padded 6,652 tokens to 10,734.
SCORING_BATCH_ROW_TOKENS = 32
# batch_size="auto" (scoring._auto_batch_size): DEFAULT_BATCH_SIZE_* x SCORING_BATCH_ROW_TOKENS
# tokens per batch, fewer when the batch's estimated working memory (body activations, attention
# scores, fp32 logits rows over the vocabulary) would pass this many bytes. A constant, not the
# free memory: the batches, hence the numbers, stay a function of model config and options.
SCORING_AUTO_BATCH_BYTES = {"cpu": 2 * 2**30, "cuda": 8 * 2**30}
# Padded batch inputs (ids, tree masks) a plan keeps for its next run (scoring._batch_inputs):
# at most this many bytes per plan; building them was ~15% of a prepared mini-s revision.
SCORING_INPUT_CACHE_BYTES = 256 * 2**20
DTYPES = ("auto", "float32", "float16", "bfloat16")
# CPU threads (cpus.py, issue #17). libgomp's default spin-wait made 2 threads 8-17x slower
# than 1 beside other jobs (2 cores, load 11-19); PASSIVE idle threads sleep instead. Set when
# pythia_forensics is imported (before torch), unless the user set OMP_WAIT_POLICY.
OMP_WAIT_POLICY_DEFAULT = "PASSIVE"
THREADS_ENV = "PF_THREADS"  # intra-op threads for scoring; beats OMP_NUM_THREADS, loses to --threads
DEVICES = ("auto", "cpu", "cuda")
# Log-sum-exp over every row the model emits ("all": the model's own output distribution, as
# minicons, lm-eval and the Pythia paper's scorer compute it) or over the tokenizer's rows only
# ("tokenizer"). Pythia pads its 50277-token vocabulary to 50304 rows; on early checkpoints the
# untrained padding rows move per-item log-probs by ~2e-3 nats, so the default matches peers.
VOCAB_ROWS = ("all", "tokenizer")
DEFAULT_VOCAB_ROWS = "all"

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
# Transient hub failures retried with exponential backoff (huggingface_hub retries only some
# of its calls itself: downloads yes, refs / paths-info / model info no).
HUB_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
HUB_MAX_RETRIES = 5
HUB_BACKOFF_BASE_S = 1.0
HUB_BACKOFF_MAX_S = 16.0
# Workers sharing one hub cache (fetch.py, lease.py): every hold on a revision and the
# ledger lock are files created atomically (O_CREAT|O_EXCL, safe on NFS/Lustre where flock
# may silently succeed for everyone) whose mtime a heartbeat thread refreshes. A lease whose
# mtime is older than the timeout belongs to a dead worker and is broken. Hosts sharing a
# cache need clocks within a small fraction of the timeout (NTP). Env vars override both
# (tests use short ones).
LEASE_TIMEOUT_S = 120.0
LEASE_HEARTBEAT_S = 10.0
ENV_LEASE_TIMEOUT = "PF_LEASE_TIMEOUT_S"
ENV_LEASE_HEARTBEAT = "PF_LEASE_HEARTBEAT_S"
LEASE_POLL_S = 0.05            # first wait between tries for a busy lock (doubles, capped)
LEASE_POLL_MAX_S = 1.0
# Beside the cache: CACHE/.pf-ledger/{ledger.lock, holds/}; in the results folder: claims.
LEDGER_DIR = ".pf-ledger"
CLAIMS_DIR = ".pf-claims"
# Fault hook for tests: kill this process (SIGKILL) right after it has fetched N revisions.
ENV_KILL_AFTER_FETCHES = "PF_TEST_KILL_AFTER_FETCHES"
# Where LocalSource keeps sha256 hashes keyed by (path, size, mtime_ns) so rescans are cheap.
ENV_HASH_CACHE = "PF_HASH_CACHE"
HASH_CACHE_FILE = ".pf-sha256.json"
HASH_CHUNK_BYTES = 8 * 1024 * 1024

# --- checkpoint health and numerical audit (health.py, audit.py; #6) ----------------------
# health.parquet (HEALTH_FILE above): model, revision, step, status, reasons.
HEALTH_STATUSES = ("ok", "flagged", "bad")  # worst last
# Weight files a revision may carry; a sharded set is "<stem>-00001-of-00003.<ext>".
WEIGHT_SUFFIXES = {".safetensors": "safetensors", ".bin": "bin"}
# Revisions expected to hold the same weights: the final step branch and MAIN_REVISION.
# Known upstream faults: reported and flagged, but not counted as a failure (exit status 0).
KNOWN_IDENTICAL = {("step0", "step1"): "known upstream fault EleutherAI/pythia#83"}
# A weight file whose size differs from the same-named file in most revisions by more than
# this fraction is reported (a truncated upload); a model's shards are the same size.
HEALTH_SIZE_TOLERANCE = 0.01
HEALTH_SIZE_MIN_PEERS = 3  # same-named files needed before a size counts as the norm
# Trend breaks: a point is a spike when it sits above (or below) BOTH neighbours by more than
# HEALTH_SPIKE_FACTOR times the larger of the adjacent steps' own changes, and by more than
# HEALTH_SPIKE_REL_FLOOR of the series' range (so float noise on a flat series never fires).
HEALTH_SPIKE_FACTOR = 3.0
HEALTH_SPIKE_REL_FLOOR = 0.05
# Input-embedding tensor names (GPT-NeoX, GPT-2, Llama/OLMo) for the embedding-norm series.
EMBEDDING_TENSOR_KEYS = ("embed_in.weight", "wte.weight", "embed_tokens.weight")
# Output-embedding (unembedding) tensor names, when stored separately from the input one.
OUTPUT_EMBEDDING_TENSOR_KEYS = ("embed_out.weight", "lm_head.weight")
# Non-parameter buffers old .bin files pickle (causal masks); ignored when comparing formats.
IGNORED_TENSOR_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")
# Audit: re-score a seeded sample of items in fp32 at batch size 1 and compare with the
# configured dtype/batch size; |delta margin| <= AUDIT_MAX_DELTA nats and no flips is a pass.
AUDIT_SAMPLE = 64
AUDIT_SEED = 0
AUDIT_MAX_DELTA = 1e-4
AUDIT_REFERENCE_DTYPE = "float32"
AUDIT_REVISIONS = 3  # revisions a sampled audit spreads over the grid (first, middle, last)

# --- support counters (support.py, issue #7) ------------------------------------------------
DEFAULT_SUPPORT_WINDOW = 16  # W: tokens after (or before) a cue where a target/competitor counts
SUPPORT_DIRECTIONS = ("after", "before")
SUPPORT_MODES = ("windowed", "bigram")  # bigram = windowed with W = 1
SUPPORT_RULES_SUBDIR = "rules"  # probes/rules/<rule>.yaml
# Step windows of the per-window counts: Pythia's checkpoints are 1000 steps apart.
DEFAULT_SUPPORT_WINDOW_STEPS = 1000
# Stream windows when no tokens_per_step is known.
DEFAULT_SUPPORT_WINDOW_TOKENS = 10_000_000
# Tokens per processing block (memory: ~20 bytes per token of scratch at this size).
SUPPORT_BLOCK_TOKENS = 1 << 22
SUPPORT_TEXT_BATCH = 1024  # documents tokenized per encode_batch call
SUPPORT_STATE_EVERY_S = 30.0  # progress-file interval (an interrupted count resumes from it)

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
# Trajectory x axes (figures --x / --xscale): what x is, and how it is scaled ("auto" follows
# the checkpoint grid: log for log-spaced grids, linear otherwise; step_axis.grid_scale).
FIGURE_X_UNITS = ("steps", "tokens")
FIGURE_X_SCALES = ("auto", "linear", "log", "symlog")

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
# Damaged store files are moved here (outside items/, so no Parquet reader picks them up),
# each next to a `<name>.reason.txt` saying what was wrong.
QUARANTINE_DIR = "quarantine"
# Key of the store's own record in every Parquet file's key-value metadata (row count,
# content sha256, work key); STORE_FORMAT 2 = per-model folders without `model=`, checksums.
STORE_METADATA_KEY = "pythia_forensics"
STORE_FORMAT = 2
# Deterministic fault injection for interruption tests (store.py): PF_FAULT="store-write:N"
# exits the process hard (os._exit) right after the N-th durable store write of the process
# completes; "store-write-mid:N" exits in the middle of the N-th write, leaving a partial temp
# file. Unset in normal use. FAULT_EXIT_STATUS is the status such an exit returns.
FAULT_ENV = "PF_FAULT"
FAULT_EXIT_STATUS = 86
# Revisions per work unit for array executors (one Slurm task scores one chunk).
DEFAULT_REPLAY_CHUNK = 8
# Wall-clock limit of one array task unless --slurm timeout_min=N says otherwise.
DEFAULT_ARRAY_TIMEOUT_MIN = 240
# Revisions a sweep could not use (unreadable, truncated, mismatched, non-finite): one JSON
# record per revision under RESULTS/failures/, read back as one table; replay exits 1.
FAILURES_DIR = "failures"
REPLAY_EXIT_SOME_FAILED = 1
# Health statuses replay acts on with `--health skip` (health.py writes health.parquet).
HEALTH_SKIP_STATUSES = ("bad",)

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
FIGURES_SUBDIR = "figures"
FIGURE_FORMATS = ("pdf", "png")

# --- demo acceptance checks (issue #3, "what the demo must show") --------------------------
# What the printed demo table calls a collapse and a held control. Emergence and survival use
# the registered thresholds in analysis.yaml; these are the demo's own stricter bars.
DEMO_COLLAPSE_FINAL_MAX = 0.2   # low-support rule ends at or below this held-out conflict acc
DEMO_AGREE_MIN = 0.9            # its agree control ends at or above this

# --- bounded input parsing, checkpoint validation, shutdown (issue #14) ----------------------
# A probe file is data a person wrote or a tool generated; these bounds are far above any real
# battery (the shipped ones: < 1 MiB, depth 3, no aliases) and far below what exhausts memory.
PROBE_MAX_BYTES = 64 * 2**20        # file size
PROBE_MAX_DEPTH = 32                # nesting of lists/mappings inside one file
PROBE_MAX_INT_DIGITS = 64           # an integer literal longer than this is refused, not parsed
PROBE_MAX_YAML_ALIASES = 1000       # alias uses per YAML file
PROBE_MAX_YAML_NODES = 2_000_000    # nodes after alias expansion (an alias bomb exceeds it fast)
# Worker processes (mini train) poll their parent this often and exit when it is gone.
WORKER_WATCHDOG_S = 0.5

# In-frame support is "below/above parity" only when the Clopper-Pearson interval of the rule's
# share of in-frame events excludes 1/2 at this confidence (else: indistinguishable from parity)
SUPPORT_PARITY_CONFIDENCE = 0.99
