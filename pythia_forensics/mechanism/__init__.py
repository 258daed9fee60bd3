"""Mechanism stage: why a rule dies, measured on frozen checkpoints (#30).

After `scoring/`: it reads models and encoded items, never the store's internals.
"""
from __future__ import annotations

from pythia_forensics.mechanism.ablate import ablate_heads
from pythia_forensics.mechanism.decompose import (
    SUM_TOLERANCE,
    Decomposition,
    decompose,
    model_layout,
)
from pythia_forensics.mechanism.decode import decodability, residuals
from pythia_forensics.mechanism.patch import all_components, patch, recovery

__all__ = ["SUM_TOLERANCE", "Decomposition", "ablate_heads", "all_components", "decodability",
           "decompose", "model_layout", "patch", "recovery", "residuals"]
