"""What a checkpoint really is: layers, width, heads, output rows and parameter counts.

Read from the checkpoint itself -- tensor names and shapes (a safetensors header is a few KB;
a loaded state dict works too) plus `config.json` for the head count, which no tensor shape
carries -- never from the name it is served under. Health compares it with the registry
entry of that name (`mismatches`); replay records it as the model's size.

Pure functions over `{tensor name: shape}` and a config dict, plus two small readers.
"""
from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from math import prod
from pathlib import Path
from typing import Any

from pythia_forensics.constants import EMBEDDING_TENSOR_KEYS, IGNORED_TENSOR_SUFFIXES, OUTPUT_EMBEDDING_TENSOR_KEYS

__all__ = ["ARCHITECTURE_FIELDS", "Architecture", "CONFIG_KEYS", "config_value", "from_shapes", "from_config",
           "read_safetensors_shapes", "of_folder", "mismatches"]

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
# field -> config.json key spellings (GPT-NeoX / Llama / OLMo first, GPT-2 after): the one
# table the registry, the manifest and health read a config with
CONFIG_KEYS = {
    "layers": ("num_hidden_layers", "n_layer"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head"),
    "vocab_size": ("vocab_size",),
}


@dataclass(frozen=True)
class Architecture:
    """A checkpoint's shape; None where the evidence does not say (e.g. heads without config).

    `vocab_size` is the number of output rows (the padded vocabulary)."""

    layers: int | None = None
    d_model: int | None = None
    heads: int | None = None
    vocab_size: int | None = None
    params_total: int | None = None
    params_nonembedding: int | None = None

    def merged(self, other: Architecture) -> Architecture:
        """Fields of `self`, filled in from `other` where `self` has None."""
        return Architecture(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                               else getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(cls, record: Any) -> Architecture:
        """The architecture fields of any record that carries them under the same names
        (`Manifest`, `registry.ModelSpec`); a field the record lacks is None."""
        return cls(**{name: getattr(record, name, None) for name in ARCHITECTURE_FIELDS})


# The size facts every record of a model carries under these names (ModelSpec, Manifest).
ARCHITECTURE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Architecture))


def _find(shapes: Mapping[str, Sequence[int]], suffixes: Iterable[str]) -> Sequence[int] | None:
    for name, shape in shapes.items():
        if name.endswith(tuple(suffixes)):
            return shape
    return None


def from_shapes(shapes: Mapping[str, Sequence[int]]) -> Architecture:
    """Architecture from tensor names and shapes (buffers such as causal masks ignored).

    Parameter counts are sums of element counts, as the registry's are (Pythia-14m:
    14,067,712 total, embedding in and out both counted, 1,189,888 without them).
    """
    params = {k: tuple(int(x) for x in v) for k, v in shapes.items() if not k.endswith(IGNORED_TENSOR_SUFFIXES)}
    if not params:
        return Architecture()
    total = sum(prod(s) for s in params.values())
    emb_in = _find(params, EMBEDDING_TENSOR_KEYS)
    emb_out = _find(params, OUTPUT_EMBEDDING_TENSOR_KEYS)
    embedding = (prod(emb_in) if emb_in else 0) + (prod(emb_out) if emb_out else 0)
    layers = {int(m.group(1)) for k in params if (m := _LAYER_RE.search(k))}
    rows = (emb_out or emb_in or (None,))[0]
    return Architecture(
        layers=len(layers) if layers else None,
        d_model=int(emb_in[1]) if emb_in and len(emb_in) == 2 else None,
        vocab_size=int(rows) if rows is not None else None,
        params_total=total,
        params_nonembedding=total - embedding if emb_in else None,
    )


def config_value(config: Mapping[str, Any], field: str) -> int | None:
    """The first integer a config states for `field` under any of its spellings (`CONFIG_KEYS`);
    None when none is an integer (a bool is not)."""
    for key in CONFIG_KEYS[field]:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def from_config(config: Mapping[str, Any]) -> Architecture:
    """Architecture fields `config.json` states (no parameter counts: those come from tensors)."""
    return Architecture(**{field: config_value(config, field) for field in CONFIG_KEYS})


def read_safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (reads only the header).

    Raises:
        ValueError: not a readable safetensors header.
    """
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError(f"{Path(path).name} is too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{Path(path).name} claims a {n}-byte header: not a safetensors file")
        header = json.loads(fh.read(n))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def of_folder(folder: str | Path, weight_names: Sequence[str] = ()) -> Architecture:
    """A checkpoint folder's architecture: safetensors headers (all shards) and config.json.

    `.bin` files are not opened here (that means unpickling, even if restricted): a
    `.bin`-only folder gives the config's fields and no parameter count.

    Raises:
        ValueError: a safetensors header is unreadable.
    """
    folder = Path(folder)
    names = list(weight_names) or sorted(p.name for p in folder.glob("*.safetensors"))
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        if name.endswith(".safetensors"):
            shapes.update(read_safetensors_shapes(folder / name))
    arch = from_shapes(shapes)
    config = folder / "config.json"
    if config.is_file():
        try:
            arch = arch.merged(from_config(json.loads(config.read_text(encoding="utf-8"))))
        except ValueError:
            pass
    return arch


def mismatches(found: Architecture, expected: Any) -> list[str]:
    """Fields where a checkpoint disagrees with its registry entry, as `field: found vs expected`.

    Args:
        found: the checkpoint's architecture.
        expected: anything with the same attribute names (a `registry.ModelSpec`); fields
            either side leaves unknown are not compared.
    """
    out = []
    for f in fields(Architecture):
        have, want = getattr(found, f.name), getattr(expected, f.name, None)
        if have is not None and want is not None and int(have) != int(want):
            out.append(f"{f.name} {have:,} vs {int(want):,}")
    return out
