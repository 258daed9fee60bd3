"""Numerical audit: do the configured dtype and batch size reproduce an fp32, batch-1 score?

Small Pythias change their margins with dtype and batch shape (bf16 moves >10% of token
probabilities between batch 1 and 8 on pythia-160m). The audit re-scores a seeded sample of
probe items twice on the same weights -- the *reference* (fp32, one item per forward pass)
and the *configured* run (the dtype and batch size a replay uses) -- and compares per item:

* ``max_abs_delta`` / ``mean_abs_delta``: |margin_configured - margin_reference| in nats;
* ``flips``: items whose decision (margin > 0) differs;
* ``verdict``: ``pass`` (no flip, every margin finite, max |delta| <= tolerance),
  ``drift`` (no flip but margins moved beyond the tolerance), ``fail`` (a flip or a
  non-finite margin). Anything but ``pass`` fails the check (CLI exit status 1).

Both runs go through `scoring.score`, so the audit measures exactly the code path the
replay uses.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pythia_forensics.errors import AuditError

__all__ = ["AuditItem", "AuditReport", "audit", "audit_revisions", "pick_revisions", "sample_items",
           "compare_frames"]

VERDICTS = ("pass", "drift", "fail")
# Re-score a seeded sample of items in fp32 at batch size 1 and compare with the configured
# dtype/batch size; |delta margin| <= AUDIT_MAX_DELTA nats and no flips is a pass.
AUDIT_SAMPLE = 64
AUDIT_SEED = 0
AUDIT_MAX_DELTA = 1e-4
AUDIT_REFERENCE_DTYPE = "float32"
AUDIT_REVISIONS = 3  # revisions a sampled audit spreads over the grid (first, middle, last)
REFERENCE_BATCH_SIZE = 1  # one item per forward pass: no padding, no batch-shape effects


@dataclass(frozen=True)
class AuditItem:
    """One item scored both ways."""

    item_id: str
    rule: str
    condition: str
    margin_reference: float
    margin: float
    delta: float            # margin - margin_reference (nats)
    correct_reference: bool
    correct: bool

    @property
    def flipped(self) -> bool:
        return self.correct != self.correct_reference


@dataclass(frozen=True)
class AuditReport:
    """The audit of one (model, revision) under one configuration.

    Attributes:
        model, revision: what was audited.
        dtype, batch_size, device: the configured run (batch_size as requested; "auto" allowed).
        batch_size_used: the batch size the configured run actually used.
        reference_dtype, reference_batch_size: the reference run (fp32, 1).
        n_items: items compared (the sample); n_total: items in the probe set.
        max_abs_delta, mean_abs_delta: |margin delta| in nats over finite pairs.
        flips: items whose decision differs; flipped: their ids.
        nonfinite: items with a NaN/inf margin in either run.
        tolerance: the |delta| a pass allows.
        verdict: "pass" | "drift" | "fail".
        items: every item compared.
    """

    model: str
    revision: str | None
    dtype: str
    batch_size: int | str
    batch_size_used: int
    device: str
    reference_dtype: str
    reference_batch_size: int
    n_items: int
    n_total: int
    max_abs_delta: float
    mean_abs_delta: float
    flips: int
    flipped: tuple[str, ...]
    nonfinite: int
    tolerance: float
    verdict: str
    items: tuple[AuditItem, ...]

    @property
    def failed(self) -> bool:
        """True unless the verdict is "pass" (CLI exit status 1)."""
        return self.verdict != "pass"

    def to_frame(self):
        """One row per item: ids, both margins, delta, both decisions, flipped."""
        import pandas as pd

        frame = pd.DataFrame([asdict(i) | {"flipped": i.flipped} for i in self.items])
        frame.insert(0, "model", self.model)
        frame.insert(1, "revision", self.revision or "")
        return frame

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary plus the items."""
        out = {k: v for k, v in asdict(self).items() if k != "items"}
        out["flipped"] = list(self.flipped)
        out["failed"] = self.failed
        out["items"] = [asdict(i) | {"flipped": i.flipped} for i in self.items]
        return out


# --- pure pieces -----------------------------------------------------------------------------
def sample_items(items: Sequence[Any], sample: int | float | None, *, seed: int = AUDIT_SEED) -> list[Any]:
    """A seeded sample stratified by (rule, condition, split), in the items' original order.

    Groups are shuffled with one seeded generator and drawn round-robin, so every group is
    represented before any group gets a second item.

    Args:
        items: probe items.
        sample: how many (int), a fraction in (0, 1] (float), or None for all.
        seed: the sampling seed (recorded implicitly: same seed, same items).

    Returns:
        The chosen items.

    Raises:
        AuditError: a non-positive or malformed sample.
    """
    n_all = len(items)
    if sample is None:
        return list(items)
    if isinstance(sample, bool) or not isinstance(sample, (int, float)) or sample <= 0:
        raise AuditError(f"sample must be a positive item count or a fraction in (0, 1], got {sample!r}",
                         param="sample")
    if isinstance(sample, float):
        if sample > 1:
            raise AuditError(f"a fractional sample must be in (0, 1], got {sample}; use an integer for a count",
                             param="sample")
        n = max(1, int(round(sample * n_all)))
    else:
        n = int(sample)
    if n >= n_all:
        return list(items)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[(item.rule, item.condition, item.split)].append(i)
    queues = [list(rng.permutation(idx)) for _, idx in sorted(groups.items())]
    chosen: list[int] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(int(q.pop(0)))
    return [items[i] for i in sorted(chosen)]


def compare_frames(reference: Any, configured: Any) -> list[AuditItem]:
    """Pair two score frames by item_id.

    Raises:
        AuditError: the frames do not hold the same items.
    """
    ref = reference.set_index("item_id")
    got = configured.set_index("item_id")
    if set(ref.index) != set(got.index):
        raise AuditError("the reference and configured runs scored different items; this is a bug, please report it")
    out = []
    for item_id, r in ref.iterrows():
        g = got.loc[item_id]
        out.append(AuditItem(
            item_id=str(item_id), rule=str(r["rule"]), condition=str(r["condition"]),
            margin_reference=float(r["margin"]), margin=float(g["margin"]),
            delta=float(g["margin"]) - float(r["margin"]),
            correct_reference=bool(r["correct"]), correct=bool(g["correct"]),
        ))
    return out


def _verdict(items: Sequence[AuditItem], tolerance: float) -> tuple[str, float, float, int]:
    finite = [i for i in items if np.isfinite(i.margin) and np.isfinite(i.margin_reference)]
    nonfinite = len(items) - len(finite)
    deltas = np.abs([i.delta for i in finite]) if finite else np.zeros(0)
    max_d = float(deltas.max()) if deltas.size else 0.0
    mean_d = float(deltas.mean()) if deltas.size else 0.0
    if nonfinite or any(i.flipped for i in items):
        verdict = "fail"
    elif max_d > tolerance:
        verdict = "drift"
    else:
        verdict = "pass"
    return verdict, max_d, mean_d, nonfinite


# --- the audit -------------------------------------------------------------------------------
def _model_ref(model: str | Path, suite_dir: str | Path | None) -> str:
    """A folder or hub id `load_model` understands, from what the user typed."""
    if Path(str(model)).expanduser().exists():
        return str(model)
    from pythia_forensics.checkpoints.registry import resolve_model

    spec = resolve_model(str(model), suite_dir=suite_dir)
    return str(spec.path) if spec.path is not None else str(spec.repo)


def _reference_model(model: Any, revision: str | None, tokenizer: Any, device: str,
                     suite_dir: str | Path | None) -> tuple[str, Any, Any]:
    """(name, the model in the reference dtype, tokenizer): loaded, or a loaded model copied
    into the reference dtype (never modified)."""
    import torch

    from pythia_forensics.scoring import score as scoring

    if isinstance(model, (str, Path)):
        reference_model, tok = scoring.load_model(_model_ref(model, suite_dir), revision=revision,
                                                  dtype=AUDIT_REFERENCE_DTYPE, device=device)
        return str(model), reference_model, tokenizer or tok
    if tokenizer is None:
        raise AuditError("audit() was given a loaded model without a tokenizer; pass its tokenizer",
                         param="tokenizer")
    reference_model = model
    if next(model.parameters()).dtype != getattr(torch, AUDIT_REFERENCE_DTYPE):
        reference_model = copy.deepcopy(model).to(getattr(torch, AUDIT_REFERENCE_DTYPE))
    return str(getattr(model, "name_or_path", "") or type(model).__name__), reference_model, tokenizer


def audit(model: Any, *, revision: str | None = None, probes: Any, dtype: str = "auto",
          batch_size: int | str = "auto", sample: int | float | None = AUDIT_SAMPLE, tokenizer: Any = None,
          device: str = "auto", bos: bool = False, vocab_rows: str | None = None,
          tolerance: float = AUDIT_MAX_DELTA, seed: int = AUDIT_SEED, suite_dir: str | Path | None = None
          ) -> AuditReport:
    """Re-score a sample in fp32 at batch size 1 and compare with the configured run.

    Args:
        model: a checkpoint folder, hub id, registry name, local suite model folder (with
            `revision`), or an already loaded model (then pass `tokenizer`; it is copied,
            never modified).
        revision: hub branch or local `step<N>` sub-folder.
        probes: a `ProbeSet` or anything `load_probes` accepts.
        dtype: the configured dtype (`auto` resolves as the replay does).
        batch_size: the configured batch size (int or "auto").
        sample: items to compare (count, fraction, or None for all).
        tokenizer: required with a loaded model.
        device: `auto`, `cpu`, `cuda`; both runs use the same device.
        bos, vocab_rows: scoring options, the same for both runs.
        tolerance: max |delta margin| (nats) a pass allows.
        seed: sampling seed.
        suite_dir: a local suite folder to look model names up in.

    Returns:
        The `AuditReport`.

    Raises:
        AuditError: an empty probe set or a bad sample.
        ModelLoadError, ScoringError, ...: from `scoring`.
    """
    from dataclasses import replace

    import torch

    from pythia_forensics.scoring import score as scoring
    from pythia_forensics.scoring.probes import load_probes

    # Validate every option before loading anything (a typo costs no model load).
    scoring.ScoreOptions(dtype=dtype, device=device, batch_size=batch_size, bos=bos,
                         **({"vocab_rows": vocab_rows} if vocab_rows else {}))
    probe_set = load_probes(probes)
    if not probe_set.items:
        raise AuditError(f"probe set {probe_set.name!r} has no items to audit; give a probe set with items",
                         param="probes")
    chosen = sample_items(probe_set.items, sample, seed=seed)
    subset = replace(probe_set, items=tuple(chosen))
    dev = scoring.resolve_device(device)
    name, reference_model, tokenizer = _reference_model(model, revision, tokenizer, dev, suite_dir)
    params = sum(p.numel() for p in reference_model.parameters())
    configured_dtype = scoring.resolve_dtype(dtype, params=params, device=dev)
    # Same weights, cast: what loading the checkpoint in that dtype gives (fp16/bf16 storage
    # -> fp32 is exact, so casting the fp32 copy rounds exactly as a direct load would).
    configured_model = reference_model if configured_dtype == AUDIT_REFERENCE_DTYPE else \
        copy.deepcopy(reference_model).to(getattr(torch, configured_dtype))

    options = scoring.ScoreOptions(dtype="auto", device="auto", bos=bos,
                                   **({"vocab_rows": vocab_rows} if vocab_rows else {}))
    reference = scoring.score(reference_model, subset, tokenizer=tokenizer, revision=revision,
                              options=replace(options, batch_size=REFERENCE_BATCH_SIZE))
    configured = scoring.score(configured_model, subset, tokenizer=tokenizer, revision=revision,
                               options=replace(options, batch_size=batch_size))
    items = compare_frames(reference, configured)
    verdict, max_d, mean_d, nonfinite = _verdict(items, tolerance)
    return AuditReport(
        model=name, revision=revision, dtype=configured_dtype, batch_size=batch_size,
        batch_size_used=int(configured.attrs.get("batch_size", -1)), device=dev,
        reference_dtype=AUDIT_REFERENCE_DTYPE, reference_batch_size=REFERENCE_BATCH_SIZE,
        n_items=len(items), n_total=len(probe_set.items), max_abs_delta=max_d, mean_abs_delta=mean_d,
        flips=sum(i.flipped for i in items), flipped=tuple(i.item_id for i in items if i.flipped),
        nonfinite=nonfinite, tolerance=tolerance, verdict=verdict, items=tuple(items),
    )


def pick_revisions(revisions: Sequence[str], n: int) -> list[str]:
    """`n` revisions spread evenly over a grid, first and last included, in grid order.

    Raises:
        AuditError: n < 1.
    """
    if n < 1:
        raise AuditError(f"the number of revisions to audit must be at least 1, got {n}", param="n_revisions")
    if n >= len(revisions):
        return list(revisions)
    idx = sorted({int(round(x)) for x in np.linspace(0, len(revisions) - 1, n)})
    return [revisions[i] for i in idx]


def audit_revisions(model: Any, *, probes: Any, revisions: Sequence[str] | None = None,
                    n_revisions: int = AUDIT_REVISIONS, suite_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None, disk_budget: int | None = None,
                    progress: bool = True, **options: Any) -> tuple[AuditReport, ...]:
    """Audit a sample of a model's revisions (what a replay runs before trusting a sweep).

    Each revision is fetched through the budgeted `fetch.Fetcher` (hub revisions into the
    shared cache under a hold in its ledger, local ones read in place), audited with
    `audit`, then given back (evicted when a budget makes the cache working space).

    Args:
        model: a registry name, hub id, local model folder or `ModelSpec`.
        probes: a `ProbeSet` or anything `load_probes` accepts.
        revisions: revisions to audit; default: `n_revisions` spread over the grid.
        n_revisions: how many when `revisions` is not given.
        suite_dir: a local suite folder to look model names up in.
        cache_dir: hub cache folder (default: huggingface_hub's).
        disk_budget: most checkpoint bytes held at once by every worker on the cache
            (None: no limit, nothing evicted).
        progress: show a progress bar.
        **options: passed to `audit` (dtype, batch_size, sample, device, tolerance, ...).

    Returns:
        One `AuditReport` per revision, in grid order.
    """
    from dataclasses import replace

    from tqdm.auto import tqdm

    from pythia_forensics.constants import MAIN_REVISION
    from pythia_forensics.checkpoints.fetch import Fetcher
    from pythia_forensics.checkpoints.registry import ModelSpec, resolve_model
    from pythia_forensics.checkpoints.sources import open_source

    spec = model if isinstance(model, ModelSpec) else resolve_model(model, suite_dir=suite_dir)
    src = open_source(spec, **({"cache_dir": str(cache_dir)} if cache_dir and spec.source != "local" else {}))
    chosen = list(revisions) if revisions else pick_revisions(
        [r for r in src.revisions() if r != MAIN_REVISION], n_revisions)
    reports = []
    fetcher = Fetcher(disk_budget)
    try:
        for rev in tqdm(chosen, desc=f"audit {spec.name}", unit="rev", disable=not progress):
            hold = fetcher.acquire(src, rev)
            try:
                record = fetcher.fetch(hold)
                report = audit(str(record.path), probes=probes, **options)
            finally:
                fetcher.release(hold)
            reports.append(replace(report, model=spec.name, revision=rev))
    finally:
        fetcher.close()
    return tuple(reports)
