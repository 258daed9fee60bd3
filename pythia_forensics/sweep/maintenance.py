"""Keeping a results store sound: `ResultsStore.verify`, its repairs, and temp-file cleanup.

`StoreMaintenance` is a part of `ResultsStore` (its base class), kept in its own module so
the store's everyday paths (has, write, items) read on their own. It finds damaged and
duplicate item files, store-format-1 files, stale or damaged tables, dead writers' temp
files and missing checkpoints, and with ``repair=True`` fixes what can be fixed.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pythia_forensics.atomic import TMP_PREFIX, temp_owner
from pythia_forensics.constants import FAILURES_DIR, HEALTH_FILE, MODELS_FILE, QUARANTINE_DIR, SUMMARY_FILE
from pythia_forensics.sweep.itemfile import ITEM_TYPES, check_items, model_partition, normalize, read_file, write_table
from pythia_forensics.sweep.summary import summarize

__all__ = ["StoreMaintenance", "StoreProblem", "StoreReport", "STORE_TEMP_MAX_AGE_S", "read_failures"]

# A temp file this old is a dead writer's leftover even when its host cannot be checked.
STORE_TEMP_MAX_AGE_S = 24 * 3600

def read_failures(results: str | Path) -> pd.DataFrame:
    """Revisions a sweep could not use: model, revision, step, content_key, stage, reason, ...

    One JSON record per revision under RESULTS/failures/ (so concurrent workers never write
    one file together); a later successful score of the revision removes its record.

    Args:
        results: the results folder.

    Returns:
        One row per recorded revision (``step`` as nullable Int64); unreadable records are skipped.
    """
    rows = []
    for p in sorted((Path(results) / FAILURES_DIR).glob("*/*.json")):
        try:
            rows.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    cols = ["model", "revision", "step", "content_key", "stage", "reason", "error", "worker", "failed_at", "pf_version"]
    frame = pd.DataFrame(rows, columns=cols)
    frame["step"] = pd.array(frame["step"], dtype="Int64")
    return frame


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True




class StoreMaintenance:
    """The verify / repair / cleanup half of `ResultsStore` (which supplies the scanning,
    quarantine and table helpers these methods call)."""

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
        # A revision a sweep recorded as failed has no item file, and no gap either when the
        # failure came before its revision was known to the store: it is still missing work.
        for row in read_failures(self.root).itertuples(index=False):
            step = "" if pd.isna(row.step) else f" (step {int(row.step)})"
            problems.append(StoreProblem("missing", FAILURES_DIR,
                                         f"{row.model} {row.revision}{step} failed at {row.stage}: {row.reason}; "
                                         "a replay retries it"))
        return StoreReport(root=self.root, intact=len(scan.used), problems=tuple(problems), missing=gaps,
                           repaired=tuple(actions))

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
                write_table(pa.Table.from_pandas(frame, preserve_index=False), self.root / name, {"kind": name})
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
        table = read_file(path)
        record = check_items(table, path, legacy=True)
        model = str(record["model"])
        target = self.items_dir / model_partition(model) / path.name
        rec = {k: record[k] for k in ("work_key", "model", "revision", "probeset", "step", "written_at")}
        write_table(normalize(table.replace_schema_metadata(None), ITEM_TYPES), target,
                     {"kind": "items", **rec, "model_row": self._model_row(model)})
        path.unlink(missing_ok=True)
        with_rest = path.parent
        if with_rest.exists() and not any(with_rest.iterdir()):
            with_rest.rmdir()
        return f"upgraded {self._rel(path)} -> {self._rel(target)}"

