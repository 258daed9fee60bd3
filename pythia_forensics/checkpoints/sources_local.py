"""`LocalSource`: a local model folder behind the same interface as `HubSource`."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pythia_forensics.checkpoints.registry import ModelSpec, checkpoint_folders, resolve_model
from pythia_forensics.checkpoints.source_records import (
    CheckpointRecord,
    HashCache,
    RevisionListing,
    RevisionSize,
    SourceFile,
    hash_cache_path,
    is_weight,
)
from pythia_forensics.errors import RevisionNotFoundError, SourceError, UnknownModelError

__all__ = ["LocalSource"]


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
        self._hashes = HashCache(Path(hash_cache) if hash_cache else hash_cache_path(self.path))

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
            + (f": {have[0]} .. {have[-1]}" if have else "") + "); pick another step",
            param="steps",
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
                                    blob_id=None, lfs=is_weight(name)))
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
