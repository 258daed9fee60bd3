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

import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from pythia_forensics.atomic import write_text
from pythia_forensics.constants import (
    HEALTH_FILE,
    ITEMS_DIR,
    MODELS_FILE,
    QUARANTINE_DIR,
    STORE_FORMAT,
    SUMMARY_FILE,
)
from pythia_forensics.errors import StoreError
from pythia_forensics.sweep.itemfile import (
    ITEM_TYPES,
    LEGACY_PREFIX,
    PROVENANCE_COLUMNS,
    Damaged,
    Scan,
    WorkKey,
    check_items,
    content_sha256,
    item_table,
    model_partition,
    normalize,
    read_file,
    record_of,
    write_table,
)
from pythia_forensics.sweep.maintenance import StoreMaintenance, StoreProblem, StoreReport
from pythia_forensics.sweep.summary import SUMMARY_COLUMNS, summarize

__all__ = ["WorkKey", "ResultsStore", "StoreProblem", "StoreReport", "summarize", "content_sha256",
           "PROVENANCE_COLUMNS", "model_partition"]

_log = logging.getLogger(__name__)
# the order of `items()` rows (it fixes the summary's float sums)
_ITEM_ORDER = ("model", "probeset", "step", "revision", "item_id")


class ResultsStore(StoreMaintenance):
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
        self._model_rows: dict[str, dict[str, Any] | None] = {}
        # item files this store object wrote: path -> ((size, mtime_ns), record, table), so a
        # scan after a sweep (refresh_summary) reads back only what other writers added
        self._written: dict[Path, tuple[tuple[int, int], dict[str, Any], pa.Table]] = {}

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
        return self.items_dir / part, self.items_dir / f"{LEGACY_PREFIX}{part}"

    def _item_files(self) -> list[Path]:
        if not self.items_dir.exists():
            return []
        return sorted(p for p in self.items_dir.glob("*/*.parquet") if not p.name.startswith("."))

    @staticmethod
    def _is_legacy(path: Path) -> bool:
        return path.parent.name.startswith(LEGACY_PREFIX)

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
            check_items(read_file(path), path, legacy=False)
        except FileNotFoundError:
            return False
        except Damaged as exc:
            self._quarantine(path, str(exc))
            return False
        self._verified[path] = (st.st_size, st.st_mtime_ns)
        return True

    def keys(self) -> set[str]:
        """Every stored work-key id (file names; `verify` says which are intact)."""
        return {p.stem for p in self._item_files()}

    # --- writing ---------------------------------------------------------------------------
    def write(self, key: WorkKey, frame: pd.DataFrame | pa.Table, *, provenance: Mapping[str, object]) -> Path:
        """Store one unit's score frame with its provenance, atomically and durably.

        Args:
            key: the unit's work key.
            frame: the scorer's per-item frame (ARCHITECTURE.md columns), or the same columns
                as an Arrow table (`scoring.ScoredTable.table`; the same file either way).
            provenance: values for the provenance columns (repo, step, commit, ...); the key's
                own fields, ``work_key`` and ``written_at`` are filled in here.

        Returns:
            The Parquet file written.

        Raises:
            StoreError: the frame is empty.
        """
        if (frame.num_rows if isinstance(frame, pa.Table) else len(frame)) == 0:
            raise StoreError(f"refusing to store an empty score frame for {key.model} {key.revision}; "
                             "check the probe set has items")
        # ns wall clock: orders two writes of one slot even within one second
        written_at = time.time_ns()
        table = item_table(key, frame, provenance, written_at)
        step = table["step"][0].as_py() if "step" in table.column_names else None
        record = {"kind": "items", "work_key": key.id, "model": key.model, "revision": key.revision,
                  "probeset": key.probeset, "step": step,
                  "written_at": written_at, "model_row": self._model_row(key.model)}
        path = self.path_for(key)
        full, stamped = write_table(table, path, record)
        st = path.stat()
        self._written[path] = ((st.st_size, st.st_mtime_ns), full, stamped)
        self._verified[path] = (st.st_size, st.st_mtime_ns)
        self._drop_superseded(key)
        return path

    def _drop_superseded(self, key: WorkKey) -> None:
        """Delete older files of the same slot (a re-uploaded revision, an edited probe set)."""
        keep = self.path_for(key).name
        for folder in self._folders_for(key.model):
            # scandir + a prefix test: a glob per write cost more than the write's fsyncs
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith(key.slot) and entry.name.endswith(".parquet") and entry.name != keep:
                    Path(entry.path).unlink(missing_ok=True)

    # --- reading ---------------------------------------------------------------------------
    def _scan(self, *, models: Iterable[str] | None = None) -> Scan:
        """Read and check every item file; pick one intact file per slot (the newest)."""
        wanted = None if models is None else {f.name for m in models for f in self._folders_for(m)}
        candidates: dict[tuple[str, str, str], list[tuple[tuple[int, int, str], Path, dict, pa.Table]]] = {}
        damaged: list[tuple[Path, str]] = []
        legacy: list[Path] = []
        for path in self._item_files():
            if wanted is not None and path.parent.name not in wanted:
                continue
            try:
                record, table = self._read_items(path)
            except FileNotFoundError:  # superseded by a concurrent writer since listing
                continue
            except Damaged as exc:
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
        return Scan(used=used, damaged=damaged, duplicates=duplicates, legacy=legacy)

    def _read_items(self, path: Path) -> tuple[dict[str, Any], pa.Table]:
        """(record, table) of one intact item file; this object's own writes come from memory
        while the file is unchanged. Raises Damaged or FileNotFoundError."""
        known = self._written.get(path)
        if known is not None:
            st = path.stat()
            if known[0] == (st.st_size, st.st_mtime_ns):
                return known[1], known[2]
            del self._written[path]
        table = read_file(path)
        return check_items(table, path, legacy=self._is_legacy(path)), table

    def items(self, *, models: Iterable[str] | None = None, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """All intact item rows as one frame (the newest intact file per slot), sorted.

        Damaged files are moved to the quarantine folder with one warning line each (or, on a
        read-only store, skipped with the warning); duplicates of a slot are ignored.

        Args:
            models: keep only these models (default: all).
            columns: keep only these columns (default: all), plus the sort columns; columns
                no file has are left out.

        Returns:
            The item rows, sorted by model, probe set, step, revision, item_id.
        """
        scan = self._scan(models=models)
        for path, reason in scan.damaged:
            self._quarantine(path, reason)
        if scan.legacy:
            _log.warning(f"{len(scan.legacy)} item file(s) under {self.root} predate store format {STORE_FORMAT} "
                         f"(no checksums); `pythia-forensics verify {self.root} --repair` upgrades them")
        return self._frame(scan, columns)

    def missing(self) -> pd.DataFrame:
        """Checkpoints missing from the store, per model and probe set.

        A (model, probe set, revision) is missing when the model has that revision stored for
        another of its probe sets, or summary.parquet lists it, but no intact item file holds it
        (never written, deleted, or quarantined).

        Returns:
            Columns ``model, probeset, revision, step``, sorted by model, probe set, step.
        """
        return self._missing(self._scan())

    def _missing(self, scan: Scan) -> pd.DataFrame:
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
        # only the columns the summary reads: converting all ~40 to pandas costs ~4x more
        table = summarize(self.items(columns=SUMMARY_COLUMNS))
        if not table.empty:
            write_table(pa.Table.from_pandas(table, preserve_index=False), self.root / SUMMARY_FILE,
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
        self._model_rows.clear()

    def health(self) -> pd.DataFrame:
        """health.parquet: per (model, revision) ``status`` (ok|flagged|bad) and ``reasons``."""
        return self._read_table(HEALTH_FILE)

    def write_health(self, rows: pd.DataFrame) -> None:
        """Upsert per-(model, revision) health rows into health.parquet."""
        self._upsert(HEALTH_FILE, rows, ["model", "revision"])

    def _model_row(self, model: str) -> dict[str, Any] | None:
        """The model's models.parquet row with its dtypes, for the item file's own record."""
        if model not in self._model_rows:
            self._model_rows[model] = self._find_model_row(model)
        return self._model_rows[model]

    def _find_model_row(self, model: str) -> dict[str, Any] | None:
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
            table = read_file(path)
        except FileNotFoundError:
            return None, None, False
        except Damaged as exc:
            return None, str(exc), False
        record = record_of(table)
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
        write_table(pa.Table.from_pandas(merged, preserve_index=False), self.root / name, {"kind": name})

    # --- damage --------------------------------------------------------------------------------
    def _quarantine(self, path: Path, reason: str, *, quiet: bool = False) -> Path | None:
        """Move a damaged file into RESULTS/quarantine/ with a reason file; one warning line."""
        rel = self._rel(path)
        self._verified.pop(path, None)
        self._written.pop(path, None)
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

    @staticmethod
    def _frame(scan: Scan, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The used files' rows as one sorted frame (the order fixes the summary's float sums)."""
        tables = [t for _, _, t in scan.used.values()]
        if columns is not None:
            keep = set(columns) | set(_ITEM_ORDER)
            tables = [t.select([c for c in t.column_names if c in keep]) for t in tables]
        tables = [normalize(t, ITEM_TYPES).replace_schema_metadata(None) for t in tables]
        if not tables:
            return pd.DataFrame()
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
        if "step" in frame:
            frame["step"] = pd.array(frame["step"], dtype="Int64")
        order = [c for c in _ITEM_ORDER if c in frame]
        return frame.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)

    def require_items(self) -> pd.DataFrame:
        """Item rows, or a StoreError that says how to produce them."""
        frame = self.items()
        if frame.empty:
            raise StoreError(f"no results under {self.root}; run `pythia-forensics replay MODEL --probes P "
                             f"--results {self.root}` first")
        return frame

