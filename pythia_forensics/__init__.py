"""pythia-forensics: replay a language model's training checkpoints and find rules it
learns and later loses ("natural ungrokking").

The public API is imported lazily so that `import pythia_forensics` stays cheap and a
notebook pays for torch only when it scores something::

    import pythia_forensics as pf
    probes = pf.load_probes("pronoun_gender")
    frame = pf.score("results/demo/suite/mini-m/step1000", probes)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# before torch is imported: libgomp reads its wait policy once, at load (see scoring/cpus.py)
from pythia_forensics.scoring.cpus import set_wait_policy as _set_wait_policy  # noqa: E402

_set_wait_policy()

# public name -> module that defines it
_API = {
    "load_probes": "scoring.probes",
    "ProbeItem": "scoring.probes",
    "ProbeSet": "scoring.probes",
    "score": "scoring.score",
    "ScoreOptions": "scoring.options",
    "load_model": "scoring.model",
    "get_suite": "checkpoints.registry",
    "replay": "sweep.replay",
    "ResultsStore": "sweep.store",
    "analyze": "analysis.dynamics",
    "TrajectoryMetrics": "analysis.dynamics",
    "render_figures": "analysis.figures",
    "count_support": "corpus.support",
    "check_health": "checkpoints.health",
    "audit": "scoring.audit",
    "Monitor": "monitor.live",
    "MonitorCallback": "monitor.trainer",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'pythia_forensics' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazily exported names are no module attributes until first used: list them so tab
    # completion and help() show them
    return sorted(set(globals()) | set(__all__))
