"""Tolerances for comparing two runs of the tool, derived from fp32 resolution.

The scorer computes in fp32. Two runs that differ only in how the platform's kernels group a
sum (another thread count, batch composition, BLAS build, device) may differ by a few fp32
steps at the magnitude of the values involved, never by more. So a test that compares two
runs asks for agreement to ``ulps`` steps of 2**-23 relative to that magnitude, never for an
absolute tolerance below one fp32 step (README "Numerical contract" (c)).
"""
from __future__ import annotations

import numpy as np

FP32_EPS = 2.0 ** -23  # one fp32 step relative to the value (the spacing is 1-2x this)
# Default: a log-prob is a difference of a logit and a log-sum-exp, each a long fp32 reduction;
# 16 steps at the value's magnitude is ~50x the largest run-to-run difference measured here.
DEFAULT_ULPS = 16


def fp32_tolerance(*magnitudes, ulps: float = DEFAULT_ULPS, floor: float = 1.0) -> np.ndarray:
    """Elementwise tolerance ``ulps * 2**-23 * max(|m1|, |m2|, ..., floor)``.

    Args:
        magnitudes: arrays (broadcastable) whose size sets the scale of the rounding error,
            e.g. both sides of the comparison, or the log-probs a margin was computed from.
        ulps: fp32 steps allowed.
        floor: smallest magnitude used (a value near 0 computed from values near 1 still
            carries their rounding).
    """
    scale = np.full(np.broadcast(*[np.asarray(m, dtype=float) for m in magnitudes]).shape, float(floor))
    for m in magnitudes:
        scale = np.maximum(scale, np.abs(np.asarray(m, dtype=float)))
    return ulps * FP32_EPS * scale


def fp32_close(actual, expected, *, ulps: float = DEFAULT_ULPS, scale=None, floor: float = 1.0) -> np.ndarray:
    """Elementwise: ``|actual - expected| <= fp32_tolerance(actual, expected, scale)``; NaN == NaN.

    Args:
        actual, expected: arrays of the same shape.
        ulps: fp32 steps allowed at the magnitude.
        scale: extra magnitudes (e.g. the log-probs behind a margin); None: only the values.
        floor: smallest magnitude used.
    """
    a, e = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    mags = (a, e) if scale is None else (a, e, scale)
    tol = fp32_tolerance(*mags, ulps=ulps, floor=floor)
    with np.errstate(invalid="ignore"):
        return (np.abs(a - e) <= tol) | (np.isnan(a) & np.isnan(e))


def assert_fp32_close(actual, expected, *, ulps: float = DEFAULT_ULPS, scale=None, floor: float = 1.0,
                      what: str = "values") -> None:
    """Assert `fp32_close` everywhere; the message gives the worst element in nats and steps."""
    a, e = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert a.shape == e.shape, f"{what}: shapes differ: {a.shape} vs {e.shape}"
    ok = fp32_close(a, e, ulps=ulps, scale=scale, floor=floor)
    if not ok.all():
        mags = (a, e) if scale is None else (a, e, scale)
        steps = np.abs(a - e) / fp32_tolerance(*mags, ulps=1, floor=floor)
        k = int(np.nanargmax(np.where(ok, -np.inf, steps)))
        raise AssertionError(f"{what}: {int((~ok).sum())} of {ok.size} differ by more than {ulps} fp32 steps; "
                             f"worst at {k}: {a.flat[k]!r} vs {e.flat[k]!r} ({steps.flat[k]:.1f} steps)")
