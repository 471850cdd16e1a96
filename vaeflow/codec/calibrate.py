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

from vaeflow.codec.codec import Codec
from vaeflow.codec.presets import load_pipeline
from vaeflow.errors import ModelError
from vaeflow.imageio import list_images, read_rgb
from vaeflow.models import RuntimeOptions, load_model
from vaeflow.models.registry import REGISTRY_FILE, Registry, register
from vaeflow.progressbar import progress_bar
from vaeflow.stages import ChannelTransform, Wavelet

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


def calibrate_model(
    name: str,
    data_dir: Path,
    transform: str = "hadamard",
    wavelet_name: str = "cdf97",
    levels: int = 3,
    limit: int = 8,
) -> tuple[Path, np.ndarray]:
    """Measure a model's band gains on photos and store them with the model in its registry."""
    plain = Codec.resolve(load_pipeline("plain"), name)
    codec = replace(plain, channel=ChannelTransform(transform), wavelet=Wavelet(wavelet_name, levels))
    codec.channel.check(codec.model.latent_channels)
    gains = band_gains(codec, [read_rgb(p) for p in list_images(data_dir, limit)])
    entry = Registry.load().resolve(name)
    rounded = tuple(tuple(float(f"{g:.4g}") for g in row) for row in gains)
    updated = replace(entry, calibration={**entry.calibration, codec.calibration_key: rounded})
    if entry.source is None:
        raise ModelError(f"model {name!r} has no registry file to write to")
    return register(updated, entry.source / REGISTRY_FILE), gains
