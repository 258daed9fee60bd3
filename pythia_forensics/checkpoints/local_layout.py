"""Local checkpoint-folder layouts: which subfolders of a model folder are checkpoints, and
a model folder / suite folder read into the same `specs.ModelSpec` / `Suite` as a hub model.

A model folder is any folder of checkpoint subfolders: `step<N>/` (save_pretrained),
`checkpoint-<N>/` (a Hugging Face Trainer; its `trainer_state.json` step wins), or names a
step pattern matches; `manifest.json` beside them is optional (`manifest.py`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from pythia_forensics.checkpoints.architecture import Architecture
from pythia_forensics.checkpoints.manifest import infer_manifest, read_manifest
from pythia_forensics.checkpoints.specs import ModelSpec, Suite
from pythia_forensics.constants import (
    CHECKPOINT_DIR_PATTERNS,
    ENV_STEP_PATTERN,
    STEP_DIR_PREFIX,
    TRAINER_STATE_FILE,
)
from pythia_forensics.errors import UnknownModelError

__all__ = ["checkpoint_folders", "load_local_model", "load_local_suite", "looks_like_path", "step_regexes"]


def step_regexes(step_pattern: str | None) -> tuple[re.Pattern[str], ...]:
    text = step_pattern if step_pattern is not None else os.environ.get(ENV_STEP_PATTERN) or None
    if text is None:
        return tuple(re.compile(p) for p in CHECKPOINT_DIR_PATTERNS)
    try:
        regex = re.compile(text)
    except re.error as exc:
        raise UnknownModelError(f"step pattern {text!r} is not a regular expression ({exc})") from exc
    if regex.groups < 1:
        raise UnknownModelError(f"step pattern {text!r} has no group: put the step number in one, "
                                r"e.g. 'ckpt_(\d+)' or '(?P<step>\d+)k'")
    return (regex,)


def _trainer_step(folder: Path) -> int | None:
    try:
        state = json.loads((folder / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    step = state.get("global_step") if isinstance(state, Mapping) else None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def checkpoint_folders(model_dir: str | Path, *, step_pattern: str | None = None) -> dict[str, int]:
    """The checkpoint subfolders of a model folder and the step each one holds.

    A subfolder counts when its whole name matches a pattern: `step<N>` (save_pretrained) and
    `checkpoint-<N>` (Hugging Face Trainer) by default, or `step_pattern` (default
    `$PF_STEP_PATTERN`), whose group `step` or first group is the step. A folder holding a
    Trainer's `trainer_state.json` takes its step from `global_step` instead.

    Args:
        model_dir: the model folder.
        step_pattern: a regular expression for the folder names.

    Returns:
        Folder name -> step, in step order (empty when no subfolder matches).

    Raises:
        UnknownModelError: the pattern is invalid, or two folders hold the same step.
    """
    regexes = step_regexes(step_pattern)
    directory = Path(model_dir)
    found: dict[str, int] = {}
    by_step: dict[int, str] = {}
    for path in sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else ():
        for regex in regexes:
            match = regex.fullmatch(path.name)
            if match is None:
                continue
            group = match.group("step") if "step" in regex.groupindex else match.group(1)
            step = _trainer_step(path)
            if step is None:
                if group is None or not (group.isascii() and group.isdigit()):
                    continue
                step = int(group)
            if step in by_step:
                raise UnknownModelError(f"{directory}: folders {by_step[step]} and {path.name} both hold step {step}; "
                                        "move one away or give a step pattern that matches only one naming",
                                        param="step_pattern")
            by_step[step] = path.name
            found[path.name] = step
            break
    return {name: found[name] for name in sorted(found, key=found.__getitem__)}


def load_local_model(model_dir: str | Path, *, suite: str | None = None,
                     step_pattern: str | None = None) -> ModelSpec:
    """Read one local model folder: checkpoint subfolders, `manifest.json` optional.

    The grid is the set of checkpoint folders actually present (`checkpoint_folders`); a
    manifest's `steps` list is only a record of what training intended (health compares the
    two). Sizes come from the manifest; those it lacks (all, without one) from the newest
    checkpoint's `config.json` and weight headers (`manifest.infer_manifest`).

    Args:
        model_dir: the `DIR/<model>` folder.
        suite: suite name to record (default: the parent folder's name).
        step_pattern: checkpoint folder names (see `checkpoint_folders`).

    Returns:
        A `ModelSpec` with `source="local"` and `path=model_dir`.

    Raises:
        UnknownModelError: the folder has no checkpoint subfolders, or its manifest or the
            step pattern is invalid.
    """
    model_dir = Path(model_dir).expanduser().resolve()
    folders = checkpoint_folders(model_dir, step_pattern=step_pattern)
    if not folders:
        raise UnknownModelError(
            f"{model_dir} holds no checkpoint folders: expected {STEP_DIR_PREFIX}<N>/ (save_pretrained) or "
            "checkpoint-<N>/ (Trainer) subfolders; for other names give a step pattern (a regex whose "
            "group 1 is the step)",
            param="step_pattern",
        )
    recorded = read_manifest(model_dir)
    facts = infer_manifest(model_dir / next(reversed(folders)), model=model_dir.name)
    manifest = facts if recorded is None else recorded.fill(facts)
    return ModelSpec(
        name=manifest.model or model_dir.name,
        suite=suite or model_dir.parent.name,
        source="local",
        path=model_dir,
        **Architecture.of(manifest).as_dict(),
        tokens_per_step=manifest.tokens_per_step,
        steps=tuple(sorted(set(folders.values()))),
        data_seed=manifest.seed,
        weight_seed=manifest.seed,
        precision=manifest.precision,
        folders=folders,
    )


def load_local_suite(directory: str | Path, *, step_pattern: str | None = None) -> Suite:
    """Read every model folder (a subfolder holding checkpoint folders) of a suite folder.

    Raises:
        UnknownModelError: the folder holds no model folder.
    """
    directory = Path(directory).expanduser().resolve()
    model_dirs = sorted(p for p in directory.iterdir() if p.is_dir()
                        and checkpoint_folders(p, step_pattern=step_pattern)) if directory.is_dir() else []
    if not model_dirs:
        raise UnknownModelError(
            f"{directory} holds no local suite: expected DIR/<model>/{STEP_DIR_PREFIX}<N>/ or "
            "DIR/<model>/checkpoint-<N>/ folders (train one with `pythia-forensics mini`, see docs/ARCHITECTURE.md)"
        )
    models = tuple(load_local_model(p, suite=directory.name, step_pattern=step_pattern) for p in model_dirs)
    return Suite(name=directory.name, description=f"local suite in {directory}", models=models, path=directory)


def looks_like_path(text: str | Path) -> bool:
    """True when what a user typed can only be a path, never a hub id (`org/name`).

    A path starts with `.`, `~` or `/`, or holds a backslash (or the platform's separator),
    an empty part (`a//b`, `a/`) or more than one `/`.
    """
    text = str(text)
    parts = text.split("/")
    return (text.startswith((".", "~", "/")) or "\\" in text or (os.sep != "/" and os.sep in text)
            or len(parts) > 2 or any(not part for part in parts[1:]))
