"""Checkpoint forensics: prove each revision is what its name says before a curve uses it.

Two levels of checking, both ending in one table (revision, step, status, reasons):

* **Census** (no weight bytes downloaded): the revisions a source lists, each with its
  weight files' names, sizes and sha256 (LFS metadata on the hub, file hashes locally).
  Reports revisions missing from the expected grid, revisions without a complete weight
  set, weight files whose size disagrees with the same file in other revisions (a truncated
  upload), clusters of revisions sharing weight blobs (a stale copy of the final model under
  a mid-training name; `step0 == step1` is a known upstream fault and is reported as such),
  and `step<final>` differing from `main`.
* **Deep** (`deep=True`, loads tensors): each revision differs from its neighbours; the
  parameter distance from step0, the distance to the final model and the input-embedding
  norm along the grid, with spikes that break the trend flagged (a stale or swapped
  checkpoint shows as a jump back toward the final model); `.bin` and safetensors on one
  branch holding the same tensors; lineage (the first trained revision is closer to its own
  step0 than to a peer seed's step0).

Statuses: ``bad`` (do not use), ``flagged`` (use only marked), ``ok``. A finding on a known
upstream fault is reported but does not fail the check (`HealthReport.failed`).

The checks are tables of small functions returning findings: `health_census.CENSUS_CHECKS`
(on listings alone) and `health_deep.REVISION_CHECKS` / `SERIES_CHECKS` (on tensors); the
records are in `health_records`. They take plain records and are tested on synthetic
inputs; this module wires them to a `CheckpointSource` (`check_health`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pythia_forensics.checkpoints.architecture import Architecture
from pythia_forensics.checkpoints.health_census import (
    CENSUS_CHECKS,
    cluster_blobs,
    census_findings,
    safetensors_problem,
)
from pythia_forensics.checkpoints.health_deep import (
    REVISION_CHECKS,
    SERIES_CHECKS,
    DeepInput,
    compare_states,
    deep_findings,
    load_state,
    nonfinite_tensors,
    tensor_distance,
    trend_breaks,
)
from pythia_forensics.checkpoints.health_records import (
    Finding,
    HealthReport,
    ListedFile,
    RevisionFiles,
    RevisionHealth,
    RevisionStats,
    build_rows,
    missing_shards,
    weight_sets,
)
from pythia_forensics.checkpoints.registry import ModelSpec
from pythia_forensics.checkpoints.source_records import CheckpointSource, RevisionListing
from pythia_forensics.constants import MAIN_REVISION

if TYPE_CHECKING:
    from pythia_forensics.checkpoints.fetch import Hold

__all__ = [
    "CENSUS_CHECKS",
    "REVISION_CHECKS",
    "SERIES_CHECKS",
    "DeepInput",
    "Finding",
    "RevisionHealth",
    "RevisionStats",
    "HealthReport",
    "RevisionFiles",
    "ListedFile",
    "architecture_findings",
    "build_rows",
    "check_health",
    "census_findings",
    "cluster_blobs",
    "trend_breaks",
    "deep_findings",
    "compare_states",
    "load_state",
    "nonfinite_tensors",
    "tensor_distance",
    "safetensors_problem",
    "weight_sets",
]


def _expected_revisions(spec: ModelSpec) -> tuple[str, ...]:
    """The grid a model promises: the registry's for hub models; for a local model, the
    manifest's `steps` (what training meant to save; the registry reads only what is there)."""
    if spec.source == "local" and spec.path is not None:
        from pythia_forensics.checkpoints.manifest import read_manifest
        from pythia_forensics.errors import UnknownModelError

        try:
            manifest = read_manifest(spec.path)
        except UnknownModelError:  # the registry reports a bad manifest; here it promises nothing
            manifest = None
        if manifest is None:
            return ()
        # a folder named otherwise (checkpoint-<N>) keeps its name: only its step was promised
        named = {step: name for name, step in spec.folders.items()}
        return tuple(named.get(int(s), f"step{int(s)}") for s in manifest.steps)
    return tuple(spec.revisions or ())


def _files_of(listing: RevisionListing, *, local_root: Path | None) -> RevisionFiles:
    """A `sources.RevisionListing` as the census sees it: every weight file of every format."""
    files = tuple(ListedFile(f.name, int(f.size), f.sha256 or "") for f in listing.all_weights)
    path = local_root / listing.revision if local_root is not None else None
    return RevisionFiles(revision=listing.revision, step=listing.step, files=files, path=path)


def _select(names: Sequence[tuple[str, int | None]], steps: str | Sequence[int] | None,
            final_step: int | None) -> set[str]:
    """Revision names chosen by a `--steps` spec (`main` follows the final step)."""
    from pythia_forensics.checkpoints.registry import parse_steps

    grid = sorted({s for _, s in names if s is not None})
    spec = steps if isinstance(steps, (str, type(None))) else ",".join(str(int(s)) for s in steps)
    chosen = set(parse_steps(spec, grid))
    keep = {rev for rev, s in names if s in chosen and rev != MAIN_REVISION}
    if final_step is None or final_step in chosen:
        keep.add(MAIN_REVISION)
    return keep


class _Fetcher:
    """Revision folders for the deep pass, through the one budgeted `fetch.Fetcher`.

    Local sources are read in place. Hub revisions go into the shared cache under holds in
    the cache's ledger, so the budget is shared with every other worker on that cache; when
    the next revision does not fit, this pass gives back its oldest hold (tensors already
    loaded stay in memory; the last holder evicts). Revisions the cache held before this
    pass are never evicted. With no budget nothing is evicted, so a later replay reuses the
    downloads. Peers' sources share the main pass's `_Fetcher` (`view`), one budget for all.
    """

    def __init__(self, source: CheckpointSource, budget: int | None, *, shared: _Fetcher | None = None) -> None:
        from pythia_forensics.checkpoints.fetch import Fetcher

        self.source = source
        self.local = source.source == "local"
        self.folders: dict[str, Path] = {}
        self.root = shared.root if shared is not None else self
        if shared is None:
            self.fetcher = Fetcher(budget)
            self.order: list[tuple[_Fetcher, Hold]] = []   # (view, hold), oldest first

    def view(self, source: CheckpointSource) -> _Fetcher:
        """A fetcher for another source (a peer) sharing this one's budget and holds."""
        return _Fetcher(source, None, shared=self)

    @property
    def downloaded(self) -> int:
        return self.root.fetcher.downloaded

    @property
    def peak(self) -> int:
        return self.root.fetcher.peak

    def _give_back(self, entry: tuple[_Fetcher, Hold]) -> None:
        view, hold = entry
        view.folders.pop(hold.revision, None)
        if hold.download == 0 and hold.lease is not None:   # the cache had it: keep the files
            self.root.fetcher.held.remove(hold)
            hold.released = True
            hold.lease.release()
        else:
            self.root.fetcher.release(hold)

    def folder(self, revision: str, names: Sequence[str]) -> Path:
        """The folder holding `names` of `revision` (fetching them first when needed)."""
        if self.local:
            return _local_root(self.source) / revision
        root = self.root
        if revision not in self.folders:
            # What fetch downloads plus the other format of a branch carrying both (the
            # format check reads it): a "checkpoint" here is every weight file it has.
            listing = self.source.listing(revision)
            extra = tuple(f.name for f in listing.all_weights if f.name not in listing.fetch_names)
            while True:
                hold = root.fetcher.acquire(self.source, revision, wait=not root.order, extra=extra)
                if hold is not None:
                    break
                root._give_back(root.order.pop(0))
            record = root.fetcher.fetch(hold)
            root.order.append((self, hold))
            self.folders[revision] = Path(record.path)
        folder = self.folders[revision]
        absent = [n for n in names if not (folder / n).exists()]
        if absent:
            self.source.fetch_files(revision, absent)
        return folder

    def close(self) -> None:
        """Give back every hold (the budget's evictions happen here for the last ones)."""
        root = self.root
        while root.order:
            root._give_back(root.order.pop(0))
        root.fetcher.close()


def _deep_input(entry: RevisionFiles, fetcher: _Fetcher) -> DeepInput:
    sets = weight_sets(entry.files)

    def loader(names: tuple[str, ...]) -> Callable[[], dict[str, Any]]:
        return lambda: load_state(fetcher.folder(entry.revision, names), names)

    # An incomplete set is already reported by the census; only complete sets are loaded.
    loaders = {fmt: loader(tuple(f.name for f in fs))
               for fmt, fs in sorted(sets.items(), key=lambda kv: kv[0] != "safetensors")
               if not missing_shards(fs)}
    return DeepInput(revision=entry.revision, step=entry.step, loaders=loaders)


def _census_configs(src: CheckpointSource, revisions: Sequence[str]) -> dict[str, Architecture]:
    """Each revision's `config.json` fields: read once per distinct config blob (a few hundred
    bytes; a hub grid of 154 revisions usually shares one), never a weight byte."""
    from pythia_forensics.checkpoints.architecture import from_config

    out: dict[str, Architecture] = {}
    by_blob: dict[str, Architecture] = {}
    for rev in revisions:
        listing = src.listing(rev)
        f = listing.file("config.json")
        if f is None:
            continue
        blob = f.blob_id or f.sha256 or f"{rev}"
        if blob not in by_blob:
            try:
                folder = Path(src.fetch_files(rev, ["config.json"]))
                by_blob[blob] = from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
            except (OSError, ValueError):   # PFErrors are OSError/ValueError subclasses too
                by_blob[blob] = Architecture()
        out[rev] = by_blob[blob]
    return out


def _census_architecture(entry: RevisionFiles, config: Architecture | None) -> Architecture:
    """Config fields plus, where the safetensors files are on disk, what their headers say."""
    from pythia_forensics.checkpoints.architecture import from_shapes, read_safetensors_shapes

    arch = Architecture()
    sets = weight_sets(entry.files)
    if entry.path is not None and "safetensors" in sets and not missing_shards(sets["safetensors"]):
        shapes: dict[str, tuple[int, ...]] = {}
        try:
            for f in sets["safetensors"]:
                shapes.update(read_safetensors_shapes(Path(entry.path) / f.name))
            arch = from_shapes(shapes)
        except (OSError, ValueError):
            pass  # a truncated or unreadable header is the census's `truncated` finding
    return arch.merged(config or Architecture())


def architecture_findings(spec: ModelSpec, found: Mapping[str, Architecture],
                          steps: Mapping[str, int | None]) -> list[Finding]:
    """A `bad` finding for each revision whose architecture disagrees with the registry entry
    of the name it is served under (fields either side does not know are not compared)."""
    from pythia_forensics.checkpoints.architecture import mismatches

    out = []
    for rev, arch in found.items():
        diff = mismatches(arch, spec)
        if diff:
            out.append(Finding(rev, steps.get(rev), "architecture", "bad",
                               f"served as {spec.name} but the checkpoint has " + ", ".join(diff)
                               + " (checkpoint vs registry): a different model under this name"))
    return out


def _with_architecture(item: DeepInput, spec: ModelSpec, config: Architecture | None,
                       findings: list[Finding]) -> DeepInput:
    """Wrap a deep input's loaders: the first loaded state's tensor shapes are compared with
    the registry entry (parameter count from the tensors themselves)."""
    from pythia_forensics.checkpoints.architecture import from_shapes, mismatches

    done: set[str] = set()

    def wrap(load: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def loader() -> dict[str, Any]:
            state = load()
            if item.revision not in done:
                done.add(item.revision)
                arch = from_shapes({k: tuple(v.shape) for k, v in state.items()}).merged(config or Architecture())
                diff = mismatches(arch, spec)
                if diff:
                    findings.append(Finding(item.revision, item.step, "architecture", "bad",
                                            f"tensors served as {spec.name} have " + ", ".join(diff)
                                            + " (checkpoint vs registry): a different model under this name"))
            return state
        return loader

    return DeepInput(revision=item.revision, step=item.step,
                      loaders={fmt: wrap(fn) for fmt, fn in item.loaders.items()})




def _local_root(src: CheckpointSource) -> Path | None:
    """The model folder of a local source (its revisions are subfolders); None for the hub."""
    return Path(src.spec.path) if src.source == "local" and src.spec.path is not None else None


def _open_source(spec: ModelSpec, cache_dir: str | Path | None) -> CheckpointSource:
    # through the module, so a caller that swaps `sources.open_source` swaps it here too
    from pythia_forensics.checkpoints import sources

    return sources.open_source(spec, **({"cache_dir": str(cache_dir)} if cache_dir and spec.source != "local" else {}))


def _spec_of(model: ModelSpec | str | Path, suite_dir: str | Path | None) -> ModelSpec:
    from pythia_forensics.checkpoints.registry import resolve_model

    return model if isinstance(model, ModelSpec) else resolve_model(str(model), suite_dir=suite_dir)


@dataclass
class _Census:
    """The census of one model: what the deep pass and the report are built from."""

    spec: ModelSpec
    src: CheckpointSource
    entries: list[RevisionFiles]
    expected: list[str]
    final_revision: str | None
    findings: list[Finding]
    clusters: list[tuple[str, ...]]
    configs: dict[str, Architecture]


def _final_revision(spec: ModelSpec, names: Sequence[tuple[str, int | None]], listed: Sequence[str]) -> str | None:
    """The final step's own branch name (`step143000`, OLMo's `step557000-tokens2464B`, ...),
    preferring a listed grammar name over an alias."""
    final_step = max((s for _, s in names if s is not None), default=None)
    if final_step is None:
        return None
    aliases = spec.aliases or {}
    return next((r for r, st in sorted(names, key=lambda n: n[0] in aliases) if st == final_step and r in listed),
                f"step{final_step}")


def _take_census(spec: ModelSpec, src: CheckpointSource, steps: str | Sequence[int] | None,
                 progress: bool) -> _Census:
    """List the chosen revisions and run every census check and the architecture check."""
    from tqdm.auto import tqdm

    revisions = list(src.revisions())
    expected = list(_expected_revisions(spec))
    names = [(r, spec.step_of(r)) for r in revisions] + [(r, spec.step_of(r)) for r in expected]
    final_step = max((s for _, s in names if s is not None), default=None)
    keep = _select(names, steps, final_step)
    revisions = [r for r in revisions if r in keep]
    expected = [r for r in expected if r in keep]
    root = _local_root(src)
    entries = [_files_of(src.listing(r), local_root=root)
               for r in tqdm(revisions, desc=f"listing {spec.name}", unit="rev", disable=not progress)]
    final_revision = _final_revision(spec, names, revisions)
    where = f"the hub repo {spec.repo}" if spec.source == "hub" else str(spec.path)
    findings, clusters = census_findings(entries, expected=expected, final_revision=final_revision, where=where)
    configs = _census_configs(src, revisions)
    findings += architecture_findings(spec, {e.revision: _census_architecture(e, configs.get(e.revision))
                                             for e in entries}, {e.revision: e.step for e in entries})
    return _Census(spec, src, entries, expected, final_revision, findings, clusters, configs)


def _check_budget(census: _Census, disk_budget: int | None) -> None:
    """DiskBudgetError when the biggest revision alone exceeds the budget (local: no downloads)."""
    from pythia_forensics.checkpoints.fetch import check_fits

    if disk_budget is None or _local_root(census.src) is not None:
        return
    biggest = max(census.entries, key=lambda e: sum(f.size for f in e.files))
    check_fits(census.spec.name, biggest.revision, sum(f.size for f in biggest.files), disk_budget)


def _peer_loaders(census: _Census, peers: Sequence[CheckpointSource | ModelSpec | str | Path], fetcher: _Fetcher,
                  suite_dir: str | Path | None, cache_dir: str | Path | None) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each peer seed's step0 loader, by name (a peer without step0 is a `lineage` flag)."""
    out: dict[str, Callable[[], dict[str, Any]]] = {}
    for peer in peers:
        if isinstance(peer, CheckpointSource):
            peer_spec, peer_src = peer.spec, peer
        else:
            peer_spec = _spec_of(peer, suite_dir)
            peer_src = _open_source(peer_spec, cache_dir)
        zero = [r for r in peer_src.revisions() if peer_spec.step_of(r) == 0]
        if not zero:
            first = census.entries[0]
            census.findings.append(Finding(first.revision, first.step, "lineage", "flagged",
                                           f"peer {peer_spec.name} has no step0 to compare with"))
            continue
        listing = _files_of(peer_src.listing(zero[0]), local_root=_local_root(peer_src))
        peer_input = _deep_input(listing, fetcher.view(peer_src))
        if peer_input.loaders:
            out[peer_spec.name] = next(iter(peer_input.loaders.values()))
    return out


def _deep_pass(census: _Census, fetcher: _Fetcher, peer_loaders: Mapping[str, Callable[[], dict[str, Any]]],
               progress: bool) -> list[RevisionStats]:
    """Load every revision the census did not prove broken and run the deep checks."""
    from tqdm.auto import tqdm

    # Files the census proved broken would only fail to load again.
    broken = {f.revision for f in census.findings if f.code in ("truncated", "size", "no_weights")}
    inputs = [_with_architecture(_deep_input(e, fetcher), census.spec, census.configs.get(e.revision),
                                 census.findings)
              for e in census.entries if e.revision not in broken]

    def wrap(it: Iterable[Any]) -> Iterable[Any]:
        return tqdm(it, total=len(inputs), desc=f"health {census.spec.name}", unit="rev", disable=not progress)

    found, stats = deep_findings(inputs, final_revision=census.final_revision, same_blobs=census.clusters,
                                 peers=peer_loaders, progress=wrap)
    census.findings.extend(found)
    return stats


def check_health(model: ModelSpec | str | Path, *, steps: str | Sequence[int] | None = None, deep: bool = False,
                 source: CheckpointSource | None = None, suite_dir: str | Path | None = None,
                 disk_budget: int | None = None, peers: Sequence[CheckpointSource | ModelSpec | str | Path] = (),
                 cache_dir: str | Path | None = None, progress: bool = True) -> HealthReport:
    """Check that every revision of a model is what its name says.

    The census lists revisions and weight files (sizes, sha256) without downloading any
    weights; `deep=True` also loads tensors (downloading hub revisions into the shared cache
    within `disk_budget`, reusing what the cache already holds).

    Args:
        model: a registry name, hub id, local model folder, or a `registry.ModelSpec`.
        steps: a step selection ("all", "N,N", "A:B", "log") or step numbers; None = all.
        deep: load tensors for the deep checks.
        source: a `CheckpointSource` to list/fetch with (default: `sources.open_source`).
        suite_dir: a local suite folder to look model names up in.
        disk_budget: most bytes the deep pass may download and hold at once (None: no limit).
        peers: other seeds of the same model (names, folders, specs or sources) for the
            lineage check (deep only); each peer's step0 is loaded.
        cache_dir: hub cache folder (default: huggingface_hub's, shared with the replay).
        progress: show a progress bar while listing and in the deep pass.

    Returns:
        The `HealthReport` (store it with `ResultsStore(dir).write_health(report.to_frame())`).

    Raises:
        UnknownModelError, RevisionNotFoundError, SourceError: from the registry / sources.
        StepSpecError: a malformed `steps`.
        DiskBudgetError: `disk_budget` is smaller than one revision.
    """
    spec = _spec_of(model, suite_dir)
    census = _take_census(spec, source or _open_source(spec, cache_dir), steps, progress)
    stats: list[RevisionStats] = []
    fetcher: _Fetcher | None = None
    if deep and census.entries:
        _check_budget(census, disk_budget)
        fetcher = _Fetcher(census.src, disk_budget)
        try:
            peer_loaders = _peer_loaders(census, peers, fetcher, suite_dir, cache_dir)
            stats = _deep_pass(census, fetcher, peer_loaders, progress)
        finally:
            fetcher.close()
    rows = build_rows(spec.name, [(e.revision, e.step) for e in census.entries]
                      + [(r, spec.step_of(r)) for r in census.expected], census.findings)
    return HealthReport(model=spec.name, source=spec.source, deep=deep, rows=rows, findings=tuple(census.findings),
                        clusters=tuple(census.clusters), stats=tuple(stats),
                        downloaded_bytes=fetcher.downloaded if fetcher else 0,
                        peak_bytes=fetcher.peak if fetcher else 0)
