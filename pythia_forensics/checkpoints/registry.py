"""Suite registry: which models exist, their shapes, and which checkpoints each one has.

The lookups: the shipped suites (`suites/pythia.yaml` and the others, data, read by
`suite_yaml.py`), local model and suite folders (any folder of checkpoint subfolders:
`step<N>/`, a Trainer's `checkpoint-<N>/`, or names matched by `--step-pattern`;
`manifest.json` optional, see docs/ARCHITECTURE.md; read by `local_layout.py`), and what a
user typed (`pythia-160m`, `org/name`, a folder), each into a `ModelSpec`.

The records themselves and the pure parsing of checkpoint grids (`--steps`, branch names)
are `specs.py`; its names and `local_layout`'s are importable from here, the module callers
look models up in. No network and no torch here: `sources.py` turns a `ModelSpec` into
checkpoints.

Example::

    >>> from pythia_forensics.checkpoints.registry import get_suite, parse_steps
    >>> spec = get_suite("pythia").model("pythia-160m")
    >>> len(spec.steps), spec.repo
    (154, 'EleutherAI/pythia-160m')
    >>> parse_steps("0:8", spec.steps)
    (0, 1, 2, 4, 8)
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import yaml

from pythia_forensics.checkpoints.local_layout import (
    checkpoint_folders,
    load_local_model,
    load_local_suite,
    looks_like_path,
    step_regexes,
)
from pythia_forensics.checkpoints.specs import (
    STEP_RE,
    BranchGrid,
    ModelSpec,
    Suite,
    branch_grid,
    count_label_tokens,
    decoder_params,
    describe_grid,
    parse_branch,
    parse_steps,
    revision_name,
    step_of_revision,
    tokens_of_revision,
    unknown_name_message,
)
from pythia_forensics.checkpoints.suite_yaml import suite_from_yaml
from pythia_forensics.constants import ENV_STEP_PATTERN, SUITES_SUBDIR, package_file
from pythia_forensics.errors import UnknownModelError

# The records and grid parsing (`specs`) and the local folder layouts (`local_layout`) are
# importable from here too: this is the module callers look models up in.
__all__ = [
    "BranchGrid",
    "ModelSpec",
    "Suite",
    "branch_grid",
    "checkpoint_folders",
    "count_label_tokens",
    "decoder_params",
    "describe_grid",
    "get_suite",
    "hub_branch_patterns",
    "known_suites",
    "load_local_model",
    "load_local_suite",
    "looks_like_path",
    "parse_branch",
    "parse_steps",
    "resolve_model",
    "revision_name",
    "step_of_revision",
    "tokens_of_revision",
]

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")



# --- the shipped suites ------------------------------------------------------------------
def known_suites() -> tuple[str, ...]:
    """Names of the suites shipped in `suites/*.yaml`."""
    return tuple(sorted(p.stem for p in package_file(*SUITES_SUBDIR).glob("*.yaml")))


def get_suite(name: str = "pythia", *, step_pattern: str | None = None) -> Suite:
    """A shipped suite by name (`pythia`), or a local suite folder.

    Args:
        name: a suite name from `known_suites()`, or a path to a local suite folder.

    Returns:
        The frozen `Suite` (a local folder is re-read on every call: it may have grown).

    Raises:
        UnknownModelError: unknown suite name ("did you mean" + the known list).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return load_local_suite(path, step_pattern=step_pattern)
    if looks_like_path(name):
        raise UnknownModelError(f"no such folder: {name}")
    return _shipped_suite(name)


@functools.lru_cache(maxsize=None)
def _shipped_suite(name: str) -> Suite:
    yaml_path = package_file(*SUITES_SUBDIR, f"{name}.yaml")
    if not yaml_path.is_file():
        raise UnknownModelError(unknown_name_message(name, known_suites(), where="suites", what="suite"))
    with open(yaml_path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return suite_from_yaml(data, yaml_path)


def hub_branch_patterns(step_pattern: str | None = None) -> tuple[str, ...]:
    """The grammars a hub repo outside the registry is read with.

    `step_pattern` (default `$PF_STEP_PATTERN`) alone when given; else `step<N>` and every
    shipped suite's grammar, so an OLMo-style repo not listed anywhere still parses.

    Raises:
        UnknownModelError: the pattern is not a regular expression or has no group.
    """
    text = step_pattern if step_pattern is not None else os.environ.get(ENV_STEP_PATTERN) or None
    if text is not None:
        return tuple(r.pattern for r in step_regexes(text))
    patterns = [STEP_RE.pattern]
    for name in known_suites():
        grammar = _shipped_suite(name).branch_grammar
        if grammar and grammar not in patterns:
            patterns.append(grammar)
    return tuple(patterns)


# --- resolving what a user typed ---------------------------------------------------------
def resolve_model(name_or_id_or_path: str | Path, *, suite_dir: str | Path | None = None,
                  step_pattern: str | None = None) -> ModelSpec:
    """Turn a registry name, a hub id or a local model folder into a `ModelSpec`.

    Order: an existing folder (a local model, `DIR/<model>`); a model of `suite_dir`; a
    registry name (`pythia-160m`) or its hub id (`EleutherAI/pythia-160m`); any other
    `org/name` hub id (architecture and grid unknown until the hub is listed). Something that
    can only be a path (`looks_like_path`) and is not a folder is refused here, before any
    hub call.

    Args:
        name_or_id_or_path: what the user typed.
        suite_dir: a local suite folder to look names up in first.
        step_pattern: checkpoint folder names of local models (see `checkpoint_folders`).

    Returns:
        The `ModelSpec`.

    Raises:
        UnknownModelError: nothing matches; the message suggests close names and lists the
            known ones.
    """
    text = str(name_or_id_or_path).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return load_local_model(path, step_pattern=step_pattern)
    if looks_like_path(text):
        what = "a file, not a model folder" if path.exists() else "it does not exist"
        raise UnknownModelError(f"no such folder: {text} ({what}); pass a folder of checkpoint subfolders, "
                                "a registry name (pythia-160m) or a hub id (org/name)")
    local_names: tuple[str, ...] = ()
    if suite_dir is not None:
        local = load_local_suite(suite_dir, step_pattern=step_pattern)
        local_names = local.names
        if text in local_names:
            return local.model(text)
    for suite_name in known_suites():
        suite = get_suite(suite_name)
        for m in suite.models:
            if text in (m.name, m.repo):
                return m
    if _HUB_ID_RE.match(text) and not path.exists():
        return ModelSpec(name=text.split("/")[-1], suite="hub", source="hub", repo=text,
                         branch_patterns=hub_branch_patterns(step_pattern))
    known = local_names + tuple(n for s in known_suites() for n in get_suite(s).names)
    raise UnknownModelError(unknown_name_message(text, known, where="the registry", hint=(
        "pass a registry name, a hub id (org/name) or a local model folder"
        + ("" if suite_dir is not None else "; for a model of a local suite, also give the suite folder")
    )))
