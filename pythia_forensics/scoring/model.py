"""Models in: resolve the device and dtype, load a checkpoint (refusing what cannot be scored),
copy a revision's weights into an already built model.

Refusals (#14) come from `checkpoints.validation`: a config that is not a decoder-only causal
LM, damaged or foreign weight files, missing/unexpected/misshapen tensors, non-finite weights,
a folder without tokenizer files. Never `trust_remote_code`.
"""
from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pythia_forensics.checkpoints import validation
from pythia_forensics.checkpoints.registry import looks_like_path
from pythia_forensics.constants import IGNORED_TENSOR_SUFFIXES
from pythia_forensics.errors import ModelLoadError, ScoringError
from pythia_forensics.scoring.options import DEVICES, DTYPES

__all__ = ["FP32_MAX_PARAMS", "load_model", "load_weights_into", "resolve_device", "resolve_dtype"]

# fp32 up to this many parameters even on GPU: bf16/fp16 move small Pythias' margins
# (pythia-160m: >10% of token probabilities change between batch 1 and 8 in bf16).
FP32_MAX_PARAMS = 3_000_000_000
_CONFIG_FILE = "config.json"


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``.

    Raises:
        ScoringError: ``cuda`` was asked for but torch sees no GPU.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ScoringError(f"device {device!r} asked for but torch sees no CUDA GPU; use device 'cpu' or 'auto'",
                           param="device")
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ScoringError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}", param="device")
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
            raise ScoringError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}", param="dtype")
        return dtype
    if device == "cpu" or params is None or params <= FP32_MAX_PARAMS:
        return "float32"
    import torch

    # GPUs before Ampere have no bf16: fp16 there (still with the fp32 log-sum-exp)
    if str(device or "").startswith("cuda") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "float16"
    return "bfloat16"


def _local_dir(path_or_id: str | Path, revision: str | None) -> Path | None:
    """The local checkpoint folder meant, None for a hub id; ModelLoadError for a bad path."""
    text = str(path_or_id)
    path = Path(text).expanduser()
    if not (path.exists() or looks_like_path(text)):
        return None
    if not path.is_dir():
        what = "a file, not a checkpoint folder" if path.exists() else "it does not exist"
        raise ModelLoadError(f"no such folder: {text} ({what}); pass a save_pretrained checkpoint folder, "
                             "a folder of them with a revision name, or a hub repo id such as EleutherAI/pythia-70m")
    if revision not in (None, "main") or not (path / _CONFIG_FILE).exists():
        if revision is not None and (path / revision / _CONFIG_FILE).exists():
            return path / revision
        if revision in (None, "main") and (path / _CONFIG_FILE).exists():
            return path
        found = sorted(p.name for p in path.iterdir() if (p / _CONFIG_FILE).exists())
        what = f"revision {revision!r} not found under {text}" if revision else f"no {_CONFIG_FILE} in {text}"
        raise ModelLoadError(f"{what}; available revisions there: {', '.join(found) or '(none)'}; "
                             "pass a checkpoint folder or one of those revisions",
                             param="revision" if revision else None)
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
                             "the revision (hub branches look like step1000)") from exc
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
                                 "the revision (hub branches look like step1000)") from exc
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

    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise ModelLoadError(f"checkpoint folder {folder} does not exist; pass a save_pretrained folder")
    kind, files = _weight_files(folder)
    validation.check_weight_files(folder)
    _check_same_type(model, folder)
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
            _read_tensors(path, kind, put)
    missing = sorted(set(state) - seen - _tied_names(state))
    info["missing_keys"] = [m for m in missing if not m.endswith(IGNORED_TENSOR_SUFFIXES)]
    # the same refusals, in the same words, as a first load through from_pretrained
    validation.check_loading_info(info, str(folder), advice="a damaged checkpoint, or a different architecture "
                                  "or size than the loaded model: load it with load_model instead")
    validation.check_finite(model, str(folder))
    return model.eval()


# (loaded model_type, sha256 of config.json) pairs that passed `_check_same_type`: every
# revision of a run ships the same config, and parsing it costs more than loading the
# weights of a small model
_SAME_TYPE_OK: set[tuple[Any, bytes]] = set()


def _check_same_type(model: Any, folder: Path) -> None:
    """Refuse a folder whose config.json (when present) is not a scoreable model of the
    loaded model's type."""
    config_path = folder / _CONFIG_FILE
    if not config_path.is_file():
        return
    try:
        key = (getattr(model.config, "model_type", None), hashlib.sha256(config_path.read_bytes()).digest())
    except OSError:
        key = None  # unreadable: AutoConfig below says so in its words
    if key in _SAME_TYPE_OK:
        return
    _check_config(model, folder, config_path)
    if key is not None and len(_SAME_TYPE_OK) < 4096:
        _SAME_TYPE_OK.add(key)


def _check_config(model: Any, folder: Path, config_path: Path) -> None:
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


def _read_tensors(path: Path, kind: str, put: Callable[[str, Any], None]) -> None:
    """Hand every tensor of one weight file to ``put(name, tensor)``, one at a time from
    safetensors, a ``.bin`` only through ``torch.load(weights_only=True)``."""
    import torch
    from safetensors import safe_open

    try:
        if kind == "safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    put(name, handle.get_tensor(name))
            return
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


# model -> its checkpoint renamings: fixed by the model's class and config, and transformers
# rebuilds (deep-copies) them on every call, which costs more than a small model's weights
_RENAMINGS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _checkpoint_renamer(model: Any) -> Any:
    """Checkpoint tensor name -> the model's name (transformers 5 renames some modules, e.g.
    GPT-NeoX's ``embed_out`` is ``lm_head`` in memory but stays ``embed_out`` on disk)."""
    renamings = _RENAMINGS.get(model)
    if renamings is None:
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightRenaming

            renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
        except Exception:  # older transformers: names on disk are the names in memory
            renamings = []
        _RENAMINGS[model] = renamings

    def rename(name: str) -> str:
        for t in renamings:
            name = t.rename_source_key(name)[0]
        return name

    return rename


def _tied_names(state: Mapping[str, Any]) -> set[str]:
    """State-dict names that share storage with another entry (tied embeddings)."""
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in state.items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    return {n for names in by_ptr.values() if len(names) > 1 for n in names}

