"""BD-rate tables and crossover points, computed from the results schema alone."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np

from vaeflow.foundations.bdrate import bd_rate_detail


def ms_ssim_db(values: list[float]) -> list[float]:
    """MS-SSIM as -10 log10(1 - MS-SSIM), the usual scale for BD figures."""
    return [-10 * math.log10(max(1e-10, 1 - v)) for v in values]


METRIC_SCALES = {
    "psnr": "PSNR-RGB in dB",
    "ms_ssim": "MS-SSIM-RGB in dB, -10 log10(1 - MS-SSIM)",
}
NO_COMMON_RANGE = "no common range"


def bd_table(doc: dict[str, Any], test: str = "vaeflow") -> list[dict[str, Any]]:
    """BD-rate (percent) of the ``test`` codec against every other entry, for PSNR and MS-SSIM (dB).

    Each row also says what was integrated: ``psnr`` and ``ms_ssim`` hold the quality range
    (in the metric's scale, ``METRIC_SCALES``) and the bpp each curve spans over it; the
    percentages are ``None`` where the curves share no quality range.
    """
    tests = [e for e in doc["codecs"] if e["codec"] == test]
    rows = []
    for t in tests:
        for anchor in doc["codecs"]:
            if anchor is t:
                continue
            a, r = anchor["results"], t["results"]
            psnr = bd_rate_detail(a["bpp"], a["psnr-rgb"], r["bpp"], r["psnr-rgb"])
            ms_ssim = bd_rate_detail(a["bpp"], ms_ssim_db(a["ms-ssim-rgb"]), r["bpp"], ms_ssim_db(r["ms-ssim-rgb"]))
            rows.append(
                {
                    "test": t["name"],
                    "anchor": anchor["name"],
                    "bd_rate_psnr": psnr.percent,
                    "bd_rate_ms_ssim": ms_ssim.percent,
                    "psnr": asdict(psnr),
                    "ms_ssim": asdict(ms_ssim),
                    "common_bpp": _common_range(a["bpp"], r["bpp"]),  # the curves' bpp overlap (not integrated)
                }
            )
    return rows


def percent(value: float | None) -> str:
    """A BD-rate as text: ``-23.1%``, or "no common range"."""
    return NO_COMMON_RANGE if value is None or not math.isfinite(value) else f"{value:+.1f}%"


def integrated(detail: dict[str, Any], test: str, anchor: str, unit: str = "dB") -> str:
    """What a BD-rate was integrated over: ``24.10..26.90 dB (vaeflow 0.051..0.402 bpp, JPEG ...)``."""
    if detail["quality_range"] is None:
        return "-"
    (q0, q1), (t0, t1), (a0, a1) = detail["quality_range"], detail["test_rates"], detail["anchor_rates"]
    return f"{q0:.2f}..{q1:.2f} {unit} ({test} {t0:.3f}..{t1:.3f} bpp, {anchor} {a0:.3f}..{a1:.3f} bpp)"


def _common_range(a: list[float], b: list[float]) -> tuple[float, float]:
    return (max(min(a), min(b)), min(max(a), max(b)))


def _curve(bpp: list[float], quality: list[float]) -> Any:
    from scipy.interpolate import PchipInterpolator  # imported here: it slows every command's start

    order = np.argsort(bpp)
    x, y = np.asarray(bpp)[order], np.asarray(quality)[order]
    keep = np.concatenate([[True], np.diff(x) > 0])
    return PchipInterpolator(x[keep], y[keep]), x[keep][0], x[keep][-1]


def crossover_bpp(test: dict[str, Any], anchor: dict[str, Any], metric: str = "ms-ssim-rgb") -> float | None:
    """The lowest bpp, in both curves' common range, from which ``test`` scores at least ``anchor``.

    None if ``test`` never catches up in that range; the range's low end if it leads throughout.
    """
    ft, t_lo, t_hi = _curve(test["results"]["bpp"], test["results"][metric])
    fa, a_lo, a_hi = _curve(anchor["results"]["bpp"], anchor["results"][metric])
    low, high = max(t_lo, a_lo), min(t_hi, a_hi)
    if not high > low:
        return None
    grid = np.linspace(low, high, 2001)
    ahead = ft(grid) >= fa(grid)
    if not ahead.any():
        return None
    first = int(np.argmax(ahead))
    return float(grid[first])


def leads_below(test: dict[str, Any], anchor: dict[str, Any], limit: float, metric: str = "ms-ssim-rgb") -> bool | None:
    """Whether ``test`` scores at least ``anchor`` at every bpp of the common range up to ``limit``."""
    ft, t_lo, t_hi = _curve(test["results"]["bpp"], test["results"][metric])
    fa, a_lo, a_hi = _curve(anchor["results"]["bpp"], anchor["results"][metric])
    low, high = max(t_lo, a_lo), min(t_hi, a_hi, limit)
    if not high > low:
        return None
    grid = np.linspace(low, high, 2001)
    return bool((ft(grid) >= fa(grid)).all())


def format_bd_table(rows: list[dict[str, Any]]) -> str:
    """The table as text, each figure with the range it was integrated over."""
    lines = [f"{'test':<24} {'anchor':<10} {'BD-rate PSNR':>15} {'BD-rate MS-SSIM':>16}"]
    for r in rows:
        lines.append(
            f"{r['test']:<24} {r['anchor']:<10} {percent(r['bd_rate_psnr']):>15} {percent(r['bd_rate_ms_ssim']):>16}"
        )
    lines.append("Integrated over the quality both curves reach (the bpp each curve spans there):")
    for r in rows:
        short = r["test"]
        for key, name in (("psnr", "PSNR"), ("ms_ssim", "MS-SSIM")):
            lines.append(f"  {r['anchor']:<10} {name:<8} {integrated(r[key], short, r['anchor'])}")
    lines.append(
        f"Scales: {METRIC_SCALES['psnr']}; {METRIC_SCALES['ms_ssim']}. BD-rate: Bjøntegaard delta rate, "
        "piecewise cubic (PCHIP) in log rate over that quality range; negative = fewer bits for the same quality."
    )
    return "\n".join(lines)
