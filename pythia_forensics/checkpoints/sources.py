"""Checkpoint sources: a model's revisions on the hub or in a local suite folder.

Both sources implement one protocol, `CheckpointSource` (`source_records`), and yield the
same `CheckpointRecord`:

* `revisions()` / `branches()` -- what exists (hub: `list_repo_refs`; local: `step<N>/`);
* `listing(rev)` -- every file with size and sha256, *without downloading* (hub: the tree
  API, whose LFS metadata carries each weight file's sha256; local: hashed once, cached by
  (path, size, mtime));
* `size(rev)` -- bytes a fetch would download, given what the cache already holds;
* `fetch(rev)` -- config, tokenizer and weights (safetensors preferred, `.bin` accepted) into
  ONE shared huggingface_hub cache, so identical blobs across revisions are stored once;
  every weight file is checked against its LFS sha256 and re-fetched once on a mismatch;
* `evict(rev)` -- free a revision through `scan_cache_dir().delete_revisions`, which keeps
  blobs that other cached revisions still use.

The hub side lives in `sources_hub` (the only module that touches the network), the local
side in `sources_local`, the shared records in `source_records`; this module picks one
(`open_source`) and re-exports the names callers import from here.

Example::

    >>> src = open_source(resolve_model("pythia-70m"), cache_dir="/data/hf")   # doctest: +SKIP
    >>> rec = src.fetch("step1000")                                             # doctest: +SKIP
    >>> rec.commit, rec.weight_files[0].sha256, rec.path                        # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pythia_forensics.checkpoints.registry import (
    BranchGrid,
    ModelSpec,
    branch_grid,
    hub_branch_patterns,
    resolve_model,
)
from pythia_forensics.checkpoints.source_records import (
    CheckpointRecord,
    CheckpointSource,
    RevisionListing,
    RevisionSize,
    SourceFile,
    WeightFile,
    offline,
    select_files,
    sha256_file,
    weights_digest,
)
from pythia_forensics.checkpoints.sources_hub import HubSource, evict_cached, retrying
from pythia_forensics.checkpoints.sources_local import LocalSource
from pythia_forensics.errors import UnknownModelError

__all__ = [
    "CheckpointRecord",
    "CheckpointSource",
    "HubSource",
    "LocalSource",
    "RevisionListing",
    "RevisionSize",
    "SourceFile",
    "WeightFile",
    "discover_branches",
    "evict_cached",
    "offline",
    "open_source",
    "retrying",
    "select_files",
    "sha256_file",
    "weights_digest",
]


def open_source(model: ModelSpec | str | Path, **options: Any) -> CheckpointSource:
    """The right source for a model: `LocalSource` for local specs/folders, else `HubSource`.

    Args:
        model: a `ModelSpec`, registry name, hub id or local model folder.
        **options: passed to the source (e.g. `cache_dir`, `endpoint` for the hub).
    """
    spec = model if isinstance(model, ModelSpec) else resolve_model(str(model))
    if spec.source == "local":
        return LocalSource(spec, **{k: v for k, v in options.items() if k == "hash_cache"})
    return HubSource(spec, **{k: v for k, v in options.items() if k != "hash_cache"})




def discover_branches(model: ModelSpec | str, *, step_pattern: str | None = None,
                      **options: Any) -> tuple[ModelSpec, BranchGrid]:
    """A hub repo's checkpoint grid from its branch list alone (`list_repo_refs`; no file,
    no weight byte is read).

    Args:
        model: a `ModelSpec`, registry name or hub id.
        step_pattern: a branch-name regex (group `step` or 1; optional `tokens` + `unit`)
            that replaces the model's grammar.
        **options: passed to `HubSource` (`endpoint`, `token`, `cache_dir`, ...).

    Returns:
        (the spec the names were read with, the parsed `BranchGrid`).

    Raises:
        UnknownModelError: a local model, or an invalid step pattern.
        SourceError: the hub cannot be reached.
    """
    spec = model if isinstance(model, ModelSpec) else resolve_model(str(model), step_pattern=step_pattern)
    if spec.source != "hub":
        raise UnknownModelError(f"{spec.name} is a local model ({spec.path}); `suite discover` lists hub repos "
                                "(a local folder's grid is its checkpoint folders: `suite show DIR`)")
    if step_pattern is not None:
        spec = replace(spec, branch_patterns=hub_branch_patterns(step_pattern))
    source = HubSource(spec, **options)
    return spec, branch_grid(tuple(source.branches()), spec)
