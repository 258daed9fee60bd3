"""The results store: tidy Parquet, content-keyed, atomic.

Layout under a results folder (docs/ARCHITECTURE.md, "Results store")::

    RESULTS/items/model=<m>/<work-key>.parquet   one file per (model, revision, probe set)
    RESULTS/summary.parquet                       per (model, step, rule, condition, split)
    RESULTS/models.parquet                        per model: sizes, tokens per step, source
    RESULTS/health.parquet                        per (model, revision): status, reasons

A *work key* names one unit of scoring work by everything its numbers depend on: model,
revision, the revision's content (commit sha, or the weight files' sha256s), the probe
set's content hash, dtype, BOS choice, vocab rows and the scoring-code version. A rerun
skips a key that is stored and redoes a key that changed; since the content hash is in the
key, a cache can never hand back another model's (or another upload's) numbers.

Every file is written to a hidden temporary name in its final folder and renamed into
place (`os.replace` is atomic on POSIX), so a killed writer leaves either the whole file or
nothing. When a slot (model, revision, probe set) is re-scored under a new key, the new file
lands first and the superseded one is deleted after; if a kill falls between the two,
readers keep only the newest file per slot, so rows are never duplicated.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pythia_forensics.constants import (
    HEALTH_FILE,
    ITEMS_DIR,
    MODELS_FILE,
    STORE_TEMP_MAX_AGE_S,
    SUMMARY_FILE,
    SUMMARY_KEYS,
)
from pythia_forensics.errors import StoreError

__all__ = ["WorkKey", "ResultsStore", "summarize"]

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
_TEMP_PREFIX = ".tmp-"
# Columns every stored item row carries besides the score frame (ARCHITECTURE.md), plus the
# key's own fields so a row explains itself without its file name.
PROVENANCE_COLUMNS = (
    "repo", "step", "commit", "weights_sha256", "dtype", "batch_size", "device", "bos",
    "probeset", "probeset_sha256", "work_key", "pf_version", "torch_version",
    "transformers_version", "content_key", "vocab_rows", "code_version", "written_at",
)


def _slug(text: str) -> str:
    """A file-name-safe rendering of `text` (readability only; uniqueness comes from hashes)."""
    return _SLUG.sub("_", text).strip("._") or "_"


def _short_hash(*parts: str, n: int = 12) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:n]


def model_partition(model: str) -> str:
    """Partition folder name for a model (hub ids carry '/', which a folder name cannot)."""
    return f"model={_slug(model.replace('/', '--'))}"


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
    return out[cols]


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` via a temp file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # host + pid in the temp name let a later run tell a dead writer's leftovers from a live one's.
    tmp = path.parent / f"{_TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}@{uuid.uuid4().hex[:8]}@{path.name}"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:  # the rename must never publish unflushed bytes
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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

    # --- paths -----------------------------------------------------------------------------
    @property
    def items_dir(self) -> Path:
        return self.root / ITEMS_DIR

    def path_for(self, key: WorkKey) -> Path:
        return self.items_dir / model_partition(key.model) / f"{key.id}.parquet"

    def _item_files(self) -> list[Path]:
        if not self.items_dir.exists():
            return []
        return sorted(p for p in self.items_dir.glob("model=*/*.parquet") if not p.name.startswith("."))

    # --- keys ------------------------------------------------------------------------------
    def has(self, key: WorkKey) -> bool:
        """Whether the result for exactly this key is stored."""
        return self.path_for(key).exists()

    def keys(self) -> set[str]:
        """Every stored work-key id."""
        return {p.stem for p in self._item_files()}

    # --- writing ---------------------------------------------------------------------------
    def write(self, key: WorkKey, frame: pd.DataFrame, *, provenance: Mapping[str, object]) -> Path:
        """Store one unit's score frame with its provenance, atomically.

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
        rows["written_at"] = time.time_ns()
        if "step" in rows:
            rows["step"] = pd.array(rows["step"], dtype="Int64")
        path = self.path_for(key)
        _write_atomic(pa.Table.from_pandas(rows, preserve_index=False), path)
        self._drop_superseded(key)
        return path

    def _drop_superseded(self, key: WorkKey) -> None:
        """Delete older files of the same slot (a re-uploaded revision, an edited probe set)."""
        folder = self.path_for(key).parent
        for old in folder.glob(f"{key.slot}*.parquet"):
            if old.stem != key.id:
                old.unlink(missing_ok=True)

    # --- reading ---------------------------------------------------------------------------
    def items(self, *, models: Iterable[str] | None = None) -> pd.DataFrame:
        """All stored item rows as one frame (newest file per slot), sorted.

        Args:
            models: keep only these models (default: all).

        Returns:
            The item rows, sorted by model, probe set, step, revision, item_id.
        """
        wanted = None if models is None else {model_partition(m) for m in models}
        tables = []
        for path in self._item_files():
            if wanted is not None and path.parent.name not in wanted:
                continue
            try:
                tables.append(pq.read_table(path))
            except FileNotFoundError:  # superseded by a concurrent writer since listing
                continue
        if not tables:
            return pd.DataFrame()
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
        # A kill between publishing a slot's new file and deleting its old one leaves both:
        # keep only the newest per (model, revision, probe set).
        newest = frame.groupby(["model", "revision", "probeset"])["written_at"].transform("max")
        frame = frame[frame["written_at"] == newest]
        order = [c for c in ("model", "probeset", "step", "revision", "item_id") if c in frame]
        return frame.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """The stored summary table (empty frame if none is written yet)."""
        return self._read_table(SUMMARY_FILE)

    def refresh_summary(self) -> pd.DataFrame:
        """Recompute summary.parquet from the item rows and write it atomically.

        Returns:
            The summary frame written.
        """
        table = summarize(self.items())
        if not table.empty:
            table["step"] = pd.array(table["step"], dtype="Int64")
            _write_atomic(pa.Table.from_pandas(table, preserve_index=False), self.root / SUMMARY_FILE)
        return table

    # --- model and health tables -------------------------------------------------------------
    def models(self) -> pd.DataFrame:
        """models.parquet: per model params_total, params_nonembedding, tokens_per_step, source."""
        return self._read_table(MODELS_FILE)

    def write_models(self, rows: pd.DataFrame) -> None:
        """Upsert per-model rows (keyed by ``model``) into models.parquet."""
        self._upsert(MODELS_FILE, rows, ["model"])

    def health(self) -> pd.DataFrame:
        """health.parquet: per (model, revision) ``status`` (ok|flagged|bad) and ``reasons``."""
        return self._read_table(HEALTH_FILE)

    def write_health(self, rows: pd.DataFrame) -> None:
        """Upsert per-(model, revision) health rows into health.parquet."""
        self._upsert(HEALTH_FILE, rows, ["model", "revision"])

    def _read_table(self, name: str) -> pd.DataFrame:
        path = self.root / name
        if not path.exists():
            return pd.DataFrame()
        return pq.read_table(path).to_pandas()

    def _upsert(self, name: str, rows: pd.DataFrame, keys: list[str]) -> None:
        missing = [k for k in keys if k not in rows]
        if missing:
            raise StoreError(f"{name} rows lack key column(s) {missing}; every row needs {keys}")
        old = self._read_table(name)
        merged = rows if old.empty else pd.concat([old, rows], ignore_index=True)
        merged = merged.drop_duplicates(keys, keep="last").sort_values(keys).reset_index(drop=True)
        _write_atomic(pa.Table.from_pandas(merged, preserve_index=False), self.root / name)

    # --- housekeeping ------------------------------------------------------------------------
    def clean_temporaries(self) -> int:
        """Delete temp files left by killed writers (same host, dead pid; or older than a day).

        Returns:
            How many files were removed.
        """
        if not self.root.exists():
            return 0
        host = socket.gethostname()
        removed = 0
        for tmp in self.root.rglob(f"{_TEMP_PREFIX}*"):
            parts = tmp.name[len(_TEMP_PREFIX):].split("@")
            try:
                same_host_dead = parts[1] == host and not _pid_alive(int(parts[0]))
                too_old = time.time() - tmp.stat().st_mtime > STORE_TEMP_MAX_AGE_S
            except (IndexError, ValueError, FileNotFoundError):
                continue
            if same_host_dead or too_old:
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def require_items(self) -> pd.DataFrame:
        """Item rows, or a StoreError that says how to produce them."""
        frame = self.items()
        if frame.empty:
            raise StoreError(f"no results under {self.root}; run `pythia-forensics replay MODEL --probes P "
                             f"--results {self.root}` first")
        return frame
