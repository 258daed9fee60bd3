"""What both checkpoint sources hand on: the records, the file selection, hashing, and the
`CheckpointSource` protocol `HubSource` (`sources_hub`) and `LocalSource` (`sources_local`)
implement.

Consumers (replay, fetch, health, audit) type against `CheckpointSource` and read
`CheckpointRecord` / `RevisionListing`; they never ask which class they hold beyond
`source.source` ("hub" | "local").
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pythia_forensics.atomic import write_text
from pythia_forensics.checkpoints.registry import step_of_revision
from pythia_forensics.constants import (
    BIN_WEIGHTS,
    CONFIG_FILES,
    ENV_HASH_CACHE,
    HASH_CACHE_FILE,
    SAFETENSORS_WEIGHTS,
    TOKENIZER_FILES,
)
from pythia_forensics.errors import SourceError

if TYPE_CHECKING:
    from pythia_forensics.checkpoints.registry import ModelSpec

__all__ = [
    "CheckpointRecord",
    "CheckpointSource",
    "HashCache",
    "RevisionListing",
    "RevisionSize",
    "SourceFile",
    "WeightFile",
    "hash_cache_path",
    "is_weight",
    "offline",
    "revision_sort_key",
    "select_files",
    "sha256_file",
    "weights_digest",
]

# Bytes read per chunk while hashing (weights can be tens of GB).
HASH_CHUNK_BYTES = 8 * 1024 * 1024


# --- records -----------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightFile:
    """One weight file of a revision: name in the repo, bytes, content sha256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint, identified by content: what replay, store and health key on."""

    model: str
    repo: str
    revision: str
    step: int | None
    commit: str | None                  # hub commit sha; None for local
    weight_files: tuple[WeightFile, ...]
    path: Path | None                   # local snapshot dir once fetched
    source: str                         # "hub" | "local"

    @property
    def content_key(self) -> str:
        """The commit sha if known, else a sha256 over the weight files' (name, sha256)."""
        if self.commit:
            return self.commit
        return weights_digest(self.weight_files)

    @property
    def weights_sha256(self) -> str:
        """One sha256 naming the weights whatever the source (same bytes -> same value)."""
        return weights_digest(self.weight_files)

    @property
    def size(self) -> int:
        return sum(w.size for w in self.weight_files)


def weights_digest(weight_files: Iterable[WeightFile]) -> str:
    """sha256 over sorted `name:sha256` lines: equal for byte-identical weights."""
    lines = sorted(f"{w.name}:{w.sha256}" for w in weight_files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class SourceFile:
    """One file of a revision as listed, without downloading it.

    `sha256` is the content hash when known (hub: LFS files; local: every file); `blob_id`
    the git blob sha1 (hub only). `lfs` marks files stored as LFS objects (the weights)."""

    name: str
    size: int
    sha256: str | None
    blob_id: str | None = None
    lfs: bool = False


@dataclass(frozen=True)
class RevisionListing:
    """Every file of one revision, with the subset a fetch downloads."""

    model: str
    repo: str
    revision: str
    step: int | None
    commit: str | None
    files: tuple[SourceFile, ...]
    source: str

    def file(self, name: str) -> SourceFile | None:
        return next((f for f in self.files if f.name == name), None)

    @property
    def weight_format(self) -> str | None:
        return select_files(f.name for f in self.files)[0]

    @property
    def weights(self) -> tuple[SourceFile, ...]:
        """The weight files a fetch uses (safetensors if any, else `.bin`)."""
        _, _, weights = select_files(f.name for f in self.files)
        return tuple(f for f in self.files if f.name in weights)

    @property
    def all_weights(self) -> tuple[SourceFile, ...]:
        """Weight files of every format (a branch may carry both)."""
        return tuple(f for f in self.files if is_weight(f.name))

    @property
    def fetch_names(self) -> tuple[str, ...]:
        """Config, tokenizer, weight-index and weight files a fetch downloads."""
        _, support, weights = select_files(f.name for f in self.files)
        return support + weights

    def weight_files(self) -> tuple[WeightFile, ...]:
        """`WeightFile`s of the chosen format (requires every sha256 known)."""
        out = []
        for f in self.weights:
            if f.sha256 is None:
                raise SourceError(
                    f"{self.repo}@{self.revision}: weight file {f.name} is not an LFS object, so the hub "
                    "reports no sha256 for it; fetch the revision to hash it"
                )
            out.append(WeightFile(f.name, f.size, f.sha256))
        return tuple(out)

    def record(self, *, path: Path | None = None, weight_files: tuple[WeightFile, ...] | None = None
               ) -> CheckpointRecord:
        return CheckpointRecord(
            model=self.model, repo=self.repo, revision=self.revision, step=self.step, commit=self.commit,
            weight_files=self.weight_files() if weight_files is None else weight_files,
            path=path, source=self.source,
        )


@dataclass(frozen=True)
class RevisionSize:
    """What fetching a revision costs: bytes in all, already cached, still to download."""

    revision: str
    total_bytes: int
    cached_bytes: int

    @property
    def download_bytes(self) -> int:
        return self.total_bytes - self.cached_bytes


@runtime_checkable
class CheckpointSource(Protocol):
    """A model's revisions somewhere (the hub, a local folder): the one interface replay,
    fetch, health and audit use.

    Attributes:
        source: "hub" or "local" (`CheckpointRecord.source` of what it yields).
        spec: the registry entry the source serves.
        model: the model's name (`spec.name`).
        repo: the hub repo id, or the model folder as a string.
    """

    source: str
    spec: ModelSpec
    model: str
    repo: str

    def branches(self, *, refresh: bool = False) -> Mapping[str, str | None]:
        """Revision name -> commit sha (None for local folders)."""
        ...

    def revisions(self) -> tuple[str, ...]:
        """Revision names, step revisions in step order first."""
        ...

    def resolve(self, revision: str) -> str | None:
        """Commit sha of a revision (None locally); raises RevisionNotFoundError."""
        ...

    def listing(self, revision: str) -> RevisionListing:
        """Every file of a revision with size and sha256, downloading nothing."""
        ...

    def record(self, revision: str) -> CheckpointRecord:
        """The revision's record from its listing."""
        ...

    def size(self, revision: str) -> RevisionSize:
        """Bytes a fetch needs and how many are already cached."""
        ...

    def fetch(self, revision: str) -> CheckpointRecord:
        """Config, tokenizer and weights on disk; the record's `path` is their folder."""
        ...

    def fetch_files(self, revision: str, names: Iterable[str]) -> Path:
        """Named files of a revision on disk; returns their folder."""
        ...

    def evict(self, revision: str) -> int:
        """Free a fetched revision's bytes (0 for local folders); returns bytes freed."""
        ...


# --- which files a revision needs --------------------------------------------------------
def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def is_weight(name: str) -> bool:
    return _matches(name, SAFETENSORS_WEIGHTS + BIN_WEIGHTS) and not name.endswith(".json")


def select_files(names: Iterable[str]) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """Pick what a revision fetch needs from a file listing.

    Args:
        names: file names of one revision (repo-relative).

    Returns:
        `(format, support, weights)`: format "safetensors" | "bin" | None; support = config,
        tokenizer and weight-index files present; weights = weight files of that format.
        Safetensors wins whenever present: it never unpickles anything.
    """
    names = sorted(set(names))
    for fmt, patterns in (("safetensors", SAFETENSORS_WEIGHTS), ("bin", BIN_WEIGHTS)):
        weights = tuple(n for n in names if _matches(n, patterns) and not n.endswith(".json"))
        if weights:
            index = tuple(n for n in names if _matches(n, patterns) and n.endswith(".json"))
            support = tuple(n for n in names if n in CONFIG_FILES or n in TOKENIZER_FILES) + index
            return fmt, support, weights
    support = tuple(n for n in names if n in CONFIG_FILES or n in TOKENIZER_FILES)
    return None, support, ()


# --- hashing -----------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    """sha256 of a file, streamed in chunks (weights can be tens of GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """sha256 per file keyed by (resolved path, size, mtime_ns), persisted as JSON.

    A rescan of an unchanged suite reads no file contents; an edited file (new size or
    mtime) is hashed again. Persistence is best-effort: a read-only folder just means the
    cache lives in memory for this process."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, list] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                self._entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self._entries = {}  # a damaged cache only costs a rehash
        self.hashed = 0  # files actually read (for tests and progress)

    def sha256(self, file: Path) -> str:
        real = os.path.realpath(file)
        st = os.stat(real)
        key = real
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(real)
        with self._lock:
            self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
            self._dirty = True
            self.hashed += 1
        return digest

    def forget(self, file: Path) -> None:
        with self._lock:
            if self._entries.pop(os.path.realpath(file), None) is not None:
                self._dirty = True

    def save(self) -> None:
        """Persist the hashes (best-effort: an unwritable folder keeps them in memory)."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            payload = json.dumps(self._entries, sort_keys=True)
            self._dirty = False
        try:
            write_text(self.path, payload)  # concurrent writers never leave half a file
        except OSError:
            pass


def hash_cache_path(default_dir: Path) -> Path | None:
    env = os.environ.get(ENV_HASH_CACHE)
    if env:
        return Path(env)
    return default_dir / HASH_CACHE_FILE if os.access(default_dir, os.W_OK) else None


def offline() -> bool:
    """True under HF_HUB_OFFLINE=1: hub sources serve only what the cache holds."""
    from huggingface_hub import constants as hf_constants

    return bool(hf_constants.is_offline_mode())



def revision_sort_key(revision: str) -> tuple[int, int | str]:
    step = step_of_revision(revision)
    return (0, step) if step is not None else (1, revision)
