"""Checkpoint sources: a model's revisions on the hub or in a local suite folder.

This is the only module that touches the network, and it does so through huggingface_hub
only. Both sources have one interface and yield the same `CheckpointRecord`:

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

Retries: huggingface_hub retries a download's HEAD on 429/5xx and resumes a dropped body
with a Range request; its refs / model-info / paths-info calls and a 5xx on the download
GET are not retried, so `HubSource` retries those itself with exponential backoff,
honouring `Retry-After`.

Example::

    >>> src = open_source(resolve_model("pythia-70m"), cache_dir="/data/hf")   # doctest: +SKIP
    >>> rec = src.fetch("step1000")                                             # doctest: +SKIP
    >>> rec.commit, rec.weight_files[0].sha256, rec.path                        # doctest: +SKIP
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pythia_forensics.constants import (
    BIN_WEIGHTS,
    CONFIG_FILES,
    ENV_HASH_CACHE,
    HASH_CACHE_FILE,
    HASH_CHUNK_BYTES,
    HUB_BACKOFF_BASE_S,
    HUB_BACKOFF_MAX_S,
    HUB_MAX_RETRIES,
    HUB_RETRY_STATUS,
    SAFETENSORS_WEIGHTS,
    TOKENIZER_FILES,
)
from pythia_forensics.errors import RevisionNotFoundError, SourceError, UnknownModelError
from pythia_forensics.registry import ModelSpec, checkpoint_folders, resolve_model, step_of_revision

__all__ = [
    "CheckpointRecord",
    "HubSource",
    "LocalSource",
    "RevisionListing",
    "RevisionSize",
    "SourceFile",
    "WeightFile",
    "open_source",
    "select_files",
    "sha256_file",
    "weights_digest",
]

T = TypeVar("T")
_COMMIT_RE_LEN = 40


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
        return tuple(f for f in self.files if _is_weight(f.name))

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


# --- which files a revision needs --------------------------------------------------------
def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_weight(name: str) -> bool:
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


class _HashCache:
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
        if self.path is None or not self._dirty:
            return
        with self._lock:
            payload = json.dumps(self._entries, sort_keys=True)
            self._dirty = False
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(payload, encoding="utf-8")
            os.replace(tmp, self.path)  # atomic: concurrent writers never leave half a file
        except OSError:
            tmp.unlink(missing_ok=True)


def _hash_cache_path(default_dir: Path) -> Path | None:
    env = os.environ.get(ENV_HASH_CACHE)
    if env:
        return Path(env)
    return default_dir / HASH_CACHE_FILE if os.access(default_dir, os.W_OK) else None


def _offline() -> bool:
    from huggingface_hub import constants as hf_constants

    return bool(hf_constants.is_offline_mode())


def _revision_sort_key(revision: str) -> tuple[int, int | str]:
    step = step_of_revision(revision)
    return (0, step) if step is not None else (1, revision)


# --- hub ---------------------------------------------------------------------------------
class HubSource:
    """A model's revisions on the Hugging Face Hub (or any hub-protocol endpoint).

    Args:
        model: a `ModelSpec` (from `resolve_model`), a registry name or a hub id.
        cache_dir: the ONE huggingface_hub cache every revision goes to (default: the
            library's, `HF_HUB_CACHE`). Never use one per revision: that defeats the dedup.
        endpoint: hub URL (default: `HF_ENDPOINT` / huggingface.co).
        token: passed to huggingface_hub (None: its default lookup; False: send none).
        max_retries, backoff_base_s, backoff_max_s: retry policy for transient failures
            (HTTP 408/429/5xx, connection errors).
        verify: check every fetched weight file against its LFS sha256.
    """

    source = "hub"

    def __init__(self, model: ModelSpec | str, *, cache_dir: str | Path | None = None,
                 endpoint: str | None = None, token: str | bool | None = None,
                 max_retries: int = HUB_MAX_RETRIES, backoff_base_s: float = HUB_BACKOFF_BASE_S,
                 backoff_max_s: float = HUB_BACKOFF_MAX_S, verify: bool = True) -> None:
        from huggingface_hub import HfApi, constants as hf_constants

        self.spec = resolve_model(model) if isinstance(model, str) else model
        if self.spec.repo is None:
            raise UnknownModelError(
                f"{self.spec.name} is a local model ({self.spec.path}), not a hub repo; use LocalSource"
            )
        self.model = self.spec.name
        self.repo = self.spec.repo
        self.cache_dir = Path(cache_dir or hf_constants.HF_HUB_CACHE).expanduser().resolve()
        self.endpoint = (endpoint or hf_constants.ENDPOINT).rstrip("/")
        self.token = token
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.verify = verify
        self._api = HfApi(endpoint=self.endpoint, token=token)
        self._branches: dict[str, str] | None = None
        self._listings: dict[str, RevisionListing] = {}
        self._lock = threading.Lock()
        # Serialises fetch and evict: a prefetch thread may be linking a blob that an
        # eviction of another revision would otherwise see as unused and delete.
        self._cache_lock = threading.RLock()
        self._hashes = _HashCache(None)  # blobs are content-addressed; memory is enough

    # -- errors and retries
    def _unreachable(self, exc: BaseException) -> SourceError:
        return SourceError(
            f"cannot reach the hub at {self.endpoint} for {self.repo} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check HF_ENDPOINT, the network, "
            "and that HF_HUB_OFFLINE is not set"
        )

    def _call(self, what: str, fn: Callable[..., T], *args: Any, label: str | None = None,
              retry: bool = True, **kwargs: Any) -> T:
        """Run one hub call, retrying transient failures; map errors to PF errors.

        `retry=False` for calls huggingface_hub already retries itself (the paginated tree
        listing goes through its `http_backoff`): retrying those again would multiply waits.
        """
        import httpx2
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
        )
        from huggingface_hub.errors import RevisionNotFoundError as HfRevisionNotFound

        delay = self.backoff_base_s
        max_retries = self.max_retries if retry else 0
        for attempt in range(max_retries + 1):
            wait: float | None = None
            try:
                return fn(*args, **kwargs)
            except HfRevisionNotFound as exc:
                raise self._missing_revision(label or "?") from exc
            except RepositoryNotFoundError as exc:
                raise SourceError(
                    f"the hub at {self.endpoint} has no repo {self.repo!r} (or it is private/gated); "
                    "check the model name or pass a token"
                ) from exc
            except RemoteEntryNotFoundError as exc:
                raise SourceError(f"{self.repo}@{label}: {what} failed: a listed file is missing on the hub "
                                  f"({exc}); run `pythia-forensics health {self.model}`") from exc
            except OfflineModeIsEnabled as exc:
                raise self._unreachable(exc) from exc
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status not in HUB_RETRY_STATUS or attempt >= max_retries:
                    raise SourceError(
                        f"{what} for {self.repo}@{label} failed with HTTP {status} after {attempt + 1} "
                        f"tries; the hub may be down or rate-limiting: retry later"
                    ) from exc
                retry_after = exc.response.headers.get("Retry-After") if exc.response is not None else None
                if retry_after and retry_after.strip().isascii() and retry_after.strip().isdigit():
                    wait = float(retry_after)
            except (httpx2.TransportError, LocalEntryNotFoundError) as exc:
                # LocalEntryNotFoundError: hf_hub_download could not reach the hub and the
                # file is not cached either.
                if attempt >= max_retries:
                    raise self._unreachable(exc) from exc
            time.sleep(delay if wait is None else wait)
            delay = min(self.backoff_max_s, delay * 2)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _missing_revision(self, revision: str) -> RevisionNotFoundError:
        known = sorted(self._branches or {}, key=_revision_sort_key)
        near = ""
        step = step_of_revision(revision)
        if step is not None and known:
            steps = [s for b in known if (s := step_of_revision(b)) is not None]
            if steps:
                near = f"; nearest existing step{min(steps, key=lambda s: abs(s - step))}"
        where = (f"in the cache {self.cache_dir} (HF_HUB_OFFLINE is set)" if _offline()
                 else f"on the hub at {self.endpoint}")
        return RevisionNotFoundError(
            f"{self.model} ({self.repo}) has no revision {revision!r} {where}"
            f" ({len(known)} branches exist{near}); pick another with --steps, or run "
            f"`pythia-forensics health {self.model}` to list what is missing"
        )

    # -- what exists
    def branches(self, *, refresh: bool = False) -> dict[str, str]:
        """Branch name -> commit sha, from `list_repo_refs` (cached per source)."""
        with self._lock:
            if self._branches is not None and not refresh:
                return dict(self._branches)
        if _offline():
            branches = self._cached_refs()
        else:
            refs = self._call("listing branches", self._api.list_repo_refs, self.repo)
            branches = {b.name: b.target_commit for b in refs.branches}
        with self._lock:
            self._branches = branches
            if refresh:
                self._listings.clear()
        return dict(branches)

    def revisions(self) -> tuple[str, ...]:
        """Branch names, `step<N>` in step order first, then the others (`main`)."""
        return tuple(sorted(self.branches(), key=_revision_sort_key))

    # -- offline (HF_HUB_OFFLINE=1): serve what the shared cache already holds
    def _cached_refs(self) -> dict[str, str]:
        refs_dir = self._storage / "refs"
        refs = {p.relative_to(refs_dir).as_posix(): p.read_text().strip()
                for p in refs_dir.rglob("*") if p.is_file()} if refs_dir.is_dir() else {}
        refs = {name: sha for name, sha in refs.items() if (self._storage / "snapshots" / sha).is_dir()}
        if not refs:
            raise SourceError(
                f"HF_HUB_OFFLINE is set and the cache {self.cache_dir} holds no revision of {self.repo}; "
                "unset HF_HUB_OFFLINE (and check HF_ENDPOINT / the network) to download, or pass the cache_dir "
                "that has it"
            )
        return refs

    def _cached_listing(self, revision: str, commit: str) -> RevisionListing:
        # Only what was fetched is known offline; blob names are the ETags, i.e. the sha256
        # of LFS files, so weight hashes need no re-read.
        snapshot = self._storage / "snapshots" / commit
        files = []
        for p in sorted(snapshot.rglob("*")):
            if not p.is_file():
                continue
            name = p.relative_to(snapshot).as_posix()
            blob = Path(os.path.realpath(p)).name
            lfs = _is_weight(name)
            sha = blob if lfs and len(blob) == 64 else (self._hashes.sha256(p) if lfs else None)
            files.append(SourceFile(name=name, size=p.stat().st_size, sha256=sha,
                                    blob_id=None if lfs else blob, lfs=lfs))
        return RevisionListing(model=self.model, repo=self.repo, revision=revision, step=self._step(revision),
                               commit=commit, files=tuple(files), source=self.source)

    def resolve(self, revision: str) -> str:
        """Commit sha of a branch (or a commit sha itself).

        Raises:
            RevisionNotFoundError: no such branch (names the model and the revision).
        """
        branches = self.branches()
        if revision in branches:
            return branches[revision]
        if len(revision) == _COMMIT_RE_LEN and all(c in "0123456789abcdef" for c in revision):
            return revision
        raise self._missing_revision(revision)

    def _step(self, revision: str) -> int | None:
        return self.spec.step_of(revision)

    def listing(self, revision: str) -> RevisionListing:
        """Every file of a revision with size, git blob id and LFS sha256; downloads nothing.

        Uses the tree API (`list_repo_tree`, recursive): the Hub includes each LFS file's
        sha256 and size in the plain listing, so `expand=True` (commit info per file, 50
        entries a page instead of 1000) is not needed.
        """
        commit = self.resolve(revision)
        with self._lock:
            cached = self._listings.get(commit)
        if cached is not None and cached.revision == revision:
            return cached
        if _offline():
            result = self._cached_listing(revision, commit)
            with self._lock:
                self._listings[commit] = result
            return result
        from huggingface_hub.hf_api import RepoFile

        entries = self._call("listing files", lambda: list(self._api.list_repo_tree(
            self.repo, recursive=True, revision=commit)), label=revision, retry=False)
        files = tuple(sorted(
            (SourceFile(name=e.path, size=int(e.lfs.size if e.lfs else e.size),
                        sha256=e.lfs.sha256 if e.lfs else None, blob_id=e.blob_id, lfs=e.lfs is not None)
             for e in entries if isinstance(e, RepoFile)),
            key=lambda f: f.name,
        ))
        result = RevisionListing(model=self.model, repo=self.repo, revision=revision, step=self._step(revision),
                                 commit=commit, files=files, source=self.source)
        with self._lock:
            self._listings[commit] = result
        return result

    def record(self, revision: str) -> CheckpointRecord:
        """The revision's record from its listing alone (no download; `path` None)."""
        return self.listing(revision).record()

    # -- the cache
    @property
    def _storage(self) -> Path:
        from huggingface_hub.file_download import repo_folder_name

        return self.cache_dir / repo_folder_name(repo_id=self.repo, repo_type="model")

    def _blob_path(self, f: SourceFile) -> Path | None:
        # huggingface_hub names a cached blob after the file's ETag: the sha256 for LFS files
        # (X-Linked-Etag), the git blob id for regular ones.
        etag = f.sha256 if f.lfs else f.blob_id
        return None if etag is None else self._storage / "blobs" / etag

    def size(self, revision: str) -> RevisionSize:
        """Bytes a fetch of `revision` needs and how many the shared cache already holds.

        A dry run from the listing alone: no file is downloaded or HEAD-requested.
        """
        listing = self.listing(revision)
        total = cached = 0
        for name in listing.fetch_names:
            f = listing.file(name)
            assert f is not None
            total += f.size
            blob = self._blob_path(f)
            if blob is not None and blob.is_file():
                cached += f.size
        return RevisionSize(revision=revision, total_bytes=total, cached_bytes=cached)

    def _download(self, listing: RevisionListing, name: str, *, force: bool = False) -> Path:
        from huggingface_hub import hf_hub_download

        # by commit sha, not branch name: a branch re-uploaded mid-fetch cannot mix checkpoints
        return Path(self._call(
            f"downloading {name}", hf_hub_download, self.repo, name, revision=listing.commit,
            cache_dir=str(self.cache_dir), endpoint=self.endpoint, token=self.token, force_download=force,
            label=listing.revision,
        ))

    def _fetch_verified(self, listing: RevisionListing, f: SourceFile) -> tuple[Path, str]:
        """Download one file; for LFS files check sha256 and re-fetch once on a mismatch."""
        problem = ""
        for attempt in range(2):
            try:
                path = self._download(listing, f.name, force=attempt > 0)
            except SourceError as exc:
                cause = exc.__cause__
                # a truncated body: huggingface_hub's size check raises a plain OSError
                if not isinstance(cause, OSError) or "Consistency check failed" not in str(cause):
                    raise
                problem = f"truncated download ({str(cause).splitlines()[0]})"
                continue
            except OSError as exc:
                if "Consistency check failed" not in str(exc):
                    raise
                problem = f"truncated download ({str(exc).splitlines()[0]})"
                continue
            if not (self.verify and f.lfs and f.sha256):
                return path, f.sha256 or ""
            if attempt > 0:
                self._hashes.forget(path)
            digest = self._hashes.sha256(path)
            if digest == f.sha256:
                return path, digest
            problem = f"sha256 {digest} does not match the hub's LFS sha256 {f.sha256}"
            self._hashes.forget(path)
        raise SourceError(
            f"{self.repo}@{listing.revision}: {f.name} is corrupt after a re-fetch: {problem}; "
            f"the hub copy may be damaged: run `pythia-forensics health {self.model}` and skip this revision"
        )

    def fetch(self, revision: str) -> CheckpointRecord:
        """Download config, tokenizer and weights of `revision` into the shared cache.

        Returns:
            The record with `path` = the cache snapshot folder and the resolved commit.

        Raises:
            RevisionNotFoundError: no such branch.
            SourceError: unreachable hub, no weight files, or a file still corrupt after one
                re-fetch.
        """
        listing = self.listing(revision)
        if not listing.weights:
            raise SourceError(
                f"{self.repo}@{revision} has no weight files (looked for {', '.join(SAFETENSORS_WEIGHTS + BIN_WEIGHTS)}); "
                f"run `pythia-forensics health {self.model}` and skip this revision"
            )
        weights: list[WeightFile] = []
        snapshot = self._storage / "snapshots" / str(listing.commit)
        with self._cache_lock:
            for name in listing.fetch_names:
                f = listing.file(name)
                assert f is not None
                path, digest = self._fetch_verified(listing, f)
                if f in listing.weights:
                    weights.append(WeightFile(f.name, f.size, digest or sha256_file(path)))
            dangling = [n for n in listing.fetch_names if not (snapshot / n).exists()]
            if dangling:
                raise SourceError(
                    f"{self.repo}@{revision}: {', '.join(dangling)} vanished from the cache {self.cache_dir} "
                    "during the fetch (another process evicting?); rerun, or give each process its own cache_dir"
                )
            self._write_ref(revision, listing.commit)
        return listing.record(path=snapshot, weight_files=tuple(weights))

    def fetch_files(self, revision: str, names: Iterable[str]) -> Path:
        """Download named files of a revision (e.g. the `.bin` twin of a branch that also
        has safetensors) into the same snapshot, each checked like `fetch` does.

        Returns:
            The snapshot folder.

        Raises:
            RevisionNotFoundError: no such branch.
            SourceError: a name the revision does not have, or a corrupt file.
        """
        listing = self.listing(revision)
        snapshot = self._storage / "snapshots" / str(listing.commit)
        with self._cache_lock:
            for name in names:
                f = listing.file(name)
                if f is None:
                    raise SourceError(f"{self.repo}@{revision} has no file {name!r}; "
                                      f"it has {', '.join(x.name for x in listing.files)}")
                self._fetch_verified(listing, f)
            self._write_ref(revision, listing.commit)
        return snapshot

    def _write_ref(self, revision: str, commit: str | None) -> None:
        # Files are fetched by commit sha (a branch moved mid-fetch cannot mix two
        # checkpoints), so record the branch -> commit ref the way huggingface_hub does,
        # for HF_HUB_OFFLINE use and `hf cache ls`.
        if commit is None or revision == commit:
            return
        ref = self._storage / "refs" / revision
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            if not ref.is_file() or ref.read_text() != commit:
                ref.write_text(commit)
        except OSError:
            pass  # best effort: the snapshot is complete without it

    def _scan(self):
        """`scan_cache_dir`, after dropping refs of this repo that point at no snapshot.

        huggingface_hub writes such refs itself (a `dry_run`, a 404 cached in `.no_exist`),
        and `scan_cache_dir` then skips the whole repo as corrupted: an eviction would
        silently free nothing and a disk budget would be overrun.

        Raises:
            SourceError: the repo's cache folder is still damaged after that.
        """
        from huggingface_hub import scan_cache_dir

        refs_dir = self._storage / "refs"
        if refs_dir.is_dir():
            for ref in refs_dir.rglob("*"):
                if ref.is_file() and not (self._storage / "snapshots" / ref.read_text().strip()).is_dir():
                    ref.unlink(missing_ok=True)
        info = scan_cache_dir(self.cache_dir)
        damaged = [w for w in info.warnings if str(self._storage) in str(w)]
        if damaged:
            raise SourceError(
                f"the hub cache folder {self._storage} is damaged ({str(damaged[0]).splitlines()[0]}); "
                "run `hf cache verify` or delete that folder and fetch again"
            )
        return info

    def cached_commits(self) -> dict[str, int]:
        """Commit sha -> bytes on disk of each cached revision of this repo."""
        if not self._storage.is_dir():
            return {}
        with self._cache_lock:
            info = self._scan()
        for repo in info.repos:
            if repo.repo_id == self.repo and repo.repo_type == "model":
                return {r.commit_hash: r.size_on_disk for r in repo.revisions}
        return {}

    def evict(self, revision: str) -> int:
        """Remove a revision from the cache; blobs other cached revisions use stay.

        Returns:
            Bytes freed (0 if the revision was not cached).
        """
        commit = self.resolve(revision)
        if not self._storage.is_dir():
            return 0
        with self._cache_lock:
            info = self._scan()
            cached = {r.commit_hash for repo in info.repos if repo.repo_id == self.repo for r in repo.revisions}
            if commit not in cached:
                return 0
            strategy = info.delete_revisions(commit)
            freed = strategy.expected_freed_size
            strategy.execute()
        return freed


# --- local folders -----------------------------------------------------------------------
class LocalSource:
    """A local model folder behind the same interface as `HubSource`.

    Revisions are the model's checkpoint folders as the registry found them (`step<N>/`,
    `checkpoint-<N>/`, or `--step-pattern` names; `ModelSpec.folders`).

    Every file is hashed with sha256 once; hashes are cached by (path, size, mtime) in
    `DIR/<model>/.pf-sha256.json` (or `$PF_HASH_CACHE`), so a rescan reads nothing new.

    Args:
        model: a local `ModelSpec`, or the `DIR/<model>` folder.
        hash_cache: where to persist hashes (default as above; None when not writable).
    """

    source = "local"

    def __init__(self, model: ModelSpec | str | Path, *, hash_cache: str | Path | None = None) -> None:
        self.spec = model if isinstance(model, ModelSpec) else resolve_model(str(model))
        if self.spec.path is None:
            raise UnknownModelError(f"{self.spec.name} is a hub model ({self.spec.repo}), not a local folder; use HubSource")
        self.model = self.spec.name
        self.path = Path(self.spec.path)
        self.repo = str(self.path)
        # a hand-built spec may name only the folder: then scan it with the default patterns
        self._folders = dict(self.spec.folders) or checkpoint_folders(self.path)
        self._hashes = _HashCache(Path(hash_cache) if hash_cache else _hash_cache_path(self.path))

    def branches(self, *, refresh: bool = False) -> dict[str, None]:
        return {r: None for r in self.revisions()}

    def revisions(self) -> tuple[str, ...]:
        return tuple(r for r in self._folders if (self.path / r).is_dir())

    def resolve(self, revision: str) -> None:
        if revision not in self._folders or not (self.path / revision).is_dir():
            raise self._missing_revision(revision)
        return None

    def _missing_revision(self, revision: str) -> RevisionNotFoundError:
        have = self.revisions()
        return RevisionNotFoundError(
            f"{self.model} has no revision {revision!r} in {self.path} ({len(have)} checkpoint folders exist"
            + (f": {have[0]} .. {have[-1]}" if have else "") + "); pick another with --steps"
        )

    def listing(self, revision: str) -> RevisionListing:
        """Every file of the revision folder with size and sha256 (cached hashes)."""
        self.resolve(revision)
        root = self.path / revision
        files = []
        for p in sorted(root.rglob("*")):
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            name = p.relative_to(root).as_posix()
            files.append(SourceFile(name=name, size=p.stat().st_size, sha256=self._hashes.sha256(p),
                                    blob_id=None, lfs=_is_weight(name)))
        self._hashes.save()
        return RevisionListing(model=self.model, repo=self.repo, revision=revision,
                               step=self._folders[revision], commit=None, files=tuple(files),
                               source=self.source)

    def record(self, revision: str) -> CheckpointRecord:
        listing = self.listing(revision)
        return listing.record(path=self.path / revision)

    def size(self, revision: str) -> RevisionSize:
        listing = self.listing(revision)
        total = sum(f.size for f in listing.files if f.name in listing.fetch_names)
        return RevisionSize(revision=revision, total_bytes=total, cached_bytes=total)

    def fetch(self, revision: str) -> CheckpointRecord:
        """The revision folder itself (nothing to download).

        Raises:
            RevisionNotFoundError: no such checkpoint folder.
            SourceError: the folder has no weight files.
        """
        listing = self.listing(revision)
        if not listing.weights:
            raise SourceError(f"{self.path / revision} has no weight files (model.safetensors or pytorch_model.bin)")
        return listing.record(path=self.path / revision)

    def fetch_files(self, revision: str, names: Iterable[str]) -> Path:
        """The revision folder, after checking it holds `names` (nothing to download).

        Raises:
            RevisionNotFoundError: no such checkpoint folder.
            SourceError: a named file is missing.
        """
        self.resolve(revision)
        folder = self.path / revision
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise SourceError(f"{folder} has no {', '.join(missing)}")
        return folder

    def evict(self, revision: str) -> int:
        """Local checkpoints are the user's data: never deleted. Returns 0."""
        return 0


def open_source(model: ModelSpec | str | Path, **options: Any) -> HubSource | LocalSource:
    """The right source for a model: `LocalSource` for local specs/folders, else `HubSource`.

    Args:
        model: a `ModelSpec`, registry name, hub id or local model folder.
        **options: passed to the source (e.g. `cache_dir`, `endpoint` for the hub).
    """
    spec = model if isinstance(model, ModelSpec) else resolve_model(str(model))
    if spec.source == "local":
        return LocalSource(spec, **{k: v for k, v in options.items() if k == "hash_cache"})
    return HubSource(spec, **{k: v for k, v in options.items() if k != "hash_cache"})


