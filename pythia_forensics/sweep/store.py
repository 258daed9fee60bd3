"""The results store: tidy Parquet, content-keyed, atomic, self-checking.

Layout under a results folder (docs/ARCHITECTURE.md, "Results store")::

    RESULTS/items/<model>/<work-key>.parquet   one file per (model, revision, probe set)
    RESULTS/summary.parquet                    per (model, step, rule, condition, split)
    RESULTS/models.parquet                     per model: sizes, tokens per step, source
    RESULTS/health.parquet                     per (model, revision): status, reasons
    RESULTS/quarantine/                        damaged files moved aside, each with a reason

The per-model folders are plain names (``EleutherAI--pythia-14m``), not hive-style
``model=...``: the ``model`` column inside the files is the one truth, so pandas, pyarrow,
polars and DuckDB read ``RESULTS/items`` as one table with the right ``model`` values.
Every item file has the same column types (a fixed schema), so those readers can stack them.

A *work key* names one unit of scoring work by everything its numbers depend on: model,
revision, the revision's content (commit sha, or the weight files' sha256s), the probe
set's content hash, dtype, BOS choice, vocab rows and the scoring-code version. A rerun
skips a key that is stored *and intact* and redoes a key that changed or is damaged.

Every Parquet file the store writes carries, in its key-value metadata, its row count and a
sha256 over a canonical serialization of its values (`content_sha256`), plus its work key.
A file that is truncated, empty, garbage, short of rows, edited, or holds another key's rows
is *damaged*: it is moved to ``RESULTS/quarantine/`` with a one-line warning and a reason
file, and the next replay recomputes it. Two files of one slot (a copy, or a superseded file
a kill left behind) are *duplicates*: readers keep the newest intact one. `ResultsStore.verify`
reports all of this; ``pythia-forensics verify RESULTS --repair`` fixes what can be fixed.

Writes go through `pythia_forensics.atomic` with ``durable=True`` (fsync of file and folder).
For interruption tests, the environment variable named by ``constants.FAULT_ENV`` makes the
process exit hard after, or in the middle of, its N-th store write (see constants.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pythia_forensics.atomic import TMP_PREFIX, atomic_path, temp_owner, write_text
from pythia_forensics.constants import (
    FAULT_ENV,
    FAULT_EXIT_STATUS,
    HEALTH_FILE,
    ITEMS_DIR,
    MODELS_FILE,
    QUARANTINE_DIR,
    STORE_FORMAT,
    STORE_METADATA_KEY,
    STORE_TEMP_MAX_AGE_S,
    SUMMARY_FILE,
    SUMMARY_KEYS,
)
from pythia_forensics.errors import StoreError

__all__ = ["WorkKey", "ResultsStore", "StoreProblem", "StoreReport", "summarize", "content_sha256"]

_log = logging.getLogger(__name__)
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
_LEGACY_PREFIX = "model="  # store format 1 named model folders hive-style
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
_ITEM_TYPES: dict[str, pa.DataType] = {
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
# margin is logp_target - logp_foil computed in at least fp32: a stored margin further from
# the stored difference than a few fp32 steps at the log-probs' magnitude was edited.
_MARGIN_ULPS = 4


def _slug(text: str) -> str:
    """A file-name-safe rendering of `text` (readability only; uniqueness comes from hashes)."""
    return _SLUG.sub("_", text).strip("._") or "_"


def _short_hash(*parts: str, n: int = 12) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:n]


def model_partition(model: str) -> str:
    """Folder name for a model's item files (hub ids carry '/', which a folder name cannot)."""
    return _slug(model.replace("/", "--"))


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
        return f"{_slug(self.revision)}_{_short_hash(self.model, self.revision, self.probeset)}_"

    @property
    def id(self) -> str:
        """The work key as a string: readable slot prefix + hash of every field."""
        blob = json.dumps(asdict(self), sort_keys=True)
        return self.slot + hashlib.sha256(blob.encode()).hexdigest()[:24]


def summarize(items: pd.DataFrame) -> pd.DataFrame:
    """Per (model, step, revision, probe set, rule, condition, split): n, accuracy, mean margin.

    Args:
        items: item rows (score frame + provenance), as `ResultsStore.items()` returns.

    Returns:
        One row per group with columns SUMMARY_KEYS + ``n, accuracy, mean_margin``, sorted.
    """
    cols = [*SUMMARY_KEYS, "n", "accuracy", "mean_margin"]
    if items.empty:
        return pd.DataFrame(columns=cols)
    grouped = items.groupby(list(SUMMARY_KEYS), dropna=False, sort=True)
    out = grouped.agg(
        n=("item_id", "size"),
        accuracy=("correct", "mean"),
        mean_margin=("margin", "mean"),
    ).reset_index()
    out["step"] = pd.array(out["step"], dtype="Int64")
    return out[cols]


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
    for name in sorted(table.column_names):
        col = table[name].combine_chunks()
        kind = col.type
        h.update(b"\x1e" + name.encode("utf-8", "surrogatepass") + b"\x1f")
        h.update(np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        if pa.types.is_floating(kind):
            h.update(b"f" + col.cast(pa.float64()).fill_null(0.0).to_numpy().astype("<f8").tobytes())
        elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            h.update(b"i" + col.cast(pa.int64()).fill_null(0).to_numpy().astype("<i8").tobytes())
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            # length-prefixed UTF-8 straight from the Arrow buffers (nulls as "", the mask says which)
            arr = col.fill_null("").cast(pa.large_string())
            arr = pa.concat_arrays([arr]) if arr.offset else arr
            _, offsets, data = arr.buffers()
            offs = np.frombuffer(offsets, dtype="<i8")[: len(arr) + 1]
            h.update(b"s" + (offs - offs[0]).tobytes())
            if data is not None:
                h.update(memoryview(data)[int(offs[0]):int(offs[-1])])
        else:
            text = json.dumps(col.to_pylist(), ensure_ascii=False, default=str, separators=(",", ":"))
            h.update(b"o" + text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _record_of(table_or_schema: pa.Table | pa.Schema) -> dict[str, Any] | None:
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    raw = (schema.metadata or {}).get(STORE_METADATA_KEY.encode())
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return {"format": -1}
    return record if isinstance(record, dict) else {"format": -1}


def _normalize(table: pa.Table, types: Mapping[str, pa.DataType]) -> pa.Table:
    """Cast known columns to their fixed types; an all-null column of unknown meaning to string."""
    for i, name in enumerate(table.column_names):
        want = types.get(name, pa.string() if pa.types.is_null(table.schema.field(i).type) else None)
        if want is not None and table.schema.field(i).type != want:
            table = table.set_column(i, pa.field(name, want), table.column(i).cast(want))
    return table


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


def _write_table(table: pa.Table, path: Path, record: Mapping[str, Any]) -> None:
    """Stamp `record` + row count + checksum into `table`'s metadata, write it durably."""
    global _writes_done
    fault = _fault_spec()
    _writes_done += 1
    n = _writes_done
    full = {"format": STORE_FORMAT, **record, "rows": table.num_rows, "sha256": content_sha256(table)}
    meta = dict(table.schema.metadata or {})
    meta[STORE_METADATA_KEY.encode()] = json.dumps(full, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=True) as tmp:
        pq.write_table(table, tmp)
        if fault == ("store-write-mid", n):
            with open(tmp, "r+b") as fh:  # a writer killed half-way: half a file under the temp name
                fh.truncate(max(1, tmp.stat().st_size // 2))
            os._exit(FAULT_EXIT_STATUS)
    if fault == ("store-write", n):
        os._exit(FAULT_EXIT_STATUS)


def _read(path: Path) -> pa.Table:
    """Read one Parquet file; raises _Damaged for anything but a whole, readable file."""
    try:
        if path.stat().st_size == 0:
            raise _Damaged("zero bytes")
        return pq.read_table(path)
    except FileNotFoundError:
        raise
    except _Damaged:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        text = str(exc).strip()
        text = text.split("': ", 1)[1] if "': " in text else text  # drop pyarrow's restated path
        first = text.splitlines()[0] if text else type(exc).__name__
        raise _Damaged(f"unreadable Parquet ({first[:120]})") from None


class _Damaged(Exception):
    """Internal: a file failed a check; the message is the reason."""


def _check_items(table: pa.Table, path: Path, *, legacy: bool) -> dict[str, Any]:
    """The item file's record if it is intact; raises _Damaged otherwise."""
    record = _record_of(table)
    if record is None and not legacy:
        raise _Damaged("no checksum in its metadata (written outside the tool, or edited and rewritten)")
    if record is not None:
        if record.get("format") != STORE_FORMAT:
            raise _Damaged(f"unknown store format {record.get('format')!r} in its metadata")
        if record.get("rows") != table.num_rows:
            raise _Damaged(f"has {table.num_rows} rows, its metadata records {record.get('rows')} (rows dropped or added)")
        if content_sha256(table) != record.get("sha256"):
            raise _Damaged("its values do not match its checksum (edited after writing)")
    if table.num_rows == 0:
        raise _Damaged("no rows")
    names = set(table.column_names)
    need = {"model", "revision", "probeset", "item_id", "margin", "correct", "work_key"}
    if not need <= names:
        raise _Damaged(f"lacks column(s) {sorted(need - names)}")
    keys = set(table["work_key"].to_pylist())
    if len(keys) != 1:
        raise _Damaged(f"mixes rows of {len(keys)} work keys")
    key = keys.pop()
    if record is not None and record.get("work_key") != key:
        raise _Damaged("its rows' work key differs from its metadata's")
    margin = table["margin"].to_numpy(zero_copy_only=False).astype(float)
    correct = table["correct"].to_numpy(zero_copy_only=False)
    if {"logp_target", "logp_foil"} <= names:
        lt = table["logp_target"].to_numpy(zero_copy_only=False).astype(float)
        lf = table["logp_foil"].to_numpy(zero_copy_only=False).astype(float)
        scale = np.maximum(np.abs(lt), np.abs(lf)).astype(np.float32)
        tol = _MARGIN_ULPS * np.spacing(scale).astype(float)
        bad = ~(np.abs(margin - (lt - lf)) <= tol)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _Damaged(f"{int(bad.sum())} row(s) with margin != logp_target - logp_foil "
                           f"(item {table['item_id'][i].as_py()}: {margin[i]!r} vs {lt[i] - lf[i]!r})")
    if (correct.astype(bool) != (margin > 0)).any():
        raise _Damaged("row(s) with correct != (margin > 0)")
    if record is None:  # legacy file: derive its record from its rows
        first = table.slice(0, 1).to_pylist()[0]
        written = table["written_at"].to_numpy(zero_copy_only=False) if "written_at" in names else None
        record = {"format": 1, "work_key": key, "model": first["model"], "revision": first["revision"],
                  "probeset": first["probeset"], "step": first.get("step"),
                  "written_at": int(np.max(written)) if written is not None and len(written) else path.stat().st_mtime_ns}
    return record


# --- reports -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreProblem:
    """One thing wrong with a store.

    Attributes:
        kind: ``damaged`` | ``duplicate`` | ``missing`` | ``legacy`` | ``stale`` | ``temporary``.
        path: the file concerned, relative to the results folder ("" for a missing slot).
        reason: what is wrong, in words.
    """

    kind: str
    path: str
    reason: str

    def line(self) -> str:
        return f"{self.kind}: {self.path}: {self.reason}" if self.path else f"{self.kind}: {self.reason}"


@dataclass(frozen=True)
class StoreReport:
    """What `ResultsStore.verify` found (after repairing, when asked to).

    Attributes:
        root: the results folder.
        intact: item files that passed every check and are used.
        problems: one entry per problem, in a stable order.
        missing: the gap table of `ResultsStore.missing` (model, probeset, revision, step).
        repaired: one line per action taken by ``repair=True``.
    """

    root: Path
    intact: int
    problems: tuple[StoreProblem, ...]
    missing: pd.DataFrame = field(default_factory=pd.DataFrame)
    repaired: tuple[str, ...] = ()

    def count(self, kind: str) -> int:
        return sum(p.kind == kind for p in self.problems)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Scan:
    used: dict[tuple[str, str, str], tuple[Path, dict[str, Any], pa.Table]]
    damaged: list[tuple[Path, str]]
    duplicates: list[tuple[Path, str]]
    legacy: list[Path]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsStore:
    """A results folder: item rows keyed by work key, plus summary/models/health tables.

    Args:
        root: the results folder (created on first write).

    Several processes (ranks of one node, Slurm array tasks) may write to one store at once:
    they write disjoint keys, and every file lands by atomic rename.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._verified: dict[Path, tuple[int, int]] = {}   # path -> (size, mtime_ns) checked intact
        self._models_cache: pd.DataFrame | None = None

    # --- paths -----------------------------------------------------------------------------
    @property
    def items_dir(self) -> Path:
        return self.root / ITEMS_DIR

    @property
    def quarantine_dir(self) -> Path:
        return self.root / QUARANTINE_DIR

    def path_for(self, key: WorkKey) -> Path:
        return self.items_dir / model_partition(key.model) / f"{key.id}.parquet"

    def _folders_for(self, model: str) -> tuple[Path, Path]:
        part = model_partition(model)
        return self.items_dir / part, self.items_dir / f"{_LEGACY_PREFIX}{part}"

    def _item_files(self) -> list[Path]:
        if not self.items_dir.exists():
            return []
        return sorted(p for p in self.items_dir.glob("*/*.parquet") if not p.name.startswith("."))

    @staticmethod
    def _is_legacy(path: Path) -> bool:
        return path.parent.name.startswith(_LEGACY_PREFIX)

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    # --- keys ------------------------------------------------------------------------------
    def has(self, key: WorkKey) -> bool:
        """Whether the result for exactly this key is stored and intact.

        A damaged file at the key's path is moved to the quarantine folder (one warning line)
        and reported as absent, so the caller recomputes it.
        """
        path = self.path_for(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        if self._verified.get(path) == (st.st_size, st.st_mtime_ns):
            return True
        try:
            _check_items(_read(path), path, legacy=False)
        except FileNotFoundError:
            return False
        except _Damaged as exc:
            self._quarantine(path, str(exc))
            return False
        self._verified[path] = (st.st_size, st.st_mtime_ns)
        return True

    def keys(self) -> set[str]:
        """Every stored work-key id (file names; `verify` says which are intact)."""
        return {p.stem for p in self._item_files()}

    # --- writing ---------------------------------------------------------------------------
    def write(self, key: WorkKey, frame: pd.DataFrame, *, provenance: Mapping[str, object]) -> Path:
        """Store one unit's score frame with its provenance, atomically and durably.

        Args:
            key: the unit's work key.
            frame: the scorer's per-item frame (ARCHITECTURE.md columns).
            provenance: values for the provenance columns (repo, step, commit, ...); the key's
                own fields, ``work_key`` and ``written_at`` are filled in here.

        Returns:
            The Parquet file written.

        Raises:
            StoreError: the frame is empty.
        """
        if frame.empty:
            raise StoreError(f"refusing to store an empty score frame for {key.model} {key.revision}; "
                             "check the probe set has items")
        rows = frame.copy()
        # the scorer names the model by what it was given (often a path); the key's name wins
        rows["model"] = key.model
        rows["revision"] = key.revision
        for name, value in provenance.items():
            rows[name] = value
        rows["probeset"] = key.probeset
        rows["probeset_sha256"] = key.probeset_sha256
        rows["content_key"] = key.content_key
        rows["dtype"] = key.dtype
        rows["bos"] = bool(key.bos)
        rows["vocab_rows"] = key.vocab_rows
        rows["code_version"] = key.code_version
        rows["work_key"] = key.id
        # ns wall clock: orders two writes of one slot even within one second
        written_at = time.time_ns()
        rows["written_at"] = written_at
        for col in ("step", "tokens"):  # tokens: training tokens seen (None where the suite has none)
            if col in rows:
                rows[col] = pd.array(rows[col], dtype="Int64")
        table = _normalize(pa.Table.from_pandas(rows, preserve_index=False), _ITEM_TYPES)
        step = rows["step"].iloc[0] if "step" in rows else None
        record = {"kind": "items", "work_key": key.id, "model": key.model, "revision": key.revision,
                  "probeset": key.probeset, "step": None if pd.isna(step) else int(step),
                  "written_at": written_at, "model_row": self._model_row(key.model)}
        path = self.path_for(key)
        _write_table(table, path, record)
        self._drop_superseded(key)
        return path

    def _drop_superseded(self, key: WorkKey) -> None:
        """Delete older files of the same slot (a re-uploaded revision, an edited probe set)."""
        for folder in self._folders_for(key.model):
            for old in folder.glob(f"{key.slot}*.parquet"):
                if old != self.path_for(key):
                    old.unlink(missing_ok=True)

    # --- reading ---------------------------------------------------------------------------
    def _scan(self, *, models: Iterable[str] | None = None) -> _Scan:
        """Read and check every item file; pick one intact file per slot (the newest)."""
        wanted = None if models is None else {f.name for m in models for f in self._folders_for(m)}
        candidates: dict[tuple[str, str, str], list[tuple[tuple[int, int, str], Path, dict, pa.Table]]] = {}
        damaged: list[tuple[Path, str]] = []
        legacy: list[Path] = []
        for path in self._item_files():
            if wanted is not None and path.parent.name not in wanted:
                continue
            is_legacy = self._is_legacy(path)
            try:
                table = _read(path)
                record = _check_items(table, path, legacy=is_legacy)
            except FileNotFoundError:  # superseded by a concurrent writer since listing
                continue
            except _Damaged as exc:
                damaged.append((path, str(exc)))
                continue
            if record.get("format") == 1:
                legacy.append(path)
            slot = (str(record["model"]), str(record["revision"]), str(record["probeset"]))
            # newest write first; between equal times (a copy) the file named for its key, then
            # a format-2 file, then the name order
            rank = (int(record.get("written_at") or 0), int(path.stem == record["work_key"]),
                    int(record.get("format") == STORE_FORMAT), path.name)
            candidates.setdefault(slot, []).append((rank, path, record, table))
        used, duplicates = {}, []
        for slot, options in candidates.items():
            options.sort(key=lambda o: o[0], reverse=True)
            _, path, record, table = options[0]
            used[slot] = (path, record, table)
            for _, other, _, _ in options[1:]:
                duplicates.append((other, f"second file of slot {'/'.join(slot)}; {self._rel(path)} is used"))
        return _Scan(used=used, damaged=damaged, duplicates=duplicates, legacy=legacy)

    def items(self, *, models: Iterable[str] | None = None) -> pd.DataFrame:
        """All intact item rows as one frame (the newest intact file per slot), sorted.

        Damaged files are moved to the quarantine folder with one warning line each (or, on a
        read-only store, skipped with the warning); duplicates of a slot are ignored.

        Args:
            models: keep only these models (default: all).

        Returns:
            The item rows, sorted by model, probe set, step, revision, item_id.
        """
        scan = self._scan(models=models)
        for path, reason in scan.damaged:
            self._quarantine(path, reason)
        if scan.legacy:
            _log.warning(f"{len(scan.legacy)} item file(s) under {self.root} predate store format {STORE_FORMAT} "
                         f"(no checksums); `pythia-forensics verify {self.root} --repair` upgrades them")
        return self._frame(scan)

    def missing(self) -> pd.DataFrame:
        """Checkpoints missing from the store, per model and probe set.

        A (model, probe set, revision) is missing when the model has that revision stored for
        another of its probe sets, or summary.parquet lists it, but no intact item file holds it
        (never written, deleted, or quarantined).

        Returns:
            Columns ``model, probeset, revision, step``, sorted by model, probe set, step.
        """
        return self._missing(self._scan())

    def _missing(self, scan: _Scan) -> pd.DataFrame:
        cols = ["model", "probeset", "revision", "step"]
        present = set(scan.used)
        step_of: dict[tuple[str, str], Any] = {}
        sets_of: dict[str, set[str]] = {}
        revs_of: dict[str, set[str]] = {}
        for (model, revision, probeset), (_, record, _) in scan.used.items():
            sets_of.setdefault(model, set()).add(probeset)
            revs_of.setdefault(model, set()).add(revision)
            step_of[(model, revision)] = record.get("step")
        summary = self._read_table(SUMMARY_FILE, rebuild=False)
        if not summary.empty and {"model", "revision", "probeset"} <= set(summary.columns):
            for row in summary[["model", "revision", "probeset", "step"]].drop_duplicates().itertuples(index=False):
                sets_of.setdefault(row.model, set()).add(row.probeset)
                revs_of.setdefault(row.model, set()).add(row.revision)
                step_of.setdefault((row.model, row.revision), None if pd.isna(row.step) else int(row.step))
        gaps = [(m, p, r, step_of.get((m, r))) for m in sorted(sets_of) for p in sorted(sets_of[m])
                for r in sorted(revs_of.get(m, ())) if (m, r, p) not in present]
        frame = pd.DataFrame(gaps, columns=cols)
        frame["step"] = pd.array(frame["step"], dtype="Int64")
        return frame.sort_values(["model", "probeset", "step", "revision"], na_position="last",
                                 kind="stable").reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """The stored summary table (empty frame if none is written yet; rebuilt if damaged)."""
        return self._read_table(SUMMARY_FILE)

    def refresh_summary(self) -> pd.DataFrame:
        """Recompute summary.parquet from the intact item rows and write it atomically.

        Returns:
            The summary frame written.
        """
        table = summarize(self.items())
        if not table.empty:
            _write_table(pa.Table.from_pandas(table, preserve_index=False), self.root / SUMMARY_FILE,
                         {"kind": "summary"})
        return table

    # --- model and health tables -------------------------------------------------------------
    def models(self) -> pd.DataFrame:
        """models.parquet: per model params_total, params_nonembedding, tokens_per_step, source.

        A damaged table is quarantined and rebuilt from the copies of each model's row that
        every item file carries.
        """
        return self._read_table(MODELS_FILE)

    def write_models(self, rows: pd.DataFrame) -> None:
        """Upsert per-model rows (keyed by ``model``) into models.parquet."""
        self._upsert(MODELS_FILE, rows, ["model"])
        self._models_cache = None

    def health(self) -> pd.DataFrame:
        """health.parquet: per (model, revision) ``status`` (ok|flagged|bad) and ``reasons``."""
        return self._read_table(HEALTH_FILE)

    def write_health(self, rows: pd.DataFrame) -> None:
        """Upsert per-(model, revision) health rows into health.parquet."""
        self._upsert(HEALTH_FILE, rows, ["model", "revision"])

    def _model_row(self, model: str) -> dict[str, Any] | None:
        """The model's models.parquet row with its dtypes, for the item file's own record."""
        if self._models_cache is None:
            self._models_cache = self.models()
        table = self._models_cache
        if table.empty or "model" not in table:
            return None
        hit = table[table["model"] == model]
        if hit.empty:
            return None
        row = hit.iloc[0]
        values = {c: (None if pd.api.types.is_scalar(v) and pd.isna(v) else v.item() if hasattr(v, "item") else v)
                  for c, v in row.items()}
        return {"values": values, "columns": list(table.columns), "dtypes": {c: str(t) for c, t in table.dtypes.items()}}

    def _check_table(self, name: str) -> tuple[pd.DataFrame | None, str | None, bool]:
        """(frame, damage reason, legacy) of one of the store's tables; frame None if absent/damaged."""
        path = self.root / name
        try:
            table = _read(path)
        except FileNotFoundError:
            return None, None, False
        except _Damaged as exc:
            return None, str(exc), False
        record = _record_of(table)
        if record is None:  # written before checksums: readable, unverifiable
            return table.to_pandas(), None, True
        if record.get("rows") != table.num_rows:
            return None, f"has {table.num_rows} rows, its metadata records {record.get('rows')}", False
        if content_sha256(table) != record.get("sha256"):
            return None, "its values do not match its checksum (edited after writing)", False
        return table.to_pandas(), None, False

    def _read_table(self, name: str, *, rebuild: bool = True) -> pd.DataFrame:
        frame, reason, _ = self._check_table(name)
        if frame is not None:
            return frame
        if reason is None:
            return pd.DataFrame()
        if rebuild:
            self._quarantine(self.root / name, reason)
            return self._rebuild(name)
        return pd.DataFrame()

    def _rebuild(self, name: str) -> pd.DataFrame:
        """Recompute a damaged or missing table from the item files (health cannot be)."""
        try:
            if name == SUMMARY_FILE:
                return self.refresh_summary()
            if name == MODELS_FILE:
                rows = self._models_from_items()
                if not rows.empty:
                    self._upsert(MODELS_FILE, rows, ["model"])
                return rows
        except OSError as exc:  # a read-only store: use the rebuilt table without writing it
            _log.warning(f"cannot rewrite {self._rel(self.root / name)} ({exc}); using a rebuilt copy in memory")
            return summarize(self.items()) if name == SUMMARY_FILE else self._models_from_items()
        _log.warning(f"{self._rel(self.root / name)} is gone; rerun `pythia-forensics health ... --results "
                     f"{self.root}` to recompute it")
        return pd.DataFrame()

    def _models_from_items(self) -> pd.DataFrame:
        rows, dtypes, columns = [], {}, []
        for _, record, _ in self._scan().used.values():
            got = record.get("model_row")
            if got and got.get("values", {}).get("model") not in {r["model"] for r in rows}:
                rows.append(got["values"])
                dtypes.update(got.get("dtypes", {}))
                columns += [c for c in got.get("columns", ()) if c not in columns]
        if not rows:
            return pd.DataFrame()
        frame = pd.DataFrame(rows)
        frame = frame[[c for c in columns if c in frame] + [c for c in frame if c not in columns]]
        for col, dtype in dtypes.items():
            if col in frame:
                frame[col] = frame[col].astype(dtype)
        return frame.sort_values("model").reset_index(drop=True)

    def _upsert(self, name: str, rows: pd.DataFrame, keys: list[str]) -> None:
        missing = [k for k in keys if k not in rows]
        if missing:
            raise StoreError(f"{name} rows lack key column(s) {missing}; every row needs {keys}")
        frame, reason, _ = self._check_table(name)
        if reason is not None:
            self._quarantine(self.root / name, reason)
            frame = self._models_from_items() if name == MODELS_FILE else None
        old = frame if frame is not None else pd.DataFrame()
        merged = rows if old.empty else pd.concat([old, rows], ignore_index=True)
        merged = merged.drop_duplicates(keys, keep="last").sort_values(keys).reset_index(drop=True)
        _write_table(pa.Table.from_pandas(merged, preserve_index=False), self.root / name, {"kind": name})

    # --- damage --------------------------------------------------------------------------------
    def _quarantine(self, path: Path, reason: str, *, quiet: bool = False) -> Path | None:
        """Move a damaged file into RESULTS/quarantine/ with a reason file; one warning line."""
        rel = self._rel(path)
        self._verified.pop(path, None)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self.quarantine_dir / f"{stamp}-{uuid.uuid4().hex[:6]}-{rel.replace(os.sep, '__')}"
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        except FileNotFoundError:  # another process moved or superseded it first
            return None
        except OSError as exc:
            _log.warning(f"{rel}: {reason}; ignored (cannot move it aside: {exc.strerror or exc})")
            return None
        write_text(dest.with_name(dest.name + ".reason.txt"), f"{rel}: {reason}\n")
        if not quiet:  # verify --repair reports its own actions
            _log.warning(f"{rel}: {reason}; moved to {self._rel(dest)}; a replay recomputes it")
        return dest

    def _temporaries(self) -> list[tuple[Path, bool]]:
        """(temp file, removable) for every temp file a writer left under the store."""
        if not self.root.exists():
            return []
        host = socket.gethostname()
        out = []
        for tmp in self.root.rglob(f"{TMP_PREFIX}*"):
            if QUARANTINE_DIR in tmp.relative_to(self.root).parts:
                continue
            owner = temp_owner(tmp)
            try:
                too_old = time.time() - tmp.stat().st_mtime > STORE_TEMP_MAX_AGE_S
            except FileNotFoundError:
                continue
            dead = owner is not None and owner[0] == host and not _pid_alive(owner[1])
            out.append((tmp, dead or too_old))
        return out

    # --- housekeeping ------------------------------------------------------------------------
    def clean_temporaries(self) -> int:
        """Delete temp files left by killed writers (same host, dead pid; or older than a day).

        Returns:
            How many files were removed.
        """
        removed = 0
        for tmp, removable in self._temporaries():
            if removable:
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def verify(self, *, repair: bool = False) -> StoreReport:
        """Check every file of the store; with `repair`, fix what can be fixed and check again.

        Repair moves damaged and duplicate item files to the quarantine folder, upgrades
        store-format-1 files (``model=`` folders, no checksums) in place, deletes dead writers'
        temp files, and rebuilds summary.parquet and (when damaged) models.parquet from the item
        files. Missing checkpoints stay missing: a replay recomputes them.

        Args:
            repair: fix what can be fixed.

        Returns:
            The `StoreReport` (of the state after repairing, when `repair`).
        """
        actions: list[str] = []
        if repair:
            actions = self._repair()
        scan = self._scan()
        problems = [StoreProblem("damaged", self._rel(p), r) for p, r in scan.damaged]
        problems += [StoreProblem("duplicate", self._rel(p), r) for p, r in scan.duplicates]
        problems += [StoreProblem("legacy", self._rel(p), "store format 1 (no checksum); --repair upgrades it")
                     for p in scan.legacy]
        for name in (SUMMARY_FILE, MODELS_FILE, HEALTH_FILE):
            frame, reason, legacy = self._check_table(name)
            if reason is not None:
                problems.append(StoreProblem("damaged", name, reason))
            elif legacy:
                problems.append(StoreProblem("legacy", name, "written before checksums; --repair rewrites it"))
        if scan.used and not (self.root / MODELS_FILE).exists() and not self._models_from_items().empty:
            problems.append(StoreProblem("missing", MODELS_FILE, "absent; --repair rebuilds it from the item files"))
        if scan.used:
            expect = summarize(self._frame(scan))
            frame, reason, _ = self._check_table(SUMMARY_FILE)
            if reason is None and not self._same_summary(frame, expect):
                problems.append(StoreProblem("stale", SUMMARY_FILE, "absent or disagrees with the intact item "
                                             "files; --repair rebuilds it"))
        for tmp, removable in self._temporaries():
            if removable:
                problems.append(StoreProblem("temporary", self._rel(tmp), "left by a killed writer; --repair deletes it"))
        gaps = self._missing(scan)
        for row in gaps.itertuples(index=False):
            step = "" if pd.isna(row.step) else f" (step {int(row.step)})"
            problems.append(StoreProblem("missing", "", f"{row.model} {row.revision}{step} for probe set "
                                         f"{row.probeset}: a replay recomputes it"))
        return StoreReport(root=self.root, intact=len(scan.used), problems=tuple(problems), missing=gaps,
                           repaired=tuple(actions))

    @staticmethod
    def _frame(scan: _Scan) -> pd.DataFrame:
        """The used files' rows as one sorted frame (the order fixes the summary's float sums)."""
        tables = [_normalize(t, _ITEM_TYPES).replace_schema_metadata(None) for _, _, t in scan.used.values()]
        if not tables:
            return pd.DataFrame()
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
        if "step" in frame:
            frame["step"] = pd.array(frame["step"], dtype="Int64")
        order = [c for c in ("model", "probeset", "step", "revision", "item_id") if c in frame]
        return frame.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)

    @staticmethod
    def _same_summary(stored: pd.DataFrame | None, expect: pd.DataFrame) -> bool:
        if stored is None or stored.empty or list(stored.columns) != list(expect.columns) or len(stored) != len(expect):
            return False
        a = stored.reset_index(drop=True)
        b = expect.reset_index(drop=True)
        try:
            pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=True)
        except AssertionError:
            return False
        return True

    def _repair(self) -> list[str]:
        actions: list[str] = []
        removed = self.clean_temporaries()
        if removed:
            actions.append(f"deleted {removed} temp file(s) of killed writers")
        scan = self._scan()
        for path, reason in scan.damaged:
            if self._quarantine(path, reason, quiet=True) is not None:
                actions.append(f"quarantined {self._rel(path)}: {reason}")
        for path, reason in scan.duplicates:
            if self._quarantine(path, reason, quiet=True) is not None:
                actions.append(f"moved duplicate {self._rel(path)} aside ({reason})")
        for path in scan.legacy:
            if path.exists():
                actions.append(self._upgrade(path))
        for name in (MODELS_FILE, HEALTH_FILE):
            frame, reason, legacy = self._check_table(name)
            if reason is not None:
                self._quarantine(self.root / name, reason, quiet=True)
                rebuilt = self._rebuild(name)
                actions.append(f"quarantined {name} ({reason})" + (f"; rebuilt {len(rebuilt)} row(s) from the item files"
                                                                  if not rebuilt.empty else ""))
            elif legacy and frame is not None:
                _write_table(pa.Table.from_pandas(frame, preserve_index=False), self.root / name, {"kind": name})
                actions.append(f"rewrote {name} with a checksum")
        if not (self.root / MODELS_FILE).exists():
            rows = self._models_from_items()
            if not rows.empty:
                self._upsert(MODELS_FILE, rows, ["model"])
                actions.append(f"rebuilt {MODELS_FILE} ({len(rows)} row(s)) from the item files")
        frame, reason, _ = self._check_table(SUMMARY_FILE)
        if reason is not None:
            self._quarantine(self.root / SUMMARY_FILE, reason, quiet=True)
        if self._scan().used:
            self.refresh_summary()
            actions.append(f"rebuilt {SUMMARY_FILE} from the intact item files")
        return actions

    def _upgrade(self, path: Path) -> str:
        """Rewrite a store-format-1 item file as format 2 (own folder name, checksum)."""
        table = _read(path)
        record = _check_items(table, path, legacy=True)
        model = str(record["model"])
        target = self.items_dir / model_partition(model) / path.name
        rec = {k: record[k] for k in ("work_key", "model", "revision", "probeset", "step", "written_at")}
        _write_table(_normalize(table.replace_schema_metadata(None), _ITEM_TYPES), target,
                     {"kind": "items", **rec, "model_row": self._model_row(model)})
        path.unlink(missing_ok=True)
        with_rest = path.parent
        if with_rest.exists() and not any(with_rest.iterdir()):
            with_rest.rmdir()
        return f"upgraded {self._rel(path)} -> {self._rel(target)}"

    def require_items(self) -> pd.DataFrame:
        """Item rows, or a StoreError that says how to produce them."""
        frame = self.items()
        if frame.empty:
            raise StoreError(f"no results under {self.root}; run `pythia-forensics replay MODEL --probes P "
                             f"--results {self.root}` first")
        return frame
