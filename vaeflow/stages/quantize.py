"""Uniform deadzone quantizer with per-subband steps and decoder-estimated reconstruction.

Quality mapping (documented in the README): the base step, in units of the model's
normalised latent (unit variance), is

    step(quality) = 5 * 2 ** (-(quality - 1) / 10.5)        quality in 1..100

so quality 1 gives 5.0, quality 50 about 0.20 and quality 100 about 0.0074; every 10.5
quality points halve the step. Each subband's step is the base step divided by the
square root of the band's synthesis gain (and of its weight, when the pipeline gives
weights), so that every band adds about the same error per coefficient.

Quantization: ``q = sign(c) * floor(|c| / step + rounding)``; ``rounding`` < 0.5 widens
the zero bin (the deadzone). Reconstruction: for a Laplacian source the part of ``|c|``
beyond the zero bin is exponential, so ``|q| - 1`` is geometric. The decoder estimates
that geometric mean ``m`` from the decoded symbols of each band and places each value at
the centroid of an exponential inside its bin: ``|c| = step * (|q| - rounding + b - m)``
with ``b = 1 / ln(1 + 1/m)``. This needs no side information and beats the bin midpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from vaeflow.errors import PipelineError
from vaeflow.stages.base import Stage
from vaeflow.stages.wavelet import Subband

MIN_QUALITY, MAX_QUALITY = 1, 100
MAX_SYMBOL = 2**30


@dataclass(frozen=True)
class Quantize(Stage):
    stage_name: ClassVar[str] = "quantize"
    input_kind: ClassVar[str] = "coefficients"
    output_kind: ClassVar[str] = "symbols"

    quality: int | None = 50
    step: float | None = None
    rounding: float = 0.375

    def __post_init__(self) -> None:
        if (self.quality is None) == (self.step is None):
            raise PipelineError("give exactly one of quality (1..100) or step (> 0)")
        if self.quality is not None and (
            not isinstance(self.quality, int) or not MIN_QUALITY <= self.quality <= MAX_QUALITY
        ):
            raise PipelineError(f"quality must be an integer in {MIN_QUALITY}..{MAX_QUALITY}, got {self.quality!r}")
        if self.step is not None and not (math.isfinite(self.step) and 1e-6 <= self.step <= 1e6):
            raise PipelineError(f"step must be a finite number in 1e-6..1e6, got {self.step!r}")
        if not 0.0 < self.rounding <= 0.5:
            raise PipelineError(f"rounding must lie in (0, 0.5], got {self.rounding!r}")

    @property
    def base_step(self) -> float:
        if self.step is not None:
            return float(self.step)
        return quality_to_step(self.quality or MIN_QUALITY)


STEP_AT_QUALITY_1 = 5.0
QUALITY_PER_OCTAVE = 10.5


def quality_to_step(quality: float) -> float:
    return STEP_AT_QUALITY_1 * 2.0 ** (-(quality - 1) / QUALITY_PER_OCTAVE)


def step_to_quality(step: float) -> float:
    return 1.0 - QUALITY_PER_OCTAVE * math.log2(step / STEP_AT_QUALITY_1)


def band_steps(
    bands: tuple[Subband, ...], gains: dict[str, float], base_step: float, channel_weights: np.ndarray
) -> np.ndarray:
    """(C, n_bands) float64 steps: ``base_step / sqrt(gain[band] * weight[channel, band])``.

    ``channel_weights`` is (C, n_bands) or (C, 1); a weight of 0 drops the band (infinite step).
    """
    g = np.array([gains[b.name] for b in bands], np.float64)[None, :]
    w = np.broadcast_to(np.asarray(channel_weights, np.float64), (channel_weights.shape[0], len(bands)))
    with np.errstate(divide="ignore"):
        return base_step / np.sqrt(g * w)


def forward(coeffs: np.ndarray, steps: np.ndarray, bands: tuple[Subband, ...], rounding: float) -> np.ndarray:
    """(N, C, h, w) float coefficients -> int32 symbols of the same shape."""
    if coeffs.ndim != 4 or steps.shape != (coeffs.shape[1], len(bands)):
        raise ValueError(f"coefficients {coeffs.shape} and step table {steps.shape} do not match")
    if not np.isfinite(coeffs).all():
        raise ValueError("coefficients contain NaN or infinity")
    out = np.zeros(coeffs.shape, np.int32)
    for j, band in enumerate(bands):
        region = coeffs[:, :, band.rows, band.cols].astype(np.float64)
        step = steps[:, j][None, :, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = np.floor(np.abs(region) / step + band_rounding(band, rounding))
        mag = np.nan_to_num(mag, nan=0.0, posinf=0.0)
        mag = np.clip(mag, 0, MAX_SYMBOL)
        out[:, :, band.rows, band.cols] = (np.sign(region) * mag).astype(np.int32)
    return out


def band_rounding(band: Subband, rounding: float) -> float:
    """The LL band is not centred on zero, so it is rounded plainly (no deadzone)."""
    return 0.5 if band.name.startswith("LL") else rounding


def centroid_offset(magnitudes: np.ndarray) -> float:
    """Offset in steps from the bin start ``|q| - rounding`` to the reconstruction point."""
    nonzero = magnitudes[magnitudes > 0]
    if nonzero.size == 0:
        return 0.5
    m = float(nonzero.mean()) - 1.0
    if m > 50.0:
        return 0.5
    if m < 1e-4:
        m = 1e-4
    b = 1.0 / math.log1p(1.0 / m)
    return b - m


def inverse(symbols: np.ndarray, steps: np.ndarray, bands: tuple[Subband, ...], rounding: float) -> np.ndarray:
    """int symbols -> float32 coefficients, each band placed at its estimated centroids."""
    out = np.zeros(symbols.shape, np.float32)
    for n in range(symbols.shape[0]):
        for c in range(symbols.shape[1]):
            for j, band in enumerate(bands):
                step = steps[c, j]
                if not np.isfinite(step):
                    continue
                q = symbols[n, c, band.rows, band.cols]
                mag = np.abs(q).astype(np.float64)
                band_round = band_rounding(band, rounding)
                offset = 0.5 if band_round == 0.5 else centroid_offset(mag)
                value = np.where(mag > 0, (mag - band_round + offset) * step, 0.0)
                out[n, c, band.rows, band.cols] = np.sign(q) * value
    return out
