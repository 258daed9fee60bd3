"""The analysis thresholds: analysis.yaml, merged with a user's override file, hashed.

Every output row of the analysis records `AnalysisConfig.sha256`, the hash of the effective
thresholds' canonical JSON, so a result can always be traced to the thresholds that made it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pythia_forensics.constants import ANALYSIS_CONFIG, package_file
from pythia_forensics.errors import ConfigError

__all__ = ["AnalysisConfig", "VERDICTS", "X_UNITS", "X_SCALES", "load_config", "read_yaml"]

VERDICTS = ("RECOVERED", "UNSTABLE", "DISPLACED", "PARTIAL", "NEVER")
# The figures' x-axis choices (figures --x / --xscale; "auto" follows the checkpoint grid:
# log for log-spaced grids, linear otherwise, step_axis.grid_scale). Here, not in step_axis,
# so that the CLI offers them without importing matplotlib.
X_UNITS = ("steps", "tokens")
X_SCALES = ("auto", "linear", "log", "symlog")

# (section, key) in analysis.yaml -> AnalysisConfig field
_CONFIG_FIELDS = {
    ("smoothing", "window"): "smoothing_window",
    ("steps", "min_step"): "min_step",
    ("emergence", "conflict_min"): "emergence_conflict_min",
    ("emergence", "agree_min"): "emergence_agree_min",
    ("collapse", "onset_max_acc"): "collapse_onset",
    ("final", "fraction"): "final_fraction",
    ("final", "min_points"): "final_min_points",
    ("verdicts", "recovered_final_min"): "recovered_final_min",
    ("verdicts", "displaced_final_max"): "displaced_final_max",
    ("verdicts", "unstable_range_min"): "unstable_range_min",
    ("verdicts", "order"): "verdict_order",
    ("agree_control", "final_min"): "agree_final_min",
    ("agree_control", "max_drop"): "agree_max_drop",
    ("contrast_margin", "zero"): "cm_zero",
    ("contrast_margin", "valid_max_min"): "cm_valid_max_min",
    ("contrast_margin", "lag_max_checkpoints"): "cm_lag_max_checkpoints",
    ("scale", "min_models"): "scale_min_models",
    ("scale", "permutations"): "scale_permutations",
    ("scale", "exact_max_n"): "scale_exact_max_n",
    ("scale", "bootstrap_min_models"): "scale_bootstrap_min_models",
    ("bootstrap", "n"): "bootstrap_n",
    ("bootstrap", "seed"): "bootstrap_seed",
    ("bootstrap", "confidence"): "bootstrap_confidence",
    ("analysis", "primary_split"): "primary_split",
    ("analysis", "health_exclude"): "health_exclude",
    ("analysis", "tolerance"): "tolerance",
}


@dataclass(frozen=True)
class AnalysisConfig:
    """The effective analysis thresholds (analysis.yaml merged with user overrides).

    Field meanings are documented in analysis.yaml; `sha256` hashes the canonical JSON of
    `values` (the nested mapping), so formatting and key order never change it.
    """

    smoothing_window: int
    min_step: int
    emergence_conflict_min: float
    emergence_agree_min: float
    collapse_onset: float
    final_fraction: float
    final_min_points: int
    recovered_final_min: float
    displaced_final_max: float
    unstable_range_min: float
    verdict_order: tuple[str, ...]
    agree_final_min: float
    agree_max_drop: float
    cm_zero: float
    cm_valid_max_min: float
    cm_lag_max_checkpoints: int
    scale_min_models: int
    scale_permutations: int
    scale_exact_max_n: int
    scale_bootstrap_min_models: int
    bootstrap_n: int
    bootstrap_seed: int
    bootstrap_confidence: float
    primary_split: str
    health_exclude: tuple[str, ...]
    tolerance: float
    values: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)
    sha256: str = ""
    source: str = ""


def read_yaml(path: Path, *, what: str = "analysis config", param: str | None = "config",
              missing_hint: str = "give an existing YAML file") -> Any:
    """Parse a user's YAML file; a missing or malformed file is a one-line ConfigError.

    Args:
        path: the file.
        what: how the message names the file ("analysis config", "predictions file").
        param: the API argument that named the file (the CLI prefixes its flag).
        missing_hint: what the message tells the caller to do when the file is missing.

    Raises:
        ConfigError: the file is missing or not YAML.
    """
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; {missing_hint}", param=param) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML ({exc}); fix the file", param=param) from None


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"analysis config {path} must be a mapping of sections, got {type(data).__name__}",
                          param="config")
    return data


def load_config(path: str | Path | None = None) -> AnalysisConfig:
    """The shipped thresholds, with the sections of `path` (if given) overriding them.

    Args:
        path: a YAML file with any subset of analysis.yaml's sections/keys.

    Returns:
        The effective `AnalysisConfig`, with `sha256` of its canonical JSON.

    Raises:
        ConfigError: the file is missing, not YAML, names an unknown key, or a value is invalid.
    """
    shipped = package_file(*ANALYSIS_CONFIG)
    values = _read_yaml(shipped)
    source = str(shipped)
    if path is not None:
        user = _read_yaml(Path(path))
        problems = []
        for section, entries in user.items():
            if section not in values or not isinstance(entries, dict):
                problems.append(f"section {section!r}")
                continue
            for key, value in entries.items():
                if (section, key) not in _CONFIG_FIELDS:
                    problems.append(f"key {section}.{key}")
                else:
                    values[section][key] = value
        if problems:
            known = sorted(f"{s}.{k}" for s, k in _CONFIG_FIELDS)
            raise ConfigError(f"analysis config {path}: unknown {', '.join(problems)}; known keys: {', '.join(known)}",
                              param="config")
        source = f"{shipped} + {path}"
    kwargs: dict[str, Any] = {}
    for (section, key), name in _CONFIG_FIELDS.items():
        try:
            kwargs[name] = values[section][key]
        except (KeyError, TypeError):
            raise ConfigError(f"analysis config lacks {section}.{key}; restore it from the shipped analysis.yaml",
                              param="config") from None
    kwargs["verdict_order"] = tuple(str(v).upper() for v in kwargs["verdict_order"])
    kwargs["health_exclude"] = tuple(kwargs["health_exclude"] or ())
    if sorted(kwargs["verdict_order"]) != sorted(VERDICTS):
        raise ConfigError(f"verdicts.order must list each of {list(VERDICTS)} once, got {list(kwargs['verdict_order'])}",
                          param="config")
    window = kwargs["smoothing_window"]
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ConfigError(f"smoothing.window must be an odd positive integer (centred window), got {window!r}",
                          param="config")
    for name in ("final_min_points", "bootstrap_n", "scale_min_models", "scale_permutations", "scale_exact_max_n",
                 "scale_bootstrap_min_models"):
        if not isinstance(kwargs[name], int) or kwargs[name] < 1:
            raise ConfigError(f"{name} must be a positive integer, got {kwargs[name]!r}", param="config")
    if not 0 < float(kwargs["bootstrap_confidence"]) < 1:
        raise ConfigError(f"bootstrap.confidence must lie in (0, 1), got {kwargs['bootstrap_confidence']!r}",
                          param="config")
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return AnalysisConfig(**kwargs, values=values, sha256=hashlib.sha256(canonical.encode()).hexdigest(), source=source)
