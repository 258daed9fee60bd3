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

__all__ = ["load_probe_sets", "code_version", "plan", "known_revisions", "stored_revisions", "HEALTH_SKIP_STATUSES"]

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


def stored_revisions(store: ResultsStore, model: str) -> dict[str, str]:
    """Revision -> content key of the work the store holds for a model (intact files only)."""
    rows = store.items(models=[model], columns=["model", "revision", "content_key"])
    if rows.empty:
        return {}
    rows = rows[(rows["model"] == model) & rows["content_key"].notna()]
    return {str(r): str(k) for r, k in zip(rows["revision"], rows["content_key"])}


def known_revisions(spec: Any, source: Any, store: ResultsStore) -> dict[str, str | None]:
    """Every revision the model is known to have -> its content key where known without
    reading it (a hub commit), in step order.

    Learned, in order of precedence: the hub (online; its list is then recorded beside the
    cache), the cache's refs, the work already in the results store, and the catalog the
    last online listing and `fetch` left beside the cache. So a finished sweep re-runs
    offline as a no-op whatever the cache still holds. Local models: their folders.
    """
    from pythia_forensics.checkpoints.sources import offline

    if source.source != "hub":
        return {r: None for r in source.revisions()}
    if not offline():
        branches = source.branches()
        source.remember(branches)
        known: dict[str, str | None] = dict(branches)
    else:
        listed, staged = source.catalog()
        known = {**listed, **staged, **stored_revisions(store, spec.name), **source.cached_refs()}

    def order(revision: str) -> tuple[int, int | str]:
        step = spec.step_of(revision)
        return (0, step) if step is not None else (1, revision)

    return {r: known[r] for r in sorted(known, key=order)}


def _explicit_steps(steps: Any) -> list[int] | None:
    """The steps a `N,N,...` selection (or a list) names; None for all / log / A:B."""
    if steps is None:
        return None
    if not isinstance(steps, str):
        return [int(x) for x in steps]
    parts = [p.strip().removeprefix("step") for p in steps.split(",") if p.strip()]
    if ":" in steps or not parts or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]


def _stage_hint(spec: Any, source: Any, steps: Sequence[int | None], revisions: Sequence[str]) -> str:
    named = ",".join(str(s) for s in steps if s is not None) or "..."
    return (f"stage {'it' if len(revisions) == 1 else 'them'} on a node with network: `pythia-forensics fetch "
            f"{source.cli_name} --steps {named} --cache-dir {source.cache_dir}`")


def _chosen(spec: Any, source: Any, known: dict[str, str | None], steps: Any,
            revisions: dict[str, Sequence[str]] | None, store: ResultsStore) -> list[str]:
    from pythia_forensics.checkpoints.sources import offline
    from pythia_forensics.errors import StepSpecError

    names = list(known)
    if revisions is not None:
        wanted = set(revisions.get(spec.name, ()))
        return [r for r in names if r in wanted]
    if source.source == "hub" and offline():
        if not names:
            source.branches()  # raises: nothing of it is cached, stored or was ever listed here
        # offline, a step nobody knows of (not stored, not in the cache, never listed) is one
        # line naming exactly those steps and the command that stages them
        asked = _explicit_steps(steps)
        have = {spec.step_of(r) for r in names}
        lacking = [s for s in dict.fromkeys(asked or ()) if s not in have]
        if lacking:
            shown = ", ".join(f"step {s}" for s in lacking)
            raise StepSpecError(
                f"{spec.name} ({spec.repo}): {shown} {'is' if len(lacking) == 1 else 'are'} neither stored in "
                f"{store.root} nor staged in the cache {source.cache_dir} (HF_HUB_OFFLINE is set; {len(names)} "
                f"revisions known from the cache, the results and the last listing); "
                f"{_stage_hint(spec, source, lacking, [str(s) for s in lacking])}", param="steps")
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


def _not_staged(unstaged: Sequence[tuple[Any, Any, list[str]]], store: ResultsStore) -> PFError:
    """One line naming every revision that is neither stored nor in the cache, offline, and
    the `fetch` command that stages each model's."""
    from pythia_forensics.errors import SourceError

    named = ", ".join(f"{spec.name}@{r}" for spec, _, revs in unstaged for r in revs)
    n = sum(len(revs) for _, _, revs in unstaged)
    hints = "; ".join(_stage_hint(spec, source, [spec.step_of(r) for r in revs], revs)
                      for spec, source, revs in unstaged)
    return SourceError(f"HF_HUB_OFFLINE is set and {named} {'is' if n == 1 else 'are'} neither stored in {store.root} "
                       f"nor staged in the cache {unstaged[0][1].cache_dir}; {hints}; then rerun")


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
    unstaged: list[tuple[Any, Any, list[str]]] = []   # (spec, source, revisions) offline and not cached
    for spec in specs:
        source = sources.open_source(spec, **opts.source_options())
        dtype = _resolve_dtype(opts.score.dtype, spec.params_total, opts.score.device)
        known = known_revisions(spec, source, store)
        cached = None
        for revision in _chosen(spec, source, known, steps, revisions, store):
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
            # hub: the commit sha (from what is known of the branch, no download); local: weight hashes
            content_key = known.get(revision) or source.record(revision).content_key
            keys = [(WorkKey(model=spec.name, revision=revision, content_key=content_key, probeset=p.name,
                             probeset_sha256=p.sha256, dtype=dtype, bos=bool(opts.score.bos), vocab_rows=opts.score.vocab_rows,
                             code_version=version), p) for p in probe_sets]
            keys = [(k, p) for k, p in keys if not store.has(k)]
            if not keys:
                skipped += 1
                continue
            if source.source == "hub" and sources.offline():
                cached = source.cached_commits() if cached is None else cached
                if content_key not in cached:
                    if not unstaged or unstaged[-1][0] is not spec:
                        unstaged.append((spec, source, []))
                    unstaged[-1][2].append(revision)
                    continue
            todo.append(Todo(spec=spec, source=source, revision=revision, step=spec.step_of(revision), keys=keys))
    if unstaged:
        raise _not_staged(unstaged, store)
    if opts.disk_budget is not None:
        _check_budget(todo, opts.disk_budget)
    summary = ReplaySummary(
        models=tuple(s.name for s in specs), probe_sets=tuple(p.name for p in probe_sets),
        revisions_planned=planned, revisions_skipped=skipped, revisions_skipped_health=skipped_health,
        revisions_flagged=tuple(flagged),
    )
    return todo, summary
