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
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from vaeflow.errors import PipelineError
from vaeflow.stages.base import Stage
from vaeflow.stages.wavelet import Subband

MIN_QUALITY, MAX_QUALITY, DEFAULT_QUALITY = 1, 100, 50
MAX_SYMBOL = 2**30
ALLOCATIONS = ("uniform", "decoder")
SETTINGS = ("quality", "step", "target_bpp", "target_psnr", "max_latent_error")
TABLE_UNITS_PER_OCTAVE = 4


@dataclass(frozen=True)
class Quantize(Stage):
    stage_name: ClassVar[str] = "quantize"
    input_kind: ClassVar[str] = "coefficients"
    output_kind: ClassVar[str] = "symbols"

    quality: int | None = None  # 50 when no other setting is given
    step: float | None = None
    rounding: float = 0.375
    allocation: str = "uniform"  # or "decoder": steps from the model's calibrated band gains
    rdo: bool = False  # encoder-side: trade magnitudes and whole bands for rate (D + lambda R)
    target_bpp: float | None = None  # rate control: search the step per image for this rate,
    target_psnr: float | None = None  # or for this PSNR,
    max_latent_error: float | None = None  # or for the largest step keeping |latent error| below this,
    max_psnr_drop: float | None = None  # and, with it, the decoded PSNR within this of the exact latent's

    def __post_init__(self) -> None:
        for key in (*SETTINGS[1:], "rounding", "max_psnr_drop"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise PipelineError(f"{key} must be a number, got {value!r}")
        given = [k for k in SETTINGS if getattr(self, k) is not None]
        if not given:
            object.__setattr__(self, "quality", DEFAULT_QUALITY)
            given = ["quality"]
        if len(given) != 1:
            raise PipelineError(f"give exactly one of {', '.join(SETTINGS)}; got {', '.join(given) or 'none'}")
        target = self.target
        if target is not None and not (math.isfinite(target[1]) and target[1] > 0):
            raise PipelineError(f"{target[0]} target must be a positive number, got {target[1]!r}")
        if self.quality is not None and (
            not isinstance(self.quality, int) or not MIN_QUALITY <= self.quality <= MAX_QUALITY
        ):
            raise PipelineError(f"quality must be an integer in {MIN_QUALITY}..{MAX_QUALITY}, got {self.quality!r}")
        if self.step is not None and not (math.isfinite(self.step) and 1e-6 <= self.step <= 1e6):
            raise PipelineError(f"step must be a finite number in 1e-6..1e6, got {self.step!r}")
        if not 0.0 < self.rounding <= 0.5:
            raise PipelineError(f"rounding must lie in (0, 0.5], got {self.rounding!r}")
        if self.max_psnr_drop is not None:
            if self.max_latent_error is None:
                raise PipelineError("max_psnr_drop works beside max_latent_error; give both")
            if not (math.isfinite(self.max_psnr_drop) and self.max_psnr_drop > 0):
                raise PipelineError(f"max_psnr_drop must be a positive number of dB, got {self.max_psnr_drop!r}")
        if self.allocation not in ALLOCATIONS:
            raise PipelineError(f"unknown allocation {self.allocation!r}; choose one of {ALLOCATIONS}")

    @property
    def target(self) -> tuple[str, float] | None:
        """(kind, value) of rate control, or None for a fixed quality or step."""
        for kind, key in (("bpp", "target_bpp"), ("psnr", "target_psnr"), ("latent", "max_latent_error")):
            value = getattr(self, key)
            if value is not None:
                return kind, float(value)
        return None

    @property
    def base_step(self) -> float:
        if self.step is not None:
            return float(self.step)
        if self.quality is None:
            raise PipelineError("a rate-controlled quantizer has no fixed step until it has searched one")
        return quality_to_step(self.quality)

    def with_step(self, step: float) -> Quantize:
        """The same quantizer at an explicit step (what a rate-controlled stream records)."""
        return replace(
            self, quality=None, step=step, target_bpp=None, target_psnr=None, max_latent_error=None, max_psnr_drop=None
        )

    def with_quality(self, quality: int) -> Quantize:
        """The same quantizer at a fixed quality, without rate control."""
        return replace(self.with_step(1.0), quality=quality, step=None)

    @property
    def searches_with_image(self) -> bool:
        """Whether rate control decodes trials and compares them with the original image."""
        return self.target_psnr is not None or self.max_psnr_drop is not None


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


def level_fraction(band: Subband, levels: int) -> float:
    """The share of all coefficients that a band holds, for a large image."""
    return 4.0**-levels if band.level == levels and band.name.startswith("LL") else 4.0**-band.level


def allocation_table(gains: np.ndarray, bands: tuple[Subband, ...], levels: int) -> np.ndarray:
    """Calibrated gains (C, n_bands) -> int8 log2 weights in 1/4 octaves, geometric mean 1.

    The mean is weighted by each band's share of coefficients, so that decoder-aware steps
    keep the average log step of the quality mapping.
    """
    fractions = np.array([level_fraction(b, levels) for b in bands])
    log_gains = np.log2(np.maximum(np.asarray(gains, np.float64), 1e-30))
    centre = (log_gains * fractions[None, :]).sum() / (fractions.sum() * log_gains.shape[0])
    return np.clip(np.rint(TABLE_UNITS_PER_OCTAVE * (log_gains - centre)), -127, 127).astype(np.int8)


def table_weights(table: np.ndarray) -> np.ndarray:
    return np.exp2(np.asarray(table, np.float64) / TABLE_UNITS_PER_OCTAVE)


def pack_table(table: np.ndarray) -> bytes:
    """An allocation table for the payload: each channel's row as differences along the bands
    (first value as is), entropy-coded as one band; a varint gives the coded length."""
    from vaeflow.binary import ByteWriter
    from vaeflow.stages import entropy
    from vaeflow.stages.wavelet import subbands

    t = np.asarray(table, np.int32)
    deltas = np.concatenate([t[:, :1], np.diff(t, axis=1)], axis=1).reshape(1, 1, -1).astype(np.int32)
    coded = entropy.encode(deltas, subbands(1, deltas.shape[2], 0), entropy.ANS("laplace"))
    out = ByteWriter()
    out.varint(len(coded))
    out.raw(coded)
    return out.getvalue()


def unpack_table(payload: bytes | memoryview, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """(table, bytes used) from the start of a payload; damage raises CorruptStreamError."""
    from vaeflow.binary import ByteReader
    from vaeflow.errors import CorruptStreamError
    from vaeflow.stages import entropy
    from vaeflow.stages.wavelet import subbands

    reader = ByteReader(payload, "allocation table")
    coded = reader.take(reader.varint(len(payload)))
    n = shape[0] * shape[1]
    deltas = entropy.decode(coded, (1, 1, n), subbands(1, n, 0), entropy.ANS("laplace")).reshape(shape)
    table = np.cumsum(deltas.astype(np.int64), axis=1)
    if np.abs(table).max(initial=0) > 127:
        raise CorruptStreamError("allocation table is out of range")
    return table, reader.pos


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


RDO_LAMBDA = math.log(2) / 6  # high-rate slope of D(R) per bit, in units of step**2
RDO_PASSES = 2


def _laplace_bits(magnitudes: np.ndarray, scale: float) -> np.ndarray:
    """Bits of each signed value of magnitude k under a discrete Laplace of ``scale``."""
    k = magnitudes.astype(np.float64)
    p0 = 1 - math.exp(-0.5 / scale)
    pk = 0.5 * (np.exp(-np.maximum(k - 0.5, 0) / scale) - np.exp(-(k + 0.5) / scale))
    return -np.log2(np.maximum(np.where(k == 0, p0, pk), 2.0**-30))


def optimize(
    coeffs: np.ndarray, symbols: np.ndarray, steps: np.ndarray, bands: tuple[Subband, ...], rounding: float
) -> np.ndarray:
    """Greedy rate-distortion pass over detail bands (encoder only; decoding is unchanged).

    Each nonzero magnitude k is lowered to k - 1 when the error it adds is worth less than
    the bits it saves, at lambda = ln(2)/6 step^2 per bit, under the band's own Laplace
    model and the decoder's reconstruction points. A band whose coding costs more than
    dropping it (all zeros) is dropped.
    """
    out = symbols.copy()
    for n in range(out.shape[0]):
        for c in range(out.shape[1]):
            for j, band in enumerate(bands):
                step = steps[c, j]
                if band.name.startswith("LL") or not np.isfinite(step):
                    continue
                x = np.abs(coeffs[n, c, band.rows, band.cols].astype(np.float64)) / step
                q = np.abs(out[n, c, band.rows, band.cols]).astype(np.int64)
                signs = np.sign(out[n, c, band.rows, band.cols])
                for _ in range(RDO_PASSES):
                    if not q.any():
                        break
                    scale = max(float(q.mean()), 0.02)
                    offset = centroid_offset(q.astype(np.float64))

                    def recon(k: np.ndarray, offset: float = offset) -> np.ndarray:
                        return np.where(k > 0, k - rounding + offset, 0.0)

                    lower = np.maximum(q - 1, 0)
                    added = (x - recon(lower)) ** 2 - (x - recon(q)) ** 2
                    saved = _laplace_bits(q, scale) - _laplace_bits(lower, scale)
                    q = np.where((q > 0) & (added < RDO_LAMBDA * saved), lower, q)
                if q.any():
                    scale = max(float(q.mean()), 0.02)
                    offset = centroid_offset(q.astype(np.float64))
                    kept = ((x - np.where(q > 0, q - rounding + offset, 0.0)) ** 2).sum()
                    kept += RDO_LAMBDA * _laplace_bits(q, scale).sum()
                    if (x**2).sum() <= kept:
                        q[:] = 0
                out[n, c, band.rows, band.cols] = (signs * q).astype(np.int32)
    return out
