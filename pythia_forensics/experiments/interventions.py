"""Corpus interventions on the mini suite (issue #8): kill a rule with a flip ladder, try to
rescue it by injecting support, and record every edit.

    edits = [flip("reflexive_gender", 0.75)]                 # or inject(rule, dose, start_step)
    records, realised = apply_edits(records, edits, lengths=..., train=..., seed=...)
    run_kill("reflexive_gender", [0, 0.5, 0.75, 0.9, 1], [1234, 1235], "results/experiments")
    run_rescue("pronoun_gender", [0, 0.00675], "results/experiments")

Edits work on the generator's sentence records (`mini.corpus.sample_records`) before they are
serialised, so token positions are exact:

- flip(rule, p): a fraction p of the rule's rule-winning occurrences (cue-class sentences
  rendered with the rule's form, every frame) become prior-winning (`corpus.flip`): the target
  form is swapped for the competitor, which is one token as well, so every document keeps its
  length and every other document is untouched.
- inject(rule, dose, start_step): from `start_step` on, a share `dose` of the documents (the
  injected rule-winning conflict-frame events per document) replace neutral documents (non-cue
  sentences of other rules, which are no support event of any rule) of exactly the same token
  length, so tokens per step and every position stay fixed.

Both are deterministic (seeded per edit), recorded with realised counts in
CORPUS/interventions.json and in the arm's manifest.json ("intervention"), and verified by the
support counter (`support.count_support`) before training: a run refuses to start when the
counted support differs from the requested one by more than `verify.count_tolerance` events.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from pythia_forensics.atomic import atomic_write, write_json
from pythia_forensics.constants import STEP_DIR_PREFIX, package_file
from pythia_forensics.errors import CorpusError
from pythia_forensics.checkpoints.manifest import read_manifest, write_manifest

CONFIG_FILE = ("data", "interventions.yaml")  # shipped in the package
EDITS_FILE = "interventions.json"
SCORES_FILE = "scores.csv"
SUMMARY_FILE = "summary.csv"
REPORT_FILE = "report.json"
TRAJECTORIES_FILE = "trajectories.csv"


class InterventionError(CorpusError):
    """An edit that cannot be realised, or whose counted support differs from the requested."""


@dataclass(frozen=True)
class Flip:
    """Turn a fraction `p` of `rule`'s rule-winning occurrences into prior-winning ones."""

    rule: str
    p: float
    kind: str = "flip"


@dataclass(frozen=True)
class Inject:
    """From `start_step` on, make a share `dose` of documents rule-winning conflict events of `rule`."""

    rule: str
    dose: float
    start_step: int
    kind: str = "inject"


def flip(rule: str, p: float) -> Flip:
    """A flip edit (see module docstring).

    Raises:
        InterventionError: p outside [0, 1].
    """
    if not 0.0 <= p <= 1.0:
        raise InterventionError(f"flip fraction for {rule} must be in [0, 1], got {p}; use e.g. 0.5", param="p")
    return Flip(rule, float(p))


def inject(rule: str, dose: float, start_step: int) -> Inject:
    """An inject edit (see module docstring).

    Raises:
        InterventionError: dose outside [0, 1] or a negative start step.
    """
    if not 0.0 <= dose <= 1.0 or start_step < 0:
        bad = "dose" if not 0.0 <= dose <= 1.0 else "start_step"
        raise InterventionError(f"inject needs dose in [0, 1] and start_step >= 0, got dose={dose}, "
                                f"start_step={start_step}", param=bad)
    return Inject(rule, float(dose), int(start_step))


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """The experiment knobs (interventions.yaml, or `path`)."""
    return yaml.safe_load((Path(path) if path else package_file(*CONFIG_FILE)).read_text())


def _edit_rng(edit: Flip | Inject, seed: int) -> random.Random:
    # A stable per-edit seed: the same edit on the same stream picks the same documents.
    key = json.dumps([asdict(edit), seed], sort_keys=True).encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def document_lengths(records: Sequence[Any], *, tokenizer, lexicon) -> np.ndarray:
    """Token length (EOD included) of each record's document, as `write_corpus` writes it."""
    texts = [r.text(lexicon) for r in records]
    unique = sorted(set(texts))
    enc = tokenizer.backend_tokenizer.encode_batch(unique, add_special_tokens=False)
    n_of = {t: len(e.ids) + 1 for t, e in zip(unique, enc)}
    return np.array([n_of[t] for t in texts], dtype=np.int64)


def event_counts(records: Sequence[Any], lengths: np.ndarray, *, train_tokens: int) -> dict[str, list[int]]:
    """Per rule [rule_wins, prior_wins] over documents that end inside the trained tokens.

    The one document straddling the end of training is left out (its cue may fall on either
    side): that is the counting precision `verify.count_tolerance` allows for.
    """
    ends = np.cumsum(lengths)
    out: dict[str, list[int]] = {}
    for rec, end in zip(records, ends):
        if end > train_tokens:
            break
        if rec.is_cue:
            c = out.setdefault(rec.rule, [0, 0])
            c[0 if rec.outcome == "rule" else 1] += 1
    return out


def apply_edits(records: Sequence[Any], edits: Sequence[Flip | Inject], *, lengths: np.ndarray,
                tokens_per_step: int, train_tokens: int, seed: int, tokenizer=None, lexicon=None,
                corpus_config=None) -> tuple[list[Any], list[dict[str, Any]]]:
    """Apply edits in order to the sentence records (only documents inside training are touched).

    Args:
        records: from `mini.corpus.sample_records`.
        edits: `flip(...)` / `inject(...)` edits.
        lengths: `document_lengths(records)`.
        tokens_per_step: stream tokens per training step.
        train_tokens: tokens training reads.
        seed: the stream's seed (mixed into each edit's own seed).
        tokenizer, lexicon, corpus_config: needed by inject (to build length-matched documents).

    Returns:
        (edited records, one dict per edit with its realised counts).

    Raises:
        InterventionError: an inject that finds too few length-matched neutral documents.
    """
    from pythia_forensics.experiments.mini.corpus import flip as flip_record

    recs = list(records)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    inside = ends <= train_tokens
    realised = []
    for edit in edits:
        rng = _edit_rng(edit, seed)
        if isinstance(edit, Flip):
            pool = [i for i in np.flatnonzero(inside)
                    if recs[i].rule == edit.rule and recs[i].is_cue and recs[i].outcome == "rule"]
            n = int(round(edit.p * len(pool)))
            for i in sorted(rng.sample(pool, n)):
                recs[i] = flip_record(recs[i])
            realised.append({**asdict(edit), "pool": len(pool), "n_flipped": n,
                             "realised_p": n / len(pool) if pool else 0.0})
        else:
            region = np.flatnonzero(inside & (starts >= edit.start_step * tokens_per_step))
            n = int(round(edit.dose * len(region)))
            donors = _conflict_donors(edit.rule, tokenizer=tokenizer, lexicon=lexicon,
                                      corpus_config=corpus_config, seed=rng.randrange(2**31))
            neutral = [i for i in region if recs[i].rule != edit.rule and not recs[i].is_cue
                       and int(lengths[i]) in donors]
            if n > len(neutral):
                raise InterventionError(f"inject {edit.rule} dose {edit.dose}: needs {n} neutral documents of "
                                        f"a matching length after step {edit.start_step}, found {len(neutral)}; "
                                        "lower the dose or start earlier")
            for i in sorted(rng.sample(neutral, n)):
                recs[i] = rng.choice(donors[int(lengths[i])])
            realised.append({**asdict(edit), "region_documents": len(region), "n_injected": n,
                             "realised_dose": n / len(region) if len(region) else 0.0})
    return recs, realised


def _conflict_donors(rule: str, *, tokenizer, lexicon, corpus_config, seed: int) -> dict[int, list[Any]]:
    """Rule-winning conflict-frame records of `rule`, grouped by token length.

    Sampled with the generator itself (conflict share forced to the whole rule, support 1), so
    injected sentences are the corpus's own conflict sentences, held-out words excluded.
    """
    from pythia_forensics.experiments.mini.config import RuleKnobs
    from pythia_forensics.experiments.mini.corpus import sample_records

    only = replace(corpus_config, rules=((rule, RuleKnobs(support=1.0, conflict_share=1.0, share=1.0,
                                                           trigger_ratio=0.0)),))
    recs = [r for r in sample_records(only, n_sentences=4000, lexicon=lexicon, seed=seed)
            if r.is_cue and r.frame == "conflict" and r.outcome == "rule"]
    lengths = document_lengths(recs, tokenizer=tokenizer, lexicon=lexicon)
    donors: dict[int, list[Any]] = {}
    for r, n in zip(recs, lengths):
        donors.setdefault(int(n), []).append(r)
    return donors


def verify_support(corpus_dir: Path, requested: dict[str, list[int]], *, tolerance: int) -> dict[str, Any]:
    """Count support in the written corpus and compare with the requested counts.

    Returns:
        Per rule {"requested": [rule_wins, prior_wins], "counted": [...]}.

    Raises:
        InterventionError: a rule whose counted events differ by more than `tolerance`.
    """
    from pythia_forensics.corpus.support import CORPUS_FRAME, count_support

    frame = count_support(corpus_dir, "all", progress=False)
    overall = frame[frame["scope"] == "overall"]
    if "frame" in overall:  # the corpus-wide rows; in-frame rows count a subset of the same events
        overall = overall[overall["frame"] == CORPUS_FRAME]
    overall = overall.set_index("rule")
    out = {}
    for rule, (rw, pw) in requested.items():
        got = [int(overall.loc[rule, "rule_wins"]), int(overall.loc[rule, "prior_wins"])]
        out[rule] = {"requested": [rw, pw], "counted": got}
        if abs(got[0] - rw) > tolerance or abs(got[1] - pw) > tolerance:
            raise InterventionError(f"{corpus_dir}: {rule} counted rule/prior wins {got} differ from the requested "
                                    f"{[rw, pw]} by more than {tolerance}; the edit did not realise its dose, "
                                    "so training was not started")
    return out


def build_edited_corpus(corpus_dir: str | Path, edits: Sequence[Flip | Inject], *, corpus_config, train,
                        tokenizer, seed: int, tolerance: int, lexicon=None) -> dict[str, Any]:
    """Sample, edit, write and verify one arm's corpus; record the edits in CORPUS/interventions.json.

    Returns:
        The record written to interventions.json (edits, realised counts, verification).

    Raises:
        InterventionError: the counted support differs from the requested (corpus left without
            its interventions.json, so no arm trains on it).
    """
    from pythia_forensics.experiments.mini.corpus import estimate_sentences, load_lexicon, sample_records, write_corpus

    lex = lexicon or load_lexicon()
    cdir = Path(corpus_dir)
    shutil.rmtree(cdir, ignore_errors=True)
    cfg = replace(corpus_config, seed=seed)
    records = sample_records(cfg, n_sentences=estimate_sentences(train), lexicon=lex)
    lengths = document_lengths(records, tokenizer=tokenizer, lexicon=lex)
    train_tokens = train.steps * train.tokens_per_step
    baseline = event_counts(records, lengths, train_tokens=train_tokens)
    edited, realised = apply_edits(records, edits, lengths=lengths, tokens_per_step=train.tokens_per_step,
                                   train_tokens=train_tokens, seed=seed, tokenizer=tokenizer, lexicon=lex,
                                   corpus_config=cfg)
    new_lengths = document_lengths(edited, tokenizer=tokenizer, lexicon=lex)
    if not np.array_equal(new_lengths, lengths):
        bad = int(np.flatnonzero(new_lengths != lengths)[0])
        raise InterventionError(f"edit changed the token length of document {bad}; edits must keep positions")
    # Requested = the unedited stream's events plus what each edit says it did.
    requested = {r: list(c) for r, c in baseline.items()}
    for rec in realised:
        c = requested.setdefault(rec["rule"], [0, 0])
        if rec["kind"] == "flip":
            c[0] -= rec["n_flipped"]
            c[1] += rec["n_flipped"]
        else:
            c[0] += rec["n_injected"]
    write_corpus(edited, cdir, tokenizer=tokenizer, config=cfg, train=train, lexicon=lex)
    checked = verify_support(cdir, requested, tolerance=tolerance)
    record = {"seed": seed, "edits": realised, "baseline": baseline, "support": checked,
              "n_tokens": int(lengths.sum()), "tokens_per_step": train.tokens_per_step}
    write_json(cdir / EDITS_FILE, record, sort_keys=False)
    return record


# --- experiment runner --------------------------------------------------------------------

@dataclass(frozen=True)
class ArmSpec:
    name: str  # folder name of the model (and `corpus-<name>` for its corpus)
    experiment: str  # "kill" or "rescue"
    dose: float
    seed: int
    edits: tuple[Any, ...]


def _check_rule(rule: str) -> None:
    """Refuse, before any arm trains, a rule the mini suite does not have."""
    from pythia_forensics.experiments.mini.config import RULES

    if rule not in RULES:
        raise InterventionError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}", param="rule")


def _tag(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def _suite(cfg: dict[str, Any]):
    from pythia_forensics.experiments.mini.config import ModelConfig, demo_config

    s = cfg["scale"]
    base = demo_config()
    return base, ModelConfig(s["name"], d_model=s["d_model"], layers=s["layers"], heads=s["heads"], lr=s["lr"])


def _same_edits(spec: ArmSpec, recorded: list[dict[str, Any]]) -> bool:
    """Whether recorded edits (realised-count dicts of `apply_edits`) are the spec's edits."""
    keys = ("rule", "p", "dose", "start_step", "kind")
    return [asdict(e) for e in spec.edits] == [{k: v for k, v in e.items() if k in keys} for e in recorded]


def _arm_done(model_dir: Path, spec: ArmSpec) -> bool:
    man = read_manifest(model_dir)
    return man is not None and _same_edits(spec, (man.intervention or {}).get("edits", []))


def _run_arm(spec: ArmSpec, suite_dir: str, cfg: dict[str, Any], progress: bool, position: int) -> pd.DataFrame:
    """Build the corpus, train, then score every checkpoint on every shipped battery (cached)."""
    import torch

    from pythia_forensics.experiments.mini.tokenizer import build_tokenizer
    from pythia_forensics.experiments.mini.train import train_model

    torch.set_num_threads(1)
    base, scale = _suite(cfg)
    train = replace(base.train, seed=spec.seed)
    out = Path(suite_dir)
    model_dir = out / spec.name
    cdir = out / f"corpus-{spec.name}"
    scores = model_dir / SCORES_FILE
    if not _arm_done(model_dir, spec):
        record = None
        if (cdir / EDITS_FILE).is_file():
            record = json.loads((cdir / EDITS_FILE).read_text())
            if not _same_edits(spec, record["edits"]):
                record = None
        if record is None:
            shutil.rmtree(model_dir, ignore_errors=True)
            tok = build_tokenizer(vocab_size=base.tokenizer_vocab)
            record = build_edited_corpus(cdir, spec.edits, corpus_config=base.corpus, train=train, tokenizer=tok,
                                         seed=spec.seed, tolerance=int(cfg["verify"]["count_tolerance"]))
        corpus = replace(base.corpus, seed=spec.seed)
        train_model(replace(scale, name=spec.name), corpus_dir=cdir, out_dir=out, train=train, corpus=corpus,
                    progress=progress, position=position, resume=True)
        written = read_manifest(model_dir)
        assert written is not None, model_dir  # train_model writes it last
        write_manifest(model_dir, replace(written, intervention=record))
        scores.unlink(missing_ok=True)
    if scores.is_file():
        return pd.read_csv(scores)
    frame = score_arm(model_dir)
    atomic_write(scores, lambda tmp: frame.to_csv(tmp, index=False))
    return frame


def score_arm(model_dir: Path) -> pd.DataFrame:
    """Per checkpoint and rule: held-out conflict/agree accuracy and conflict CM (mean margin, nats)."""
    from pythia_forensics.experiments.mini.config import RULES
    from pythia_forensics.scoring.probes import load_probes
    from pythia_forensics.scoring.score import load_model, load_weights_into, score

    steps = sorted(int(p.name[len(STEP_DIR_PREFIX):]) for p in model_dir.glob(f"{STEP_DIR_PREFIX}*")
                   if p.name[len(STEP_DIR_PREFIX):].isdigit())
    probes = {r: load_probes(r) for r in RULES}
    model, tok = load_model(model_dir / f"{STEP_DIR_PREFIX}{steps[0]}", dtype="float32", device="cpu")
    rows = []
    for step in steps:
        load_weights_into(model, model_dir / f"{STEP_DIR_PREFIX}{step}")
        for rule, ps in probes.items():
            f = score(model, ps, tokenizer=tok, dtype="float32", device="cpu")
            h = f[f["split"] == "heldout"]
            c, a = h[h["condition"] == "conflict"], h[h["condition"] == "agree"]
            rows.append({"step": step, "rule": rule, "conflict_acc": float(c["correct"].mean()),
                         "agree_acc": float(a["correct"].mean()), "conflict_cm": float(c["margin"].mean())})
    return pd.DataFrame(rows)


def arm_metrics(scores: pd.DataFrame, rule: str) -> dict[str, Any]:
    """The classifier's metrics and verdict letter for one rule's trajectory of one arm."""
    from pythia_forensics.analysis.dynamics import VERDICT_LETTERS, classify, load_config as load_analysis, \
        trajectory_metrics

    acfg = load_analysis()
    t = scores[(scores["rule"] == rule) & (scores["step"] >= acfg.min_step)].sort_values("step")
    m = trajectory_metrics(t["step"].to_numpy(), t["conflict_acc"].to_numpy(), t["agree_acc"].to_numpy(),
                           t["conflict_cm"].to_numpy(), config=acfg)
    verdict, _valid, _why = classify(m, acfg)
    n = len(t)
    from pythia_forensics.analysis.dynamics import final_window_size

    k = final_window_size(n, acfg)
    return {"final_acc": float(m.final_acc), "final_cm": float(t["conflict_cm"].to_numpy()[-k:].mean()),
            "verdict": verdict, "letter": VERDICT_LETTERS.get(verdict, "-") if verdict else "-"}


def _run_arms(specs: list[ArmSpec], out: Path, cfg: dict[str, Any], progress: bool) -> dict[str, pd.DataFrame]:
    suite = out / "suite"
    suite.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(int(cfg["jobs"]), os.cpu_count() or 1, len(specs)))
    if jobs == 1:
        return {s.name: _run_arm(s, str(suite), cfg, progress, 0) for s in specs}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futs = {s.name: pool.submit(_run_arm, s, str(suite), cfg, progress, i % jobs) for i, s in enumerate(specs)}
        return {k: f.result() for k, f in futs.items()}


def _summarise(specs: list[ArmSpec], scores: dict[str, pd.DataFrame], rule: str) -> pd.DataFrame:
    from pythia_forensics.experiments.mini.config import RULES

    rows = []
    for s in specs:
        for r in RULES:
            rows.append({"experiment": s.experiment, "arm": s.name, "dose": s.dose, "seed": s.seed, "rule": r,
                         "target": r == rule, **arm_metrics(scores[s.name], r)})
    return pd.DataFrame(rows)


def _off_target(summary: pd.DataFrame, tol: float) -> list[dict[str, Any]]:
    """Other rules' final accuracy per arm against the same seed's lowest-dose arm."""
    out = []
    other = summary[~summary["target"]]
    for (seed, r), g in other.groupby(["seed", "rule"]):
        b = g.loc[g["dose"].idxmin()]
        base = b["final_acc"]
        for _, row in g.iterrows():
            # The letters say whether a miss is the edit or the rule's own noise (U = unstable baseline).
            out.append({"seed": int(seed), "rule": r, "dose": float(row["dose"]), "final_acc": float(row["final_acc"]),
                        "baseline": float(base), "letter": row["letter"], "baseline_letter": b["letter"],
                        "within": bool(abs(row["final_acc"] - base) <= tol)})
    return out


def run_kill(rule: str, doses: Sequence[float], seeds: Sequence[int], out: str | Path, *,
             config: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Kill ladder: one arm per (flip dose, seed); report finals, letters, rho, off-target checks.

    Args:
        rule: the rule whose rule-winning occurrences are flipped.
        doses: flip fractions p in [0, 1] (include 0 as the baseline).
        seeds: stream + init seeds.
        out: experiment folder (arms under OUT/suite, cached and resumed).
        config: knobs (default interventions.yaml).
        progress: progress bars.

    Returns:
        The report (also written to OUT/kill/report.json, per-arm rows to OUT/kill/summary.csv).

    Raises:
        InterventionError: an unknown rule, a dose outside [0, 1], fewer than 2 doses, or an
            arm whose counted support differs from the requested.
    """
    from scipy.stats import spearmanr

    cfg = config or load_config()
    _check_rule(rule)
    if len(set(doses)) < 2:
        raise InterventionError(f"a kill ladder needs at least 2 distinct doses, got {list(doses)}", param="doses")
    bad = [d for d in doses if not 0.0 <= d <= 1.0]
    if bad:
        raise InterventionError(f"flip fractions must be in [0, 1], got {bad}; use e.g. 0,0.5,1", param="doses")
    if not seeds:
        raise InterventionError("a kill ladder needs at least one seed", param="seeds")
    specs = [ArmSpec(f"kill-{rule}-p{_tag(d)}-s{sd}", "kill", float(d), int(sd), (flip(rule, d),))
             for sd in seeds for d in doses]
    out = Path(out)
    scores = _run_arms(specs, out, cfg, progress)
    summary = _summarise(specs, scores, rule)
    tgt = summary[summary["target"]]
    rho = spearmanr(tgt["dose"], tgt["final_acc"]).statistic if tgt["final_acc"].nunique() > 1 else float("nan")
    means = tgt.groupby("dose")[["final_acc", "final_cm"]].mean()
    report = {"experiment": "kill", "rule": rule, "doses": [float(d) for d in doses], "seeds": list(map(int, seeds)),
              "mean_final_acc": {str(d): float(v) for d, v in means["final_acc"].items()},
              "mean_final_cm": {str(d): float(v) for d, v in means["final_cm"].items()},
              "monotone": bool(np.all(np.diff(means["final_acc"].to_numpy()) <= 0)),
              "spearman_rho": None if math.isnan(rho) else float(rho),
              "off_target_tolerance": float(cfg["off_target"]["tolerance"]),
              "off_target": _off_target(summary, float(cfg["off_target"]["tolerance"]))}
    report["off_target_ok"] = all(o["within"] for o in report["off_target"])
    _write(out / "kill", summary, report, scores, specs, rule)
    return report


def surviving_level(corpus_dir: Path, rule: str) -> float:
    """Conflict-frame rule-winning events per document of `rule` in an unedited corpus (from its knobs)."""
    meta = json.loads((Path(corpus_dir) / "corpus.json").read_text())
    k = meta["knobs"]["rules"][rule]
    return 0.5 * k["conflict_share"] * k["support"]  # half the conflict sentences carry a cue word


def run_rescue(rule: str, multiples: Sequence[float], out: str | Path, *, seeds: Sequence[int] | None = None,
               start_step: int | None = None, config: dict[str, Any] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Rescue: inject rule-winning conflict events after the collapse at multiples of the
    surviving rule's conflict-frame rule-win density; report whether behaviour and margin move.

    Args:
        rule: a rule that collapses in the unedited corpus.
        multiples: injected density / surviving level (0 = the unedited control arm).
        out, config, progress: as `run_kill`; seeds and start_step default to the config's.

    Returns:
        The report (also OUT/rescue/report.json).

    Raises:
        InterventionError: an unknown rule, a negative multiple or one whose dose exceeds 1,
            or an arm whose counted support differs from the requested.
    """
    from pythia_forensics.experiments.mini.config import demo_config

    cfg = config or load_config()
    rc = cfg["rescue"]
    seeds = list(seeds or rc["seeds"])
    start = int(start_step if start_step is not None else rc["start_step"])
    k = demo_config().corpus.knobs(rc["surviving_rule"])
    level = 0.5 * k.conflict_share * k.support
    _check_rule(rule)
    bad = [m for m in multiples if m < 0 or m * level > 1]
    if bad:
        raise InterventionError(f"rescue multiples must be in [0, {1 / level:.4g}] (a dose of 1 document in 1 at "
                                f"the surviving level {level:.4g}), got {bad}", param="multiples")
    specs = [ArmSpec(f"rescue-{rule}-x{_tag(m)}-s{sd}", "rescue", float(m), int(sd),
                     (inject(rule, m * level, start),) if m > 0 else ())
             for sd in seeds for m in multiples]
    out = Path(out)
    scores = _run_arms(specs, out, cfg, progress)
    summary = _summarise(specs, scores, rule)
    tgt = summary[summary["target"]]
    arms = []
    for s in specs:
        sc = scores[s.name]
        t = sc[sc["rule"] == rule].sort_values("step")
        at = t[t["step"] <= start].iloc[-1]
        row = tgt[tgt["arm"] == s.name].iloc[0]
        arms.append({"arm": s.name, "multiple": s.dose, "seed": s.seed, "dose": s.dose * level,
                     "acc_at_start": float(at["conflict_acc"]), "cm_at_start": float(at["conflict_cm"]),
                     "final_acc": float(row["final_acc"]), "final_cm": float(row["final_cm"]),
                     "letter": row["letter"]})
    ctrl = {a["seed"]: a for a in arms if a["multiple"] == 0}
    for a in arms:
        c = ctrl.get(a["seed"])
        a["acc_gain_vs_control"] = None if c is None else a["final_acc"] - c["final_acc"]
        a["cm_gain_vs_control"] = None if c is None else a["final_cm"] - c["final_cm"]
    report = {"experiment": "rescue", "rule": rule, "start_step": start, "surviving_rule": rc["surviving_rule"],
              "surviving_level": level, "arms": arms,
              "off_target": _off_target(summary, float(cfg["off_target"]["tolerance"]))}
    _write(out / "rescue", summary, report, scores, specs, rule)
    return report


def _write(folder: Path, summary: pd.DataFrame, report: dict[str, Any], scores: dict[str, pd.DataFrame],
           specs: list[ArmSpec], rule: str) -> None:
    from pythia_forensics.analysis.intervention_figures import dose_response_figure, trajectories_figure

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / SUMMARY_FILE, lambda tmp: summary.to_csv(tmp, index=False))
    write_json(folder / REPORT_FILE, report, sort_keys=False)
    traj = pd.concat([scores[s.name].assign(arm=s.name, dose=s.dose, seed=s.seed) for s in specs])
    atomic_write(folder / TRAJECTORIES_FILE, lambda tmp: traj.to_csv(tmp, index=False))
    dose_response_figure(summary[summary["target"]], folder / "dose_response", rule=rule,
                         xlabel="flip fraction p" if report["experiment"] == "kill"
                         else "injected density (x surviving level)")
    trajectories_figure(traj[traj["rule"] == rule], folder / "trajectories", rule=rule)
