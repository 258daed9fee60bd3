"""Build (or reuse) the mini suite and the support-knob sweep.

    build_suite("results/demo/suite")      # corpus/ + mini-s/ mini-m/ mini-l/ (reused if present)
    build_sweep("results/sweep/suite")     # corpus-s010/ ... + mini-m-s010/ ... one arm per knob value

A suite folder is a local suite in the ARCHITECTURE.md layout (`DIR/<model>/step<N>/`,
`manifest.json`, `train_log.csv`); corpora live beside the models (`DIR/corpus*/`, no
manifest, so suite readers skip them). A model whose manifest exists and matches the
requested knobs is reused; an interrupted one (no manifest) resumes from its last checkpoint
(weights + AdamW state), which gives the same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from pythia_forensics.constants import ENV_MINI_DIR, DEFAULT_RESULTS_DIR
from pythia_forensics.checkpoints.manifest import read_manifest
from pythia_forensics.errors import CorpusError
from pythia_forensics.experiments.mini.config import (GRID_RULE, GRID_SEEDED_SUPPORTS, GRID_SEEDS,
                                                     GRID_SUPPORTS, CorpusConfig, ModelConfig, SuiteConfig,
                                                     TrainConfig, demo_config, grid_config)
from pythia_forensics.experiments.mini.corpus import (CORPUS_META_FILE, estimate_sentences, sample_records,
                                          write_corpus)

SWEEP_RULE = "pronoun_gender"
SWEEP_SUPPORTS = (0.1, 0.3, 0.5, 0.7, 0.9)
SWEEP_MODEL = "mini-m"


@dataclass(frozen=True)
class Arm:
    """One model to train: its scale (named as in the suite), corpus knobs and corpus folder."""

    model: ModelConfig
    corpus: CorpusConfig
    corpus_dir: str
    seed: int | None = None  # init seed; None: the suite's train.seed

    def train(self, train: TrainConfig) -> TrainConfig:
        """The schedule this arm trains with (its own seed, if it has one)."""
        return train if self.seed is None else replace(train, seed=self.seed)


def default_suite_dir() -> Path:
    """$PF_MINI_DIR, else results/demo/suite."""
    return Path(os.environ.get(ENV_MINI_DIR, DEFAULT_RESULTS_DIR / "demo" / "suite"))


def build_suite(out_dir: str | Path | None = None, *, config: SuiteConfig | None = None,
                force: bool = False, progress: bool = True, jobs: int | None = None) -> Path:
    """Train every scale of the mini suite on one corpus, or reuse what is there.

    Args:
        out_dir: suite folder (default `default_suite_dir()`).
        config: the suite (default `demo_config()`).
        force: retrain (and regenerate the corpus) even if a matching suite exists.
        progress: show progress bars.
        jobs: models trained in parallel, one thread each (default: min(2, CPUs)).

    Returns:
        The suite folder.

    Raises:
        CorpusError: the folder holds a suite trained with other knobs (retrain with force=True,
            or choose another folder).
    """
    cfg = config or demo_config()
    arms = [Arm(m, cfg.corpus, "corpus") for m in cfg.models]
    return _build(Path(out_dir or default_suite_dir()), arms, cfg, force=force, progress=progress, jobs=jobs)


def sweep_configs(*, base: SuiteConfig | None = None, rule: str = SWEEP_RULE,
                  supports: tuple[float, ...] = SWEEP_SUPPORTS, model: str = SWEEP_MODEL) -> list[Arm]:
    """The sweep's arms: one scale, one rule's support knob at each value.

    Arm model names are `<model>-s<support x 100, 3 digits>` (mini-m-s010 = support 0.10); each
    manifest records the knobs under `corpus.rules.<rule>.support`.
    """
    cfg = base or demo_config()
    if rule not in dict(cfg.corpus.rules):
        raise CorpusError(f"unknown rule {rule!r} for the sweep; choose one of {[r for r, _ in cfg.corpus.rules]}",
                          param="rule")
    scale = next((m for m in cfg.models if m.name == model), None)
    if scale is None:
        raise CorpusError(f"sweep model {model!r} is not a scale of the suite; "
                          f"choose one of {[m.name for m in cfg.models]}", param="model")
    arms = []
    for s in supports:
        tag = f"s{round(s * 100):03d}"
        arms.append(Arm(replace(scale, name=f"{model}-{tag}"), cfg.corpus.with_support(rule, s), f"corpus-{tag}"))
    return arms


def build_sweep(out_dir: str | Path, *, config: SuiteConfig | None = None, rule: str = SWEEP_RULE,
                supports: tuple[float, ...] = SWEEP_SUPPORTS, force: bool = False, progress: bool = True,
                jobs: int | None = None) -> Path:
    """Train the support-knob sweep (one scale, >= 4 knob values) as one local suite.

    Args:
        out_dir: sweep suite folder.
        config: base suite config (default `demo_config()`).
        rule: the rule whose support knob varies.
        supports: knob values (at least 4).
        force, progress, jobs: as `build_suite`.

    Returns:
        The sweep suite folder.

    Raises:
        CorpusError: fewer than 4 knob values, or a value outside [0, 1].
    """
    if len(set(supports)) < 4:
        raise CorpusError(f"a sweep needs at least 4 distinct support values, got {list(supports)}",
                          param="supports")
    cfg = config or demo_config()
    return _build(Path(out_dir), sweep_configs(base=cfg, rule=rule, supports=tuple(supports)), cfg,
                  force=force, progress=progress, jobs=jobs)


def grid_arms(*, config: SuiteConfig | None = None, rule: str = GRID_RULE,
              supports: tuple[float, ...] = GRID_SUPPORTS, seeds: tuple[int, ...] = GRID_SEEDS,
              seeded_supports: tuple[float, ...] = GRID_SEEDED_SUPPORTS) -> list[Arm]:
    """The scale grid's arms: every size x every knob, every seed at `seeded_supports`.

    Arm names are `<size>-s<knob x 100>-r<seed>` (grid-d32-s070-r1235); each manifest
    records its seed, its corpus knobs and its parameter counts.
    """
    cfg = config or grid_config()
    if rule not in dict(cfg.corpus.rules):
        raise CorpusError(f"unknown rule {rule!r} for the grid; choose one of {[r for r, _ in cfg.corpus.rules]}",
                          param="rule")
    if len(set(supports)) < 4 or len({m.d_model * m.layers for m in cfg.models}) < 5:
        raise CorpusError("a scale grid needs at least 4 support values and 5 sizes", param="supports")
    arms = []
    for s in supports:
        tag = f"s{round(s * 100):03d}"
        for seed in (seeds if s in seeded_supports else seeds[:1]):
            for m in cfg.models:
                arms.append(Arm(replace(m, name=f"{m.name}-{tag}-r{seed}"), cfg.corpus.with_support(rule, s),
                                f"corpus-{tag}", seed=seed))
    return arms


def build_grid(out_dir: str | Path, *, config: SuiteConfig | None = None, force: bool = False,
               progress: bool = True, jobs: int | None = None, **knobs) -> Path:
    """Train (or resume, or reuse) the scale grid as one local suite (`grid_arms` names the arms).

    A killed run resumes: finished models are reused, the interrupted ones continue from their
    last checkpoint to the same weights.
    """
    cfg = config or grid_config()
    return _build(Path(out_dir), grid_arms(config=cfg, **knobs), cfg, force=force, progress=progress, jobs=jobs)


def _expected(arm: Arm, train: TrainConfig) -> dict:
    return {"corpus": arm.corpus.to_dict(), "train": {**train.__dict__, "lr": arm.model.lr}}


def _is_done(model_dir: Path, arm: Arm, train: TrainConfig) -> bool:
    """True if a finished model with the same knobs is there; raise if different knobs."""
    man = read_manifest(model_dir)
    if man is None:
        return False
    want = _expected(arm, train)
    got_corpus = {k: v for k, v in man.corpus.items() if k not in ("path", "sha256")}
    got_train = {k: v for k, v in man.train.items() if k != "tokens_per_step"}
    if got_corpus != want["corpus"] or got_train != want["train"] or man.d_model != arm.model.d_model \
            or man.layers != arm.model.layers:
        raise CorpusError(f"{model_dir} was trained with other knobs than requested; retrain it (force) or "
                          "choose another folder", param="force")
    return True


def _corpus_ok(corpus_dir: Path, corpus: CorpusConfig, train: TrainConfig) -> bool:
    meta_path = corpus_dir / CORPUS_META_FILE
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("knobs") == corpus.to_dict() and meta.get("steps") == train.steps \
        and meta.get("tokens_per_step") == train.tokens_per_step


def _build(out_dir: Path, arms: list[Arm], cfg: SuiteConfig, *, force: bool, progress: bool,
           jobs: int | None) -> Path:
    from pythia_forensics.experiments.mini.tokenizer import build_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [a for a in arms if force or not _is_done(out_dir / a.model.name, a, a.train(cfg.train))]
    tokenizer = None
    for corpus_dir, corpus in {a.corpus_dir: a.corpus for a in todo}.items():
        cdir = out_dir / corpus_dir
        if force or not _corpus_ok(cdir, corpus, cfg.train):
            if tokenizer is None:
                tokenizer = build_tokenizer(vocab_size=cfg.tokenizer_vocab)
            shutil.rmtree(cdir, ignore_errors=True)
            records = sample_records(corpus, n_sentences=estimate_sentences(cfg.train))
            write_corpus(records, cdir, tokenizer=tokenizer, config=corpus, train=cfg.train)
    if not todo:
        return out_dir
    n_jobs = max(1, min(jobs or min(2, os.cpu_count() or 1), len(todo)))
    # Largest first so the slowest model starts at once and the small ones fill the gaps.
    todo.sort(key=lambda a: -a.model.d_model * a.model.layers)
    if n_jobs == 1:
        for a in todo:
            _train_arm(a, out_dir, a.train(cfg.train), progress, 0, not force)
    else:
        from pythia_forensics.experiments.mini.train import worker_init

        # Workers die with this process (even on SIGKILL) and ignore Ctrl-C, which is handled here.
        pool = ProcessPoolExecutor(max_workers=n_jobs, initializer=worker_init, initargs=(os.getpid(),))
        try:
            futures = [pool.submit(_train_arm, a, out_dir, a.train(cfg.train), progress, i % n_jobs, not force)
                       for i, a in enumerate(todo)]
            for f in futures:
                f.result()
        except BaseException:
            for child in multiprocessing.active_children():
                child.terminate()  # checkpoints and resume state are atomic: nothing is lost
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    return out_dir


def _train_arm(arm: Arm, out_dir: Path, train: TrainConfig, progress: bool, position: int,
               resume: bool) -> Path:
    from pythia_forensics.experiments.mini.train import train_model

    return train_model(arm.model, corpus_dir=out_dir / arm.corpus_dir, out_dir=out_dir, train=train,
                       corpus=arm.corpus, progress=progress, position=position, resume=resume)
