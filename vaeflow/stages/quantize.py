"""Uniform deadzone quantizer with per-subband steps and decoder-estimated reconstruction.

Quality mapping (documented in the README): the global scale, which a stream's header
records, gives the base step in units of the model's normalised latent (unit variance) as

    step(quality) = 5 * 2 ** (-(quality - 1) / 10.5)        quality in 1..100

so quality 1 gives 5.0, quality 50 about 0.20 and quality 100 about 0.0074; every 10.5
quality points halve the step. A calibrated model has its own scale (``scaled_step``):
quality 100 is the coarsest step that decodes within 0.05 dB of the model's ceiling, and
the qualities below spread the PSNR evenly down to the step of quality 1; streams coded on
it record the step. Each subband's step is the base step divided by the
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
from functools import lru_cache
from typing import ClassVar

import numpy as np

from vaeflow.foundations.binary import ByteReader, ByteWriter
from vaeflow.foundations.errors import CorruptStreamError, PipelineError
from vaeflow.stages import kernels
from vaeflow.stages.base import Stage
from vaeflow.stages.coders import laplace, rans
from vaeflow.stages.spec import StageSpec
from vaeflow.stages.wavelet import Subband, Wavelet, subbands

MIN_QUALITY, MAX_QUALITY, DEFAULT_QUALITY = 1, 100, 50
MAX_SYMBOL = 2**30
ALLOCATIONS = ("uniform", "decoder")
TABLE_UNITS_PER_OCTAVE = 4
AllocationTable = tuple[tuple[int, ...], ...]  # (C, every band of the wavelet) int8 log2 weights


@dataclass(frozen=True)
class Quantize(Stage):
    """What a stream records of its quantizer: the step (by quality or explicit), the deadzone
    rounding, how steps are allocated across channels and subbands, and whether the encoder
    ran its rate-distortion pass."""

    stage_name: ClassVar[str] = "quantize"
    input_kind: ClassVar[str] = "coefficients"
    output_kind: ClassVar[str] = "symbols"

    quality: int | None = None  # 50 when no step is given
    step: float | None = None
    rounding: float = 0.375
    allocation: str = "uniform"  # or "decoder": steps from the model's calibrated band gains
    rdo: bool = False  # encoder-side: trade magnitudes and whole bands for rate (D + lambda R)

    def __post_init__(self) -> None:
        for key in ("step", "rounding"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise PipelineError(f"{key} must be a number, got {value!r}")
        if self.quality is None and self.step is None:
            object.__setattr__(self, "quality", DEFAULT_QUALITY)
        if self.quality is not None and self.step is not None:
            raise PipelineError(f"give quality or step, not both; got quality {self.quality} and step {self.step}")
        if self.quality is not None and (
            isinstance(self.quality, bool)
            or not isinstance(self.quality, int)
            or not MIN_QUALITY <= self.quality <= MAX_QUALITY
        ):
            raise PipelineError(f"quality must be an integer in {MIN_QUALITY}..{MAX_QUALITY}, got {self.quality!r}")
        if self.step is not None and not (math.isfinite(self.step) and 1e-6 <= self.step <= 1e6):
            raise PipelineError(f"step must be a finite number in 1e-6..1e6, got {self.step!r}")
        if not 0.0 < self.rounding <= 0.5:
            raise PipelineError(f"rounding must lie in (0, 0.5], got {self.rounding!r}")
        if self.allocation not in ALLOCATIONS:
            raise PipelineError(f"unknown allocation {self.allocation!r}; choose one of {ALLOCATIONS}")
        if not isinstance(self.rdo, bool):
            raise PipelineError(f"rdo must be true or false, got {self.rdo!r}")

    @property
    def base_step(self) -> float:
        return float(self.step) if self.step is not None else quality_to_step(self.quality)  # type: ignore[arg-type]

    def with_step(self, step: float) -> Quantize:
        """The same quantizer at an explicit step (what a rate-controlled stream records)."""
        return replace(self, quality=None, step=step)

    def with_quality(self, quality: int) -> Quantize:
        return replace(self, quality=quality, step=None)

    def steps(
        self, bands: tuple[Subband, ...], channels: int, wavelet: Wavelet, table: AllocationTable | None
    ) -> np.ndarray:
        """(C, n_bands) steps: by the wavelet's synthesis gains, or by the decoder allocation ``table``."""
        if self.allocation == "decoder":
            if table is None:
                raise PipelineError("decoder allocation needs the model's allocation table")
            names = [b.name for b in wavelet.all_bands()]
            weights = table_weights(np.asarray(table)[:, [names.index(b.name) for b in bands]])
            ones = {b.name: 1.0 for b in bands}  # calibrated gains already include the wavelet's
            return band_steps(bands, ones, self.base_step, weights)
        gains = wavelet.synthesis_gains() if wavelet.levels else {bands[0].name: 1.0}
        return band_steps(bands, gains, self.base_step, np.ones((channels, 1)))

    def forward(self, coeffs: np.ndarray, spec: StageSpec) -> np.ndarray:
        """(N, C, h, w) coefficients -> int32 symbols at ``spec.steps`` (with the RDO pass when ``rdo``)."""
        steps, bands = spec.quantizer_steps, spec.bands
        symbols = quantize(coeffs, steps, bands, self.rounding)
        return optimize(coeffs, symbols, steps, bands, self.rounding) if self.rdo else symbols

    def inverse(self, symbols: np.ndarray, spec: StageSpec) -> np.ndarray:
        """int32 symbols -> float32 coefficients at ``spec.steps``, (C, n_bands) or each image its own."""
        return dequantize(symbols, spec.quantizer_steps, spec.bands, self.rounding)


STEP_AT_QUALITY_1 = 5.0
QUALITY_PER_OCTAVE = 10.5


def quality_to_step(quality: float) -> float:
    return STEP_AT_QUALITY_1 * 2.0 ** (-(quality - 1) / QUALITY_PER_OCTAVE)


def step_to_quality(step: float) -> float:
    return 1.0 - QUALITY_PER_OCTAVE * math.log2(step / STEP_AT_QUALITY_1)


SCALE_QUALITIES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)  # where a model's quality scale is measured


def scaled_step(quality: float, anchors: tuple[float, ...]) -> float:
    """The base step of ``quality`` on a model's own scale: ``anchors`` are the steps at
    ``SCALE_QUALITIES``, and the log step is interpolated linearly between them. The step is
    rounded to float32, exactly what a stream header records."""
    log_steps = np.log(np.asarray(anchors, np.float64))
    return float(np.float32(np.exp(np.interp(quality, SCALE_QUALITIES, log_steps))))


def scale_quality(step: float, anchors: tuple[float, ...]) -> int | None:
    """The integer quality on a model's scale whose step is ``step`` (as a header's float32 keeps it), or None."""
    for quality in range(MIN_QUALITY, MAX_QUALITY + 1):
        if abs(scaled_step(quality, anchors) - step) <= 1e-6 * step:
            return quality
    return None


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
    (first value as is), coded by the zeroth-order coder as one band; a varint gives its length."""
    t = np.asarray(table, np.int32)
    deltas = np.concatenate([t[:, :1], np.diff(t, axis=1)], axis=1).reshape(1, 1, -1).astype(np.int32)
    coded = laplace.encode(deltas, subbands(1, deltas.shape[2], 0))
    out = ByteWriter()
    out.varint(len(coded))
    out.raw(coded)
    return out.getvalue()


def unpack_table(payload: bytes | memoryview, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """(table, bytes used) from the start of a payload; damage raises CorruptStreamError."""
    reader = ByteReader(payload, "allocation table")
    coded = bytes(reader.take(reader.varint(len(payload))))
    return _decoded_table(coded, shape), reader.pos


@lru_cache(maxsize=64)
def _decoded_table(coded: bytes, shape: tuple[int, int]) -> np.ndarray:
    """A coded allocation table, decoded once per process (a model's streams share theirs); read-only."""
    n = shape[0] * shape[1]
    deltas = laplace.decode(coded, (1, 1, n), subbands(1, n, 0)).reshape(shape)
    table = np.cumsum(deltas.astype(np.int64), axis=1)
    if np.abs(table).max(initial=0) > 127:
        raise CorruptStreamError("allocation table is out of range")
    table.setflags(write=False)
    return table


def quantize(coeffs: np.ndarray, steps: np.ndarray, bands: tuple[Subband, ...], rounding: float) -> np.ndarray:
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
    return _centroid_offset(float(nonzero.sum()), int(nonzero.size))


def _centroid_offset(total: float, count: int) -> float:
    """``centroid_offset`` from the sum and count of a band's nonzero magnitudes (``kernels.centroid_offset``,
    the one the compiled dequantization uses)."""
    return float(kernels.centroid_offset(total, count))


def dequantize(symbols: np.ndarray, steps: np.ndarray, bands: tuple[Subband, ...], rounding: float) -> np.ndarray:
    """``dequantize_reference``, compiled (``kernels.dequantize``): the same values, no Python per band."""
    if symbols.ndim != 4:
        raise ValueError(f"expected symbols of shape (N, C, h, w), got {symbols.shape}")
    n, c = symbols.shape[:2]
    steps = np.ascontiguousarray(np.broadcast_to(np.asarray(steps, np.float64), (n, c, len(bands))))
    rects = np.array([(b.rows.start, b.rows.stop, b.cols.start, b.cols.stop) for b in bands], np.int64)
    roundings = np.array([band_rounding(b, rounding) for b in bands], np.float64)
    return kernels.dequantize(np.ascontiguousarray(symbols, np.int32), steps, rects, roundings)  # type: ignore[no-any-return]


def dequantize_reference(
    symbols: np.ndarray, steps: np.ndarray, bands: tuple[Subband, ...], rounding: float
) -> np.ndarray:
    """int symbols (N, C, h, w) -> float32 coefficients, each band of each image and channel placed at
    its estimated centroids (``centroid_offset``), band by band over the whole batch. ``steps`` is
    (C, n_bands) for every image, or (N, C, n_bands), each image its own.
    A band's mean nonzero magnitude is its exact sum (integers below 2**53 add exactly in any order)
    over its count, which is what ``np.mean`` gives, and every value is ``(|q| - rounding + offset) * step``
    in float64 as before, so streams of format 1 decode as they always did."""
    n, c = symbols.shape[:2]
    steps = np.broadcast_to(np.asarray(steps, np.float64), (n, c, len(bands)))
    out = np.zeros(symbols.shape, np.float32)
    for j, band in enumerate(bands):
        where = (slice(None), slice(None), band.rows, band.cols)
        q = symbols[where]
        mag = np.abs(q).astype(np.float64)
        finite = np.isfinite(steps[:, :, j])  # (N, C)
        band_round = band_rounding(band, rounding)
        if band_round == 0.5:
            offset = np.full((n, c), 0.5)
        else:
            totals = mag.sum(axis=(2, 3)).tolist()
            counts = np.count_nonzero(q, axis=(2, 3)).tolist()
            offset = np.array(
                [
                    [_centroid_offset(t, k) for t, k in zip(tr, kr, strict=True)]
                    for tr, kr in zip(totals, counts, strict=True)
                ]
            ).reshape(n, c)
        step = np.where(finite, steps[:, :, j], 0.0)[:, :, None, None]
        value = np.where(mag > 0, (mag - band_round + offset[:, :, None, None]) * step, 0.0)
        region = np.sign(q) * value
        if not finite.all():
            region[~np.broadcast_to(finite[:, :, None, None], region.shape)] = 0.0
        out[where] = region
    return out


RDO_LAMBDA = math.log(2) / 6  # high-rate slope of D(R) per bit, in units of step**2
RDO_PASSES = 2


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
                    saved = rans.laplace_bits(q, scale) - rans.laplace_bits(lower, scale)
                    q = np.where((q > 0) & (added < RDO_LAMBDA * saved), lower, q)
                if q.any():
                    scale = max(float(q.mean()), 0.02)
                    offset = centroid_offset(q.astype(np.float64))
                    kept = ((x - np.where(q > 0, q - rounding + offset, 0.0)) ** 2).sum()
                    kept += RDO_LAMBDA * rans.laplace_bits(q, scale).sum()
                    if (x**2).sum() <= kept:
                        q[:] = 0
                out[n, c, band.rows, band.cols] = (signs * q).astype(np.int32)
    return out
