"""Decoder-aware calibration: how much each latent channel and subband matters to the image.

For each channel (after the channel transform) and each wavelet subband, uniform noise is
added to that band alone and the latent decoded; the gain is the added pixel-domain
squared error (0..255 scale, summed over the image) per unit of noise energy in the band:

    gain[c, b] = sum((decoded_noisy - decoded)^2) / (noise variance * coefficients in b)

At high rate, quantization noise of step s in band b costs about gain * s^2 / 12 per
coefficient, so steps proportional to 1 / sqrt(gain) balance distortion per bit (reverse
water-filling). Gains are averaged over crops of the calibration photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from vaeflow import metrics
from vaeflow.codec.codec import Codec
from vaeflow.codec.presets import load_pipeline
from vaeflow.errors import ModelError
from vaeflow.imageio import list_images, read_rgb
from vaeflow.models import RuntimeOptions, load_model
from vaeflow.models.registry import REGISTRY_FILE, Registry, register
from vaeflow.progressbar import progress_bar
from vaeflow.stages import ChannelTransform, Wavelet
from vaeflow.stages import quantize as quantizer

NOISE_AMPLITUDE = 0.1  # uniform noise in [-a, a] on normalised coefficients (about half a mid-quality step)
CROP = 192
DECODE_BATCH = 16


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top : top + size, left : left + size]


def band_gains(
    codec: Codec, images: Sequence[np.ndarray], runtime: RuntimeOptions | None = None, seed: int = 0
) -> np.ndarray:
    """(C, n_bands) decoder gains for the codec's model, channel transform and wavelet."""
    model = load_model(codec.model, runtime)
    rng = np.random.default_rng(seed)
    totals: np.ndarray | None = None
    for image in progress_bar(iterable=images, total=len(images), desc="calibrate", unit="photo"):
        crop = center_crop(image, CROP)
        coeffs = codec.transform(model.encode(crop[None]))[0]
        bands = codec.bands(coeffs.shape)
        size = crop.shape[:2]

        def decode(batch: np.ndarray, size: tuple[int, int] = size) -> np.ndarray:
            latents = codec.untransform(batch)
            return model.decode_float(latents, size).astype(np.float64)

        reference = decode(coeffs[None])[0]
        jobs = [(c, j) for c in range(coeffs.shape[0]) for j in range(len(bands))]
        gains = np.zeros((coeffs.shape[0], len(bands)))
        for start in range(0, len(jobs), DECODE_BATCH):
            chunk = jobs[start : start + DECODE_BATCH]
            noisy = np.repeat(coeffs[None], len(chunk), axis=0)
            for k, (c, j) in enumerate(chunk):
                band = bands[j]
                noise = rng.uniform(-NOISE_AMPLITUDE, NOISE_AMPLITUDE, noisy[k, c, band.rows, band.cols].shape)
                noisy[k, c, band.rows, band.cols] += noise
            decoded = decode(noisy)
            for k, (c, j) in enumerate(chunk):
                error = ((decoded[k] - reference) ** 2).sum()
                gains[c, j] = error / (bands[j].size * NOISE_AMPLITUDE**2 / 3)
        totals = gains if totals is None else totals + gains
    if totals is None:
        raise ValueError("calibration needs at least one image")
    return totals / len(images)


SCALE_CROP = 256
CEILING_MARGIN_DB = 0.05  # quality 100: the coarsest step whose decode is this close to the model's ceiling
MIN_SCALE_SPAN_DB = 1.0  # a model whose PSNR spans less over the steps keeps the global scale
SCALE_GRID = np.geomspace(quantizer.STEP_AT_QUALITY_1, 1e-3, 49)  # steps measured, coarse to fine


def measure_quality_scale(
    codec: Codec, images: Sequence[np.ndarray], runtime: RuntimeOptions | None = None
) -> tuple[tuple[float, ...], tuple[float, ...], float] | None:
    """A model's own quality scale for this codec: steps and mean PSNRs at ``SCALE_QUALITIES``, and
    the ceiling (the PSNR of the unquantized latent); None for a model whose PSNR spans less than
    ``MIN_SCALE_SPAN_DB`` from the coarsest step to the ceiling.

    Crops are ``SCALE_CROP`` pixels square, or the smallest photo's side. Quality 100 is the
    coarsest step whose decode is within ``CEILING_MARGIN_DB`` of the ceiling;
    quality 1 is the global scale's coarsest step; the qualities between spread the PSNR evenly.
    """
    model = load_model(codec.model, runtime)
    if not images:
        raise ValueError("a quality scale needs at least one photo")
    side = min(SCALE_CROP, *(min(image.shape[:2]) for image in images))
    side -= side % 16
    if side < 32:
        raise ValueError(f"a quality scale needs photos of at least 32 x 32 pixels; the smallest has a side of {side}")
    crops = np.stack([center_crop(image, side) for image in images])
    coeffs = codec.transform(model.encode(crops))
    size = crops.shape[1:3]

    def mean_psnr(c: np.ndarray) -> float:
        decoded = model.decode_float(codec.untransform(c), size)
        return float(np.mean([metrics.psnr(crop, out) for crop, out in zip(crops, decoded, strict=True)]))

    ceiling = mean_psnr(coeffs)
    bands = codec.bands(coeffs.shape)
    measured: list[float] = []
    for step in progress_bar(iterable=SCALE_GRID, total=len(SCALE_GRID), desc="quality scale", unit="step"):
        at = codec.with_step(float(step))
        symbols = at.quantize.forward(coeffs, at.steps(coeffs.shape), bands)
        measured.append(mean_psnr(at.dequantize(symbols)))
        if measured[-1] >= ceiling - CEILING_MARGIN_DB / 4:
            break
    psnr = np.maximum.accumulate(np.asarray(measured))  # finer steps never lose PSNR
    log_steps = np.log(SCALE_GRID[: len(psnr)])
    top = min(float(psnr.max()), ceiling - CEILING_MARGIN_DB)
    if top - psnr[0] < MIN_SCALE_SPAN_DB:
        return None  # the decode barely depends on the step: the global scale serves as well
    targets = np.linspace(float(psnr[0]), top, len(quantizer.SCALE_QUALITIES))
    rising = np.concatenate([[True], np.diff(psnr) > 1e-9])  # interpolation needs increasing PSNRs
    steps = np.exp(np.interp(targets, psnr[rising], log_steps[rising]))
    steps[0] = SCALE_GRID[0]
    rounded: list[float] = []
    for value in steps:  # five significant digits, strictly decreasing
        value = float(f"{value:.5g}")
        rounded.append(value if not rounded or value < rounded[-1] else float(f"{rounded[-1] * 0.999:.5g}"))
    return tuple(rounded), tuple(round(float(v), 3) for v in targets), ceiling


def calibrate_model(
    name: str,
    data_dir: Path,
    transform: str = "hadamard",
    wavelet_name: str = "cdf97",
    levels: int = 3,
    limit: int = 8,
) -> tuple[Path, np.ndarray]:
    """Measure a model's band gains on photos, then its quality scale with those gains (the default
    preset's quantizer at this channel transform and wavelet), and store both with the model."""
    plain = Codec.resolve(load_pipeline("plain"), name)
    codec = replace(plain, channel=ChannelTransform(transform), wavelet=Wavelet(wavelet_name, levels))
    codec.channel.check(codec.model.latent_channels)
    photos = [read_rgb(p) for p in list_images(data_dir, limit)]
    gains = band_gains(codec, photos)
    entry = Registry.load().resolve(name)
    source = entry.source
    if source is None:
        raise ModelError(f"model {name!r} has no registry file to write to")
    rounded = tuple(tuple(float(f"{g:.4g}") for g in row) for row in gains)
    key = codec.calibration_key
    entry = replace(entry, calibration={**entry.calibration, key: rounded}, quality_scale=dict(entry.quality_scale))
    entry.quality_scale.pop(key, None)  # a scale measured with the earlier gains no longer holds
    register(entry, source / REGISTRY_FILE)
    return calibrate_quality_scale(name, photos, codec.channel, codec.wavelet), gains


def calibrate_quality_scale(
    name: str, photos: Sequence[np.ndarray], channel: ChannelTransform, wavelet: Wavelet
) -> Path:
    """Measure a calibrated model's quality scale (the default preset at this channel transform and
    wavelet) and store it with the model."""
    default = Codec.resolve(load_pipeline("default"), name).replaced(channel, wavelet)
    if default.allocation_table is None:
        raise ModelError(f"model {name!r} needs its band gains for {default.calibration_key!r} before a quality scale")
    measured = measure_quality_scale(default, photos)
    entry = Registry.load().resolve(name)
    if entry.source is None:
        raise ModelError(f"model {name!r} has no registry file to write to")
    if measured is None:
        return entry.source / REGISTRY_FILE
    steps, psnr, _ = measured
    updated = replace(entry, quality_scale={**entry.quality_scale, default.calibration_key: (steps, psnr)})
    return register(updated, entry.source / REGISTRY_FILE)
