"""The x axis of every trajectory figure: a scale that follows the checkpoint grid.

`grid_scale` decides from the analysed steps alone whether a grid is log-spaced (Pythia's
0, 1, 2, 4 ... 512, 1000 ... 143000) or linear (the mini suite, most users' runs). `StepAxis`
then places the points: a linear axis from step 0, or a log-style axis (matplotlib's symlog)
whose log part starts a fixed share of the analysed decades below the first analysed step and
whose short linear stub on the left holds step 0 at its true position. Tick labels are short
counts (`0`, `1k`, `10k`, `143k`). One `StepAxis` serves every panel of a figure set, so all
panels share limits and ticks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

from pythia_forensics.analysis.config import X_SCALES, X_UNITS
from pythia_forensics.errors import ConfigError, StoreError

__all__ = ["X_UNITS", "X_SCALES", "grid_scale", "count_label", "StepAxis", "step_axis"]

# A grid is log-spaced when its analysed steps hold a run of LOG_RUN consecutive ratios of at
# least LOG_RATIO (a doubling grid has 2) and span at least LOG_SPAN_MIN x, or when most of
# its gaps are such ratios. A linear grid from d has ratios 2, 1.5, 1.33 ...: one such ratio.
LOG_RATIO = 1.8
LOG_RUN = 3
LOG_SPAN_MIN = 100.0
# Log-style axis: unanalysed positive steps get at most this share of the analysed decades,
# step 0's linear stub this share of the axis width, and both ends this much padding.
PRE_DECADES_SHARE = 0.25
STUB_SHARE = 0.08
PAD_SHARE = 0.025
# An extra labelled tick at the last step when it is this far (axis fraction) from the others.
END_TICK_MIN_GAP = 0.12
_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def grid_scale(steps: Sequence[float]) -> str:
    """The x scale that suits a checkpoint grid: "log" for log-spaced grids, else "linear".

    Args:
        steps: the analysed checkpoint steps (order and duplicates do not matter; steps <= 0
            are ignored: they carry no spacing information).

    Returns:
        "log" when the positive steps hold a run of >= LOG_RUN consecutive ratios >= LOG_RATIO
        and span >= LOG_SPAN_MIN x, or when at least half their gaps are such ratios (a pure
        geometric grid); "linear" otherwise, and for fewer than four positive steps.
    """
    pos = np.unique(np.asarray([s for s in steps if s is not None and np.isfinite(s) and s > 0], dtype=float))
    if pos.size < 4:
        return "linear"
    wide = pos[1:] / pos[:-1] >= LOG_RATIO
    run = best = 0
    for w in wide:
        run = run + 1 if w else 0
        best = max(best, run)
    if best >= LOG_RUN and pos[-1] / pos[0] >= LOG_SPAN_MIN:
        return "log"
    return "log" if wide.mean() >= 0.5 and best >= LOG_RUN else "linear"


def count_label(value: float, *, digits: int = 3) -> str:
    """A short count: 0, 512, 1k, 10k, 143k, 2.1M, 14M, 1.4B (`digits` significant digits).

    Args:
        value: the number (steps, tokens, parameters).
        digits: significant digits kept above 1000 (3 for steps, 2 for Pythia-style sizes).
    """
    if value is None or not np.isfinite(value):
        return "?"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    v = abs(float(value))
    for base, suffix in _SUFFIXES:
        if v >= base * (1 - 5e-4):
            return f"{sign}{float(f'{v / base:.{digits}g}'):g}{suffix}"
    if v >= 1:  # below 1000 every digit is short enough to keep
        return f"{sign}{int(v)}" if v == int(v) else f"{sign}{float(f'{v:.3g}'):g}"
    return f"{sign}{v:.2g}"


@dataclass(frozen=True)
class StepAxis:
    """How one figure set draws training time on x.

    Attributes:
        unit: "steps" or "tokens" (tokens = step x the model's tokens per step).
        scale: "linear", "log" (log-style: symlog with a short stub for step 0) or "symlog"
            (linear up to the first positive step, one decade wide).
        lo, hi: smallest and largest x drawn (in `unit`).
        first: first analysed x (> 0 where one exists).
        linthresh, linscale: the symlog parameters ("log" and "symlog" only).
        tokens_per_step: model -> tokens per step (unit "tokens" only).
        tokens_at: model -> {step: tokens seen} as stored per row (branch names that state
            tokens, e.g. OLMo's); wins over `tokens_per_step` for the steps it holds.
    """

    unit: str
    scale: str
    lo: float
    hi: float
    first: float
    linthresh: float | None = None
    linscale: float | None = None
    tokens_per_step: Mapping[str, float] = field(default_factory=dict)
    tokens_at: Mapping[str, Mapping[int, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The axis label: what x is, and how it is scaled."""
        what = "training tokens" if self.unit == "tokens" else "training step"
        if self.scale == "linear":
            return what
        return f"{what} (log scale; linear below {count_label(self.linthresh)})"

    def values(self, steps, model: str | None = None) -> np.ndarray:
        """x positions (in `unit`) of `steps` of `model`."""
        x = np.asarray(steps, dtype=float)
        if self.unit == "tokens":
            return _tokens(x, self.tokens_at.get(model, {}), self.tokens_per_step.get(model))
        return x

    def _transform(self, x: np.ndarray) -> np.ndarray:
        """Where the axis puts x (up to an affine map), matching matplotlib's symlog."""
        x = np.asarray(x, dtype=float)
        if self.scale == "linear":
            return x
        lt, adj = self.linthresh, self.linscale / (1 - 1 / 10)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(np.abs(x) <= lt, x * adj / lt,
                           np.sign(x) * (adj + np.log10(np.maximum(np.abs(x), lt) / lt)))
        return out

    def fraction(self, x) -> np.ndarray:
        """Axis fraction (0 left, 1 right) of x, with the limits `apply` sets."""
        left, right = self.limits()
        t = self._transform(np.asarray([left, right]))
        return (self._transform(x) - t[0]) / (t[1] - t[0])

    def limits(self) -> tuple[float, float]:
        """(left, right) x limits: the data range padded by PAD_SHARE of the width."""
        t0, t1 = self._transform(np.asarray([self.lo, self.hi]))
        pad = PAD_SHARE * max(t1 - t0, 1e-12)
        return float(self._inverse(t0 - pad)), float(self._inverse(t1 + pad))

    def _inverse(self, t: float) -> float:
        if self.scale == "linear":
            return t
        lt, adj = self.linthresh, self.linscale / (1 - 1 / 10)
        if abs(t) <= adj:
            return t * lt / adj
        return math.copysign(lt * 10 ** (abs(t) - adj), t)

    def ticks(self) -> list[float]:
        """Labelled tick positions: decades (log) or round numbers (linear), plus the end."""
        left, right = self.limits()
        if self.scale == "linear":
            ticks = [float(t) for t in MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(self.lo, self.hi)
                     if left <= t <= right]
        else:
            ticks = [0.0] if left <= 0 <= right else []
            k0, k1 = math.floor(math.log10(self.linthresh)), math.floor(math.log10(right))
            decades = [10.0 ** k for k in range(k0, k1 + 1) if self.linthresh <= 10.0 ** k <= right]
            ticks += decades
            if len([d for d in decades if d >= self.first / 10]) < 3:  # under ~2 decades: add 2x and 5x
                ticks += [m * 10.0 ** k for k in range(k0, k1 + 1) for m in (2, 5)
                          if self.linthresh < m * 10.0 ** k <= right]
            ticks = sorted(set(ticks))
        gaps = np.abs(self.fraction(np.asarray(ticks)) - self.fraction(self.hi)) if ticks else np.array([1.0])
        if gaps.min() >= END_TICK_MIN_GAP:
            ticks.append(float(self.hi))
        return sorted(ticks)

    def apply(self, ax, *, label: bool = True) -> None:
        """Set scale, shared limits, ticks and (optionally) the label of one Axes."""
        if self.scale == "linear":
            ax.set_xscale("linear")
        else:
            ax.set_xscale("symlog", linthresh=self.linthresh, linscale=self.linscale)
        ax.set_xlim(*self.limits())
        ax.xaxis.set_major_locator(FixedLocator(self.ticks()))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: count_label(v)))
        if self.scale != "linear":
            left, right = self.limits()
            minor = [m * 10.0 ** k for k in range(math.floor(math.log10(self.linthresh)),
                                                  math.floor(math.log10(max(right, 1))) + 1)
                     for m in range(2, 10) if self.linthresh < m * 10.0 ** k <= right]
            ax.xaxis.set_minor_locator(FixedLocator(minor))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if label:
            ax.set_xlabel(self.label)


def _tokens(steps: np.ndarray, at: Mapping[int, float], per_step: float | None) -> np.ndarray:
    """Tokens seen at each step: the stored per-step value (linear between stored steps, for
    event positions such as a zero crossing), else step x tokens per step; NaN where neither
    is known."""
    steps = np.asarray(steps, dtype=float)
    out = np.full(steps.shape, np.nan)
    if at:
        known = np.array(sorted(at), dtype=float)
        values = np.array([at[int(k)] for k in known], dtype=float)
        inside = np.isfinite(steps) & (steps >= known[0]) & (steps <= known[-1])
        out[inside] = np.interp(steps[inside], known, values)
    if per_step is not None:
        out = np.where(np.isnan(out), steps * float(per_step), out)
    return out


def _nice_floor(value: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above `value` (tick-friendly symlog thresholds)."""
    k = math.floor(math.log10(value))
    return max(m * 10.0 ** k for m in (1, 2, 5) if m * 10.0 ** k <= value * (1 + 1e-12))


def step_axis(trajectories: pd.DataFrame, *, x: str = "steps", xscale: str = "auto",
              tokens_per_step: Mapping[str, float] | None = None,
              tokens_at: Mapping[str, Mapping[int, float]] | None = None) -> StepAxis:
    """The x axis for a figure set drawn from `trajectories`.

    Args:
        trajectories: rows with model, step and used (analysis's trajectory frame); the scale
            is chosen from the used (analysed) steps, the limits cover every step drawn.
        x: "steps" or "tokens".
        xscale: "auto" (`grid_scale` of the analysed steps), "linear", "log" or "symlog".
        tokens_per_step: model -> tokens per step; needed for every model when x is "tokens"
            and `tokens_at` does not cover all its steps.
        tokens_at: model -> {step: tokens seen} (the stored per-row `tokens`).

    Returns:
        A `StepAxis`.

    Raises:
        ConfigError: x or xscale is not one of the known values.
        StoreError: x is "tokens" and some model's tokens per step is unknown.
    """
    if x not in X_UNITS:
        raise ConfigError(f"x axis {x!r} is not one of {', '.join(X_UNITS)}", param="x")
    if xscale not in X_SCALES:
        raise ConfigError(f"x scale {xscale!r} is not one of {', '.join(X_SCALES)}", param="xscale")
    tps: dict[str, float] = {}
    at: dict[str, dict[int, float]] = {}
    frame = trajectories[["model", "step", "used"]]
    if x == "tokens":
        tps = {m: float(v) for m, v in (tokens_per_step or {}).items()
               if v is not None and not pd.isna(v) and float(v) > 0}
        at = {str(m): {int(s): float(t) for s, t in table.items() if t is not None and not pd.isna(t)}
              for m, table in (tokens_at or {}).items()}
        xs = np.concatenate([_tokens(group["step"].to_numpy(float), at.get(m, {}), tps.get(m))
                             for m, group in frame.groupby("model", sort=False)]) if len(frame) else np.zeros(0)
        frame = pd.concat([group for _, group in frame.groupby("model", sort=False)]) if len(frame) else frame
        missing = sorted(set(frame["model"][np.isnan(xs)])) if len(frame) else []
        if missing:
            raise StoreError(f"tokens per step unknown for {', '.join(missing)} (models.parquet "
                             "tokens_per_step, and no tokens stored per row); draw training steps instead")
    else:
        xs = frame["step"].to_numpy(float)
    used = frame["used"].to_numpy(bool)
    if xs.size == 0:
        xs, used = np.array([0.0, 1.0]), np.array([True, True])
    analysed = xs[used] if used.any() else xs
    scale = grid_scale(analysed) if xscale == "auto" else xscale
    lo, hi = float(min(xs.min(), 0.0)), float(xs.max())
    positive = analysed[analysed > 0]
    first = float(positive.min()) if positive.size else (float(xs[xs > 0].min()) if (xs > 0).any() else 1.0)
    if hi <= lo:
        hi = lo + max(first, 1.0)
    if scale == "linear":
        return StepAxis(unit=x, scale=scale, lo=lo, hi=hi, first=first, tokens_per_step=tps, tokens_at=at)
    all_pos = xs[xs > 0]
    smallest = float(all_pos.min()) if all_pos.size else first
    if scale == "symlog":  # the classic: linear up to the first positive step, one decade wide
        return StepAxis(unit=x, scale=scale, lo=lo, hi=hi, first=first, linthresh=smallest, linscale=1.0,
                        tokens_per_step=tps, tokens_at=at)
    decades = math.log10(hi / first) if hi > first else 1.0
    linthresh = max(_nice_floor(first / 10 ** (PRE_DECADES_SHARE * decades)), _nice_floor(smallest))
    linthresh = min(linthresh, first)
    log_decades = math.log10(max(hi, linthresh * 10) / linthresh)
    adj = STUB_SHARE / (1 - STUB_SHARE) * log_decades  # stub width in decades
    return StepAxis(unit=x, scale="log", lo=lo, hi=hi, first=first, linthresh=linthresh,
                    linscale=adj * (1 - 1 / 10), tokens_per_step=tps, tokens_at=at)
