"""One checkpoint's decomposition into RESULTS/mechanism/: content-keyed and resumable.

Layout: ``RESULTS/mechanism/decomposition/<probe set>-<sha256[:12]>/<revision>.parquet``, one
row per (item, component) (`items.DECOMPOSITION_COLUMNS`), written atomically; a file that
already exists is the finished work for that key and is not recomputed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pythia_forensics.atomic import atomic_write

__all__ = ["decomposition_path", "record_decomposition"]


def decomposition_path(results: str | Path, probe_set: Any, revision: str) -> Path:
    return (Path(results) / "mechanism" / "decomposition"
            / f"{probe_set.name}-{probe_set.sha256[:12]}" / f"{revision}.parquet")


def record_decomposition(model_path: str | Path, probes: Any, results: str | Path, *,
                         revision: str | None = None) -> tuple[Path, bool]:
    """Decompose ``probes`` on one checkpoint; returns (file, computed_now)."""
    from pythia_forensics.mechanism.items import decompose_items
    from pythia_forensics.scoring.model import load_model
    from pythia_forensics.scoring.probes import load_probes

    probe_set = load_probes(probes)
    out = decomposition_path(results, probe_set, revision or "model")
    if out.is_file():
        return out, False
    model, tokenizer = load_model(model_path, revision=revision, dtype="float32")
    frame = decompose_items(model, tokenizer, probe_set.items)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
    return out, True
