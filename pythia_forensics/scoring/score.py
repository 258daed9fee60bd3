"""Tokenization made explicit and batched exact log-probs: model + probe items in, frame out.

For each item the scorer returns log p(target | prefix) and log p(foil | prefix), each the sum
of the candidate's token log-probs (the per-token mean is reported too).

Tokenization (`encode_items`), the same choices lm-evaluation-harness makes:
  * trailing whitespace of the prefix moves to the front of both candidates ("Sue cried
    because " + "she" is scored as "Sue cried because" + " she"), so no stray "Ġ" token;
  * prefix and candidates are encoded separately, without special tokens;
  * a BOS token (the tokenizer's bos, else eos) is prepended only when asked (Pythia: none);
  * a prefix or candidate that encodes to no tokens is a `TokenizationError` naming the item.

Computation (`score`), designed so shared work is done once:
  * every candidate needs the logits after ``context + candidate[:-1]``; those sequences are
    de-duplicated, and a sequence that is a prefix of another is read off the longer one
    (causal attention: its hidden states are identical). So items sharing a prefix with
    single-token candidates cost ONE forward row, and a multi-token candidate costs one row
    whose early positions also serve every shorter candidate with the same start;
  * on architectures that take a custom 4D attention mask with explicit position ids
    (`SCORING_TREE_MODEL_TYPES`: GPT-NeoX/Pythia, Llama, OLMo), the token trie of all those
    sequences is packed into *tree rows* instead (`_make_tree_plan`): a row holds a history's
    path and its whole subtree, each token attends to its ancestors only and sits at position
    id = its depth, so every distinct token history is computed once per row and a prefix
    shared by many items, or by a target and foil that branch after it, runs once (2-3x fewer
    body tokens than one causal sequence per history on a real battery, issue #9);
  * rows are sorted by length and batched (little padding), RIGHT-padded: real tokens sit at
    positions 0..n-1, so position ids are a plain arange and, under causal attention, pad
    tokens (which come after every real token) can never influence a real position; the
    attention mask is passed anyway;
  * the transformer body runs once per batch; the LM head runs only on the (row, position)
    pairs some candidate needs, in fp32 whatever the model dtype, followed by a fp32
    log-sum-exp over the chosen vocabulary rows (`ScoreOptions.vocab_rows`).

Vocabulary rows: Pythia's output embedding has 50304 rows for a 50277-token tokenizer; the 27
padding rows are never a label. ``vocab_rows="all"`` (default) normalises over every row, the
model's own output distribution, as minicons, lm-eval and the Pythia paper's scorer do;
``"tokenizer"`` over the tokenizer's rows only, i.e. the distribution over text. For trained
Pythias the padding rows carry negligible mass; for random or very early checkpoints they can
carry a lot (2.2e-3 nats per item measured on a Pythia-layout checkpoint), so the choice is
recorded with every result.

Determinism (README "Numerical contract"): the numbers of a unit of work are a pure function
of (model weights, probe set, tokenizer, options). The batch plan (`_batches`) depends only on
the plan's sequence lengths and the batch size; an out-of-memory back-off under
``batch_size="auto"`` restarts the unit at the smaller size, so every number of a unit comes
from one plan, and the size that ran is recorded. CPU matmul kernels pick their blocking by
thread count (1 vs 2 threads moves fp32 log-probs by ~1 ulp), so scoring pins torch's intra-op
threads to `ScoreOptions.threads` for the call (``auto``: ``$OMP_NUM_THREADS``, else the CPUs
this process may use) instead of inheriting whatever an earlier caller set, pins the fp32
matmul precision to "highest" (no TF32) and enables torch's deterministic algorithms; all of
it is recorded in ``frame.attrs`` and restored afterwards.

Options used are returned in ``frame.attrs`` (see `score`).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pythia_forensics.constants import (
    DEFAULT_BATCH_SIZE_CPU,
    DEFAULT_BATCH_SIZE_CUDA,
    DEFAULT_VOCAB_ROWS,
    DEVICES,
    DTYPES,
    FP32_MAX_PARAMS,
    IGNORED_TENSOR_SUFFIXES,
    SCORING_AUTO_BATCH_BYTES,
    SCORING_BATCH_ROW_TOKENS,
    SCORING_INPUT_CACHE_BYTES,
    SCORING_TREE_MODEL_TYPES,
    SCORING_TREE_ROW_TOKENS,
    VOCAB_ROWS,
)
from pythia_forensics.errors import ModelLoadError, ScoringError, TokenizationError
from pythia_forensics.scoring.probes import ProbeItem, ProbeSet, load_probes
from pythia_forensics.checkpoints import validation
from pythia_forensics.checkpoints.registry import looks_like_path

__all__ = [
    "SCORING_VERSION", "FRAME_COLUMNS", "ScoreOptions", "EncodedItem", "encode_items", "load_model",
    "load_weights_into", "resolve_device", "resolve_dtype", "resolve_threads", "score", "score_encoded", "summarize",
    "Prepared", "prepare", "plan_reason",
]

# Bump when a change could alter any number the scorer returns (part of the results' work key).
# 2: tree rows (numbers move by float rounding only, ~1e-6); 3: default vocab_rows "all", so
# results stored under the old default are never reused as if scored the new way.
SCORING_VERSION = "3"

FRAME_COLUMNS = (
    "model", "revision", "item_id", "rule", "condition", "split", "prefix", "target", "foil",
    "logp_target", "logp_foil", "margin", "correct", "n_target_tokens", "n_foil_tokens",
    "mean_logp_target", "mean_logp_foil", "target_ids", "foil_ids", "template",
)
# Config fields that make logits differ from `lm_head(last_hidden_state)`; such models take the
# full-forward path instead of the head-only-where-needed one.
_HEAD_MODIFIERS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")
_CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ScoreOptions:
    """How to score (every field is recorded with the results).

    Attributes:
        dtype: ``auto`` (fp32 on CPU and for models up to `FP32_MAX_PARAMS` on GPU, else bf16),
            ``float32``, ``float16`` or ``bfloat16``.
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda`` (``cuda:N`` accepted).
        batch_size: sequences per forward, or ``auto`` (a token budget per batch, lowered for
            large models by an estimate of the batch's memory: `_auto_batch_size`; on out-of-memory
            the unit restarts at half the size until it fits, the size that ran is recorded).
        bos: prepend the tokenizer's BOS token (else EOS) to every prefix. Pythia: no.
        vocab_rows: log-sum-exp over the ``tokenizer``'s rows only or over ``all`` rows of the
            output embedding (see the module docstring).
        threads: torch intra-op threads while scoring, or ``auto`` (`resolve_threads`). CPU
            numbers depend on it at the ulp level, so two runs that must agree bit for bit
            need the same value (it is recorded).
    """

    dtype: str = "auto"
    device: str = "auto"
    batch_size: int | str = "auto"
    bos: bool = False
    vocab_rows: str = DEFAULT_VOCAB_ROWS
    threads: int | str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ScoringError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ScoringError(f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.vocab_rows not in VOCAB_ROWS:
            raise ScoringError(f"unknown vocab_rows {self.vocab_rows!r}; use one of {', '.join(VOCAB_ROWS)}")
        bs = self.batch_size
        if not (bs == "auto" or (isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1)):
            raise ScoringError(f"batch size must be a positive integer or 'auto', got {bs!r}")
        th = self.threads
        if not (th == "auto" or (isinstance(th, int) and not isinstance(th, bool) and th >= 1)):
            raise ScoringError(f"threads must be a positive integer or 'auto', got {th!r}")


def resolve_threads(threads: int | str = "auto") -> int:
    """The intra-op thread count ``auto`` means: ``$PF_THREADS``, else ``$OMP_NUM_THREADS`` if
    it is a positive integer, else the CPUs this process may run on (its affinity mask, capped
    by a cgroup CPU quota: `cpus.available_cpus`).

    A function of the environment only, never of what ran earlier in the process (a test or a
    trainer calling ``torch.set_num_threads``) nor of the machine's momentary load, so every
    process started the same way on the same machine scores with the same kernels. A busy
    machine is handled by the OpenMP wait policy instead (`cpus`: idle threads sleep).

    Raises:
        ScoringError: ``threads`` is neither ``auto`` nor a positive integer, or
            ``$PF_THREADS`` is set to something else.
    """
    from pythia_forensics.scoring import cpus

    if threads != "auto":
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ScoringError(f"threads must be a positive integer or 'auto', got {threads!r}")
        return threads
    try:
        env = cpus.threads_from_env()
    except ValueError as exc:
        raise ScoringError(f"{exc}; set it to a thread count such as 2, or unset it") from exc
    return env[0] if env is not None else cpus.available_cpus()


@contextmanager
def _pinned_kernels(threads: int, device_type: str) -> Iterator[dict[str, Any]]:
    """Fix the process-wide torch settings that change scores, restore them afterwards.

    Deterministic algorithms are enabled on CPU, and on CUDA only when
    ``CUBLAS_WORKSPACE_CONFIG`` is set (cuBLAS needs it before its first call; without it
    torch would warn on every matmul). Yields the settings that ran (for ``frame.attrs``).
    """
    import torch

    deterministic = device_type != "cuda" or bool(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_float32_matmul_precision())
    if before[0] != threads:
        torch.set_num_threads(threads)
    # warn_only: an op without a deterministic kernel warns instead of failing a long sweep
    torch.use_deterministic_algorithms(deterministic or before[1], warn_only=True if deterministic else before[2])
    torch.set_float32_matmul_precision("highest")
    try:
        from pythia_forensics.scoring.cpus import wait_policy

        yield {"threads": threads, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
               "float32_matmul_precision": "highest", "interop_threads": torch.get_num_interop_threads(),
               "omp_wait_policy": wait_policy()}
    finally:
        if torch.get_num_threads() != before[0]:
            torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.set_float32_matmul_precision(before[3])


# --- devices and dtypes --------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``.

    Raises:
        ScoringError: ``cuda`` was asked for but torch sees no GPU.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ScoringError(f"device {device!r} asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ScoringError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    return str(device)


def resolve_dtype(dtype: str = "auto", *, params: int | None = None, device: str | None = None) -> str:
    """The dtype name ``auto`` means here: fp32 on CPU and up to `FP32_MAX_PARAMS` parameters.

    Args:
        dtype: ``auto`` or an explicit dtype name (returned unchanged).
        params: the model's parameter count, if known (unknown counts as small).
        device: the resolved device, if known (``cpu`` always gets fp32 under ``auto``).

    Returns:
        ``float32``, ``float16`` or ``bfloat16``.
    """
    dtype = str(dtype).replace("torch.", "")
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ScoringError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        return dtype
    if device == "cpu" or params is None or params <= FP32_MAX_PARAMS:
        return "float32"
    import torch

    # GPUs before Ampere have no bf16: fp16 there (still with the fp32 log-sum-exp)
    if str(device or "").startswith("cuda") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "float16"
    return "bfloat16"


# --- tokenization --------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedItem:
    """An item's token ids as scored: context (BOS + prefix) and the two candidates."""

    context_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    foil_ids: tuple[int, ...]


def _move_whitespace(prefix: str, candidate: str) -> tuple[str, str]:
    stripped = prefix.rstrip()
    return stripped, prefix[len(stripped):] + candidate


def _bos_id(tokenizer: Any) -> int:
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise TokenizationError("bos=True but the tokenizer has neither a BOS nor an EOS token; score without --bos")


def encode_items(items: Sequence[ProbeItem], tokenizer: Any, *, bos: bool = False) -> list[EncodedItem]:
    """Tokenize items the way the scorer scores them (see the module docstring).

    Args:
        items: probe items.
        tokenizer: a Hugging Face tokenizer.
        bos: prepend the BOS (else EOS) token id to every context.

    Returns:
        One `EncodedItem` per item, in order.

    Raises:
        TokenizationError: a prefix or candidate encodes to no tokens (names the item).
    """
    moved = []
    for item in items:
        prefix, target = _move_whitespace(item.prefix, item.target)
        _, foil = _move_whitespace(item.prefix, item.foil)
        moved.append((prefix, target, foil))
    strings = sorted({s for triple in moved for s in triple})
    ids = dict(zip(strings, tokenizer(strings, add_special_tokens=False)["input_ids"])) if strings else {}
    head = (_bos_id(tokenizer),) if bos else ()
    out = []
    for item, (prefix, target, foil) in zip(items, moved):
        context = head + tuple(ids[prefix])
        for what, value, toks in (("prefix", item.prefix, context), ("target", item.target, ids[target]),
                                  ("foil", item.foil, ids[foil])):
            if not toks:
                hint = " (or score with --bos)" if what == "prefix" else ""
                raise TokenizationError(f"item {item.item_id!r}: {what} {value!r} tokenizes to no tokens; "
                                        f"give it visible text{hint}")
        out.append(EncodedItem(context, tuple(ids[target]), tuple(ids[foil])))
    return out


# --- loading -------------------------------------------------------------------------------
def _local_dir(path_or_id: str | Path, revision: str | None) -> Path | None:
    """The local checkpoint folder meant, None for a hub id; ModelLoadError for a bad path."""
    text = str(path_or_id)
    path = Path(text).expanduser()
    if not (path.exists() or looks_like_path(text)):
        return None
    if not path.is_dir():
        what = "a file, not a checkpoint folder" if path.exists() else "it does not exist"
        raise ModelLoadError(f"no such folder: {text} ({what}); pass a save_pretrained checkpoint folder, "
                             "a folder of them with --revision NAME, or a hub repo id such as EleutherAI/pythia-70m")
    if revision not in (None, "main") or not (path / _CONFIG_FILE).exists():
        if revision is not None and (path / revision / _CONFIG_FILE).exists():
            return path / revision
        if revision in (None, "main") and (path / _CONFIG_FILE).exists():
            return path
        found = sorted(p.name for p in path.iterdir() if (p / _CONFIG_FILE).exists())
        what = f"revision {revision!r} not found under {text}" if revision else f"no {_CONFIG_FILE} in {text}"
        raise ModelLoadError(f"{what}; available revisions there: {', '.join(found) or '(none)'}; "
                             "pass a checkpoint folder or --revision NAME")
    return path


def _count_params(config: Any) -> int:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return sum(p.numel() for p in skeleton.parameters())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _custom_code(source: str, revision: str | None) -> str | None:
    """The model_type of a config that maps to repo-supplied code (`auto_map`), else None."""
    from transformers import PretrainedConfig

    try:
        raw, _ = PretrainedConfig.get_config_dict(source, revision=revision)
    except (OSError, ValueError, KeyError):
        return None
    return str(raw.get("model_type")) if isinstance(raw, dict) and raw.get("auto_map") else None


def load_model(path_or_id: str | Path, *, revision: str | None = None, dtype: str = "auto",
               device: str = "auto") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer (never `trust_remote_code`; safetensors preferred).

    Args:
        path_or_id: a local ``save_pretrained`` folder, a local folder of revisions
            (``DIR/step1000/...``, with ``revision``), or a hub repo id.
        revision: hub branch/tag/commit, or a sub-folder name of a local folder of revisions.
        dtype: see `resolve_dtype`.
        device: ``auto``, ``cpu``, ``cuda``.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on the device. Example::

            model, tok = load_model("EleutherAI/pythia-70m", revision="step3000")

    Raises:
        ModelLoadError: missing path, unknown repo or revision, no tokenizer, unreadable weights.
        ScoringError: cuda asked for but not available.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    local = _local_dir(path_or_id, revision)
    source = str(local) if local is not None else str(path_or_id)
    hub_rev = None if local is not None else revision
    where = f"{path_or_id}" + (f" (revision {revision})" if revision else "")
    try:
        config = AutoConfig.from_pretrained(source, revision=hub_rev, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        custom = _custom_code(source, hub_rev)
        if custom is not None:  # e.g. allenai/OLMo-1B (hf_olmo): its own modelling code
            raise ModelLoadError(f"cannot load model {where}: model_type {custom!r} needs the repo's own code "
                                 "(trust_remote_code), which this tool never runs; use a transformers-native "
                                 "twin of the checkpoints (for OLMo: the -hf repo, e.g. allenai/OLMo-1B-hf)") from exc
        raise ModelLoadError(f"cannot load model {where}: {_first_line(exc)}; check the repo id / path and "
                             "--revision (hub branches look like step1000)") from exc
    # Refuse before building anything: transformers would otherwise score a BERT under a random
    # head, fill missing tensors with random values, or crash deep inside on a damaged file.
    validation.check_architecture(config, where)
    if local is not None:
        validation.check_weight_files(local)
        validation.check_tokenizer_files(local, where)
    params = _count_params(config) if dtype == "auto" and dev != "cpu" else None
    dt = resolve_dtype(dtype, params=params, device=dev)
    try:
        with _quiet_transformers():
            # transformers (>=4.50, torch>=2.6) loads .bin only through torch.load(weights_only=True)
            model, info = AutoModelForCausalLM.from_pretrained(
                source, revision=hub_rev, dtype=getattr(torch, dt), trust_remote_code=False,
                output_loading_info=True, ignore_mismatched_sizes=True)
    except validation.loading_errors() as exc:
        if local is None and isinstance(exc, OSError):
            raise ModelLoadError(f"cannot load model {where}: {_first_line(exc)}; check the repo id / path and "
                                 "--revision (hub branches look like step1000)") from exc
        raise validation.describe_load_error(exc, where) from exc
    validation.check_loading_info(info, where)
    validation.check_finite(model, where)
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source, revision=hub_rev, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer for {where}: {_first_line(exc)}; save the tokenizer "
                             "next to the weights, or pass tokenizer= to score()") from exc
    validation.check_tokenizer(tokenizer, where)
    return model.to(dev).eval(), tokenizer


class _quiet_transformers:
    """Keep transformers' and torch's loading chatter (progress bars, "newly initialized", pickle
    protocol warnings) off stderr: what matters is checked here and refused in one line."""

    def __enter__(self) -> None:
        import warnings

        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        self._bar = hf_logging.is_progress_bar_enabled()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", UserWarning)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)
        if self._bar:
            hf_logging.enable_progress_bar()
        self._warnings.__exit__(*exc)


def _weight_files(checkpoint_dir: Path) -> tuple[str, list[Path]]:
    safes = sorted(checkpoint_dir.glob("model*.safetensors"))
    if safes:
        return "safetensors", safes
    bins = sorted(p for p in checkpoint_dir.glob("pytorch_model*.bin"))
    if bins:
        return "bin", bins
    raise ModelLoadError(f"no model*.safetensors or pytorch_model*.bin in {checkpoint_dir}; "
                         "pass a save_pretrained checkpoint folder")


def load_weights_into(model: Any, checkpoint_dir: str | Path) -> Any:
    """Copy a revision's weights into an already built model of the same architecture.

    The replay engine builds one skeleton per model and reuses it across revisions: no
    re-instantiation, tensors are copied in place (dtype and device converted), one at a time
    from safetensors (``.bin`` only through ``torch.load(weights_only=True)``).

    Args:
        model: a model from `load_model` (or any ``PreTrainedModel``).
        checkpoint_dir: a ``save_pretrained`` folder of the same architecture.

    Returns:
        The same model object, in eval mode.

    Raises:
        ModelLoadError: no weights, a missing or extra parameter, or a shape mismatch.
    """
    import torch
    from safetensors import safe_open

    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise ModelLoadError(f"checkpoint folder {folder} does not exist; pass a save_pretrained folder")
    kind, files = _weight_files(folder)
    validation.check_weight_files(folder)
    config_path = folder / _CONFIG_FILE
    if config_path.is_file():
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise validation.CheckpointError(f"{config_path} cannot be read ({_first_line(exc)}); "
                                             "re-download or re-save the checkpoint") from None
        validation.check_architecture(config, str(folder))
        have = getattr(model.config, "model_type", None)
        if config.model_type != have:
            raise validation.CheckpointError(f"{folder}: config.json says model_type {config.model_type!r} but the "
                                             f"loaded model is {have!r}; load it with load_model instead")
    state = model.state_dict()
    seen: set[str] = set()
    info: dict[str, list[Any]] = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}

    rename = _checkpoint_renamer(model)

    def put(name: str, tensor: Any) -> None:
        name = rename(name)
        if name not in state:
            if not name.endswith(IGNORED_TENSOR_SUFFIXES):
                info["unexpected_keys"].append(name)
            return
        if tuple(state[name].shape) != tuple(tensor.shape):
            info["mismatched_keys"].append((name, tuple(tensor.shape), tuple(state[name].shape)))
            return
        state[name].copy_(tensor)
        seen.add(name)

    with torch.no_grad():
        for path in files:
            try:
                if kind == "safetensors":
                    with safe_open(str(path), framework="pt", device="cpu") as handle:
                        for name in handle.keys():
                            put(name, handle.get_tensor(name))
                else:
                    loaded = torch.load(path, map_location="cpu", weights_only=True)
                    if not isinstance(loaded, dict):
                        raise validation.CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state "
                                                         "dict of tensors; re-save the checkpoint")
                    for name, tensor in loaded.items():
                        put(name, tensor)
            except validation.CheckpointError:
                raise
            except validation.loading_errors() as exc:
                raise validation.describe_load_error(exc, str(path)) from exc
    tied = _tied_names(model)
    missing = sorted(set(state) - seen - tied)
    missing = [m for m in missing if not m.endswith(IGNORED_TENSOR_SUFFIXES)]
    info["missing_keys"] = missing
    # the same refusals, in the same words, as a first load through from_pretrained
    validation.check_loading_info(info, str(folder), advice="a damaged checkpoint, or a different architecture "
                                  "or size than the loaded model: load it with load_model instead")
    validation.check_finite(model, str(folder))
    return model.eval()


def _checkpoint_renamer(model: Any) -> Any:
    """Checkpoint tensor name -> the model's name (transformers 5 renames some modules, e.g.
    GPT-NeoX's ``embed_out`` is ``lm_head`` in memory but stays ``embed_out`` on disk)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming

        renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    except Exception:  # older transformers: names on disk are the names in memory
        renamings = []

    def rename(name: str) -> str:
        for t in renamings:
            name = t.rename_source_key(name)[0]
        return name

    return rename


def _tied_names(model: Any) -> set[str]:
    """State-dict names that share storage with another entry (tied embeddings)."""
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict().items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    return {n for names in by_ptr.values() if len(names) > 1 for n in names}


# --- the plan: which sequences to run, which logits to read ---------------------------------
@dataclass(frozen=True)
class _Plan:
    sequences: list[tuple[int, ...]]   # maximal sequences to run (sorted longest first)
    row_seq: np.ndarray                # per needed logits row: index into sequences
    row_pos: np.ndarray                # per needed logits row: position in that sequence
    read_row: np.ndarray               # per distinct (row, token) read: the row
    read_tok: np.ndarray               # ... and the token id
    tok_cand: np.ndarray               # per candidate token: candidate index (2*item + {0 target, 1 foil})
    tok_read: np.ndarray               # ... and the read it uses
    # Tree rows (`_make_tree_plan`): per sequence, each token's parent index in it (-1: none)
    # and its position id (depth - 1). None: plain causal sequences, positions 0..n-1.
    parents: tuple[np.ndarray, ...] | None = None
    positions: tuple[np.ndarray, ...] | None = None
    # padded batch inputs built on the first run of a batch, reused by later runs of the same
    # plan (a prepared plan scores every revision): (start, count, dtype, pad id) -> CPU tensors
    inputs: dict = field(default_factory=dict, compare=False, repr=False)


def _make_plan(encoded: Sequence[EncodedItem]) -> _Plan:
    cands = [(e.context_ids, c) for e in encoded for c in (e.target_ids, e.foil_ids)]
    fulls = sorted({ctx + cont[:-1] for ctx, cont in cands})
    # A sequence that is a prefix of another is a prefix of its lexicographic successor, so one
    # backwards pass finds, for each, the longest sequence that contains it.
    owner = list(range(len(fulls)))
    for i in range(len(fulls) - 2, -1, -1):
        s, t = fulls[i], fulls[i + 1]
        if len(t) > len(s) and t[:len(s)] == s:
            owner[i] = owner[i + 1]
    maximal = sorted({owner[i] for i in range(len(fulls))}, key=lambda i: (-len(fulls[i]), fulls[i]))
    seq_index = {m: k for k, m in enumerate(maximal)}
    full_owner = {fulls[i]: seq_index[owner[i]] for i in range(len(fulls))}
    # A logits row is identified by the tokens up to it, so the row after a shared prefix is
    # computed once even when several branches (sequences) contain it.
    rows: dict[tuple[int, ...], int] = {}
    row_at: list[tuple[int, int]] = []
    reads: dict[tuple[int, int], int] = {}
    tok_cand: list[int] = []
    tok_read: list[int] = []
    for c, (ctx, cont) in enumerate(cands):
        seq = full_owner[ctx + cont[:-1]]
        for j, tok in enumerate(cont):
            row = rows.setdefault(ctx + cont[:j], len(rows))
            if row == len(row_at):
                row_at.append((seq, len(ctx) - 1 + j))
            read = reads.setdefault((row, tok), len(reads))
            tok_cand.append(c)
            tok_read.append(read)
    row_keys = np.array(row_at, dtype=np.int64).reshape(-1, 2)
    read_keys = np.array(list(reads), dtype=np.int64).reshape(-1, 2)
    return _Plan([fulls[m] for m in maximal], row_keys[:, 0], row_keys[:, 1], read_keys[:, 0],
                 read_keys[:, 1], np.array(tok_cand, dtype=np.int64), np.array(tok_read, dtype=np.int64))


def plan_reason(model: Any) -> str | None:
    """Why `model` is scored with plain causal rows rather than tree rows (None: tree rows).

    Tree rows need a model whose attention honours a custom 4D mask and explicit position
    ids: the architectures in `SCORING_TREE_MODEL_TYPES` (exactness-tested) under sdpa or
    eager attention. Any other causal LM still scores, exactly, on the plain plan.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SCORING_TREE_MODEL_TYPES:
        return (f"model_type {model_type!r} is not one of the tree-tested architectures "
                f"({', '.join(SCORING_TREE_MODEL_TYPES)}): plain causal rows")
    attn = getattr(config, "_attn_implementation", None)
    if attn not in ("sdpa", "eager"):
        return f"attn_implementation {attn!r} takes no custom 4D mask: plain causal rows"
    return None


def _tree_ok(model: Any) -> bool:
    """Whether the model honours a custom 4D mask and explicit position ids (tree rows)."""
    return plan_reason(model) is None


def _make_tree_plan(encoded: Sequence[EncodedItem], *, row_tokens: int = SCORING_TREE_ROW_TOKENS) -> _Plan:
    """Pack the token trie of every ``context + candidate[:-1]`` into rows with tree attention.

    Items sharing a prefix share its computation: each trie node (a distinct token history)
    is a position whose hidden state depends only on its ancestors. A row holds a node's path
    from the root followed by its whole subtree (preorder); a tree mask lets every token see
    exactly its ancestors, and its position id is its depth, so its hidden state is the one
    a plain causal run of its history gives. Subtrees larger than ``row_tokens`` are split at
    their children (the shared path is then repeated per row). Compared with one causal
    sequence per maximal history, the body runs ~2-3x fewer tokens on batteries whose items
    share prefixes and whose candidates branch.
    """
    children: list[dict[int, int]] = [{}]
    parent = [-1]
    token = [-1]
    depth = [0]

    def child(node: int, tok: int) -> int:
        nxt = children[node].get(tok)
        if nxt is None:
            nxt = len(token)
            children[node][tok] = nxt
            children.append({})
            parent.append(node)
            token.append(tok)
            depth.append(depth[node] + 1)
        return nxt

    ctx_node: dict[tuple[int, ...], int] = {}
    row_of_node: dict[int, int] = {}
    row_nodes: list[int] = []
    reads: dict[tuple[int, int], int] = {}
    tok_cand: list[int] = []
    tok_read: list[int] = []
    for c, (ctx, cont) in enumerate((e.context_ids, cand) for e in encoded for cand in (e.target_ids, e.foil_ids)):
        node = ctx_node.get(ctx)
        if node is None:
            node = 0
            for tok in ctx:
                node = child(node, tok)
            ctx_node[ctx] = node
        for j, tok in enumerate(cont):
            if j:
                node = child(node, cont[j - 1])
            row = row_of_node.setdefault(node, len(row_nodes))
            if row == len(row_nodes):
                row_nodes.append(node)
            read = reads.setdefault((row, tok), len(reads))
            tok_cand.append(c)
            tok_read.append(read)
    n_nodes = len(token)
    size = [1] * n_nodes
    for n in range(n_nodes - 1, 0, -1):  # children are created after their parents
        size[parent[n]] += size[n]
    cap = max(row_tokens, max(depth))

    def path(u: int) -> list[int]:
        out = []
        while u:
            out.append(u)
            u = parent[u]
        return out[::-1]

    def subtree(u: int) -> list[int]:
        out, stack = [], [u]
        while stack:
            v = stack.pop()
            out.append(v)
            stack.extend(reversed(list(children[v].values())))
        return out

    packed: list[list[int]] = []
    stack = list(reversed(list(children[0].values())))
    while stack:
        u = stack.pop()
        if depth[u] + size[u] - 1 <= cap or not children[u]:
            packed.append(path(u)[:-1] + subtree(u))
        else:
            stack.extend(reversed(list(children[u].values())))
    packed.sort(key=lambda nodes: (-len(nodes), nodes))
    sequences, parents, positions = [], [], []
    where: dict[int, tuple[int, int]] = {}
    for s, nodes in enumerate(packed):
        local = {v: i for i, v in enumerate(nodes)}
        sequences.append(tuple(token[v] for v in nodes))
        parents.append(np.array([local.get(parent[v], -1) for v in nodes], dtype=np.int64))
        positions.append(np.array([depth[v] - 1 for v in nodes], dtype=np.int64))
        for i, v in enumerate(nodes):
            where.setdefault(v, (s, i))
    row_keys = np.array([where[n] for n in row_nodes], dtype=np.int64).reshape(-1, 2)
    read_keys = np.array(list(reads), dtype=np.int64).reshape(-1, 2)
    return _Plan(sequences, row_keys[:, 0], row_keys[:, 1], read_keys[:, 0], read_keys[:, 1],
                 np.array(tok_cand, dtype=np.int64), np.array(tok_read, dtype=np.int64),
                 parents=tuple(parents), positions=tuple(positions))


def _tree_inputs(plan: _Plan, start: int, count: int, width: int, dtype: Any) -> tuple[Any, Any]:
    """Additive 4D tree mask (0 = may attend, dtype min = may not) and position ids for
    sequences [start, start + count) padded to ``width``. A pad position sees only itself
    (no empty softmax row); no real position sees a pad."""
    import torch

    allowed = np.zeros((count, width, width), dtype=bool)
    pos = np.zeros((count, width), dtype=np.int64)
    for b in range(count):
        par = plan.parents[start + b]
        n = len(par)
        m = allowed[b]
        for i in range(n):  # preorder: a parent's row is complete before its children's
            if par[i] >= 0:
                m[i] = m[par[i]]
            m[i, i] = True
        idx = np.arange(n, width)
        m[idx, idx] = True
        pos[b, :n] = plan.positions[start + b]
    mask = torch.zeros((count, 1, width, width), dtype=dtype)
    mask.masked_fill_(~torch.from_numpy(allowed).unsqueeze(1), torch.finfo(dtype).min)
    return mask, torch.from_numpy(pos)


def _batches(lengths: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """(start, count) of each forward batch: a pure function of the sequence lengths (sorted
    longest first) and the batch size, so the same unit always runs the same batches.

    A batch holds at most ``batch_size`` sequences and ``batch_size x SCORING_BATCH_ROW_TOKENS``
    padded tokens, so a few long rows never pad a whole batch of short ones to their width.
    """
    out, ptr = [], 0
    while ptr < len(lengths):
        count = min(batch_size, max(1, batch_size * SCORING_BATCH_ROW_TOKENS // lengths[ptr]), len(lengths) - ptr)
        out.append((ptr, count))
        ptr += count
    return out


def _batch_inputs(plan: _Plan, ptr: int, count: int, pad_id: int, dtype: Any) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and position ids of sequences [ptr, ptr + count), on
    CPU; kept in ``plan.inputs`` while they fit `SCORING_INPUT_CACHE_BYTES`, so a plan reused
    across revisions builds them once. Callers copy them to the device and never write them."""
    import torch

    key = (ptr, count, str(dtype), pad_id)
    hit = plan.inputs.get(key)
    if hit is not None:
        return hit
    seqs = plan.sequences[ptr:ptr + count]
    width = max(len(s) for s in seqs)
    ids = torch.full((count, width), pad_id, dtype=torch.long)
    mask = torch.zeros((count, width), dtype=torch.long)
    for b, s in enumerate(seqs):  # right padding: real tokens at 0..len-1
        ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, :len(s)] = 1
    if plan.parents is not None:  # tree rows: each token sees its ancestors only
        mask, positions = _tree_inputs(plan, ptr, count, width, dtype)
    else:
        positions = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(count, width)
    out = (ids, mask, positions)
    held = plan.inputs.get("bytes", 0) + sum(t.element_size() * t.nelement() for t in out)
    if held <= SCORING_INPUT_CACHE_BYTES:
        plan.inputs[key] = out
        plan.inputs["bytes"] = held
    return out


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _head_is_plain(model: Any) -> bool:
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _HEAD_MODIFIERS):
        return False
    return getattr(model, "base_model", model) is not model and model.get_output_embeddings() is not None


def _run_plan(model: Any, plan: _Plan, *, n_rows: int, pad_id: int, batch_size: int, auto_batch: bool,
              progress: bool) -> tuple[np.ndarray, int]:
    """log-prob of every distinct (row, token) read; returns (values, final batch size)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    plain = _head_is_plain(model)
    head = model.get_output_embeddings() if plain else None
    weight = bias = None
    if head is not None:
        # fp32 head whatever the model dtype: margins of small models drift in bf16/fp16
        weight = head.weight[:n_rows].float()
        bias = head.bias[:n_rows].float() if getattr(head, "bias", None) is not None else None
    # rows of each sequence, grouped once (numpy, no per-item Python in the loop)
    order = np.argsort(plan.row_seq, kind="stable")
    starts = np.searchsorted(plan.row_seq[order], np.arange(len(plan.sequences) + 1))
    read_order = np.argsort(plan.read_row, kind="stable")
    read_starts = np.searchsorted(plan.read_row[read_order], np.arange(len(plan.row_seq) + 1))
    values = np.empty(len(plan.read_row), dtype=np.float64)
    bar = tqdm(total=len(plan.sequences), desc="scoring", unit="seq", disable=not progress, leave=False)
    lengths = [len(s) for s in plan.sequences]
    batches = _batches(lengths, batch_size)
    k = 0
    with torch.inference_mode():
        while k < len(batches):
            ptr, count = batches[k]
            seqs = plan.sequences[ptr:ptr + count]
            try:
                ids, mask, positions = _batch_inputs(plan, ptr, len(seqs), pad_id, next(model.parameters()).dtype)
                ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
                rows = order[starts[ptr]:starts[ptr + len(seqs)]]
                b_idx = torch.as_tensor(plan.row_seq[rows] - ptr, device=device)
                p_idx = torch.as_tensor(plan.row_pos[rows], device=device)
                if plain:
                    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                              use_cache=False).last_hidden_state
                    logits = F.linear(hidden[b_idx, p_idx].float(), weight, bias)
                else:
                    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
                    logits = out.logits[b_idx, p_idx].float()[:, :n_rows]
                lse = torch.logsumexp(logits, dim=-1)
                # reads of these rows: local row index -> token
                local = np.empty(int(rows.max()) + 1 if len(rows) else 0, dtype=np.int64)
                local[rows] = np.arange(len(rows))
                read_ids = np.concatenate([read_order[read_starts[r]:read_starts[r + 1]] for r in rows])
                r_local = torch.as_tensor(local[plan.read_row[read_ids]], device=device)
                r_tok = torch.as_tensor(plan.read_tok[read_ids], device=device)
                vals = logits[r_local, r_tok] - lse[r_local]
                values[read_ids] = vals.double().cpu().numpy()
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                if not auto_batch or batch_size == 1:
                    raise ScoringError(f"out of memory at batch size {batch_size}; pass a smaller --batch-size "
                                       "(or auto), or --dtype bfloat16 on GPU") from exc
                # restart the whole unit at the smaller size: every number then comes from one
                # batch plan (a function of the recorded batch size), never from a mix of two
                batch_size = max(1, batch_size // 2)
                batches, k = _batches(lengths, batch_size), 0
                bar.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            k += 1
            bar.update(len(seqs))
    bar.close()
    return values, batch_size


# --- the public scorer ---------------------------------------------------------------------
def _model_dtype_name(model: Any) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def score_encoded(model: Any, encoded: Sequence[EncodedItem], *, n_rows: int, pad_id: int,
                  batch_size: int | str = "auto", progress: bool = False, plan: Any = None,
                  threads: int | str = "auto") -> dict[str, Any]:
    """Summed and mean log-probs of already tokenized items (the scorer's numeric core).

    Args:
        model: a causal LM in eval mode.
        encoded: items from `encode_items`.
        n_rows: vocabulary rows the log-sum-exp runs over (the first ``n_rows``).
        pad_id: token id used for padding (never seen by a real position).
        batch_size: sequences per forward or ``auto``.
        progress: show a progress bar.
        plan: a plan built for exactly these items (`prepare`); None builds it here.
        threads: torch intra-op threads for the call, or ``auto`` (`resolve_threads`).

    Returns:
        Dict of numpy arrays ``logp_target, logp_foil, n_target, n_foil``, stats
        ``batch_size, sequences, tokens, rows`` and the pinned kernel settings
        ``threads, deterministic_algorithms, float32_matmul_precision``.
    """
    if plan is None:
        plan = _make_tree_plan(encoded) if _tree_ok(model) else _make_plan(encoded)
    for e in encoded:
        if max(e.target_ids + e.foil_ids) >= n_rows:
            raise ScoringError(f"a candidate token id ({max(e.target_ids + e.foil_ids)}) is outside the "
                               f"{n_rows} scored vocabulary rows; the tokenizer does not fit this model")
    device = next(model.parameters()).device
    auto = batch_size == "auto"
    bs = _auto_batch_size(model, plan, n_rows, device.type) if auto else int(batch_size)
    with _pinned_kernels(resolve_threads(threads), device.type) as kernels:
        values, bs = _run_plan(model, plan, n_rows=n_rows, pad_id=pad_id, batch_size=bs, auto_batch=auto,
                               progress=progress)
    sums = np.bincount(plan.tok_cand, weights=values[plan.tok_read], minlength=2 * len(encoded))
    return {
        "logp_target": sums[0::2], "logp_foil": sums[1::2],
        "n_target": np.array([len(e.target_ids) for e in encoded], dtype=np.int64),
        "n_foil": np.array([len(e.foil_ids) for e in encoded], dtype=np.int64),
        "batch_size": bs, "sequences": len(plan.sequences), "tokens": sum(len(s) for s in plan.sequences),
        "rows": len(plan.row_seq), "batch_tokens": bs * SCORING_BATCH_ROW_TOKENS, **kernels,
    }


def _auto_batch_size(model: Any, plan: _Plan, n_rows: int, device_type: str) -> int:
    """The batch size ``auto`` starts from: a token budget (`DEFAULT_BATCH_SIZE_*` x
    `SCORING_BATCH_ROW_TOKENS` padded tokens per batch, see `_batches`), lowered so that a
    batch's estimated working memory stays within `SCORING_AUTO_BATCH_BYTES`.

    A function of the model's config, dtype, the plan and the device type only (never of free
    memory), so the same options always give the same batches and the same numbers.
    """
    config = model.config
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or 1)
    width = max((len(s) for s in plan.sequences[:1]), default=1)
    item = next(model.parameters()).element_size()
    # per token: residual stream copies, q/k/v, attention output and MLP activations; one row of
    # attention scores per head; fp32 logits (and the log-sum-exp's temporary) over n_rows
    per_token = item * (8 * hidden + 2 * inter + heads * width) + 8 * n_rows
    default = DEFAULT_BATCH_SIZE_CUDA if device_type == "cuda" else DEFAULT_BATCH_SIZE_CPU
    budget = SCORING_AUTO_BATCH_BYTES["cuda" if device_type == "cuda" else "cpu"]
    return max(1, min(default, budget // (SCORING_BATCH_ROW_TOKENS * per_token)))


def score(model_or_path: Any, probes: Any, *, tokenizer: Any = None, revision: str | None = None,
          options: ScoreOptions | None = None, progress: bool = False, prepared: Prepared | None = None,
          **overrides: Any) -> pd.DataFrame:
    """Score probe items on one checkpoint: one row per item.

    Args:
        model_or_path: a loaded causal LM (then pass ``tokenizer``), a checkpoint folder, or a
            hub repo id (loaded with `load_model`).
        probes: a `ProbeSet`, or anything `load_probes` accepts (file, shipped name, list).
        tokenizer: the tokenizer, required with a loaded model.
        revision: the hub revision / local sub-folder to load; with a loaded model, only the
            label written to the ``revision`` column.
        options: `ScoreOptions`; keyword ``overrides`` (``dtype=``, ``batch_size=``, ...)
            replace its fields.
        progress: show a progress bar.
        prepared: tokenization and plan from `prepare` for this probe set, tokenizer and model
            (a training monitor scores the same items many times).

    Returns:
        A DataFrame with the columns `FRAME_COLUMNS` (ARCHITECTURE.md "Per-item score frame"),
        in probe-set order. ``frame.attrs`` records what was used: ``dtype, device, batch_size``
        (the one that ran), ``bos, vocab_rows, vocab_rows_n`` (rows in the log-sum-exp),
        ``padding_side, scoring_version, probeset, probeset_sha256, model, revision``,
        ``forward_sequences, forward_tokens, logit_rows, batch_tokens`` (padded-token budget of a
        batch), the pinned kernel settings
        ``threads, interop_threads, omp_wait_policy, deterministic_algorithms,
        float32_matmul_precision``, the model's
        ``attn_implementation`` and ``wall_s``. Example::

            frame = score("EleutherAI/pythia-70m", "pronoun_gender", revision="step3000")
            frame.groupby(["condition", "split"]).correct.mean()

    Raises:
        ModelLoadError, TokenizationError, ScoringError, ProbeFormatError, UnknownProbeSetError.
    """
    t0 = time.perf_counter()
    opts = replace(options or ScoreOptions(), **overrides)
    probe_set = probes if isinstance(probes, ProbeSet) else load_probes(probes)
    if isinstance(model_or_path, (str, Path)):
        model_name = str(model_or_path)
        model, loaded_tok = load_model(model_or_path, revision=revision, dtype=opts.dtype, device=opts.device)
        tokenizer = tokenizer or loaded_tok
    else:
        model = model_or_path
        model_name = str(getattr(model, "name_or_path", "") or type(model).__name__)
        if tokenizer is None:
            raise ScoringError("score() was given a loaded model without tokenizer=; pass its tokenizer")
        have = _model_dtype_name(model)
        if opts.dtype != "auto" and opts.dtype != have:
            raise ScoringError(f"the model is loaded in {have} but dtype={opts.dtype!r} was asked; "
                               f"load it with dtype={opts.dtype!r} or pass dtype='auto'")
        where = next(model.parameters()).device.type
        if opts.device != "auto" and str(opts.device).split(":")[0] != where:
            raise ScoringError(f"the model is on {where} but device={opts.device!r} was asked; "
                               "move the model or pass device='auto'")
    emb_rows = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None \
        else int(model.config.vocab_size)
    n_rows = min(len(tokenizer), emb_rows) if opts.vocab_rows == "tokenizer" else emb_rows
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    items = probe_set.items
    if prepared is not None:
        prepared.check(probe_set, tokenizer, model, bos=opts.bos)
    encoded = prepared.encoded if prepared is not None else encode_items(items, tokenizer, bos=opts.bos)
    validation.check_context(encoded, items, model)
    res = score_encoded(model, encoded, n_rows=n_rows, pad_id=int(pad_id), batch_size=opts.batch_size,
                        progress=progress, plan=None if prepared is None else prepared.plan,
                        threads=opts.threads)
    lt, lf = res["logp_target"], res["logp_foil"]
    bad = ~(np.isfinite(lt) & np.isfinite(lf))
    if bad.any():
        # a NaN margin compares False: it would be reported as "wrong", an accuracy of garbage
        ids = [items[k].item_id for k in np.flatnonzero(bad)[:3]]
        raise ScoringError(f"{int(bad.sum())} of {len(items)} item(s) got a non-finite log-prob "
                           f"(e.g. {', '.join(map(repr, ids))}) in {_model_dtype_name(model)}; the weights or "
                           "the dtype overflow: rerun with --dtype float32, or check the checkpoint (health --deep)")
    margin = lt - lf
    frame = pd.DataFrame({
        "model": model_name,
        "revision": revision if revision is not None else "",
        "item_id": [i.item_id for i in items],
        "rule": [i.rule for i in items],
        "condition": [i.condition for i in items],
        "split": [i.split for i in items],
        "prefix": [i.prefix for i in items],
        "target": [i.target for i in items],
        "foil": [i.foil for i in items],
        "logp_target": lt,
        "logp_foil": lf,
        "margin": margin,
        "correct": margin > 0,
        "n_target_tokens": res["n_target"],
        "n_foil_tokens": res["n_foil"],
        "mean_logp_target": lt / res["n_target"],
        "mean_logp_foil": lf / res["n_foil"],
        "target_ids": [json.dumps(list(e.target_ids)) for e in encoded],
        "foil_ids": [json.dumps(list(e.foil_ids)) for e in encoded],
        "template": [i.template for i in items],
    }, columns=list(FRAME_COLUMNS))
    frame.attrs.update({
        "model": model_name, "revision": revision, "dtype": _model_dtype_name(model),
        "device": next(model.parameters()).device.type, "batch_size": int(res["batch_size"]),
        "bos": bool(opts.bos), "vocab_rows": opts.vocab_rows, "vocab_rows_n": int(n_rows),
        "padding_side": "right", "scoring_version": SCORING_VERSION, "probeset": probe_set.name,
        "probeset_sha256": probe_set.sha256, "forward_sequences": int(res["sequences"]),
        "forward_tokens": int(res["tokens"]), "logit_rows": int(res["rows"]),
        "batch_tokens": int(res["batch_tokens"]),
        "threads": int(res["threads"]), "interop_threads": int(res["interop_threads"]),
        "omp_wait_policy": str(res["omp_wait_policy"]),
        "deterministic_algorithms": bool(res["deterministic_algorithms"]),
        "float32_matmul_precision": str(res["float32_matmul_precision"]),
        # eager and sdpa attention round differently: part of what a unit's numbers depend on
        "attn_implementation": str(getattr(model.config, "_attn_implementation", None) or ""),
        # which forward plan ran and, for the plain one, why (an architecture outside the list)
        "plan": "causal" if plan_reason(model) else "tree", "plan_reason": plan_reason(model) or "",
        "wall_s": round(time.perf_counter() - t0, 4),
    })
    return frame


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, condition, split): ``n``, ``accuracy`` (share with margin > 0), ``mean_margin``.

    Args:
        frame: a score frame (`score`).

    Returns:
        One row per cell, sorted by rule, then condition and split in schema order.
    """
    from pythia_forensics.constants import CONDITIONS, SPLITS

    out = (frame.groupby(["rule", "condition", "split"], sort=False)
           .agg(n=("item_id", "size"), accuracy=("correct", "mean"), mean_margin=("margin", "mean"))
           .reset_index())
    out["_c"] = out["condition"].map({c: k for k, c in enumerate(CONDITIONS)})
    out["_s"] = out["split"].map({s: k for k, s in enumerate(SPLITS)})
    return out.sort_values(["rule", "_c", "_s"]).drop(columns=["_c", "_s"]).reset_index(drop=True)


# --- prepare once, score many (a training monitor scores the same items every N steps) -------
@dataclass(frozen=True)
class Prepared:
    """Tokenized items and their forward plan, reusable across weights of one architecture.

    Attributes:
        probe_set: the items prepared.
        tokenizer_id: ``id`` of the tokenizer used (tokenization depends on it).
        bos: whether a BOS token was prepended.
        tree: whether the plan packs tree rows (depends on the model type, not its weights).
        encoded: the items' token ids.
        plan: the de-duplicated forward plan.
    """

    probe_set: ProbeSet
    tokenizer_id: int
    bos: bool
    tree: bool
    encoded: tuple[EncodedItem, ...]
    plan: Any

    def check(self, probe_set: ProbeSet, tokenizer: Any, model: Any, *, bos: bool) -> None:
        """Raise ScoringError unless this preparation fits these items, tokenizer and model."""
        if (probe_set.sha256 != self.probe_set.sha256 or id(tokenizer) != self.tokenizer_id
                or bool(bos) != self.bos or _tree_ok(model) != self.tree):
            raise ScoringError(f"prepared scoring of {self.probe_set.name!r} does not fit this call (other probe "
                               "set, tokenizer, bos or model type); call prepare() again")


def prepare(model: Any, probes: Any, *, tokenizer: Any, bos: bool = False) -> Prepared:
    """Tokenize a probe set and build its forward plan once, for `score(..., prepared=)`.

    Args:
        model: the model the plan is for (only its architecture matters, not its weights).
        probes: a `ProbeSet` or anything `load_probes` accepts.
        tokenizer: the tokenizer `score` will be given.
        bos: prepend the BOS token (must match the ``bos`` option of the scoring calls).

    Returns:
        A `Prepared`; scores with it equal scores without it exactly.

    Raises:
        TokenizationError: an item encodes to no tokens.
    """
    probe_set = probes if isinstance(probes, ProbeSet) else load_probes(probes)
    encoded = tuple(encode_items(probe_set.items, tokenizer, bos=bos))
    tree = _tree_ok(model)
    plan = _make_tree_plan(encoded) if tree else _make_plan(encoded)
    return Prepared(probe_set, id(tokenizer), bool(bos), tree, encoded, plan)
