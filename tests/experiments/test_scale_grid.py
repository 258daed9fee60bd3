"""The scale grid's design (sizes, knobs, seeds) and per-arm seeds on real tiny trained models."""
from __future__ import annotations

from dataclasses import replace

import pytest

from pythia_forensics.checkpoints.manifest import read_manifest
from pythia_forensics.errors import CorpusError
from pythia_forensics.experiments.mini.config import (GRID_MODELS, GRID_SEEDED_SUPPORTS, GRID_SEEDS, GRID_SUPPORTS,
                                                     ModelConfig, grid_config, reduced_config)
from pythia_forensics.experiments.mini.suite import Arm, _build, grid_arms
from pythia_forensics.experiments.mini.train import build_model, count_params


def test_grid_spans_five_sizes_over_30x_four_knobs_and_three_seeds_near_the_flip():
    non_emb = sorted(count_params(build_model(m, vocab_size=1024, seq_len=32, seed=0))[1] for m in GRID_MODELS)
    assert len(non_emb) >= 5 and non_emb[-1] / non_emb[0] >= 30
    arms = grid_arms()
    knobs = {a.corpus.knobs("pronoun_gender").support for a in arms}
    assert len(knobs) >= 4 and knobs == set(GRID_SUPPORTS)
    for knob in GRID_SEEDED_SUPPORTS:
        seeds = {a.seed for a in arms if a.corpus.knobs("pronoun_gender").support == knob}
        assert len(seeds) >= 3 and seeds == set(GRID_SEEDS)
    assert len({a.model.name for a in arms}) == len(arms) == len(GRID_MODELS) * (
        len(GRID_SUPPORTS) + (len(GRID_SEEDS) - 1) * len(GRID_SEEDED_SUPPORTS))
    # the two knobs with seeds are the ones nearest the flip measured by the sweep (0.7 lost, 0.9 kept)
    assert set(GRID_SEEDED_SUPPORTS) <= {0.7, 0.8}


def test_a_grid_needs_five_sizes():
    with pytest.raises(CorpusError):
        grid_arms(config=replace(grid_config(), models=GRID_MODELS[:4]))


@pytest.mark.slow
def test_arm_seeds_reach_the_manifest_and_the_weights_and_a_rerun_reuses(tmp_path):
    cfg = reduced_config()
    model = ModelConfig("t", d_model=16, layers=1, heads=2, lr=3e-3)
    arms = [Arm(replace(model, name=f"t-r{s}"), cfg.corpus, "corpus", seed=s) for s in (1, 2)]
    _build(tmp_path, arms, cfg, force=False, progress=False, jobs=1)
    mans = {s: read_manifest(tmp_path / f"t-r{s}") for s in (1, 2)}
    assert mans[1].seed == 1 and mans[2].seed == 2 and mans[1].train["seed"] == 1
    w1 = (tmp_path / "t-r1" / "step0" / "model.safetensors").read_bytes()
    w2 = (tmp_path / "t-r2" / "step0" / "model.safetensors").read_bytes()
    assert w1 != w2  # another init seed, another init
    before = (tmp_path / "t-r1" / "manifest.json").stat().st_mtime_ns
    _build(tmp_path, arms, cfg, force=False, progress=False, jobs=1)  # finished arms are reused, not retrained
    assert (tmp_path / "t-r1" / "manifest.json").stat().st_mtime_ns == before
