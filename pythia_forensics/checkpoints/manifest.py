"""`manifest.json`: the one typed record of what a local model folder is.

A local model is any folder of checkpoint subfolders (`registry.checkpoint_folders`); a
`manifest.json` beside them is optional. When present it is read and written only here,
through `Manifest`; when absent, `infer_manifest` reads the same facts (layers, width, heads,
output rows, total and non-embedding parameter counts) from a checkpoint's `config.json` and
the shapes in its weight files' headers, without loading a tensor.

Keys this module does not know (a trainer's own notes) are kept in `extra` and written back,
so a rewrite never loses anything.

Example::

    >>> m = read_manifest("results/demo/suite/mini-m")              # doctest: +SKIP
    >>> m.params_total, m.corpus["rules"]["pronoun_gender"]        # doctest: +SKIP
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pythia_forensics.atomic import write_json
from pythia_forensics.checkpoints.architecture import ARCHITECTURE_FIELDS, from_config, from_shapes
from pythia_forensics.constants import MANIFEST_FILE
from pythia_forensics.errors import UnknownModelError

__all__ = ["Manifest", "has_manifest", "infer_manifest", "read_manifest", "remove_manifest", "write_manifest"]

@dataclass(frozen=True)
class Manifest:
    """What is known about one local model; every field may be unknown (None / empty).

    `vocab_size` counts output-embedding rows (Pythia: 50304, not the tokenizer's 50277).
    `params_nonembedding` leaves out the input embedding and a separately stored unembedding,
    as Pythia's model card counts. `steps` is what training meant to save (the registry reads
    the grid from the folders actually present). `corpus`, `train`, `intervention` and
    `bench` are the mini suite's, interventions' and benchmark's own records.
    """

    model: str | None = None
    layers: int | None = None
    d_model: int | None = None
    heads: int | None = None
    vocab_size: int | None = None
    params_total: int | None = None
    params_nonembedding: int | None = None
    tokens_per_step: int | None = None
    seed: int | None = None
    precision: str | None = None
    steps: tuple[int, ...] = ()
    corpus: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    intervention: Mapping[str, Any] | None = None
    bench: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """Build from parsed JSON; unknown keys go to `extra`.

        Raises:
            ValueError / TypeError: a field has a value of the wrong kind (e.g. layers "x").
        """
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for key in (*ARCHITECTURE_FIELDS, "tokens_per_step", "seed"):
            if values.get(key) is not None:
                values[key] = int(values[key])
        for key in ("model", "precision"):
            if values.get(key) is not None:
                values[key] = str(values[key])
        values["steps"] = tuple(int(s) for s in (values.get("steps") or ()))
        for key in ("corpus", "train"):
            values[key] = dict(values.get(key) or {})
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to `manifest.json` (unset optional records left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in ("intervention", "bench") and value is None:
                continue
            out[f.name] = list(value) if f.name == "steps" else (dict(value) if isinstance(value, Mapping) else value)
        out.update(self.extra)
        return out

    def fill(self, other: "Manifest") -> "Manifest":
        """This record with its unknown size fields taken from `other` (known ones win)."""
        names = ("model", *ARCHITECTURE_FIELDS)
        return replace(self, **{n: getattr(other, n) for n in names if getattr(self, n) is None})


def has_manifest(model_dir: str | Path) -> bool:
    """True when `model_dir/manifest.json` exists."""
    return (Path(model_dir) / MANIFEST_FILE).is_file()


def read_manifest(model_dir: str | Path) -> Manifest | None:
    """The folder's manifest, or None when it has none.

    Args:
        model_dir: the `DIR/<model>` folder.

    Raises:
        UnknownModelError: the file is not valid JSON or a field has the wrong kind of value.
    """
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise ValueError(f"the top level is a {type(data).__name__}, not an object")
        return Manifest.from_dict(data)
    except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: int(Infinity)
        raise UnknownModelError(f"{path} is not a valid manifest ({exc}); fix or delete it "
                                "(it is optional: sizes are then read from config.json and the weights)") from exc


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Path:
    """Write `model_dir/manifest.json` atomically (readers never see half a file).

    Returns:
        The path written.
    """
    return write_json(Path(model_dir) / MANIFEST_FILE, manifest.to_dict(), indent=2)


def remove_manifest(model_dir: str | Path) -> None:
    """Delete `model_dir/manifest.json` if present (a writer marks a model unfinished)."""
    (Path(model_dir) / MANIFEST_FILE).unlink(missing_ok=True)


def _weight_shapes(checkpoint_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the weight files, reading headers only (no tensor data)."""
    shapes: dict[str, tuple[int, ...]] = {}
    safes = sorted(checkpoint_dir.glob("*.safetensors"))
    if safes:
        from safetensors import safe_open

        for path in safes:
            with safe_open(str(path), framework="numpy") as fh:
                for name in fh.keys():
                    shapes[name] = tuple(fh.get_slice(name).get_shape())
        return shapes
    bins = sorted(checkpoint_dir.glob("pytorch_model*.bin"))
    if bins:
        import torch

        for path in bins:
            # mmap: shapes without reading the tensors; weights_only: never unpickle code
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            shapes.update({k: tuple(v.shape) for k, v in state.items()})
    return shapes


def infer_manifest(checkpoint_dir: str | Path, *, model: str | None = None) -> Manifest:
    """Sizes of a model from one checkpoint folder's `config.json` and weight headers.

    Args:
        checkpoint_dir: one checkpoint folder (`step1000/`, `checkpoint-500/`).
        model: the model name to record.

    Returns:
        A `Manifest` with what could be read; a fact that cannot be read stays None.
    """
    folder = Path(checkpoint_dir)
    config: Mapping[str, Any] = {}
    try:
        loaded = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, Mapping) else {}
    except (OSError, ValueError):
        pass
    from pythia_forensics.checkpoints.validation import loading_errors

    try:
        shapes = _weight_shapes(folder)
    except loading_errors():  # unreadable weights (SafetensorError, a refused pickle): scoring refuses them
        shapes = {}
    found, stated = from_shapes(shapes), from_config(config)
    # the config's layers / width / heads (the tensors' where it is silent); the output rows
    # the tensors hold (the config's where there are none); parameter counts from tensors only
    arch = replace(stated, vocab_size=None).merged(found).merged(stated)
    return Manifest(model=model, **arch.as_dict())
