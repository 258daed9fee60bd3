"""Watch rules while a model trains: score probe sets on the live model every N steps.

A rule can be learned and then lost while the loss curve shows nothing; restoring it later is
far harder than keeping it. `Monitor` plugs into any training loop::

    monitor = Monitor("pronoun_gender", every=20, results="results/watch", run="my-run",
                      tokenizer=tok)
    for step, batch in enumerate(loader, 1):
        ...; optimizer.step()
        monitor.step(model, step, batch=batch["input_ids"])
    monitor.close()

Every ``every`` steps it scores the probe sets with the replay scorer (eval mode and no grad
inside; each module's training flag and the torch RNG states restored after, so training is
unchanged), writes the item rows into the same results store replay writes (model = run name,
revision ``step<N>``, content key = a cheap fingerprint of the weights), and keeps the running
trajectory analysis with `dynamics.step_table` / `dynamics.trajectory_metrics` under the
thresholds of analysis.yaml, as `analyze` does afterwards.

Alerts: a rule whose (primary-split) trajectory has emerged, whose agree control still holds at
the latest check, and whose conflict accuracy has fallen below ``collapse.onset_max_acc`` (at the
latest check, or in the smoothed trajectory: the collapse `analyze` reports; the centred smoother
confirms a drop only one check later, so the raw drop makes the alert one check earlier) or whose
smoothed contrast margin, once valid, has crossed ``contrast_margin.zero``, gets ONE warning line (logger ``pythia_forensics.monitor.live``) naming the
rule, the step, the margin trend and the checkpoint to keep, and ``on_alert(alert)`` is called.
The live weights have moved on by then; with ``keep=FOLDER`` the monitor saves the named
checkpoint itself (weights it held since that check, plus the tokenizer: `monitor.keep`), and
the line says where, or why it could not.

Support: given support rules, the monitor counts the support counters (`support.count_token_stream`,
the counter `pythia-forensics support` runs) over the token batches it is shown, per monitoring
window, so an alert says what the data did. Events are attributed to the window of their cue's
first token; a cue's look-ahead may reach into the next window, so a window's counts are final
once the next window's first tokens have been seen (``final`` column), provisional before.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pythia_forensics.constants import STEP_DIR_PREFIX
from pythia_forensics.monitor.keep import CheckpointKeeper, keep_step
from pythia_forensics.corpus.windows import DEFAULT_SUPPORT_WINDOW
from pythia_forensics.scoring.options import DEFAULT_VOCAB_ROWS
from pythia_forensics.errors import MonitorError

if TYPE_CHECKING:
    from pythia_forensics.analysis.dynamics import TrajectoryMetrics

__all__ = ["Alert", "Monitor", "weights_fingerprint"]

logger = logging.getLogger(__name__)

MONITOR_SOURCE = "monitor"           # models.parquet `source` of a monitored run
MONITOR_DIR = "monitor"              # RESULTS/monitor/<run>/{support.csv, alerts.jsonl, overhead.json}
ROW_MODES = ("documents", "stream")  # how batch rows relate: separate documents, or one packed stream
_FINGERPRINT_SAMPLE = 64             # values sampled per tensor for the weights fingerprint
_TREND_POINTS = 4                    # smoothed CM values quoted in an alert
_KEPT_COLUMNS = ("model", "revision", "item_id", "rule", "condition", "split", "logp_target", "logp_foil",
                 "margin", "correct")


def weights_fingerprint(model: Any) -> str:
    """A cheap fingerprint of a model's weights (not a content hash of its files).

    Per tensor: name, shape, dtype, the float64 sum and a strided sample of values. Any
    optimizer step moves the sums, so two checks of one run never share a fingerprint.

    Args:
        model: a torch module.

    Returns:
        ``"live:" + sha256 hex``.
    """
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            stride = max(1, flat.numel() // _FINGERPRINT_SAMPLE)
            sample = flat[::stride][:_FINGERPRINT_SAMPLE].double().cpu().numpy()
            total = float(flat.double().sum().item()) if flat.numel() else 0.0
            h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{total!r}|".encode())
            h.update(sample.tobytes())
    return "live:" + h.hexdigest()


@dataclass(frozen=True)
class Alert:
    """One rule that started to ungrok.

    Attributes:
        run, probeset, rule, split: the trajectory.
        step: the check at which the alert fired.
        onset_step: the collapse onset (last step with smoothed conflict accuracy >=
            ``collapse.onset_max_acc``) or, for a margin trigger, the CM zero crossing.
        trigger: ``accuracy``, ``contrast margin`` or ``accuracy + contrast margin``.
        peak_acc, peak_step: smoothed conflict accuracy peak (agree-gated, as analyze).
        acc_now, cm_now, agree_now: smoothed values at the latest check.
        acc_raw: the latest check's own conflict accuracy.
        cm_trend: (step, smoothed CM) of the last few checks.
        keep_step: the checkpoint to keep: the last check before the onset at which the rule
            still held (smoothed conflict accuracy >= ``emergence.conflict_min``, agree control
            holding), else the peak.
        support: per support rule, the counts over the window that ended at ``step``
            (``rule_wins``, ``prior_wins``, ``cues``, ``window_start_step``), or None.
        message: the warning line (it ends saying where the kept checkpoint is, or why none is).
        kept: the folder the named checkpoint was saved to (``Monitor(keep=)``), or None.
    """

    run: str
    probeset: str
    rule: str
    split: str
    step: int
    onset_step: int
    trigger: str
    peak_acc: float
    peak_step: int
    acc_now: float
    acc_raw: float
    cm_now: float
    agree_now: float
    cm_trend: tuple[tuple[int, float], ...]
    keep_step: int
    support: Mapping[str, Mapping[str, int]] | None
    message: str
    kept: str | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class _Support:
    """Per-window support counts over the batches a loop trains on (see the module docstring)."""

    compiled: tuple
    vocab: Any
    window: int
    rows: str
    eod_id: int | None
    halo: int
    carry: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    carry_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)   # one per closed window
    tokens_seen: int = 0

    def observe(self, batch: Any) -> None:
        arr = batch.detach().cpu().numpy() if hasattr(batch, "detach") else np.asarray(batch)
        arr = np.asarray(arr, dtype=np.int64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise MonitorError(f"a token batch must be 1-D or 2-D (rows x tokens), got shape {arr.shape}")
        starts = np.zeros(arr.shape, dtype=bool)
        if self.rows == "documents":
            starts[:, 0] = True
        self.pending.append((arr.reshape(-1), starts.reshape(-1)))
        self.tokens_seen += arr.size

    def _doc_offsets(self, tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
        marks = starts.copy()
        marks[0] = True
        if self.eod_id is not None:
            after_eod = np.flatnonzero(tokens[:-1] == self.eod_id) + 1
            marks[after_eod] = True
        return np.flatnonzero(marks).astype(np.int64)

    def _count(self, tokens: np.ndarray, starts: np.ndarray, limit: int) -> dict[str, np.ndarray]:
        from pythia_forensics.corpus.support import count_token_stream

        counts = count_token_stream(tokens, self._doc_offsets(tokens, starts), self.compiled, self.vocab,
                                    window=self.window, window_tokens=self.halo, token_limit=limit)
        return counts

    def close_window(self, start_step: int, end_step: int, *, last: bool = False) -> dict[str, dict[str, int]]:
        """Count the window (start_step, end_step]; finalise the previous one. Returns this
        window's (provisional) counts per rule."""
        H = self.halo
        new = [t for t, _ in self.pending]
        new_s = [s for _, s in self.pending]
        self.pending = []
        body = np.concatenate(new) if new else np.zeros(0, dtype=np.int64)
        body_s = np.concatenate(new_s) if new_s else np.zeros(0, dtype=bool)
        # buffer = [2H of context: earlier tokens, or an isolated pad document] + the new tokens;
        # stream window 0 (context only) is dropped, window 1 holds the previous window's last
        # H tokens (whose look-ahead was not complete then), windows 2.. this window's cues.
        lead = 2 * H - len(self.carry)
        pad = np.zeros(lead, dtype=np.int64)
        pad_s = np.zeros(lead, dtype=bool)
        if lead:
            pad_s[0] = True
        tokens = np.concatenate([pad, self.carry, body])
        starts = np.concatenate([pad_s, self.carry_starts, body_s])
        if lead and len(self.carry) + len(body):
            starts[lead] = True  # the pad never links to real tokens
        limit = len(tokens) if last else len(tokens) - H
        counts = self._count(tokens, starts, max(limit, 2 * H)) if len(body) else {}
        late, own = {}, {}
        for rule in self.compiled:
            c = counts.get(rule.name)
            for target, sl in ((late, slice(1, 2)), (own, slice(2, None))):
                target[rule.name] = {k: int(c[k][sl].sum()) if c is not None else 0
                                     for k in ("cues", "rule_wins", "prior_wins")}
        if self.windows and not self.windows[-1]["final"]:
            prev = self.windows[-1]
            for rule, vals in late.items():
                for k, v in vals.items():
                    prev["counts"][rule][k] += v
            prev["final"] = True
        self.windows.append({"window_start_step": start_step, "window_end_step": end_step, "counts": own,
                             "final": last})
        keep = tokens[-2 * H:] if len(tokens) >= 2 * H else tokens
        self.carry = keep.copy()
        self.carry_starts = starts[-len(keep):].copy()
        return own

    def frame(self, run: str) -> pd.DataFrame:
        rows = [{"run": run, "window_start_step": w["window_start_step"], "window_end_step": w["window_end_step"],
                 "rule": rule, **vals, "final": w["final"]}
                for w in self.windows for rule, vals in w["counts"].items()]
        cols = ["run", "window_start_step", "window_end_step", "rule", "cues", "rule_wins", "prior_wins", "final"]
        frame = pd.DataFrame(rows, columns=cols)
        frame["ratio"] = (frame["rule_wins"] + 1) / (frame["prior_wins"] + 1)
        return frame


class Monitor:
    """Scores probe sets on a live model during training; stores rows, tracks trajectories, alerts.

    Args:
        probes: a `ProbeSet`, a shipped name, a file, ``"all"``, or a list of those (each set is
            stored under its own name, as replay does).
        every: score when ``step % every == 0``.
        results: results folder to write item rows into (None: keep them in memory only).
        run: the run's name (the ``model`` column of the stored rows).
        steps: extra steps to score besides the multiples of ``every`` (e.g. a log-spaced start).
        tokenizer: the tokenizer (else pass one to each `step`).
        config: analysis thresholds (`dynamics.AnalysisConfig`, an override YAML, or None).
        batch_size, bos, vocab_rows, threads: scoring options (see `scoring.ScoreOptions`); on a
            busy CPU, ``threads=1`` keeps scoring from contending with the training threads.
        support: support rules to count over the batches shown to `step` (names, files,
            ``"all"``), or None for no counting.
        rows: ``"documents"`` (each batch row starts a new document) or ``"stream"`` (rows are
            consecutive pieces of one token stream, as the mini trainer and Pythia read it).
        eod_id: a token that ends a document (a new one starts after it); None: only rows.
        support_window: W of the support event definition.
        on_alert: called with each `Alert` (after its checkpoint was kept).
        tokens_per_step: recorded in models.parquet (default: the first batch's size, if shown).
        keep: a folder: save the checkpoint each alert names (the last check at which the rule
            still held, not the live weights) with its tokenizer as ``keep/<run>/step<N>/``
            (`monitor.keep`; holds CPU copies of the weights of up to a few recent checks).
            None: the alert names the checkpoint and says it was not saved.

    Raises:
        MonitorError: a bad schedule or row mode.
    """

    def __init__(self, probes: Any, *, every: int = 20, results: str | Path | None = None, run: str = "run",
                 steps: Sequence[int] = (), tokenizer: Any = None, config: Any = None,
                 batch_size: int | str = "auto", bos: bool = False, vocab_rows: str = DEFAULT_VOCAB_ROWS,
                 support: Any = None, rows: str = "documents", eod_id: int | None = None,
                 support_window: int = DEFAULT_SUPPORT_WINDOW, on_alert: Callable[[Alert], Any] | None = None,
                 tokens_per_step: int | None = None, keep: str | Path | None = None,
                 threads: int | str = "auto") -> None:
        from pythia_forensics.analysis import dynamics
        from pythia_forensics.scoring import score as scoring
        from pythia_forensics.sweep.plan import load_probe_sets

        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise MonitorError(f"every must be a positive number of steps, got {every!r}")
        if rows not in ROW_MODES:
            raise MonitorError(f"rows must be one of {', '.join(ROW_MODES)}, got {rows!r}")
        if not str(run).strip():
            raise MonitorError("run must be a non-empty name (it is the model column of the stored rows)")
        self.every = every
        self.extra_steps = frozenset(int(s) for s in steps)
        self.run = str(run)
        self.store = None
        if results is not None:
            from pythia_forensics.sweep.store import ResultsStore

            self.store = ResultsStore(results)
        self.tokenizer = tokenizer
        self.config = config if isinstance(config, dynamics.AnalysisConfig) else dynamics.load_config(config)
        self.options = scoring.ScoreOptions(batch_size=batch_size, bos=bos, vocab_rows=vocab_rows, threads=threads)
        self.probe_sets = load_probe_sets(probes)
        self.on_alert = on_alert
        self.tokens_per_step = tokens_per_step
        self.alerts: list[Alert] = []
        self.overhead_s = 0.0       # wall time spent inside the monitor (scoring, store, analysis, support)
        self.checks = 0
        self._prepared: dict[str, Any] = {}
        self._table: list[pd.DataFrame] = []
        self._items: list[pd.DataFrame] = []
        self._alerted: set[tuple] = set()
        self._last_step: int | None = None
        self._window_start = 0
        self._models_written = False
        self._support_spec = (support, rows, eod_id, support_window)
        self._support: _Support | None = None
        self.keeper = CheckpointKeeper(keep, self.run) if keep is not None else None

    # --- the loop's entry points ---------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether `step` is a scoring step (a multiple of ``every`` or one of ``steps``)."""
        return (step % self.every == 0 or step in self.extra_steps) and step != self._last_step

    def step(self, model: Any, step: int, *, tokenizer: Any = None, batch: Any = None) -> dict[str, float] | None:
        """Call after every optimizer step; scores when `due`.

        Args:
            model: the model being trained (a DDP/compiled wrapper's ``.module`` is used).
            step: updates done so far (the number a checkpoint of now would carry).
            tokenizer: the tokenizer (default: the one given to the constructor).
            batch: this step's input ids (rows x tokens), counted when support rules are set.

        Returns:
            The metrics of this check (`metrics` keys), or None when no check was due.

        Raises:
            MonitorError: no tokenizer, or steps going backwards.
        """
        t0 = time.perf_counter()
        try:
            step = int(step)
            if self._last_step is not None and step < self._last_step:
                raise MonitorError(f"step {step} comes after step {self._last_step}; steps must not go back "
                                   "(a resumed run needs a new Monitor with the same results folder)")
            if batch is not None:
                self._observe(batch, tokenizer)
            if not self.due(step):
                return None
            return self._check(model, step, tokenizer)
        finally:
            self.overhead_s += time.perf_counter() - t0

    def observe(self, batch: Any, *, tokenizer: Any = None) -> None:
        """Count one training batch's support events into the current window (no-op without
        support rules). `step(batch=)` calls it; under a Trainer, `MonitorCallback.collator` does.

        Args:
            batch: input ids, rows x tokens (torch tensor or array); 1-D is one row.
            tokenizer: the tokenizer (default: the constructor's).
        """
        t0 = time.perf_counter()
        try:
            self._observe(batch, tokenizer)
        finally:
            self.overhead_s += time.perf_counter() - t0

    def _observe(self, batch: Any, tokenizer: Any) -> None:
        if self._support_spec[0] is None:
            return
        self._support_counter(tokenizer).observe(batch)
        if self.tokens_per_step is None:
            self.tokens_per_step = int(np.prod(np.shape(batch)))

    def __call__(self, model: Any, step: int, batch: Any = None) -> dict[str, float] | None:
        """`step` with the mini trainer's hook signature ``on_step(model, step, batch)``."""
        return self.step(model, step, batch=batch)

    def close(self) -> None:
        """Finalise the last support window, refresh summary.parquet, write the run's side files."""
        from pythia_forensics.atomic import write_json, write_text

        if self._support is not None and self._support.pending:
            self._support.close_window(self._window_start, self._last_step or 0, last=True)
        elif self._support is not None and self._support.windows:
            self._support.windows[-1]["final"] = True
        if self.store is None:
            return
        self.store.refresh_summary()
        folder = self.store.root / MONITOR_DIR / self.run.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        if self._support is not None:
            write_text(folder / "support.csv", self.support_frame().to_csv(index=False))
        write_text(folder / "alerts.jsonl", "".join(json.dumps(a.to_dict(), default=str) + "\n" for a in self.alerts))
        write_json(folder / "overhead.json", {"checks": self.checks, "overhead_s": self.overhead_s})

    # --- results ------------------------------------------------------------------------------
    def items(self) -> pd.DataFrame:
        """Every item scored so far: model (the run), revision, step, probeset, content_key,
        item_id, rule, condition, split, logp_target, logp_foil, margin, correct (the store
        holds the full rows)."""
        return pd.concat(self._items, ignore_index=True) if self._items else pd.DataFrame()

    def trajectory(self) -> pd.DataFrame:
        """The running per-(group, step) table (`dynamics.step_table` columns)."""
        return pd.concat(self._table, ignore_index=True) if self._table else pd.DataFrame()

    def analysis(self) -> Any:
        """The full `dynamics.analyze` of what was scored so far (bootstrap CIs included)."""
        from pythia_forensics.analysis.dynamics import analyze

        return analyze(self.items(), config=self.config)

    def support_frame(self) -> pd.DataFrame:
        """Support counts per (monitoring window, rule): cues, rule_wins, prior_wins, ratio, final."""
        if self._support is None:
            return pd.DataFrame(columns=["run", "window_start_step", "window_end_step", "rule", "cues",
                                         "rule_wins", "prior_wins", "final", "ratio"])
        return self._support.frame(self.run)

    # --- internals ----------------------------------------------------------------------------
    def _support_counter(self, tokenizer: Any) -> _Support:
        if self._support is None:
            from pythia_forensics.corpus.support import compile_rules, load_rules

            spec, rows, eod_id, window = self._support_spec
            tok = tokenizer or self.tokenizer
            if tok is None:
                raise MonitorError("support counting needs the tokenizer; pass tokenizer= to Monitor")
            compiled, vocab = compile_rules(load_rules(spec), tok)
            max_len = max((r.max_len for r in compiled), default=1)
            # the counter's own look-around reach: W plus a cue and a choice, plus boundary tokens
            halo = window + 2 * max_len + 2
            self._support = _Support(compiled, vocab, window, rows, eod_id, halo)
        return self._support

    def _score(self, model: Any, step: int, tok: Any) -> list[pd.DataFrame]:
        import torch

        from pythia_forensics.scoring import score as scoring
        from pythia_forensics.scoring.plan import uses_tree

        modes = {m: m.training for m in model.modules()}
        cpu_rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None
        model.eval()
        try:
            frames = []
            with torch.no_grad():
                for ps in self.probe_sets:
                    key = (ps.name, id(tok), uses_tree(model))
                    if key not in self._prepared:
                        self._prepared[key] = scoring.prepare(model, ps, tokenizer=tok, bos=self.options.bos)
                    frames.append(scoring.score(model, ps, tokenizer=tok, revision=f"{STEP_DIR_PREFIX}{step}",
                                                options=self.options, prepared=self._prepared[key]))
            return frames
        finally:
            for m, flag in modes.items():
                m.training = flag
            torch.random.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)

    def _check(self, model: Any, step: int, tokenizer: Any) -> dict[str, float]:
        from pythia_forensics.analysis import dynamics
        from pythia_forensics.sweep.plan import code_version
        from pythia_forensics.sweep.run import provenance
        from pythia_forensics.sweep.store import WorkKey

        model = getattr(model, "module", model)       # DDP / DataParallel
        model = getattr(model, "_orig_mod", model)    # torch.compile
        tok = tokenizer or self.tokenizer
        if tok is None:
            raise MonitorError("the monitor needs the tokenizer; pass tokenizer= to Monitor or to step()")
        frames = self._score(model, step, tok)
        fingerprint = weights_fingerprint(model)
        revision = f"{STEP_DIR_PREFIX}{step}"
        record = _Record(repo=self.run, step=step, commit=None, weights_sha256=None)
        for ps, frame in zip(self.probe_sets, frames):
            # only what the running analysis reads: a copy of every text column per check costs
            # more than the scoring itself on a small model
            rows = frame[list(_KEPT_COLUMNS)].copy()
            rows["model"], rows["step"], rows["probeset"] = self.run, step, ps.name
            rows["content_key"] = fingerprint
            self._items.append(rows)
            if self.store is not None:
                key = WorkKey(model=self.run, revision=revision, content_key=fingerprint, probeset=ps.name,
                              probeset_sha256=ps.sha256, dtype=frame.attrs["dtype"], bos=self.options.bos,
                              vocab_rows=self.options.vocab_rows, code_version=code_version())
                self.store.write(key, frame, provenance=provenance(record, frame.attrs))
        if self.store is not None and not self._models_written:
            self._write_models(model)
        new = dynamics.step_table(pd.concat(self._items[-len(frames):], ignore_index=True), config=self.config)
        self._table.append(new)
        support_now = None
        if self._support is not None:
            support_now = self._support.close_window(self._window_start, step)
        self._window_start = step
        self._last_step = step
        self.checks += 1
        for alert in self._update_alerts(step, support_now):
            alert = self._keep(alert, model, tok)
            self.alerts.append(alert)
            logger.warning(alert.message)
            if self.on_alert is not None:
                self.on_alert(alert)
        if self.keeper is not None:
            self.keeper.remember(step, model)
            self.keeper.retain(self._keep_candidates())
        return self._metrics(new)

    def _keep(self, alert: Alert, model: Any, tok: Any) -> Alert:
        """The alert with its named checkpoint saved (`monitor.keep`), or saying why it was not."""
        from dataclasses import replace

        if self.keeper is None:
            return replace(alert, message=f"{alert.message}; not saved (pass keep=FOLDER to Monitor to save it)")
        folder, said = self.keeper.save(alert.keep_step, model, tok)
        return replace(alert, kept=None if folder is None else str(folder), message=f"{alert.message}; {said}")

    def _keep_candidates(self) -> set[int]:
        """Checks a later alert could name (`monitor.keep`): the latest checks, whose smoothed
        values the next checks still move (the centred window's half), and, per emerged rule not
        alerted yet, the last settled check at which it held, overall and up to its CM crossing."""
        from pythia_forensics.analysis.dynamics import GROUP_KEYS, primary, trajectory_metrics

        table = primary(self.trajectory(), self.config)
        half = max(self.config.smoothing_window // 2, 1)
        wanted = {int(s) for s in sorted(set(table["step"]))[-half:]} if not table.empty else set()
        for key, group in table.groupby(list(GROUP_KEYS), sort=True):
            used = group[group["used"]].sort_values("step")
            if key in self._alerted or used.empty:
                continue
            steps = used["step"].to_numpy()
            m = trajectory_metrics(steps, used["conflict_acc"].to_numpy(), used["agree_acc"].to_numpy(),
                                   used["conflict_cm"].to_numpy(), config=self.config)
            settled = len(steps) - half  # smoothed values from here on still change with the next checks
            if not m.emerged or settled <= 0:
                continue
            with np.errstate(invalid="ignore"):
                nonneg = np.flatnonzero(m.cm_smooth[:settled] >= self.config.cm_zero - self.config.tolerance)
            for onset in (int(steps[settled - 1]), int(steps[nonneg[-1]]) if nonneg.size else None):
                if onset is not None:
                    wanted.add(keep_step(steps[:settled], m.conflict_smooth[:settled], m.agree_smooth[:settled],
                                         onset=onset, peak_step=int(m.peak_step), config=self.config))
        return wanted

    def _metrics(self, new: pd.DataFrame) -> dict[str, float]:
        """Per-rule values at this check on the primary split: conflict/agree accuracy, CM (nats)."""
        from pythia_forensics.analysis.dynamics import primary

        out: dict[str, float] = {}
        for _, row in primary(new, self.config).iterrows():
            name = row["rule"] if row["probeset"] == row["rule"] else f"{row['probeset']}/{row['rule']}"
            for col, label in (("conflict_acc", "conflict_acc"), ("agree_acc", "agree_acc"),
                               ("conflict_cm", "contrast_margin")):
                value = row.get(col)
                if value is not None and np.isfinite(value):
                    out[f"pf/{name}/{label}"] = float(value)
        return out

    def _update_alerts(self, step: int, support_now: Mapping[str, Any] | None) -> list[Alert]:
        from pythia_forensics.analysis.dynamics import GROUP_KEYS, primary, trajectory_metrics

        cfg, tol = self.config, self.config.tolerance
        table = primary(self.trajectory(), cfg)
        fired = []
        for key, group in table.groupby(list(GROUP_KEYS), sort=True):
            if key in self._alerted:
                continue
            used = group[group["used"]].sort_values("step")
            if used.empty or int(used["step"].iloc[-1]) != step:
                continue
            steps = used["step"].to_numpy()
            m = trajectory_metrics(steps, used["conflict_acc"].to_numpy(), used["agree_acc"].to_numpy(),
                                   used["conflict_cm"].to_numpy(), config=cfg)
            if not m.emerged:
                continue
            agree_s = m.agree_smooth
            agree_now = float(agree_s[-1])
            holds = (np.isfinite(agree_now) and agree_now >= cfg.emergence_agree_min - tol
                     and float(np.nanmax(agree_s)) - agree_now < cfg.agree_max_drop - tol)
            cs = m.conflict_smooth
            # accuracy: the latest check's conflict accuracy (raw: the centred smoother needs the
            # next check to confirm) or the smoothed trajectory fell below the collapse threshold
            fell = used["conflict_acc"].iloc[-1] < cfg.collapse_onset - tol or m.collapse_step is not None
            triggers = [name for name, hit in (("accuracy", fell),
                                               ("contrast margin", m.cm_cross_step is not None)) if hit]
            if not holds or not triggers:
                continue
            self._alerted.add(key)
            if m.collapse_step is not None:
                onset = m.collapse_step
            elif m.cm_cross_step is not None and not fell:
                onset = m.cm_cross_step
            else:  # the last earlier check still at or above the collapse threshold (smoothed)
                above = np.flatnonzero(cs[:-1] >= cfg.collapse_onset - tol)
                onset = int(steps[above[-1]]) if above.size else int(steps[-1])
            keep = keep_step(steps, cs, agree_s, onset=onset, peak_step=int(m.peak_step), config=cfg)
            cms = m.cm_smooth
            trend = tuple((int(s), float(v)) for s, v in zip(steps[-_TREND_POINTS:], cms[-_TREND_POINTS:]))
            fired.append(self._alert(key, step, onset, " + ".join(triggers), m, agree_now, trend, keep, support_now,
                                     float(used["conflict_acc"].iloc[-1])))
        return fired

    def _alert(self, key: tuple, step: int, onset: int, trigger: str, m: TrajectoryMetrics, agree_now: float,
               trend: tuple, keep: int, support_now: Mapping[str, Any] | None, acc_raw: float) -> Alert:
        _, probeset, rule, split = key
        acc_now, cm_now = float(m.conflict_smooth[-1]), float(m.cm_smooth[-1])
        trend_text = " -> ".join(f"{v:+.2f}" for _, v in trend)
        where = rule if probeset == rule else f"{probeset}/{rule}"
        support = None
        support_text = ""
        if support_now is not None:
            support = {r: {**v, "window_start_step": self._support.windows[-1]["window_start_step"]}
                       for r, v in support_now.items()}
            if rule in support_now:
                s = support_now[rule]
                ratio = (s["rule_wins"] + 1) / (s["prior_wins"] + 1)
                support_text = (f"; data in steps {self._support.windows[-1]['window_start_step'] + 1}-{step}: "
                                f"{s['rule_wins']} rule wins vs {s['prior_wins']} prior wins (ratio {ratio:.2f})")
        message = (f"rule {where} ({split}) is ungrokking at step {step} [{trigger}]: conflict accuracy "
                   f"{acc_raw:.2f} (smoothed {acc_now:.2f}; peak {m.peak_acc:.2f} at step {m.peak_step}; "
                   f"onset step {onset}), "
                   f"contrast margin {trend_text} nats (steps {trend[0][0]}-{trend[-1][0]}), agree control "
                   f"{agree_now:.2f}; keep checkpoint {STEP_DIR_PREFIX}{keep}{support_text}")
        return Alert(run=self.run, probeset=probeset, rule=rule, split=split, step=step, onset_step=int(onset),
                     trigger=trigger, peak_acc=float(m.peak_acc), peak_step=int(m.peak_step), acc_now=acc_now,
                     acc_raw=acc_raw,
                     cm_now=cm_now, agree_now=agree_now, cm_trend=trend, keep_step=keep, support=support,
                     message=message)

    def _write_models(self, model: Any) -> None:
        total = sum(p.numel() for p in model.parameters())
        emb = 0
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            layer = getattr(model, getter, lambda: None)()
            if layer is not None and getattr(layer, "weight", None) is not None:
                emb += layer.weight.numel()
        config = getattr(model, "config", None)
        rows = pd.DataFrame([{
            "model": self.run, "repo": self.run, "source": MONITOR_SOURCE, "params_total": total,
            "params_nonembedding": total - emb, "tokens_per_step": self.tokens_per_step,
            "layers": getattr(config, "num_hidden_layers", None), "d_model": getattr(config, "hidden_size", None),
        }])
        for col in ("params_total", "params_nonembedding", "tokens_per_step", "layers", "d_model"):
            rows[col] = pd.array(rows[col], dtype="Int64")
        self.store.write_models(rows)
        self._models_written = True


@dataclass(frozen=True)
class _Record:
    """What replay's provenance reads from a checkpoint record; a live model has no files."""

    repo: str
    step: int
    commit: str | None
    weights_sha256: str | None
