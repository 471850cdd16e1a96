"""Bjøntegaard delta rate (BD-rate) with piecewise cubic interpolation.

Each curve is interpolated as log10(rate) against quality with a shape-preserving
piecewise cubic Hermite interpolant (PCHIP, as in VCEG-AL22's successors and in
CompressAI's and JVET's tools), integrated over the common quality range. BD-rate is the
average rate difference of the test curve against the anchor there, in percent: -20 means
the test needs 20% fewer bits for the same quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _curve(rates: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r, q = np.asarray(rates, np.float64), np.asarray(qualities, np.float64)
    if r.shape != q.shape or r.size < 2:
        raise ValueError("a rate-distortion curve needs at least two (rate, quality) points")
    if (r <= 0).any():
        raise ValueError("rates must be positive")
    order = np.argsort(q)
    q, log_r = q[order], np.log10(r[order])
    keep = np.concatenate([[True], np.diff(q) > 0])  # PCHIP needs strictly increasing x
    return q[keep], log_r[keep]


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
) -> float:
    """BD-rate of ``test`` against ``anchor`` in percent; NaN when the curves do not overlap."""
    from scipy.interpolate import PchipInterpolator  # imported here: it slows every command's start

    qa, ra = _curve(anchor_rates, anchor_quality)
    qt, rt = _curve(test_rates, test_quality)
    low, high = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if not high > low or qa.size < 2 or qt.size < 2:
        return math.nan
    area_a = PchipInterpolator(qa, ra).integrate(low, high)
    area_t = PchipInterpolator(qt, rt).integrate(low, high)
    return float((10 ** ((area_t - area_a) / (high - low)) - 1) * 100)


@dataclass(frozen=True)
class BDResult:
    """A BD-rate with what it was integrated over: the common quality range, and the rates each
    curve spans across it (``None`` throughout when the curves have no quality in common)."""

    percent: float | None
    quality_range: tuple[float, float] | None
    anchor_rates: tuple[float, float] | None
    test_rates: tuple[float, float] | None


def bd_rate_detail(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
) -> BDResult:
    """``bd_rate`` with the quality range it integrates and the rate range of each curve there."""
    value = bd_rate(anchor_rates, anchor_quality, test_rates, test_quality)
    if not math.isfinite(value):
        return BDResult(None, None, None, None)
    qa, _ = _curve(anchor_rates, anchor_quality)
    qt, _ = _curve(test_rates, test_quality)
    low, high = float(max(qa[0], qt[0])), float(min(qa[-1], qt[-1]))

    def span(rates: Sequence[float], quality: Sequence[float]) -> tuple[float, float]:
        return (rate_at(rates, quality, low), rate_at(rates, quality, high))

    return BDResult(value, (low, high), span(anchor_rates, anchor_quality), span(test_rates, test_quality))


def rate_at(rates: Sequence[float], qualities: Sequence[float], quality: float) -> float:
    """Rate a curve needs for ``quality`` (PCHIP in log rate); NaN outside its range."""
    from scipy.interpolate import PchipInterpolator  # imported when used: slow to import

    q, log_r = _curve(rates, qualities)
    if not q[0] <= quality <= q[-1]:
        return math.nan
    return float(10 ** PchipInterpolator(q, log_r)(quality))
