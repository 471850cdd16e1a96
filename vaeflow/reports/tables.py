"""BD-rate tables and crossover points, computed from the results schema alone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator

from vaeflow.bdrate import bd_rate


def ms_ssim_db(values: list[float]) -> list[float]:
    """MS-SSIM as -10 log10(1 - MS-SSIM), the usual scale for BD figures."""
    return [-10 * math.log10(max(1e-10, 1 - v)) for v in values]


def bd_table(doc: dict[str, Any], test: str = "vaeflow") -> list[dict[str, Any]]:
    """BD-rate (percent) of the ``test`` codec against every other entry, for PSNR and MS-SSIM (dB)."""
    tests = [e for e in doc["codecs"] if e["codec"] == test]
    rows = []
    for t in tests:
        for anchor in doc["codecs"]:
            if anchor is t:
                continue
            a, r = anchor["results"], t["results"]
            rows.append(
                {
                    "test": t["name"],
                    "anchor": anchor["name"],
                    "bd_rate_psnr": bd_rate(a["bpp"], a["psnr-rgb"], r["bpp"], r["psnr-rgb"]),
                    "bd_rate_ms_ssim": bd_rate(
                        a["bpp"], ms_ssim_db(a["ms-ssim-rgb"]), r["bpp"], ms_ssim_db(r["ms-ssim-rgb"])
                    ),
                    "common_bpp": _common_range(a["bpp"], r["bpp"]),
                }
            )
    return rows


def _common_range(a: list[float], b: list[float]) -> tuple[float, float]:
    return (max(min(a), min(b)), min(max(a), max(b)))


def _curve(bpp: list[float], quality: list[float]) -> Any:
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
    lines = [f"{'test':<22} {'anchor':<22} {'BD-rate PSNR':>13} {'BD-rate MS-SSIM':>16}  common bpp range"]
    for r in rows:
        lo, hi = r["common_bpp"]
        lines.append(
            f"{r['test']:<22} {r['anchor']:<22} {r['bd_rate_psnr']:>+12.1f}% {r['bd_rate_ms_ssim']:>+15.1f}%  "
            f"{lo:.3f}..{hi:.3f}"
        )
    lines.append("BD-rate: Bjøntegaard delta rate, piecewise cubic (PCHIP) in log rate; negative = fewer bits.")
    return "\n".join(lines)
