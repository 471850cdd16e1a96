"""2-D wavelet per channel: Haar, CDF 5/3 and CDF 9/7 by lifting.

The transforms are non-expansive on any length, odd ones included: a signal of n samples
gives ceil(n/2) low and floor(n/2) high coefficients, with whole-sample symmetric
extension at the borders (as in JPEG 2000). Filters are scaled to unit DC gain
sqrt(2) (low) and Nyquist gain sqrt(2) (high), the normalisation PyWavelets uses for
``haar``, ``bior2.2`` and ``bior4.4``, so the transforms are close to orthonormal.

Coefficients stay in place, in the Mallat layout of ``pywt.coeffs_to_array``: the
coarsest LL band in the top-left corner. ``subbands`` names each region.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages import kernels
from vaeflow.stages.base import Stage
from vaeflow.stages.spec import StageSpec

WAVELETS = ("haar", "cdf53", "cdf97")
MAX_LEVELS = 6

# Lifting steps (predict, update, predict, update) and the final scaling of each filter.
_CDF97_STEPS = (-1.586134342059924, -0.052980118572961, 0.882911075530934, 0.443506852043971)
_CDF97_K = 1.230174104914001
_LIFTING = {
    "cdf53": ((-0.5, 0.25), np.sqrt(2.0), 1.0 / np.sqrt(2.0)),
    "cdf97": (_CDF97_STEPS, np.sqrt(2.0) / _CDF97_K, _CDF97_K / np.sqrt(2.0)),
}


@dataclass(frozen=True)
class Wavelet(Stage):
    stage_name: ClassVar[str] = "wavelet"
    input_kind: ClassVar[str] = "latent"
    output_kind: ClassVar[str] = "coefficients"

    name: str = "cdf97"
    levels: int = 3

    @classmethod
    def absent(cls) -> Wavelet:
        return Wavelet("haar", 0)  # a pass-through

    def __post_init__(self) -> None:
        if self.name not in WAVELETS:
            raise PipelineError(f"unknown wavelet {self.name!r}; choose one of {WAVELETS}")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or not 0 <= self.levels <= MAX_LEVELS:
            raise PipelineError(f"wavelet levels must be an integer in 0..{MAX_LEVELS}, got {self.levels!r}")

    def forward(self, latents: np.ndarray, spec: StageSpec | None = None) -> np.ndarray:
        """(N, C, h, w) float -> coefficients of the same shape (float32), Mallat layout."""
        return analysis(latents, self.name, self.levels)

    def inverse(self, coeffs: np.ndarray, spec: StageSpec | None = None) -> np.ndarray:
        return synthesis(coeffs, self.name, self.levels)

    def bands(self, shape: tuple[int, ...]) -> tuple[Subband, ...]:
        """The subbands of coefficients of ``shape`` (..., h, w)."""
        return subbands(shape[-2], shape[-1], self.levels)

    def all_bands(self) -> tuple[Subband, ...]:
        """Every subband these levels make on a large plane, coarsest first (an allocation table's columns)."""
        return all_subbands(self.levels)

    def synthesis_gains(self) -> dict[str, float]:
        return synthesis_gains(self.name, self.levels)


@dataclass(frozen=True)
class Subband:
    """One region of the coefficient plane: ``name`` like LL3, HL2 (high along x), LH1, HH1."""

    name: str
    level: int
    rows: slice
    cols: slice

    @property
    def size(self) -> int:
        return (self.rows.stop - self.rows.start) * (self.cols.stop - self.cols.start)


def _predict(even: np.ndarray, odd: np.ndarray, coef: float) -> None:
    """odd[i] += coef * (even[i] + even[i+1]), mirroring even at the right border."""
    n = odd.shape[-1]
    right = even[..., 1 : n + 1] if even.shape[-1] > n else np.concatenate([even[..., 1:], even[..., -1:]], -1)
    odd += coef * (even[..., :n] + right)


def _update(even: np.ndarray, odd: np.ndarray, coef: float) -> None:
    """even[i] += coef * (odd[i-1] + odd[i]), mirroring odd at both borders."""
    n = even.shape[-1]
    left = np.concatenate([odd[..., :1], odd[..., : n - 1]], -1)
    right = odd[..., :n] if odd.shape[-1] >= n else np.concatenate([odd, odd[..., -1:]], -1)
    even += coef * (left + right)


def _analyze(x: np.ndarray, name: str) -> np.ndarray:
    """One level along the last axis: returns [low | high] in place of x (float64)."""
    if x.shape[-1] < 2:
        return x
    even, odd = x[..., 0::2].copy(), x[..., 1::2].copy()
    if name == "haar":
        n = odd.shape[-1]
        odd -= even[..., :n]
        even[..., :n] += 0.5 * odd
        even[..., :n] *= np.sqrt(2.0)
        odd /= np.sqrt(2.0)
    else:
        steps, low_gain, high_gain = _LIFTING[name]
        for i, coef in enumerate(steps):
            (_predict if i % 2 == 0 else _update)(even, odd, coef)
        even *= low_gain
        odd *= high_gain
    return np.concatenate([even, odd], -1)


def _synthesize(y: np.ndarray, name: str) -> np.ndarray:
    n = y.shape[-1]
    if n < 2:
        return y
    half = (n + 1) // 2
    even, odd = y[..., :half].copy(), y[..., half:].copy()
    if name == "haar":
        m = odd.shape[-1]
        even[..., :m] /= np.sqrt(2.0)
        odd *= np.sqrt(2.0)
        even[..., :m] -= 0.5 * odd
        odd += even[..., :m]
    else:
        steps, low_gain, high_gain = _LIFTING[name]
        even /= low_gain
        odd /= high_gain
        for i in reversed(range(len(steps))):
            (_predict if i % 2 == 0 else _update)(even, odd, -steps[i])
    out = np.empty_like(y)
    out[..., 0::2] = even
    out[..., 1::2] = odd
    return out


def _level_shapes(h: int, w: int, levels: int) -> list[tuple[int, int]]:
    """Shape of the LL region before each level: [(h, w), (ceil(h/2), ceil(w/2)), ...]."""
    shapes = [(h, w)]
    for _ in range(levels - 1):
        ph, pw = shapes[-1]
        shapes.append(((ph + 1) // 2, (pw + 1) // 2))
    return shapes


def analysis(latents: np.ndarray, name: str, levels: int) -> np.ndarray:
    if latents.ndim != 4:
        raise ValueError(f"expected (N, C, h, w) latents, got shape {latents.shape}")
    out = latents.astype(np.float64, copy=True)
    for lh, lw in _level_shapes(latents.shape[2], latents.shape[3], levels) if levels else []:
        region = out[..., :lh, :lw]
        region = _analyze(region, name)
        region = np.swapaxes(_analyze(np.swapaxes(region, -1, -2), name), -1, -2)
        out[..., :lh, :lw] = region
    return out.astype(np.float32)


def synthesis(coeffs: np.ndarray, name: str, levels: int) -> np.ndarray:
    """``synthesis_reference``, compiled (``kernels.synthesis``): the same values, no Python per row."""
    if coeffs.ndim != 4:
        raise ValueError(f"expected (N, C, h, w) coefficients, got shape {coeffs.shape}")
    if not levels:
        return coeffs.astype(np.float32)
    shapes = np.array(_level_shapes(coeffs.shape[2], coeffs.shape[3], levels), np.int64)
    lifting, low_gain, high_gain = _LIFTING.get(name, ((), 1.0, 1.0))
    return kernels.synthesis(  # type: ignore[no-any-return]
        np.ascontiguousarray(coeffs, np.float64), shapes, name == "haar", np.array(lifting, np.float64),
        float(low_gain), float(high_gain), float(np.sqrt(2.0)),
    )  # fmt: skip


def synthesis_reference(coeffs: np.ndarray, name: str, levels: int) -> np.ndarray:
    if coeffs.ndim != 4:
        raise ValueError(f"expected (N, C, h, w) coefficients, got shape {coeffs.shape}")
    out = coeffs.astype(np.float64, copy=True)
    shapes = _level_shapes(coeffs.shape[2], coeffs.shape[3], levels) if levels else []
    for lh, lw in reversed(shapes):
        region = out[..., :lh, :lw]
        region = np.swapaxes(_synthesize(np.swapaxes(region, -1, -2), name), -1, -2)
        out[..., :lh, :lw] = _synthesize(region, name)
    return out.astype(np.float32)


@lru_cache(maxsize=256)
def subbands(h: int, w: int, levels: int) -> tuple[Subband, ...]:
    """The non-empty subbands of an h x w plane, coarsest first (LLn, HLn, LHn, HHn, ..., HH1)."""
    if levels == 0:
        return (Subband("LL0", 0, slice(0, h), slice(0, w)),)
    shapes = _level_shapes(h, w, levels)
    bands = []
    lh, lw = (shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2
    bands.append(Subband(f"LL{levels}", levels, slice(0, lh), slice(0, lw)))
    for level in range(levels, 0, -1):
        ph, pw = shapes[level - 1]
        low_h, low_w = (ph + 1) // 2, (pw + 1) // 2
        for name, rows, cols in (
            ("HL", slice(0, low_h), slice(low_w, pw)),
            ("LH", slice(low_h, ph), slice(0, low_w)),
            ("HH", slice(low_h, ph), slice(low_w, pw)),
        ):
            band = Subband(f"{name}{level}", level, rows, cols)
            if band.size:
                bands.append(band)
    return tuple(bands)


def all_subbands(levels: int) -> tuple[Subband, ...]:
    """Every subband that ``levels`` levels make (as on a large plane), coarsest first."""
    size = 4 << levels
    return subbands(size, size, levels)


@lru_cache(maxsize=64)
def synthesis_gains(name: str, levels: int) -> dict[str, float]:
    """Energy of each subband's synthesis basis function, by band name, away from borders.

    Quantization noise of variance s^2 in band b adds about ``gain[b] * s^2`` to the
    latent's squared error per coefficient, so steps scaled by ``1/sqrt(gain)`` spread
    the error evenly.
    """
    size = 16 << levels
    gains: dict[str, float] = {}
    for band in subbands(size, size, levels):
        coeffs = np.zeros((1, 1, size, size), np.float64)
        r = (band.rows.start + band.rows.stop) // 2
        c = (band.cols.start + band.cols.stop) // 2
        coeffs[0, 0, r, c] = 1.0
        basis = synthesis(coeffs, name, levels).astype(np.float64)
        gains[band.name] = float((basis**2).sum())
    return gains
