"""The mini suite (issue #3): a small Pythia-style family trained on a generated corpus whose
support frequencies are known exactly. See docs/mini-suite.md.

    from pythia_forensics.experiments import mini
    mini.build_suite("results/demo/suite")          # corpus/ + mini-s/ mini-m/ mini-l/
    mini.build_sweep("results/sweep/suite")         # mini-m-s010 ... mini-m-s090
    arms = mini.sweep_configs()                      # [(model, corpus knobs, corpus dir), ...]
"""
from __future__ import annotations

from pythia_forensics.experiments.mini.config import (CorpusConfig, ModelConfig, RuleKnobs, SuiteConfig, TrainConfig,
                                          demo_config, reduced_config)
from pythia_forensics.experiments.mini.suite import (SWEEP_RULE, SWEEP_SUPPORTS, Arm, build_suite, build_sweep,
                                         default_suite_dir, sweep_configs)

__all__ = ["Arm", "CorpusConfig", "ModelConfig", "RuleKnobs", "SuiteConfig", "TrainConfig", "SWEEP_RULE",
           "SWEEP_SUPPORTS", "build_suite", "build_sweep", "default_suite_dir", "demo_config",
           "reduced_config", "sweep_configs"]
