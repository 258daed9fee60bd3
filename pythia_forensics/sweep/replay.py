"""The sweep: checkpoint sources x scorer -> results store, within a disk budget, resumable.

`replay` plans the work (list every selected revision of every model without downloading,
key each (revision, probe set) by content, drop keys already stored), then runs it:

- one revision is scored while the next one downloads in a background thread (prefetch);
- before a revision is fetched it is sized, and it is fetched only while the bytes this run
  holds stay within the disk budget (peak <= budget + one checkpoint, the revision being
  scored); finished revisions are evicted through the source (the hub cache API, which keeps
  blobs other revisions still use);
- one model skeleton is loaded per model and later revisions' weights are loaded into it;
- each finished (revision, probe set) is written atomically, so a killed run loses nothing it
  finished and a rerun skips exactly that.

The unit of work is one (model, chunk of revisions); it is idempotent, so executors only
decide where units run: in-process (`local`; under `accelerate launch`/`torchrun` each rank
takes a disjoint slice), or as one submitit job array (`slurm`, `submitit-local`).
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from pythia_forensics.constants import DEFAULT_RESULTS_DIR, HEALTH_FILE
from pythia_forensics.errors import DiskBudgetError, PFError
from pythia_forensics.scoring.options import DEFAULT_VOCAB_ROWS, ScoreOptions
from pythia_forensics.sweep.plan import load_probe_sets, plan
from pythia_forensics.sweep.records import ReplayOptions, ReplaySummary, Todo, UnitTiming, parse_params, parse_size
from pythia_forensics.sweep.run import one_line, read_failures, run_todo
from pythia_forensics.sweep.store import ResultsStore

__all__ = ["replay", "run_unit", "read_failures", "ReplaySummary", "UnitTiming", "parse_size", "parse_params",
           "EXECUTORS", "HEALTH_MODES", "DEFAULT_REPLAY_CHUNK", "DEFAULT_ARRAY_TIMEOUT_MIN"]

EXECUTORS = ("local", "slurm", "submitit-local")
HEALTH_MODES = ("off", "skip", "flag")
# Revisions per work unit for array executors (one Slurm task scores one chunk).
DEFAULT_REPLAY_CHUNK = 8
# Wall-clock limit of one array task unless the executor parameters set timeout_min.
DEFAULT_ARRAY_TIMEOUT_MIN = 240


def _rank_slice() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / `torchrun` (env vars both set), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    return (rank, world) if world > 1 else (0, 1)


def _rank_device(device: str) -> str:
    # one GPU per rank: rank i of a node uses cuda:LOCAL_RANK
    if device == "auto" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def run_unit(unit: dict[str, Any]) -> ReplaySummary:
    """Run one idempotent work unit (a model and a chunk of its revisions); array tasks call this.

    Args:
        unit: ``{"model", "suite_dir", "step_pattern", "revisions", "probes", "results", "options"}``
            (picklable; ``options`` is a `ReplayOptions`).

    Returns:
        The unit's partial summary.
    """
    from pythia_forensics.checkpoints.registry import resolve_model

    opts = unit["options"]
    store = ResultsStore(unit["results"])
    spec = resolve_model(unit["model"], suite_dir=unit["suite_dir"], step_pattern=unit.get("step_pattern"))
    todo, summary = plan([spec], None, unit["probes"], store, opts, revisions={spec.name: unit["revisions"]})
    return run_todo(todo, store, opts, summary)


def _run_array(todo: list[Todo], *, specs_by_name: dict[str, str], suite_dir: Any, probe_sets: Sequence[Any],
               results: Path, opts: ReplayOptions, executor: str, chunk: int, slurm: dict[str, Any] | None,
               summary: ReplaySummary, step_pattern: str | None = None) -> ReplaySummary:
    """Submit one submitit job array, one task per (model, revision chunk); wait; merge."""
    import submitit

    units = []
    by_model: dict[str, list[str]] = {}
    for t in todo:
        by_model.setdefault(t.spec.name, []).append(t.revision)
    unit_opts = replace(opts, progress=False)
    for name, revs in by_model.items():
        for i in range(0, len(revs), chunk):
            units.append({"model": specs_by_name[name], "suite_dir": None if suite_dir is None else str(suite_dir),
                          "step_pattern": step_pattern,
                          "revisions": revs[i:i + chunk], "probes": tuple(probe_sets), "results": str(results),
                          "options": unit_opts})
    if not units:
        return summary
    started = time.perf_counter()
    folder = Path(results) / ".submitit" / "%j"
    params = {"timeout_min": DEFAULT_ARRAY_TIMEOUT_MIN, **(slurm or {})}
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="local" if executor == "submitit-local" else "slurm")
        ex.update_parameters(**params)
        jobs = ex.map_array(run_unit, units)
    except (ValueError, TypeError) as exc:
        raise PFError(f"submitit rejected the job parameters {params}: {str(exc).splitlines()[0]}; "
                      "fix the executor parameters (KEY=VALUE)", param="slurm") from exc
    except (OSError, RuntimeError) as exc:  # no sbatch on this machine, or it refused the array
        raise PFError(f"could not submit the {executor} job array ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); on a machine without Slurm use "
                      "the executor submitit-local or local", param="executor") from exc
    merged = replace(summary, jobs=0)
    failed: list[str] = []
    for job in tqdm(jobs, desc="jobs", disable=not opts.progress):
        try:
            part = job.result()
        except Exception as exc:  # noqa: BLE001 - a failed task must not hide the others' results
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            failed.append(f"task {job.job_id}: {lines[-1] if lines else type(exc).__name__}")
            continue
        merged = merged.merge(replace(part, models=(), probe_sets=(), revisions_planned=0,
                                      revisions_skipped=0, revisions_skipped_health=0, revisions_flagged=()))
    if failed:
        raise PFError(f"{len(failed)} of {len(jobs)} array tasks failed ({failed[0]}); their finished work is "
                      f"stored: rerun the same command to redo only what is missing (logs in {folder.parent})")
    return replace(merged, wall_s=time.perf_counter() - started)


def replay(
    models: str | Sequence[str],
    probes: Any,
    *,
    steps: str | Sequence[int] | None = "all",
    suite_dir: str | Path | None = None,
    results: str | Path = DEFAULT_RESULTS_DIR,
    disk_budget: str | int | None = None,
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int | str = "auto",
    bos: bool = False,
    vocab_rows: str = DEFAULT_VOCAB_ROWS,
    threads: int | str = "auto",
    step_pattern: str | None = None,
    executor: str = "local",
    health: str | None = None,
    cache_dir: str | Path | None = None,
    hub_options: dict[str, Any] | None = None,
    chunk: int | None = None,
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
) -> ReplaySummary:
    """Score every selected checkpoint of every model on the probe sets, into a results store.

    Args:
        models: registry names (`pythia-160m`), hub ids, or local model folders.
        probes: a ProbeSet, a probe-set name/path, or several (each is keyed on its own).
        steps: `all`, `N,N,...`, `A:B`, `log`, or a list of steps.
        suite_dir: a local suite folder to look model names up in.
        results: the results folder.
        disk_budget: most bytes of checkpoints held at once (`50GB`); None = unlimited.
        dtype, device, batch_size, bos, vocab_rows, threads: scoring options (see ScoreOptions;
            ``threads`` is set once for the whole run and recorded in each row's provenance).
        step_pattern: checkpoint folder names of local models (`registry.checkpoint_folders`;
            default `$PF_STEP_PATTERN`, else step<N> and checkpoint-<N>).
        executor: `local`, `slurm` or `submitit-local` (a job array on this machine).
        health: `off` (default), `skip` (leave out revisions health.parquet marks bad) or
            `flag` (score them, list them in the summary).
        cache_dir: the hub cache (default: huggingface_hub's).
        hub_options: extra `HubSource` options: endpoint, token, max_retries, backoff_base_s.
        chunk: revisions per array task (default `DEFAULT_REPLAY_CHUNK`).
        slurm: extra submitit parameters for `slurm` (partition, gpus_per_node, timeout_min...).
        progress: show progress bars.

    Returns:
        A ReplaySummary (``units`` holds each stored unit's load / score / write seconds).

    Raises:
        UnknownModelError, StepSpecError, SourceError, DiskBudgetError, PFError: bad input,
            one line each (``param`` names the argument).
    """
    from pythia_forensics.checkpoints.registry import resolve_model

    started = time.perf_counter()
    health = health or "off"
    chunk = DEFAULT_REPLAY_CHUNK if chunk is None else chunk
    budget = _check_values(executor=executor, health=health, chunk=chunk, threads=threads, disk_budget=disk_budget)
    # validated here, before any model, probe file or results folder is touched
    score_options = ScoreOptions(dtype=dtype, device=_rank_device(device), batch_size=batch_size, bos=bos,
                                 vocab_rows=vocab_rows, threads=threads)
    names = list(dict.fromkeys([str(models)] if isinstance(models, (str, Path)) else [str(m) for m in models]))
    if not names:
        raise PFError("no model given; pass a registry name (pythia-160m), a hub id or a local model folder",
                      param="models")
    specs = [resolve_model(m, suite_dir=suite_dir, step_pattern=step_pattern) for m in names]
    probe_sets = load_probe_sets(probes)
    store = ResultsStore(results)
    store.clean_temporaries()
    opts = ReplayOptions(score=score_options, health=health, disk_budget=budget,
                         cache_dir=None if cache_dir is None else str(cache_dir),
                         hub_options=tuple(sorted((hub_options or {}).items())), progress=progress)
    rank, world = _rank_slice() if executor == "local" else (0, 1)
    if health != "off":
        _ensure_health(store, specs, steps, opts, progress=progress)
    todo, summary = plan(specs, steps, probe_sets, store, opts, rank=rank, world=world)
    # a model whose every unit is stored keeps its models.parquet row: re-reading its size
    # would need the hub or a cached checkpoint, which a finished sweep may have neither of
    models = store.models()
    recorded = (set(models.loc[models["size_source"].eq("checkpoint").fillna(False), "model"])
                if not models.empty and "size_source" in models else set())
    busy = {t.spec.name for t in todo}
    update = [s for s in specs if s.name in busy or s.name not in recorded]
    if update:
        _write_models(store, update, _sizes(todo, update, opts))
    if executor == "local":
        summary = run_todo(todo, store, opts, summary)
    else:
        # absolute paths: a relative model folder or the default ./results mean this working
        # directory, not an array task's
        summary = _run_array(todo, specs_by_name={s.name: str(s.path or n) for s, n in zip(specs, names)},
                             suite_dir=suite_dir, probe_sets=probe_sets, results=Path(results).resolve(), opts=opts,
                             executor=executor, chunk=chunk, slurm=slurm, summary=summary, step_pattern=step_pattern)
    store.refresh_summary()
    return replace(summary, wall_s=time.perf_counter() - started)


def _check_values(*, executor: str, health: str, chunk: int, threads: int | str,
                  disk_budget: str | int | None) -> int | None:
    """Refuse bad option values before any work; returns the disk budget in bytes (or None)."""
    from pythia_forensics.scoring.score import resolve_threads

    if executor not in EXECUTORS:
        raise PFError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}", param="executor")
    if health not in HEALTH_MODES:
        raise PFError(f"unknown health mode {health!r}; use one of {', '.join(HEALTH_MODES)}", param="health")
    if chunk < 1:
        raise PFError(f"chunk size must be at least 1 revision per array task, got {chunk}", param="chunk")
    resolve_threads(threads)  # a bad thread count / $PF_THREADS fails before any work
    budget = parse_size(disk_budget)
    if budget is not None and budget <= 0:
        raise DiskBudgetError(f"disk budget must be positive, got {disk_budget!r}", param="disk_budget")
    return budget


def _ensure_health(store: ResultsStore, specs: Sequence[Any], steps: Any, opts: ReplayOptions, *,
                   progress: bool) -> None:
    """`--health skip|flag` with no health rows for a model: run its census first (listings
    only, no weights downloaded) and store it, saying so in one line."""
    from pythia_forensics.checkpoints.health import check_health

    table = store.health()
    have = set(table["model"]) if not table.empty else set()
    missing = [s for s in specs if s.name not in have]
    if not missing:
        return
    tqdm.write(f"health: no rows in {Path(store.root) / HEALTH_FILE} for {', '.join(s.name for s in missing)}; "
               f"running the census first (health mode {opts.health})", file=sys.stderr)
    for spec in missing:
        report = check_health(spec, steps=steps if isinstance(steps, str) or steps is None else list(steps),
                              cache_dir=opts.cache_dir, progress=False,
                              source=_health_source(spec, opts))
        store.write_health(report.to_frame())


def _health_source(spec: Any, opts: ReplayOptions) -> Any:
    from pythia_forensics.checkpoints import sources

    return sources.open_source(spec, **opts.source_options())


def _checkpoint_architecture(spec: Any, source: Any, revision: str) -> Any:
    """What one checkpoint of the model really is (tensor shapes + config.json), or None
    when it cannot be read (the sweep then says so and records the registry's sizes)."""
    import json

    from pythia_forensics.checkpoints import architecture as arch

    if source.source == "local":
        return arch.of_folder(Path(source.path) / revision)
    found = arch.from_shapes(source.weight_shapes(revision))
    if source.listing(revision).file("config.json") is not None:
        folder = Path(source.fetch_files(revision, ["config.json"]))
        found = found.merged(arch.from_config(json.loads((folder / "config.json").read_text(encoding="utf-8"))))
    return found


def _sizes(todo: Sequence[Todo], specs: Sequence[Any], opts: ReplayOptions) -> dict[str, Any]:
    """Model name -> its `Architecture` read from one of its checkpoints (the first planned,
    else the first listed), so a scale analysis never uses the size of the name alone."""
    from pythia_forensics.checkpoints import sources

    first = {}
    for t in todo:
        first.setdefault(t.spec.name, (t.source, t.revision))
    out: dict[str, Any] = {}
    for spec in specs:
        try:
            if spec.name in first:
                source, revision = first[spec.name]
            else:
                source = sources.open_source(spec, **opts.source_options())
                revision = next(iter(source.revisions()))
            out[spec.name] = _checkpoint_architecture(spec, source, revision)
        except (PFError, OSError, ValueError, StopIteration) as exc:
            tqdm.write(f"warning: cannot read {spec.name}'s size from a checkpoint ({one_line(exc)}); "
                       "models.parquet records the registry's, marked size_source=registry", file=sys.stderr)
    return out


def replicate_group(name: str, seed: int | None) -> str:
    """The run a seeded model replicates: its name without the seed suffix (`pythia-70m-seed3`
    and `pythia-70m` -> `pythia-70m`; the mini grid's `grid-d32-s070-r1235` -> `grid-d32-s070`).
    A model without a known seed is its own group (analysis then counts it as one point)."""
    if seed is None:
        return name
    return re.sub(r"[-_](?:seed|r)\d+$", "", name)


def _write_models(store: ResultsStore, specs: Iterable[Any], sizes: dict[str, Any] | None = None) -> None:
    """models.parquet: one row per model; sizes from the checkpoint (`size_source` says so),
    the registry's only where no checkpoint could be read. A checkpoint that disagrees with
    its registry entry is reported by `health` (code `architecture`)."""
    sizes = sizes or {}
    fields = ("params_total", "params_nonembedding", "layers", "d_model")
    rows = []
    for s in specs:
        found = sizes.get(s.name)
        row = {"model": s.name, "repo": s.repo, "source": s.source, "tokens_per_step": s.tokens_per_step}
        for f in fields:
            have = getattr(found, f, None) if found is not None else None
            row[f] = have if have is not None else getattr(s, f)
        row["size_source"] = "checkpoint" if found is not None and found.params_total is not None else "registry"
        row["seed"] = getattr(s, "seed", None)
        row["replicate_group"] = replicate_group(s.name, row["seed"])
        rows.append(row)
    rows = pd.DataFrame(rows, columns=["model", "repo", "source", "params_total", "params_nonembedding",
                                       "tokens_per_step", "layers", "d_model", "size_source", "seed",
                                       "replicate_group"])
    for col in ("params_total", "params_nonembedding", "tokens_per_step", "layers", "d_model", "seed"):
        rows[col] = pd.array(rows[col], dtype="Int64")
    store.write_models(rows)
