"""`HubSource`: a model's revisions on the Hugging Face Hub, through huggingface_hub only.

This is the only module that touches the network. Listing reads the tree API (whose LFS
metadata carries each weight file's sha256), sizing is `snapshot_download(dry_run=True)`,
fetching downloads into ONE shared huggingface_hub cache (identical blobs across revisions
stored once; every weight file checked against its LFS sha256 and re-fetched once on a
mismatch), and eviction is `scan_cache_dir().delete_revisions`, which keeps blobs other
cached revisions still use.

Retries: huggingface_hub retries a download's HEAD on 429/5xx and resumes a dropped body
with a Range request; its refs / model-info / paths-info calls and a 5xx on the download
GET are not retried, so `HubSource` retries those itself with exponential backoff,
honouring `Retry-After` (`retrying`).
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pythia_forensics.checkpoints.registry import ModelSpec, resolve_model, step_of_revision
from pythia_forensics.checkpoints.source_records import (
    CheckpointRecord,
    HashCache,
    RevisionListing,
    RevisionSize,
    SourceFile,
    WeightFile,
    offline,
    revision_sort_key,
)
from pythia_forensics.constants import BIN_WEIGHTS, REVISIONS_DIR, SAFETENSORS_WEIGHTS
from pythia_forensics.errors import PFError, RevisionNotFoundError, SourceError, UnknownModelError

__all__ = ["HUB_RETRY_STATUS", "HubSource", "evict_cached", "retrying"]

T = TypeVar("T")
_COMMIT_RE_LEN = 40
_offline = offline

# Transient hub failures retried with exponential backoff (huggingface_hub retries only some
# of its calls itself: downloads yes, refs / paths-info / model info no).
HUB_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
HUB_MAX_RETRIES = 5
HUB_BACKOFF_BASE_S = 1.0
HUB_BACKOFF_MAX_S = 16.0


def _transient(exc: BaseException) -> float | None:
    """Seconds to wait before retrying `exc` (its `Retry-After` or 0 = the backoff), or None
    when retrying cannot help. Only classifies; `_translate` turns errors into PFErrors."""
    import httpx2  # huggingface_hub's HTTP client (declared in pyproject)
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return None
    if isinstance(exc, HfHubHTTPError):
        response = exc.response
        if response is None or response.status_code not in HUB_RETRY_STATUS:
            return None
        retry_after = response.headers.get("Retry-After", "")
        value = retry_after.strip()
        # ASCII digits only: str.isdigit() accepts e.g. "²", which float() rejects
        return float(value) if value.isascii() and value.isdigit() else 0.0
    # LocalEntryNotFoundError online: the hub was unreachable and the file is not cached
    if isinstance(exc, (httpx2.TransportError, LocalEntryNotFoundError)) and not _offline():
        return 0.0
    return None


def retrying(fn: Callable[..., T], *args: Any, max_retries: int = HUB_MAX_RETRIES,
             backoff_base_s: float = HUB_BACKOFF_BASE_S, backoff_max_s: float = HUB_BACKOFF_MAX_S,
             **kwargs: Any) -> T:
    """Call `fn`, retrying transient hub failures (HTTP 408/429/5xx, connection errors) with
    exponential backoff that honours `Retry-After`. Any other error, and the last transient
    one, propagates unchanged.
    """
    delay = backoff_base_s
    for attempt in range(max_retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            wait = _transient(exc)
            if wait is None or attempt >= max_retries:
                raise
        time.sleep(wait or delay)
        delay = min(backoff_max_s, delay * 2)
    raise AssertionError("unreachable")  # the loop always returns or raises


class HubSource:
    """A model's revisions on the Hugging Face Hub (or any hub-protocol endpoint).

    Everything goes through huggingface_hub's public API: `list_repo_refs` and
    `list_repo_tree` (LFS sha256 and sizes) to list, `snapshot_download(dry_run=True)` to size,
    `resolve_revision` + `snapshot_download(allow_patterns=...)` to fetch (the branch -> commit
    ref is cached for offline use), `scan_cache_dir` / `get_cached_repo_tree` offline, and
    `scan_cache_dir().delete_revisions` to evict (blobs other revisions use stay).

    Args:
        model: a `ModelSpec` (from `resolve_model`), a registry name or a hub id.
        cache_dir: the ONE huggingface_hub cache every revision goes to (default: the
            library's, `HF_HUB_CACHE`). Never use one per revision: that defeats the dedup.
        endpoint: hub URL (default: `HF_ENDPOINT` / huggingface.co).
        token: passed to huggingface_hub (None: its default lookup; False: send none).
        max_retries, backoff_base_s, backoff_max_s: retry policy for transient failures.
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
        self.retry_policy = {"max_retries": max_retries, "backoff_base_s": backoff_base_s,
                             "backoff_max_s": backoff_max_s}
        self.verify = verify
        self._api = HfApi(endpoint=self.endpoint, token=token)
        self._branches: dict[str, str] | None = None
        self._listings: dict[str, RevisionListing] = {}
        self._lock = threading.Lock()
        self._hashes = HashCache(None)  # blobs are content-addressed; memory is enough

    @property
    def cli_name(self) -> str:
        """What to type on a command line for this model: its registry name, or the hub id
        of a repo outside the registry (its short name resolves to nothing)."""
        return self.repo if self.spec.suite == "hub" else self.model

    # -- errors: one line each (retrying is `retrying`'s business)
    def _unreachable(self, exc: BaseException) -> SourceError:
        return SourceError(
            f"cannot reach the hub at {self.endpoint} for {self.repo} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check HF_ENDPOINT, the network, "
            "and that HF_HUB_OFFLINE is not set"
        )

    def _translate(self, exc: Exception, what: str, label: str | None) -> PFError | None:
        """The tool's one-line error for a huggingface_hub failure (None: not a hub error)."""
        import httpx2
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
        )
        from huggingface_hub.errors import RevisionNotFoundError as HfRevisionNotFound

        if isinstance(exc, PFError):
            return exc
        if isinstance(exc, HfRevisionNotFound):
            return self._missing_revision(label or "?")
        if isinstance(exc, RepositoryNotFoundError):
            return SourceError(f"the hub at {self.endpoint} has no repo {self.repo!r} (or it is private/gated); "
                               "check the model name or pass a token")
        if isinstance(exc, RemoteEntryNotFoundError):
            return SourceError(f"{self.repo}@{label}: {what} failed: a listed file is missing on the hub "
                               f"({str(exc).splitlines()[0]}); run `pythia-forensics health {self.model}`")
        if _offline() and isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return self._not_staged(label, what)
        if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError, httpx2.TransportError)):
            return self._unreachable(exc)
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            return SourceError(f"{what} for {self.repo}@{label} failed with HTTP {status}; the hub may be "
                               "down or rate-limiting: retry later")
        return None

    def _call(self, what: str, fn: Callable[..., T], *args: Any, label: str | None = None,
              retry: bool = True, **kwargs: Any) -> T:
        """One hub call: retried when transient (`retry=False` for calls huggingface_hub
        already retries itself), then translated into a one-line PFError."""
        try:
            if retry:
                return retrying(fn, *args, **self.retry_policy, **kwargs)
            return fn(*args, **kwargs)
        except Exception as exc:
            mapped = self._translate(exc, what, label)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc

    def _not_staged(self, revision: str | None, what: str = "") -> SourceError:
        return SourceError(
            f"HF_HUB_OFFLINE is set and the cache {self.cache_dir} lacks {self.repo}@{revision or 'main'}"
            f"{f' ({what})' if what else ''}; stage it on a node with network: "
            f"`pythia-forensics fetch {self.cli_name} --steps ... --cache-dir {self.cache_dir}`"
        )

    def _missing_revision(self, revision: str) -> RevisionNotFoundError:
        known = sorted(self._branches or {}, key=revision_sort_key)
        near = ""
        step = step_of_revision(revision)
        if step is not None and known:
            steps = [s for b in known if (s := step_of_revision(b)) is not None]
            if steps:
                near = f"; nearest existing step{min(steps, key=lambda s: abs(s - step))}"
        if _offline():
            return RevisionNotFoundError(
                f"{self.model} ({self.repo}) revision {revision!r} is not staged in the cache {self.cache_dir} "
                f"(HF_HUB_OFFLINE is set; {len(known)} staged{near}); stage it on a node with network: "
                f"`pythia-forensics fetch {self.cli_name} --steps ... --cache-dir {self.cache_dir}`"
            )
        return RevisionNotFoundError(
            f"{self.model} ({self.repo}) has no revision {revision!r} on the hub at {self.endpoint}"
            f" ({len(known)} branches exist{near}); pick another step, or run "
            f"`pythia-forensics health {self.model}` to list what is missing",
            param="steps",
        )

    # -- what exists
    def branches(self, *, refresh: bool = False) -> dict[str, str]:
        """Branch name -> commit sha (`list_repo_refs`; offline: the cache's refs)."""
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

    # -- what is known without the hub: the revision catalog beside the cache
    @property
    def catalog_path(self) -> Path:
        """`CACHE/.pf-revisions/<repo folder>.json`: branch -> commit as the hub last listed it
        (`remember`), and which of them `fetch` staged."""
        from huggingface_hub.file_download import repo_folder_name

        return self.cache_dir / REVISIONS_DIR / f"{repo_folder_name(repo_id=self.repo, repo_type='model')}.json"

    def catalog(self) -> tuple[dict[str, str], dict[str, str]]:
        """(branches the hub listed when last asked, branches `fetch` staged), each
        name -> commit; empty when never recorded or unreadable (it is a hint, not a source
        of weights)."""
        try:
            data = json.loads(self.catalog_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}, {}
        if not isinstance(data, dict) or data.get("repo") != self.repo:
            return {}, {}

        def names(key: str) -> dict[str, str]:
            value = data.get(key)
            if not isinstance(value, dict):
                return {}
            return {str(k): str(v) for k, v in value.items()
                    if isinstance(v, str) and len(v) == _COMMIT_RE_LEN and all(c in "0123456789abcdef" for c in v)}

        return names("branches"), names("staged")

    def remember(self, branches: dict[str, str], *, staged: Iterable[str] = ()) -> None:
        """Record the hub's branch list (and the branches just staged) beside the cache, so a
        node under HF_HUB_OFFLINE knows the grid even after every revision was evicted.

        Best effort: a read-only cache only loses the hint."""
        from pythia_forensics.atomic import write_json

        _, before = self.catalog()
        done = {**before, **{name: branches[name] for name in staged if name in branches}}
        # a staged name the hub now points elsewhere is no longer what was staged
        done = {name: commit for name, commit in done.items() if branches.get(name, commit) == commit}
        try:
            self.catalog_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.catalog_path, {"repo": self.repo, "endpoint": self.endpoint,
                                           "listed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                           "branches": dict(branches), "staged": done})
        except OSError:
            pass

    def known_branches(self) -> dict[str, str]:
        """Branch -> commit of every revision known to exist, without requiring any to be cached.

        Online: the hub's list. Offline: the cache's refs, over the catalog the last online
        listing and `fetch` left (a cached ref wins: it is what the cache really holds). May
        be empty offline; `branches()` is what can be read now."""
        if not _offline():
            return self.branches()
        listed, staged = self.catalog()
        return {**listed, **staged, **self.cached_refs()}

    def cached_refs(self) -> dict[str, str]:
        """Branch -> commit of the revisions the cache holds refs of (empty when none)."""
        repo = self._cached_repo()
        return {ref: rev.commit_hash for rev in (repo.revisions if repo else ()) for ref in rev.refs}

    def revisions(self) -> tuple[str, ...]:
        """Branch names, those the model's grammar gives a step (`step<N>`,
        `step<N>-tokens<T>B`, ...) in step order first, then the others (`main`)."""
        def key(revision: str) -> tuple[int, int | str]:
            step = self.spec.step_of(revision)
            return (0, step) if step is not None else (1, revision)

        return tuple(sorted(self.branches(), key=key))

    def _cached_repo(self) -> Any:
        """This repo's `CachedRepoInfo` from `scan_cache_dir`, or None when not cached."""
        info = _scan(self.cache_dir, self.repo)
        if info is None:
            return None
        return next((r for r in info.repos if r.repo_id == self.repo and r.repo_type == "model"), None)

    def _cached_refs(self) -> dict[str, str]:
        refs = self.cached_refs()
        if not refs:
            _, staged = self.catalog()
            raise self._not_staged(None, "no revision of it is cached" + (
                f"; {len(staged)} were staged and have been evicted since" if staged else ""))
        return refs

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

        Online: `list_repo_tree` (recursive; the plain listing carries each LFS file's sha256
        and size, so `expand=True` is not needed). Offline: `get_cached_repo_tree`, the tree
        `snapshot_download` cached when the revision was staged.
        """
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.hf_api import RepoFile

        commit = self.resolve(revision)
        with self._lock:
            cached = self._listings.get(commit)
        if cached is not None and cached.revision == revision:
            return cached
        if _offline():
            entries = get_cached_repo_tree(self.repo, revision=commit, cache_dir=self.cache_dir)
            if not entries:
                raise self._not_staged(revision, "no cached file listing")
        else:
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
    def _snapshot(self, revision: Any, names: Sequence[str], **options: Any) -> Any:
        from huggingface_hub import snapshot_download

        return snapshot_download(self.repo, revision=revision, allow_patterns=list(names),
                                 cache_dir=str(self.cache_dir), endpoint=self.endpoint, token=self.token,
                                 tqdm_class=_silent_tqdm(), **options)

    def size(self, revision: str) -> RevisionSize:
        """Bytes a fetch of `revision` needs and how many the shared cache already holds
        (`snapshot_download(dry_run=True)`: no file is downloaded)."""
        listing = self.listing(revision)
        if _offline():
            total = sum(f.size for f in listing.files if f.name in listing.fetch_names)
            return RevisionSize(revision=revision, total_bytes=total, cached_bytes=total)
        infos = self._call("sizing", self._snapshot, listing.commit, listing.fetch_names, dry_run=True,
                           label=revision)
        total = sum(int(i.file_size or 0) for i in infos)
        cached = sum(int(i.file_size or 0) for i in infos if not i.will_download)
        return RevisionSize(revision=revision, total_bytes=total, cached_bytes=cached)

    def _download(self, revision: str, names: Sequence[str]) -> Path:
        """`names` of `revision` into the cache, LFS files checked against their sha256 and
        re-fetched once (a truncated or corrupted body) before giving up."""
        listing = self.listing(revision)
        wanted = [f for f in (listing.file(n) for n in names) if f is not None]
        if _offline():
            folder = Path(self._call("reading the cache", self._snapshot, listing.commit, names,
                                     local_files_only=True, label=revision, retry=False))
        else:
            # Download by the listed commit: a branch re-uploaded mid-fetch cannot mix two
            # checkpoints. The branch -> commit ref is cached (for offline use) only afterwards,
            # so no ref points at a half-made snapshot another worker's scan would trip on.
            problem = ""
            for attempt in range(2):
                try:
                    folder = Path(self._call("downloading", self._snapshot, listing.commit, names,
                                             force_download=attempt > 0, label=revision))
                except SourceError:
                    raise
                except OSError as exc:  # huggingface_hub's size check on a truncated body
                    problem, folder = f"{', '.join(names)}: truncated download ({str(exc).splitlines()[0]})", None
                    continue
                bad = self._corrupt(folder, wanted)
                if not bad:
                    break
                problem = bad
            else:
                raise SourceError(
                    f"{self.repo}@{revision}: {problem.replace(': ', ' is corrupt after a re-fetch: ', 1)}; "
                    "the hub copy may be damaged: "
                    f"run `pythia-forensics health {self.model}` and skip this revision"
                )
            if revision != listing.commit:
                resolved = self._call("resolving", self._api.resolve_revision, self.repo, revision=revision,
                                      cache_dir=str(self.cache_dir), label=revision)
                if resolved.resolved != listing.commit:
                    raise SourceError(f"{self.repo}@{revision} moved from {listing.commit} to {resolved.resolved} "
                                      "during the sweep; rerun to score the new upload")
        missing = [f.name for f in wanted if not (folder / f.name).is_file()]
        if missing:
            raise (self._not_staged(revision, "missing " + ", ".join(missing)) if _offline() else SourceError(
                f"{self.repo}@{revision}: {', '.join(missing)} vanished from the cache {self.cache_dir} during the "
                "fetch (evicted by a process that ignores the ledger?); rerun"))
        return folder

    def _corrupt(self, folder: Path, files: Iterable[SourceFile]) -> str:
        if not self.verify:
            return ""
        for f in files:
            if f.lfs and f.sha256:
                path = folder / f.name
                self._hashes.forget(path)
                digest = self._hashes.sha256(path)
                if digest != f.sha256:
                    return f"{f.name}: sha256 {digest} does not match the hub's LFS sha256 {f.sha256}"
        return ""

    def fetch(self, revision: str) -> CheckpointRecord:
        """Download config, tokenizer and weights of `revision` into the shared cache
        (offline: find them there).

        Returns:
            The record with `path` = the cache snapshot folder and the resolved commit.

        Raises:
            RevisionNotFoundError: no such branch (offline: not staged).
            SourceError: unreachable hub, no weight files, a file still corrupt after one
                re-fetch, or (offline) a file that was not staged.
        """
        listing = self.listing(revision)
        if not listing.weights:
            raise SourceError(
                f"{self.repo}@{revision} has no weight files (looked for {', '.join(SAFETENSORS_WEIGHTS + BIN_WEIGHTS)}); "
                f"run `pythia-forensics health {self.model}` and skip this revision"
            )
        folder = self._download(revision, listing.fetch_names)
        weights = tuple(WeightFile(f.name, f.size, f.sha256 or self._hashes.sha256(folder / f.name))
                        for f in listing.weights)
        return listing.record(path=folder, weight_files=weights)

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
        names = list(names)
        unknown = [n for n in names if listing.file(n) is None]
        if unknown:
            raise SourceError(f"{self.repo}@{revision} has no file {unknown[0]!r}; "
                              f"it has {', '.join(x.name for x in listing.files)}")
        return self._download(revision, names)

    def weight_shapes(self, revision: str) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape of a revision's safetensors weights, from their headers only
        (`get_safetensors_metadata`: a range request of a few KB per file; offline: the
        staged files). Empty for `.bin`-only revisions (their shapes need unpickling).

        Raises:
            SourceError: unreachable hub, or an unreadable header.
        """
        from huggingface_hub.errors import SafetensorsParsingError

        listing = self.listing(revision)
        if listing.weight_format != "safetensors":
            return {}
        if _offline():
            from pythia_forensics.checkpoints.architecture import read_safetensors_shapes

            folder = self._download(revision, [f.name for f in listing.weights])
            shapes: dict[str, tuple[int, ...]] = {}
            for f in listing.weights:
                shapes.update(read_safetensors_shapes(folder / f.name))
            return shapes
        try:
            meta = self._call("reading safetensors headers", self._api.get_safetensors_metadata, self.repo,
                              revision=listing.commit, label=revision)
        except SafetensorsParsingError as exc:
            raise SourceError(f"{self.repo}@{revision}: unreadable safetensors header ({str(exc).splitlines()[0]})"
                              ) from exc
        return {k: tuple(int(x) for x in t.shape) for fm in meta.files_metadata.values() for k, t in fm.tensors.items()}

    def cached_commits(self) -> dict[str, int]:
        """Commit sha -> bytes on disk of each cached revision of this repo."""
        repo = self._cached_repo()
        return {r.commit_hash: r.size_on_disk for r in repo.revisions} if repo else {}

    def evict(self, revision: str) -> int:
        """Remove a revision from the cache; blobs other cached revisions use stay.

        Only the ledger's last holder should call this (see `fetch.Fetcher`).

        Returns:
            Bytes freed (0 if the revision was not cached).
        """
        return evict_cached(self.cache_dir, self.repo, self.resolve(revision))


def evict_cached(cache_dir: str | Path, repo: str, commit: str, *, keep_blobs: Iterable[str] = ()) -> int:
    """Delete one cached revision with `scan_cache_dir().delete_revisions`; blobs other cached
    revisions link stay (the library's rule) and so do `keep_blobs` (names in `blobs/`: what
    revisions other workers hold but may not have linked yet, their download still running).
    Never the whole repo folder, even when the scan shows no other revision of it.

    Returns:
        Bytes freed (0 when the revision is not cached).
    """
    info = _scan(cache_dir, repo)
    if info is None:
        return 0
    cached = {r.commit_hash for rp in info.repos if rp.repo_id == repo for r in rp.revisions}
    if commit not in cached:
        return 0
    strategy = info.delete_revisions(commit)
    if strategy.repos:
        # The library deletes the whole repo folder when the scan shows no other revision, but
        # another worker's download may be under way there (its blobs still `.incomplete`, its
        # snapshot not yet made): delete only this revision's snapshot, refs and blobs.
        repo_info = next(rp for rp in info.repos if rp.repo_id == repo and rp.repo_type == "model")
        rev = next(r for r in repo_info.revisions if r.commit_hash == commit)
        strategy = replace(strategy, repos=frozenset(), snapshots=frozenset({rev.snapshot_path}),
                           refs=frozenset(repo_info.repo_path / "refs" / ref for ref in rev.refs),
                           blobs=frozenset(f.blob_path for f in rev.files),
                           expected_freed_size=sum(f.size_on_disk for f in rev.files))
    keep = set(keep_blobs)
    if keep:
        kept = {b for b in strategy.blobs if Path(b).name in keep}
        strategy = replace(strategy, blobs=frozenset(strategy.blobs - kept),
                           expected_freed_size=strategy.expected_freed_size - sum(
                               Path(b).stat().st_size for b in kept if Path(b).exists()))
    strategy.execute()
    return int(strategy.expected_freed_size)


def _scan(cache_dir: str | Path, repo: str) -> Any:
    """`scan_cache_dir`, after dropping refs of `repo` that point at no snapshot.

    huggingface_hub itself leaves such refs (a `dry_run` by branch name, a download killed
    before its first file), and `scan_cache_dir` then skips the whole repo as corrupted: an
    eviction would silently free nothing and a disk budget would be overrun.

    Returns:
        The `HFCacheInfo`, or None when there is no cache folder.

    Raises:
        SourceError: the repo's cache folder is still damaged after that.
    """
    from huggingface_hub import CacheNotFound, scan_cache_dir
    from huggingface_hub.file_download import repo_folder_name

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return None
    storage = Path(cache_dir) / repo_folder_name(repo_id=repo, repo_type="model")
    if not any(str(storage) in str(w) for w in info.warnings):
        return info
    for ref in (storage / "refs").rglob("*"):
        # `*.tmp` is a ref another process is writing right now (huggingface_hub writes refs
        # through a temp file): never read or delete it; a ref renamed away meanwhile is gone.
        if ref.name.endswith(".tmp") or not ref.is_file():
            continue
        try:
            target = ref.read_text().strip()
        except FileNotFoundError:
            continue
        if not (storage / "snapshots" / target).is_dir():
            ref.unlink(missing_ok=True)
    info = scan_cache_dir(cache_dir)
    damaged = [w for w in info.warnings if str(storage) in str(w)]
    if damaged:
        raise SourceError(f"the hub cache folder {storage} is damaged ({str(damaged[0]).splitlines()[0]}); "
                          "run `hf cache verify` or delete that folder and fetch again")
    return info


def _silent_tqdm() -> Any:
    """A tqdm class that never draws: replay shows its own progress, one bar per sweep."""
    from tqdm.auto import tqdm

    class _Quiet(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Quiet
