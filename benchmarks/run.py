"""The whole benchmark (`python -m benchmarks`, `make bench`): build the suites and the battery,
run every competitor in alternating rounds (ours once more beside a competing torch job), set
our time against the machine's floor, add the support counter and the device sections, write
the report.

Our replay runs with `vocab_rows="all"`: the competitors normalise over every row of the output
embedding, and random weights give the 27 padding rows real probability mass, so the tool's
default (`"tokenizer"` rows only) would differ from them by design, not by error.
"""
from __future__ import annotations

import importlib.util
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import report as reporting
from benchmarks.battery import BatteryStats, battery_stats, build_battery, plan_stats, write_battery
from benchmarks.competitors import STAGES, SWEEPS, RunResult, run_competitor
from benchmarks.floor import lower_bound, measure_disk_read, measure_exp_rate, measure_matmul_flops
from benchmarks.gpu import checkpoint_section, gpu_section, support_section
from benchmarks.settings import (
    BENCH_BATCH_SIZE,
    BENCH_BUDGET_S,
    BENCH_COMPETING_MATMUL,
    BENCH_COMPETING_THREADS,
    BENCH_COMPETITORS,
    BENCH_LARGE_COMPETITORS,
    BENCH_LARGE_REVISIONS,
    BENCH_LARGE_ROUNDS,
    BENCH_MIN_ITEMS,
    BENCH_QUICK_ITEMS,
    BENCH_QUICK_REVISIONS,
    BENCH_REVISIONS,
    BENCH_ROUNDS,
    BENCH_SUPPORT_TOKENS,
)
from benchmarks.suite import BenchmarkError, BenchShape, bench_shapes, build_suite, revision_dirs

if TYPE_CHECKING:
    from tqdm import tqdm as Bar

__all__ = ["BenchPlan", "CompetingJob", "default_plan", "max_abs_delta", "run_bench"]

_COMPETING_JOB = """
import sys, torch
torch.set_num_threads({threads})
a = torch.randn({n}, {n})
b = torch.randn({n}, {n})
print("ready", flush=True)
while True:
    a = torch.tanh(a @ b)
"""


class CompetingJob:
    """Another torch job on the machine: a subprocess doing `threads`-thread matmuls until stopped.

    It runs with the OpenMP wait policy an unrelated job has (ours is not imported there), and
    is started before and stopped after the measurement it competes with. Use as a context
    manager; it only ever stops the process it started.
    """

    def __init__(self, threads: int = BENCH_COMPETING_THREADS, size: int = BENCH_COMPETING_MATMUL) -> None:
        self.threads, self.size = threads, size
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> CompetingJob:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        self.proc = subprocess.Popen([sys.executable, "-c", _COMPETING_JOB.format(threads=self.threads, n=self.size)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.__exit__(None, None, None)
            raise BenchmarkError("the competing torch job did not start; run the benchmark without contention")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass(frozen=True)
class BenchPlan:
    """How much a run measures (chosen so `make bench` fits ~20 minutes on 2 cores).

    Attributes:
        shapes: layer shapes.
        revisions: revisions per shape in the suite; ours sweeps all of them every round.
        lm_eval_revisions / slow_revisions: revisions lm-eval / minicons and the full-logits
            scorer sweep per round (they are 5-20x slower than ours; each round takes the
            next ones, so rounds cover different revisions). Ratios are per revision.
        rounds: alternating rounds (each round runs every competitor once per shape, in an
            order rotated by one each round).
        items: battery size.
        budget_s: stop starting new rounds when the next would end past this many seconds
            after the first round started (>= 1 round).
        support_tokens: tokens for the support counter's throughput (0: skip).
        competitors: which to run (always including ``ours``).
        batch_size: the competitors' batch size.
        contention: each round, run ours once more beside a `CompetingJob` (the slowdown
            column: contended / quiet wall time per revision).
        large: a second tier run after these rounds on the same battery, for shapes too slow
            for every peer and every round (Pythia-160m): its own shapes, revisions, rounds,
            competitors and budget (counted from its own start); the battery, batch size and
            support fields are this plan's.
    """

    shapes: tuple[BenchShape, ...]
    revisions: int = BENCH_REVISIONS
    lm_eval_revisions: int = 1
    slow_revisions: int = 1
    rounds: int = BENCH_ROUNDS
    items: int = BENCH_MIN_ITEMS
    budget_s: float = BENCH_BUDGET_S
    support_tokens: int = BENCH_SUPPORT_TOKENS
    competitors: tuple[str, ...] = BENCH_COMPETITORS
    batch_size: int = BENCH_BATCH_SIZE
    contention: bool = True
    large: BenchPlan | None = None

    def tiers(self) -> tuple[BenchPlan, ...]:
        """This plan's rounds, then the large tier's."""
        return (self,) if self.large is None else (self, self.large)


def default_plan(*, quick: bool = False) -> BenchPlan:
    """The plan `make bench` runs (quick: a tiny shape, 2 revisions, 120 items, one round)."""
    if quick:
        main = BenchPlan(shapes=bench_shapes(quick=True), revisions=BENCH_QUICK_REVISIONS, rounds=1,
                         items=BENCH_QUICK_ITEMS, budget_s=120.0, support_tokens=1_000_000)
        revisions = 1
    else:
        main, revisions = BenchPlan(shapes=bench_shapes()), BENCH_LARGE_REVISIONS
    return replace(main, large=replace(main, shapes=bench_shapes(quick=quick, large=True), revisions=revisions,
                                       rounds=BENCH_LARGE_ROUNDS, competitors=BENCH_LARGE_COMPETITORS))


def _check_plan(plan: BenchPlan) -> None:
    names = [s.name for tier in plan.tiers() for s in tier.shapes]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"a shape is planned twice ({', '.join(names)}); give each tier its own shapes",
                             param="plan")
    competitors = {c for tier in plan.tiers() for c in tier.competitors}
    unknown = sorted(competitors - set(SWEEPS))
    if unknown or any("ours" not in tier.competitors for tier in plan.tiers()):
        raise BenchmarkError(f"unknown or missing competitors {unknown or ['ours']}; use some of "
                             f"{', '.join(SWEEPS)} and always 'ours'", param="competitors")
    for comp, module in (("minicons", "minicons"), ("lm-eval", "lm_eval")):
        if comp in competitors and importlib.util.find_spec(module) is None:
            raise BenchmarkError(f"competitor {comp} needs the {module} package, which is not installed; "
                                 "run `pip install minicons lm-eval` (the `bench` extra) or leave it out")


def slow_subset(revs: Sequence[Path], round_: int, n: int) -> list[Path]:
    """The `n` revisions a slow competitor sweeps in round `round_` (the next ones each round)."""
    n = min(n, len(revs))
    return [revs[(round_ * n + j) % len(revs)] for j in range(n)]


def max_abs_delta(ours: RunResult, other: RunResult, all_revs: Sequence[Path], sub_revs: Sequence[Path]) -> float:
    """Largest |ours - other| over the revisions `other` swept; inf when a number is missing
    (missing numbers count as a mismatch, never as agreement), NaN when either run failed."""
    import numpy as np

    if ours.logp_file is None or other.logp_file is None:
        return math.nan
    a = np.load(ours.logp_file)[[list(all_revs).index(p) for p in sub_revs]]
    b = np.load(other.logp_file)
    if a.shape != b.shape or np.isnan(a).any() or np.isnan(b).any():
        return math.inf
    return float(np.abs(a - b).max())


def _machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for mod in ("minicons", "lm_eval"):
        try:
            versions[mod] = version(mod.replace("_", "-"))
        except PackageNotFoundError:
            versions[mod] = "not installed"
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "cuda": torch.cuda.is_available(), "loadavg_start": os.getloadavg(), **versions}


@dataclass
class _Rounds:
    """What the alternating rounds collected."""

    runs: list[tuple[RunResult, list[Path]]] = field(default_factory=list)
    contended: list[RunResult] = field(default_factory=list)  # ours beside a competing torch job
    deltas: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    done: int = 0


@dataclass(frozen=True)
class _Setup:
    """What every run of a round shares."""

    plan: BenchPlan
    battery: Path
    items: int
    revs: dict[str, list[Path]]
    work: Path
    isolate: bool


def _shape_round(setup: _Setup, shape: BenchShape, r: int, acc: _Rounds, bar: Bar) -> None:
    """Every competitor once on `shape` (order rotated by the round), then ours beside a
    competing job; records the runs and each peer's |Δ logp| against ours."""
    plan = setup.plan
    k = r % len(plan.competitors)
    this: dict[str, tuple[RunResult, list[Path]]] = {}
    for comp in plan.competitors[k:] + plan.competitors[:k]:
        n_sub = {"ours": plan.revisions, "lm-eval": plan.lm_eval_revisions}.get(comp, plan.slow_revisions)
        sub = slow_subset(setup.revs[shape.name], r, n_sub)
        bar.set_postfix_str(f"round {r + 1} {shape.name} {comp}", refresh=True)
        res = run_competitor(comp, sub, setup.battery, work=setup.work / shape.name / comp / f"round{r}",
                             shape=shape.name, round_=r, items=setup.items, batch_size=plan.batch_size,
                             isolate=setup.isolate, profile=comp == "ours")
        this[comp] = (res, sub)
        acc.runs.append((res, sub))
        bar.update(1)
    if plan.contention:
        bar.set_postfix_str(f"round {r + 1} {shape.name} ours beside a torch job", refresh=True)
        with CompetingJob():
            acc.contended.append(run_competitor(
                "ours", this["ours"][1], setup.battery, work=setup.work / shape.name / "ours-contended" / f"round{r}",
                shape=shape.name, round_=r, items=setup.items, batch_size=plan.batch_size, isolate=setup.isolate))
    for comp, (res, sub) in this.items():
        if comp != "ours":
            acc.deltas.setdefault((shape.name, comp), []).append(
                max_abs_delta(this["ours"][0], res, setup.revs[shape.name], sub))


def _plan_record(plan: BenchPlan, acc: _Rounds) -> dict[str, Any]:
    """What the report says about one tier's plan and how much of it ran."""
    return {**{k: v for k, v in asdict(plan).items() if k not in ("shapes", "large")},
            "shapes": [s.name for s in plan.shapes], "rounds_planned": plan.rounds, "rounds_done": acc.done}


def _run_rounds(setup: _Setup, progress: bool) -> _Rounds:
    """The plan's alternating rounds; its budget counts from the first round's start."""
    from tqdm.auto import tqdm

    started, plan, acc, round_s = time.perf_counter(), setup.plan, _Rounds(), []
    bar = tqdm(total=plan.rounds * len(plan.shapes) * len(plan.competitors), desc="bench", unit="run",
               disable=not progress)
    for r in range(plan.rounds):
        if r > 0 and time.perf_counter() - started + max(round_s) > plan.budget_s:
            break  # the next round would end past the budget
        t_round = time.perf_counter()
        for shape in plan.shapes:
            _shape_round(setup, shape, r, acc, bar)
        round_s.append(time.perf_counter() - t_round)
        acc.done += 1
    bar.close()
    return acc


def _breakdown(runs: Sequence[RunResult], shape: str) -> dict[str, float]:
    """Median over rounds of ours' profiled stage times per revision, with ``total``."""
    profiled = [x.extra["stages"] for x in runs if x.shape == shape and x.competitor == "ours"
                and x.status == "ok" and "stages" in x.extra]
    if not profiled:
        return {}
    return {k: reporting.median([st[k] for st in profiled]) for k in (*STAGES, "total")}


def _floors(shapes: Sequence[BenchShape], revs: dict[str, list[Path]], stats: BatteryStats) -> dict[str, dict[str, float]]:
    flops, exps = measure_matmul_flops(), measure_exp_rate()
    floors = {}
    for shape in shapes:
        weights = revs[shape.name][-1] / "model.safetensors"
        read = measure_disk_read(weights)
        floors[shape.name] = {**lower_bound(shape, stats, flops_per_s=flops, read_bytes_per_s=read,
                                            weight_bytes=weights.stat().st_size, exps_per_s=exps),
                              "read_bytes_per_s": read, "flops_per_s": flops, "exps_per_s": exps}
    return floors


def _device(probes: Any, out: Path, gpu: bool) -> dict[str, Any]:
    if not gpu:
        return {"status": "skipped: disabled (--no-gpu)", "checkpoint": {"status": "skipped: disabled (--no-gpu)"}}
    return {**gpu_section(probes), "checkpoint": checkpoint_section(probes, out / "gpu-checkpoint")}


def _quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_bench(out: str | Path, *, quick: bool = False, plan: BenchPlan | None = None, isolate: bool = True,
              suite_dir: str | Path | None = None, gpu: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run the side-by-side benchmark and write `OUT/bench.md`, `OUT/bench.csv`, `OUT/bench.json`.

    Args:
        out: output folder (the suite is built under `OUT/suite` unless `suite_dir`).
        quick: a tiny shape, 2 revisions, 120 items, one round (about a minute).
        plan: what to measure (default: `default_plan(quick=quick)`).
        isolate: run each competitor in a fresh subprocess (own peak RSS). False runs them
            in this process (faster start; RSS not reported).
        suite_dir: where to build / reuse the random suites.
        gpu: run the GPU sections when CUDA is present.
        progress: show progress.

    Returns:
        The report as a dict (`table` rows, `battery`, `plans`, `breakdown`, `floor`,
        `support`, `gpu`, `machine`, `notes`, `paths`).

    Raises:
        BenchmarkError: the GPT-NeoX tokenizer is missing, a competitor library is not
            installed (`pip install minicons lm-eval`), or the plan names an unknown competitor.
    """
    from benchmarks.suite import neox_tokenizer

    _quiet_hf()
    started = time.perf_counter()
    plan = plan or default_plan(quick=quick)
    _check_plan(plan)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suite = Path(suite_dir) if suite_dir is not None else out / "suite"
    tokenizer, machine = neox_tokenizer(), _machine()
    tiers = plan.tiers()
    revs = {s.name: revision_dirs(build_suite(suite, s, revisions=t.revisions, progress=progress))[:t.revisions]
            for t in tiers for s in t.shapes}
    probes = build_battery(min_items=plan.items)
    stats = battery_stats(probes, tokenizer)
    setup = _Setup(plan=plan, battery=write_battery(probes, out / "battery.jsonl"), items=len(probes.items),
                   revs=revs, work=out / "work", isolate=isolate)
    accs = [_run_rounds(replace(setup, plan=t), progress) for t in tiers]
    runs = [res for acc in accs for res, _ in acc.runs]
    shapes = [s for t in tiers for s in t.shapes]
    floors = _floors(shapes, revs, stats)
    names = [s.name for s in shapes]
    report: dict[str, Any] = {
        "plan": {**_plan_record(plan, accs[0]), "items": len(probes.items), "isolated": isolate,
                 "competing_threads": BENCH_COMPETING_THREADS,
                 "large": _plan_record(plan.large, accs[1]) if plan.large is not None else None},
        "machine": machine, "battery": asdict(stats), "plans": plan_stats(probes, tokenizer),
        "table": [row for t, acc in zip(tiers, accs) for row in reporting.summary_rows(
            [res for res, _ in acc.runs], acc.contended, acc.deltas, floors, shapes=[s.name for s in t.shapes],
            competitors=t.competitors, items=len(probes.items))],
        "breakdown": {n: _breakdown(runs, n) for n in names}, "floor": floors,
        "support": support_section(plan.support_tokens), "gpu": _device(probes, out, gpu),
        "contended": [asdict(x) for acc in accs for x in acc.contended],
    }
    machine["loadavg_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - started
    report["notes"] = reporting.notes(report)
    report["paths"] = {k: str(v) for k, v in reporting.write_report(out, report).items()}
    shutil.rmtree(setup.work, ignore_errors=True)
    return report
