"""The competitors: each sweeps the same revisions (load each one, score every item's target
and foil) and returns log-probs shaped (revisions, items, 2). Ours is the replay engine end to
end; the peers are minicons, lm-evaluation-harness and a full-logits scorer. `run_competitor`
runs one in a fresh process (`python -m benchmarks.competitors SPEC`), so its peak RSS is its own.

Our stage times come from what `score()` records in ``frame.attrs["timings"]`` and from timing
the public calls this module makes (load_model, load_weights_into, prepare, score,
ResultsStore.write) from the outside; nothing in the package is replaced.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.battery import item_pairs
from benchmarks.settings import BENCH_BATCH_SIZE, PAD_ID

if TYPE_CHECKING:
    import numpy as np

    from pythia_forensics.scoring.probes import ProbeSet

__all__ = ["RunResult", "SWEEPS", "profile_ours", "run_competitor"]

Sweep = Callable[..., "tuple[np.ndarray, float, float]"]
# the per-revision stages `profile_ours` reports, in table order
STAGES = ("load", "prepare", "forward", "lm_head", "score_other", "store")


@dataclass(frozen=True)
class RunResult:
    """One competitor's sweep over one shape's revisions in one round.

    Times are wall-clock seconds inside the process, after imports: `wall_s` covers the whole
    sweep, `load_s` the weight loading in it, `score_s` the scoring. `peak_rss_bytes` is the
    process's own peak resident set (a fresh process per run), None when run in-process.
    ``extra``: ``cpu_s`` (process CPU time), ``threads``, and for ours ``stages`` (per
    revision, `profile_ours`) and the replay summary's ``replay_*`` times.
    """

    competitor: str
    shape: str
    round: int
    revisions: int
    items: int
    wall_s: float
    load_s: float
    score_s: float
    peak_rss_bytes: int | None
    status: str = "ok"
    logp_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _logp_array(frame: Any, rev_dirs: Sequence[Path], probes: ProbeSet) -> np.ndarray:
    """A store's item rows as (revisions, items, 2) log-probs (NaN where a row is missing)."""
    import numpy as np

    index = {it.item_id: i for i, it in enumerate(probes.items)}
    rev_index = {p.name: r for r, p in enumerate(rev_dirs)}
    logp = np.full((len(rev_dirs), len(probes.items), 2), np.nan)
    rows = frame["revision"].map(rev_index).to_numpy()
    cols = frame["item_id"].map(index).to_numpy()
    logp[rows, cols, 0] = frame["logp_target"].to_numpy()
    logp[rows, cols, 1] = frame["logp_foil"].to_numpy()
    return logp


def _sweep_ours(rev_dirs: Sequence[Path], probes: ProbeSet, *, battery: Path, work: Path,
                **_: Any) -> tuple[np.ndarray, float, float]:
    from pythia_forensics.checkpoints.registry import step_of_revision
    from pythia_forensics.sweep.replay import replay
    from pythia_forensics.sweep.store import ResultsStore

    results = work / "results"
    summary = replay(str(rev_dirs[0].parent), str(battery), steps=[step_of_revision(p.name) for p in rev_dirs],
                     results=results, dtype="float32", device="cpu", batch_size="auto", vocab_rows="all",
                     progress=False)
    # the replay's own split: score_s is load + score per revision (it does not time loading apart)
    return _logp_array(ResultsStore(results).items(), rev_dirs, probes), math.nan, summary.score_s


def _timed(stages: dict[str, float], stage: str, call: Callable[[], Any]) -> Any:
    """Run one public call, adding its wall time to ``stages[stage]``."""
    t0 = time.perf_counter()
    out = call()
    stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - t0
    return out


def _split_score(stages: dict[str, float], outside_s: float, timings: dict[str, float]) -> None:
    """Split one score() call's time: forward and LM head from what score() recorded itself
    (``frame.attrs["timings"]``; a missing key is a KeyError, never a made-up split), the rest
    (gathers, sums, the frame) as score_other."""
    for stage, key in (("forward", "forward_s"), ("lm_head", "head_s")):
        stages[stage] = stages.get(stage, 0.0) + float(timings[key])
    # tokenize_s / plan_s are 0.0 with a prepared plan: they are counted under prepare
    inner = float(timings["forward_s"]) + float(timings["head_s"])
    stages["score_other"] = stages.get("score_other", 0.0) + max(0.0, outside_s - inner)


def profile_ours(rev_dirs: Sequence[Path], probes: ProbeSet, work: Path) -> dict[str, float]:
    """Where our time goes, per revision: the replay's steps made as public calls, each timed.

    Loads the first revision (`load_model`) and loads the others into it (`load_weights_into`),
    prepares the items once (`prepare`: tokenization and plan), scores each revision with the
    prepared plan and stores it (`ResultsStore.write`), as replay does.

    Returns:
        Seconds per revision for `STAGES` (``prepare`` spread over the revisions), and
        ``total`` (their sum).
    """
    from pythia_forensics.scoring import score as scoring
    from pythia_forensics.sweep.store import ResultsStore, WorkKey

    store = ResultsStore(work / "profile-results")
    stages: dict[str, float] = {}
    model = tokenizer = prepared = None
    opts = scoring.ScoreOptions(dtype="float32", device="cpu", batch_size="auto", vocab_rows="all")
    for rev in rev_dirs:
        if model is None:
            model, tokenizer = _timed(stages, "load", lambda: scoring.load_model(rev, dtype="float32", device="cpu"))
            prepared = _timed(stages, "prepare", lambda: scoring.prepare(model, probes, tokenizer=tokenizer))
        else:
            _timed(stages, "load", lambda: scoring.load_weights_into(model, rev))
        t0 = time.perf_counter()
        frame = scoring.score(model, probes, tokenizer=tokenizer, revision=rev.name, options=opts, prepared=prepared)
        _split_score(stages, time.perf_counter() - t0, frame.attrs["timings"])
        key = WorkKey(model=rev.parent.name, revision=rev.name, content_key=f"bench-{rev.name}", probeset=probes.name,
                      probeset_sha256=probes.sha256, dtype="float32", bos=False, vocab_rows="all",
                      code_version=scoring.SCORING_VERSION)
        _timed(stages, "store", lambda: store.write(key, frame, provenance={"repo": str(rev.parent), "step": None}))
    per_rev = {k: stages.get(k, 0.0) / len(rev_dirs) for k in STAGES}
    per_rev["total"] = sum(v for v in per_rev.values() if not math.isnan(v))
    return per_rev


def _timed_revisions(rev_dirs: Sequence[Path], n: int, load: Callable[[Path], Any],
                     score: Callable[[Any], list[float]]) -> tuple[np.ndarray, float, float]:
    """Load and score each revision in turn, timing the two phases apart: log-probs shaped
    (revisions, items, 2) (target, foil), load seconds, score seconds."""
    import numpy as np

    out = np.empty((len(rev_dirs), n))
    load_s = score_s = 0.0
    for r, rev in enumerate(rev_dirs):
        t0 = time.perf_counter()
        scorer_obj = load(rev)
        t1 = time.perf_counter()
        out[r] = score(scorer_obj)
        load_s += t1 - t0
        score_s += time.perf_counter() - t1
        del scorer_obj
    return out.reshape(len(rev_dirs), -1, 2), load_s, score_s


def _sweep_minicons(rev_dirs: Sequence[Path], probes: ProbeSet, *, batch_size: int,
                    **_: Any) -> tuple[np.ndarray, float, float]:
    import torch
    from minicons import scorer

    ctxs, conts = item_pairs(probes)

    def score(lm: Any) -> list[float]:
        vals: list[float] = []
        for i in range(0, len(ctxs), batch_size):
            # separator="" : the continuation carries its own leading space
            vals.extend(lm.conditional_score(ctxs[i:i + batch_size], conts[i:i + batch_size], separator="",
                                             reduction=lambda x: x.sum(0).item()))
        return vals

    return _timed_revisions(rev_dirs, len(ctxs),
                            lambda rev: scorer.IncrementalLMScorer(str(rev), device="cpu", dtype=torch.float32), score)


def _sweep_lm_eval(rev_dirs: Sequence[Path], probes: ProbeSet, *, batch_size: int,
                   **_: Any) -> tuple[np.ndarray, float, float]:
    import logging

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    ctxs, conts = item_pairs(probes)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
                for i, (c, x) in enumerate(zip(ctxs, conts))]
    return _timed_revisions(
        rev_dirs, len(ctxs),
        lambda rev: HFLM(pretrained=str(rev), device="cpu", batch_size=batch_size, dtype="float32"),
        lambda lm: [ll for ll, _greedy in lm.loglikelihood(requests, disable_tqdm=True)])


def _full_logits_batch(model: Any, tok: Any, ctxs: Sequence[str], conts: Sequence[str]) -> list[float]:
    """One batch the way most research scripts do it: prefix+candidate as one right-padded
    sequence, log-softmax over [batch, sequence, vocabulary], a Python loop over the reads."""
    import torch

    seqs, starts = [], []
    for c, x in zip(ctxs, conts):
        p_ids = tok(c, add_special_tokens=False)["input_ids"]
        seqs.append(p_ids + tok(x, add_special_tokens=False)["input_ids"])
        starts.append(len(p_ids))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):  # right padding: positions stay 0..n-1
        ids[j, :len(s)] = torch.tensor(s)
        mask[j, :len(s)] = 1
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    return [sum(logp[j, t - 1, s[t]].item() for t in range(starts[j], len(s))) for j, s in enumerate(seqs)]


def _sweep_full_logits(rev_dirs: Sequence[Path], probes: ProbeSet, *, batch_size: int,
                       **_: Any) -> tuple[np.ndarray, float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctxs, conts = item_pairs(probes)

    def load(rev: Path) -> tuple[Any, Any]:
        return (AutoModelForCausalLM.from_pretrained(str(rev), dtype=torch.float32).eval(),
                AutoTokenizer.from_pretrained(str(rev)))

    def score(loaded: tuple[Any, Any]) -> list[float]:
        with torch.no_grad():
            return [v for i in range(0, len(ctxs), batch_size)
                    for v in _full_logits_batch(*loaded, ctxs[i:i + batch_size], conts[i:i + batch_size])]

    return _timed_revisions(rev_dirs, len(ctxs), load, score)


SWEEPS: dict[str, Sweep] = {
    "ours": _sweep_ours, "lm-eval": _sweep_lm_eval, "minicons": _sweep_minicons, "full-logits": _sweep_full_logits,
}
# imported before the clock starts: library import time is not sweep time
_PRELOAD = {
    "ours": ("pythia_forensics.sweep.replay", "pythia_forensics.scoring.score", "pythia_forensics.sweep.store",
             "pythia_forensics.checkpoints.sources", "pythia_forensics.checkpoints.registry"),
    "lm-eval": ("lm_eval.api.instance", "lm_eval.models.huggingface"),
    "minicons": ("minicons.scorer",),
    "full-logits": (),
}


def _peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB, macOS in bytes
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one competitor's sweep as `spec` says; write its log-probs; return its record.
    Ours, when profiled, is profiled after its timed sweep (the profile is not in its time)."""
    import numpy as np
    import torch

    from pythia_forensics.scoring.probes import load_probes

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    probes = load_probes(spec["battery"])
    rev_dirs = [Path(p) for p in spec["revisions"]]
    for module in _PRELOAD[spec["competitor"]] + ("transformers.models.gpt_neox.modeling_gpt_neox",):
        importlib.import_module(module)
    t0, c0 = time.perf_counter(), time.process_time()
    logp, load_s, score_s = SWEEPS[spec["competitor"]](
        rev_dirs, probes, battery=Path(spec["battery"]), work=work, batch_size=int(spec["batch_size"]))
    wall = time.perf_counter() - t0
    extra: dict[str, Any] = {"cpu_s": time.process_time() - c0}  # all threads; robust to others' load
    if spec.get("profile"):
        extra["stages"] = profile_ours(rev_dirs, probes, work)
        load_s = extra["stages"]["load"] * len(rev_dirs)
    logp_file = work / "logp.npy"
    np.save(logp_file, np.asarray(logp, dtype=np.float64))
    return {"wall_s": wall, "load_s": load_s, "score_s": score_s, "logp_file": str(logp_file), "extra": extra,
            "threads": torch.get_num_threads()}


def _worker_main(argv: Sequence[str]) -> int:
    from pythia_forensics.atomic import write_json

    spec = json.loads(Path(argv[0]).read_text())
    record = _run_spec(spec)
    record["peak_rss_bytes"] = _peak_rss_bytes()
    write_json(Path(spec["work"], "result.json"), record)
    return 0


def _run_isolated(spec: dict[str, Any], work: Path) -> dict[str, Any] | str:
    """Run `spec` in a fresh interpreter; its record, or the failure's last stderr line."""
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "DISABLE_SAFETENSORS_CONVERSION": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           # the worker imports benchmarks/ from this clone whatever the working directory
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.competitors", str(spec_path)],
                          capture_output=True, text=True, env=env)
    result_path = work / "result.json"
    if proc.returncode != 0 or not result_path.exists():
        (work / "stderr.txt").write_text(proc.stderr or "")
        lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {proc.returncode}"
    return json.loads(result_path.read_text())


def run_competitor(competitor: str, rev_dirs: Sequence[Path], battery: Path, *, work: Path, shape: str,
                   round_: int, items: int, batch_size: int = BENCH_BATCH_SIZE, isolate: bool = True,
                   profile: bool = False, threads: int | None = None) -> RunResult:
    """Run one competitor over `rev_dirs` (in a fresh subprocess unless `isolate=False`).

    A competitor that fails is recorded with `status="failed: <last error line>"`, so one
    broken library never loses the other rows.
    """
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    spec = {"competitor": competitor, "revisions": [str(p) for p in rev_dirs], "battery": str(battery),
            "work": str(work), "batch_size": batch_size, "profile": profile, "threads": threads}
    base = dict(competitor=competitor, shape=shape, round=round_, revisions=len(rev_dirs), items=items)
    if isolate:
        record = _run_isolated(spec, work)
    else:
        try:
            record = {**_run_spec(spec), "peak_rss_bytes": None}
        except Exception as exc:  # noqa: BLE001 - recorded in the table, the other rows go on
            record = f"{type(exc).__name__}: {exc}"
    if isinstance(record, str):
        return RunResult(**base, wall_s=math.nan, load_s=math.nan, score_s=math.nan, peak_rss_bytes=None,
                         status=f"failed: {record[:200]}")
    return RunResult(**base, wall_s=record["wall_s"], load_s=record["load_s"], score_s=record["score_s"],
                     peak_rss_bytes=record["peak_rss_bytes"], logp_file=record["logp_file"],
                     extra={**record["extra"], "threads": record["threads"]})


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
