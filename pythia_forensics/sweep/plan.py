"""Planning a sweep: list every selected checkpoint (no download), key each (revision, probe
set) by content, and keep what the store does not hold yet.

`load_probe_sets` and `code_version` are shared with the in-training monitor, which keys its
results the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pythia_forensics import __version__
from pythia_forensics.checkpoints.fetch import check_fits, select_revisions
from pythia_forensics.errors import PFError
from pythia_forensics.sweep.records import ReplayOptions, ReplaySummary, Todo
from pythia_forensics.sweep.store import ResultsStore, WorkKey

__all__ = ["load_probe_sets", "code_version", "plan", "HEALTH_SKIP_STATUSES"]

# Health statuses a replay leaves out with `health="skip"` (checkpoints/health.py writes them).
HEALTH_SKIP_STATUSES = ("bad",)


def load_probe_sets(probes: Any) -> tuple[Any, ...]:
    """One ProbeSet per entry (each keyed on its own, so editing one re-scores only it).

    Args:
        probes: a ProbeSet, a shipped name or file, ``all`` (every shipped set), or several.

    Returns:
        The probe sets, in the order given.

    Raises:
        PFError: two sets share a name (results are stored per probe-set name).
        ProbeFormatError, UnknownProbeSetError: from `scoring.probes.load_probes`.
    """
    from pythia_forensics.scoring.probes import ProbeSet, load_probes, shipped_probe_sets

    if isinstance(probes, ProbeSet):
        return (probes,)
    if isinstance(probes, (str, Path)):
        probes = [probes]
    expanded: list[Any] = []
    for p in probes:
        # `all` = every shipped set, each keyed on its own
        expanded.extend(shipped_probe_sets().values() if str(p) == "all" else [p])
    out = tuple(p if isinstance(p, ProbeSet) else load_probes(p) for p in expanded)
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise PFError(f"probe sets share a name ({names}); results are stored per probe-set name, rename one",
                      param="probes")
    return out


def code_version() -> str:
    """The scoring code's version string, part of every work key."""
    from pythia_forensics.scoring import score as scoring

    return str(getattr(scoring, "SCORING_VERSION", None) or __version__)


def _resolve_dtype(dtype: str, params: int | None, device: str) -> str:
    """The dtype `auto` will mean, known before loading so it can be part of the work key."""
    from pythia_forensics.scoring import score as scoring

    return str(scoring.resolve_dtype(dtype, params=params, device=scoring.resolve_device(device)))


def _health_status(store: ResultsStore, opts: ReplayOptions) -> dict[tuple[str, str], str]:
    """(model, revision) -> health status, from health.parquet when health is consulted."""
    health = store.health() if opts.health != "off" else pd.DataFrame()
    if health.empty:
        return {}
    return {(row.model, row.revision): row.status for row in health.itertuples()}


def _chosen(spec: Any, source: Any, steps: Any, revisions: dict[str, Sequence[str]] | None) -> list[str]:
    names = source.revisions()
    if revisions is not None:
        wanted = set(revisions.get(spec.name, ()))
        return [r for r in names if r in wanted]
    return select_revisions(spec, names, steps)


def _check_budget(todo: Sequence[Todo], budget: int) -> None:
    """Dry run before anything downloads: one revision per hub model (a model's checkpoints are
    one size; each is sized again just before its own fetch), so a budget below one checkpoint
    fails now rather than after hours of work, at one listing call per model."""
    first: dict[str, Todo] = {}
    for t in todo:
        if t.source.source == "hub":
            first.setdefault(t.spec.name, t)
    for t in first.values():
        check_fits(t.spec.name, t.revision, t.source.size(t.revision).total_bytes, budget)


def plan(specs: Sequence[Any], steps: str | Sequence[int] | None, probe_sets: Sequence[Any],
         store: ResultsStore, opts: ReplayOptions, *, revisions: dict[str, Sequence[str]] | None = None,
         rank: int = 0, world: int = 1) -> tuple[list[Todo], ReplaySummary]:
    """List every selected checkpoint (no download), key it, keep what is not stored.

    Args:
        specs: the models (`registry.ModelSpec`).
        steps: the step selection (see `checkpoints.fetch.select_revisions`); ignored with
            `revisions`.
        probe_sets: the loaded probe sets.
        store: the results store to skip stored keys of.
        opts: the replay's options.
        revisions: model name -> exactly these revisions (an array task's chunk).
        rank, world: this worker's share of the planned grid (index % world == rank).

    Returns:
        (the revisions still to score, the summary of the plan).

    Raises:
        DiskBudgetError: the budget cannot hold one checkpoint of a hub model.
    """
    from pythia_forensics.checkpoints import sources

    version = code_version()
    status_of = _health_status(store, opts)
    todo: list[Todo] = []
    index = planned = skipped = skipped_health = 0
    flagged: list[str] = []
    for spec in specs:
        source = sources.open_source(spec, **opts.source_options())
        dtype = _resolve_dtype(opts.score.dtype, spec.params_total, opts.score.device)
        for revision in _chosen(spec, source, steps, revisions):
            index += 1
            # Ranks split the whole planned grid, not what is left of it, so every rank
            # agrees on the partition whatever the others have finished.
            if (index - 1) % world != rank:
                continue
            planned += 1
            status = status_of.get((spec.name, revision), "ok")
            if opts.health == "skip" and status in HEALTH_SKIP_STATUSES:
                skipped_health += 1
                continue
            if status != "ok":
                flagged.append(f"{spec.name}@{revision} ({status})")
            # hub: the commit sha (from the branch list, no download); local: weight hashes
            content_key = source.resolve(revision) or source.record(revision).content_key
            keys = [(WorkKey(model=spec.name, revision=revision, content_key=content_key, probeset=p.name,
                             probeset_sha256=p.sha256, dtype=dtype, bos=bool(opts.score.bos), vocab_rows=opts.score.vocab_rows,
                             code_version=version), p) for p in probe_sets]
            keys = [(k, p) for k, p in keys if not store.has(k)]
            if not keys:
                skipped += 1
                continue
            todo.append(Todo(spec=spec, source=source, revision=revision, step=spec.step_of(revision), keys=keys))
    if opts.disk_budget is not None:
        _check_budget(todo, opts.disk_budget)
    summary = ReplaySummary(
        models=tuple(s.name for s in specs), probe_sets=tuple(p.name for p in probe_sets),
        revisions_planned=planned, revisions_skipped=skipped, revisions_skipped_health=skipped_health,
        revisions_flagged=tuple(flagged),
    )
    return todo, summary
