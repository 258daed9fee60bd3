"""One item file of the results store: its fixed schema, its checksum and its own record.

Every Parquet file the store writes carries, in its key-value metadata, its row count and a
sha256 over a canonical serialization of its values (`content_sha256`), plus its work key;
`check_items` says whether a file read back is whole and its own (`Damaged` otherwise).
`item_table` builds a unit's table straight in Arrow with the fixed column types, so every
item file stacks with every other (pyarrow.dataset, polars, DuckDB) and a write costs little
next to the scoring it stores. The store (`store.py`) decides which files exist; this module
only reads, checks and writes one file at a time.

For interruption tests, the environment variable named by ``constants.FAULT_ENV`` makes the
process exit hard after, or in the middle of, its N-th store write (see constants.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pythia_forensics.atomic import atomic_path
from pythia_forensics.constants import FAULT_ENV, FAULT_EXIT_STATUS, STORE_FORMAT, STORE_METADATA_KEY
from pythia_forensics.errors import StoreError

__all__ = ["WorkKey", "Scan", "Damaged", "ITEM_TYPES", "PROVENANCE_COLUMNS", "content_sha256", "item_table",
           "check_items", "read_file", "write_table", "record_of", "normalize", "model_partition"]

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
LEGACY_PREFIX = "model="  # store format 1 named model folders hive-style
# Columns every stored item row carries besides the score frame (ARCHITECTURE.md), plus the
# key's own fields so a row explains itself without its file name.
PROVENANCE_COLUMNS = (
    "repo", "step", "tokens", "commit", "weights_sha256", "dtype", "batch_size", "device", "bos",
    "probeset", "probeset_sha256", "work_key", "pf_version", "torch_version",
    "transformers_version", "content_key", "vocab_rows", "code_version", "written_at",
)
# One Arrow type per known item column, whatever pandas inferred for this one file (an
# all-None `commit` is null-typed, a hub one is a string): readers that stack many files
# (pyarrow.dataset, polars, DuckDB) need one schema.
ITEM_TYPES: dict[str, pa.DataType] = {
    **{c: pa.string() for c in (
        "model", "revision", "item_id", "rule", "condition", "split", "prefix", "target", "foil",
        "target_ids", "foil_ids", "template", "repo", "commit", "weights_sha256", "dtype", "device",
        "probeset", "probeset_sha256", "work_key", "pf_version", "torch_version", "transformers_version",
        "content_key", "vocab_rows", "code_version", "omp_wait_policy")},
    **{c: pa.float64() for c in ("logp_target", "logp_foil", "margin", "mean_logp_target", "mean_logp_foil")},
    **{c: pa.int64() for c in ("n_target_tokens", "n_foil_tokens", "step", "tokens", "batch_size", "written_at",
                               "threads")},
    **{c: pa.bool_() for c in ("correct", "bos")},
}
# text columns that differ item by item (no dictionary encoding: `write_table`)
_DISTINCT_COLUMNS = frozenset({"item_id", "prefix", "target", "foil", "target_ids", "foil_ids"})
# margin is logp_target - logp_foil computed in at least fp32: a stored margin further from
# the stored difference than a few fp32 steps at the log-probs' magnitude was edited.
MARGIN_ULPS = 4


def slug(text: str) -> str:
    """A file-name-safe rendering of `text` (readability only; uniqueness comes from hashes)."""
    return _SLUG.sub("_", text).strip("._") or "_"


def _short_hash(*parts: str, n: int = 12) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:n]


def model_partition(model: str) -> str:
    """Folder name for a model's item files (hub ids carry '/', which a folder name cannot)."""
    return slug(model.replace("/", "--"))


@dataclass(frozen=True)
class WorkKey:
    """Everything one (model, revision, probe set) result depends on.

    Attributes:
        model: registry name, hub id or local model name.
        revision: branch or step folder name (``step1000``, ``main``).
        content_key: the revision's content: hub commit sha, or a hash of weight sha256s.
        probeset: probe-set name (part of the slot, not of the numbers).
        probeset_sha256: hash of the probe set's canonical item content.
        dtype: the resolved compute dtype (``float32``, never ``auto``).
        bos: whether a BOS token was prepended.
        vocab_rows: which logit rows the log-sum-exp covers (``tokenizer`` | ``all``).
        code_version: the scoring code's version string.
    """

    model: str
    revision: str
    content_key: str
    probeset: str
    probeset_sha256: str
    dtype: str
    bos: bool
    vocab_rows: str
    code_version: str

    @property
    def slot(self) -> str:
        """File-name prefix shared by every key of the same (revision, probe set)."""
        return f"{slug(self.revision)}_{_short_hash(self.model, self.revision, self.probeset)}_"

    @cached_property
    def id(self) -> str:
        """The work key as a string: readable slot prefix + hash of every field."""
        blob = json.dumps(asdict(self), sort_keys=True)
        return self.slot + hashlib.sha256(blob.encode()).hexdigest()[:24]



# --- checksums and the files' own record ---------------------------------------------------
def content_sha256(table: pa.Table) -> str:
    """sha256 of a table's values, independent of physical types, chunking and column order.

    Each column contributes its name, its validity mask and its values: numbers as
    little-endian float64 / int64 bytes (bools as 0/1), everything else as the JSON of its
    Python values. A changed, added, dropped or reordered row changes the digest.

    Args:
        table: any Arrow table.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256(f"rows={table.num_rows}".encode())
    all_valid = b"\x01" * table.num_rows
    for name in sorted(table.column_names):
        col = table[name].combine_chunks()
        kind = col.type
        # casts and null fills only where they change something: the same bytes, ~2x faster
        # (a store write hashes ~40 columns; most are already in their type and have no nulls)
        nulls = col.null_count > 0
        h.update(b"\x1e" + name.encode("utf-8", "surrogatepass") + b"\x1f")
        h.update(np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes()
                 if nulls else all_valid)
        if pa.types.is_floating(kind):
            col = col if kind == pa.float64() else col.cast(pa.float64())
            h.update(b"f" + (col.fill_null(0.0) if nulls else col).to_numpy().astype("<f8").tobytes())
        elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            col = col if kind == pa.int64() else col.cast(pa.int64())
            h.update(b"i" + (col.fill_null(0) if nulls else col).to_numpy().astype("<i8").tobytes())
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            # length-prefixed UTF-8 straight from the Arrow buffers (nulls as "", the mask says which);
            # 32-bit offsets are widened in numpy, not by an Arrow cast: the same int64 bytes
            arr = col.fill_null("") if nulls else col
            _, offsets, data = arr.buffers()
            width = "<i8" if arr.type == pa.large_string() else "<i4"
            # a slice (a probe set of a merged pass) reads its own window of the offsets
            offs = np.frombuffer(offsets, dtype=width)[arr.offset: arr.offset + len(arr) + 1].astype("<i8")
            h.update(b"s" + (offs - offs[0]).tobytes())
            if data is not None:
                h.update(memoryview(data)[int(offs[0]):int(offs[-1])])
        else:
            text = json.dumps(col.to_pylist(), ensure_ascii=False, default=str, separators=(",", ":"))
            h.update(b"o" + text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def record_of(table_or_schema: pa.Table | pa.Schema) -> dict[str, Any] | None:
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    raw = (schema.metadata or {}).get(STORE_METADATA_KEY.encode())
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return {"format": -1}
    return record if isinstance(record, dict) else {"format": -1}


def normalize(table: pa.Table, types: Mapping[str, pa.DataType]) -> pa.Table:
    """Cast known columns to their fixed types; an all-null column of unknown meaning to string."""
    for i, name in enumerate(table.column_names):
        want = types.get(name, pa.string() if pa.types.is_null(table.schema.field(i).type) else None)
        if want is not None and table.schema.field(i).type != want:
            table = table.set_column(i, pa.field(name, want), table.column(i).cast(want))
    return table


def _column(values: pd.Series | pa.ChunkedArray, want: pa.DataType | None) -> pa.Array | pa.ChunkedArray:
    """One score-frame column as Arrow, in its fixed type where the column is known."""
    arr = values if isinstance(values, pa.ChunkedArray) else pa.array(values, from_pandas=True)
    if want is not None and arr.type != want:
        arr = arr.cast(want)
    elif want is None and pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())  # an all-null column of unknown meaning
    return arr


def _constant(value: Any, want: pa.DataType | None, n: int) -> pa.Array:
    """`n` copies of one value (a provenance or key field), in its fixed type where known."""
    if value is not None and not isinstance(value, (str, bytes)) and pd.isna(value):
        value = None  # pandas' NA / NaN for an unknown step or token count
    scalar = pa.scalar(value, type=want) if want is not None else pa.scalar(value)
    if pa.types.is_null(scalar.type):
        scalar = pa.scalar(None, type=pa.string())
    return pa.repeat(scalar, n)


def item_table(key: WorkKey, frame: pd.DataFrame | pa.Table, provenance: Mapping[str, object],
               written_at: int) -> pa.Table:
    """A unit's item rows as an Arrow table in the fixed schema: the score frame's columns,
    then the provenance, the key's own fields, ``work_key`` and ``written_at``.

    Built column by column in Arrow (no pandas copy and column assignments, no type inference
    over constant columns): a store write costs a small fraction of the scoring it stores.

    Args:
        key: the unit's work key.
        frame: the scorer's per-item rows (one per item): a score frame, or the Arrow table
            of a `scoring.ScoredTable`, whose columns are taken as they are (no conversion).
        provenance: values for the provenance columns (repo, step, commit, ...).
        written_at: the write's wall clock in ns (orders two writes of one slot).

    Returns:
        The table; a column named both in the frame and below takes the value below, in the
        frame's column position.
    """
    # the scorer names the model by what it was given (often a path); the key's name wins
    constants: dict[str, Any] = {"model": key.model, "revision": key.revision, **provenance,
                                 "probeset": key.probeset, "probeset_sha256": key.probeset_sha256,
                                 "content_key": key.content_key, "dtype": key.dtype, "bos": bool(key.bos),
                                 "vocab_rows": key.vocab_rows, "code_version": key.code_version,
                                 "work_key": key.id, "written_at": written_at}
    if isinstance(frame, pa.Table):
        n, names, column = frame.num_rows, frame.column_names, frame.column
    else:
        # the same columns without frame.attrs: pandas deep-copies attrs into every column it
        # hands out, which cost more than the rest of the store write (~40 columns per unit)
        frame = pd.DataFrame(frame, copy=False)
        n, names, column = len(frame), list(frame.columns), frame.__getitem__
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for name in names:
        if name not in constants:
            columns[name] = _column(column(name), ITEM_TYPES.get(name))
        else:
            columns[name] = None  # type: ignore[assignment]  # keeps the frame's position
    for name, value in constants.items():
        columns[name] = _constant(value, ITEM_TYPES.get(name), n)
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))


def _fault_spec() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    mode, _, n = spec.partition(":")
    if mode not in ("store-write", "store-write-mid") or not n.isdecimal() or int(n) < 1:
        raise StoreError(f"{FAULT_ENV}={spec!r} is not a fault spec; use store-write:N or store-write-mid:N "
                         "(N >= 1), or unset it")
    return mode, int(n)


_writes_done = 0  # durable store writes this process has started (the fault hook counts them)


def write_table(table: pa.Table, path: Path, record: Mapping[str, Any]) -> tuple[dict[str, Any], pa.Table]:
    """Stamp `record` + row count + checksum into `table`'s metadata, write it durably.

    Returns:
        (the full record stamped, the table as written), what `check_items` would read back.
    """
    global _writes_done
    fault = _fault_spec()
    _writes_done += 1
    n = _writes_done
    full = {"format": STORE_FORMAT, **record, "rows": table.num_rows, "sha256": content_sha256(table)}
    meta = dict(table.schema.metadata or {})
    meta[STORE_METADATA_KEY.encode()] = json.dumps(full, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    # serialized in memory, then written with one call: pyarrow's file-system layer costs
    # more per small file than the encoding
    sink = pa.BufferOutputStream()
    # dictionary pages only where values repeat (labels, provenance): on numbers and per-item
    # text they cost encoding time and bytes for nothing (measured: ~15% faster, ~5% smaller)
    dictionary = [f.name for f in table.schema if f.name not in _DISTINCT_COLUMNS
                  and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
    pq.write_table(table, sink, use_dictionary=dictionary)
    data = sink.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=True) as tmp:
        with open(tmp, "wb") as fh:
            if fault == ("store-write-mid", n):  # a writer killed half-way: half a file under the temp name
                fh.write(memoryview(data)[: max(1, data.size // 2)])
                fh.flush()
                os._exit(FAULT_EXIT_STATUS)
            fh.write(memoryview(data))
    if fault == ("store-write", n):
        os._exit(FAULT_EXIT_STATUS)
    return full, table


def read_file(path: Path) -> pa.Table:
    """Read one Parquet file; raises Damaged for anything but a whole, readable file."""
    try:
        if path.stat().st_size == 0:
            raise Damaged("zero bytes")
        return pq.read_table(path)
    except FileNotFoundError:
        raise
    except Damaged:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        text = str(exc).strip()
        text = text.split("': ", 1)[1] if "': " in text else text  # drop pyarrow's restated path
        first = text.splitlines()[0] if text else type(exc).__name__
        raise Damaged(f"unreadable Parquet ({first[:120]})") from None


class Damaged(Exception):
    """Internal: a file failed a check; the message is the reason."""


def check_items(table: pa.Table, path: Path, *, legacy: bool) -> dict[str, Any]:
    """The item file's record if it is intact; raises Damaged otherwise."""
    record = record_of(table)
    if record is None and not legacy:
        raise Damaged("no checksum in its metadata (written outside the tool, or edited and rewritten)")
    if record is not None:
        if record.get("format") != STORE_FORMAT:
            raise Damaged(f"unknown store format {record.get('format')!r} in its metadata")
        if record.get("rows") != table.num_rows:
            raise Damaged(f"has {table.num_rows} rows, its metadata records {record.get('rows')} (rows dropped or added)")
        if content_sha256(table) != record.get("sha256"):
            raise Damaged("its values do not match its checksum (edited after writing)")
    if table.num_rows == 0:
        raise Damaged("no rows")
    names = set(table.column_names)
    need = {"model", "revision", "probeset", "item_id", "margin", "correct", "work_key"}
    if not need <= names:
        raise Damaged(f"lacks column(s) {sorted(need - names)}")
    keys = set(table["work_key"].to_pylist())
    if len(keys) != 1:
        raise Damaged(f"mixes rows of {len(keys)} work keys")
    key = keys.pop()
    if record is not None and record.get("work_key") != key:
        raise Damaged("its rows' work key differs from its metadata's")
    margin = table["margin"].to_numpy(zero_copy_only=False).astype(float)
    correct = table["correct"].to_numpy(zero_copy_only=False)
    if {"logp_target", "logp_foil"} <= names:
        lt = table["logp_target"].to_numpy(zero_copy_only=False).astype(float)
        lf = table["logp_foil"].to_numpy(zero_copy_only=False).astype(float)
        scale = np.maximum(np.abs(lt), np.abs(lf)).astype(np.float32)
        tol = MARGIN_ULPS * np.spacing(scale).astype(float)
        bad = ~(np.abs(margin - (lt - lf)) <= tol)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise Damaged(f"{int(bad.sum())} row(s) with margin != logp_target - logp_foil "
                           f"(item {table['item_id'][i].as_py()}: {margin[i]!r} vs {lt[i] - lf[i]!r})")
    if (correct.astype(bool) != (margin > 0)).any():
        raise Damaged("row(s) with correct != (margin > 0)")
    if record is None:  # legacy file: derive its record from its rows
        first = table.slice(0, 1).to_pylist()[0]
        written = table["written_at"].to_numpy(zero_copy_only=False) if "written_at" in names else None
        record = {"format": 1, "work_key": key, "model": first["model"], "revision": first["revision"],
                  "probeset": first["probeset"], "step": first.get("step"),
                  "written_at": int(np.max(written)) if written is not None and len(written) else path.stat().st_mtime_ns}
    return record



@dataclass
class Scan:
    used: dict[tuple[str, str, str], tuple[Path, dict[str, Any], pa.Table]]
    damaged: list[tuple[Path, str]]
    duplicates: list[tuple[Path, str]]
    legacy: list[Path]


