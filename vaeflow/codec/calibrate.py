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

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from vaeflow.codec import ratecontrol
from vaeflow.codec.codec import Codec
from vaeflow.codec.dropmodel import DropModel, fit, image_features, relative_error
from vaeflow.codec.presets import load_pipeline
from vaeflow.foundations import metrics
from vaeflow.foundations.errors import ModelError
from vaeflow.foundations.imageio import list_images, read_rgb
from vaeflow.foundations.progressbar import progress_bar
from vaeflow.models import RuntimeOptions, load_model
from vaeflow.models.registry import REGISTRY_FILE, ModelEntry, Registry, register
from vaeflow.stages import ChannelTransform, Wavelet
from vaeflow.stages import quantize as quantizer

log = logging.getLogger("vaeflow")

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
    measured: list[float] = []
    for step in progress_bar(iterable=SCALE_GRID, total=len(SCALE_GRID), desc="quality scale", unit="step"):
        at = codec.with_step(float(step))
        symbols = at.quantize_coefficients(coeffs)
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


DROP_PHOTOS = 30  # calibration photos the drop model is fitted on
DROP_CROP = 512  # the largest side of a crop it measures
DROP_REAIM = (0.5, 2.0)  # a measured drop outside these shares of the limit is measured again, re-aimed


def measure_drop_model(
    codec: Codec, photos: Sequence[np.ndarray], runtime: RuntimeOptions | None = None, seed: int = 0
) -> DropModel:
    """Fit a model's drop model (``vaeflow.codec.dropmodel``) for this codec's channel transform and
    wavelet, on two crops of each photo (the centre, and one of random size and place, at most
    ``DROP_CROP`` pixels a side): each quantized at the latent-store preset's step that the band
    gains predict for its PSNR-drop limit, then decoded, and measured again near the limit when the
    first measure lands far from it."""
    rng = np.random.default_rng(seed)
    store = Codec.resolve(load_pipeline("latent-store"), codec.model.name).replaced(codec.channel, codec.wavelet)
    if store.band_gains is None:
        raise ModelError(f"model {codec.model.name!r} needs its band gains for {store.calibration_key!r} first")
    assert store.target is not None and store.target.max_psnr_drop is not None
    rho_limit = relative_error(store.target.max_psnr_drop)
    features, references, ratios = [], [], []
    for photo in progress_bar(iterable=photos, total=len(photos), desc="drop model", unit="photo"):
        for crop in _drop_crops(photo, rng):
            size = crop.shape[:2]
            latent = store.encode_latents(crop[None], runtime)
            coeffs = store.transform(latent)
            exact = metrics.mse(crop, store.decode_images(latent, size, runtime)[0])
            if exact == 0.0:
                continue
            factor, base, rho = 1.0 / exact, 0.0, 0.0
            for _ in range(2):
                step = _step_for(store, coeffs, size, rho_limit / factor)
                trial = store.with_step(step)
                dequantized = trial.dequantize(trial.quantize_coefficients(coeffs))
                base = ratecontrol.base_error(store, coeffs, dequantized, size[0] * size[1])
                decoded = store.decode_images(trial.untransform(dequantized), size, runtime)[0]
                rho = metrics.mse(crop, decoded) / exact - 1.0
                if base <= 0 or DROP_REAIM[0] * rho_limit <= rho <= DROP_REAIM[1] * rho_limit:
                    break
                factor = max(rho, 1e-3 * rho_limit) / base
            if base > 0 and rho > 0:
                features.append(image_features(crop, latent[0]))
                references.append(exact)
                ratios.append(float(np.log(rho / base)))
    return fit(features, references, ratios)


def _drop_crops(photo: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = photo.shape[:2]
    side = min(DROP_CROP, h, w)
    crops = [center_crop(photo, side)]
    ch, cw = (int(rng.integers(min(128, n), min(DROP_CROP, n) + 1)) for n in (h, w))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return [*crops, photo[top : top + ch, left : left + cw]]


def _step_for(codec: Codec, coeffs: np.ndarray, size: tuple[int, int], base_aim: float) -> float:
    """The step whose band-gain error is about ``base_aim`` (it grows about as the step squared)."""
    step = 0.25
    for _ in range(4):
        trial = codec.with_step(step)
        dequantized = trial.dequantize(trial.quantize_coefficients(coeffs))
        base = ratecontrol.base_error(codec, coeffs, dequantized, size[0] * size[1])
        if base <= 0:
            return step * 4
        step = float(np.float32(step * float(np.sqrt(base_aim / base))))
    return step


def calibrate_model(
    name: str,
    data_dir: Path,
    transform: str = "hadamard",
    wavelet_name: str = "cdf97",
    levels: int = 3,
    limit: int = 8,
    drops_only: bool = False,
    drop_photos: int = DROP_PHOTOS,
) -> tuple[Path, np.ndarray | None, DropModel | None]:
    """Measure a model's band gains on ``limit`` photos, then its quality scale with those gains (the
    default preset's quantizer at this channel transform and wavelet) and its drop model on
    ``drop_photos``, and store them with the model; ``drops_only`` keeps the gains and scale the
    model has and fits its drop model alone. Returns the registry file, the gains measured (None with
    ``drops_only``) and the drop model fitted (None where too few crops showed a measurable drop)."""
    plain = Codec.resolve(load_pipeline("plain"), name)
    codec = plain.with_stages(ChannelTransform(transform), Wavelet(wavelet_name, levels))
    codec.channel.check(codec.model.latent_channels)
    key = codec.calibration_key
    gains = None
    if not drops_only:
        photos = [read_rgb(p) for p in list_images(data_dir, limit)]
        gains = band_gains(codec, photos)
        rounded = tuple(tuple(float(f"{g:.4g}") for g in row) for row in gains)
        entry = _writable(name)
        entry = replace(entry, calibration={**entry.calibration, key: rounded}, quality_scale=dict(entry.quality_scale),
                        drop_model=dict(entry.drop_model))  # fmt: skip
        entry.quality_scale.pop(key, None)  # a scale measured with the earlier gains no longer holds
        entry.drop_model.pop(key, None)  # nor does a drop model
        register(entry, _source(entry))
        calibrate_quality_scale(name, photos, codec.channel, codec.wavelet)
    elif key not in _writable(name).calibration:
        raise ModelError(f"model {name!r} has no band gains for {key!r} to fit a drop model on; calibrate it whole")
    try:
        model = measure_drop_model(codec, [read_rgb(p) for p in list_images(data_dir, drop_photos)])
    except ValueError as exc:  # too few crops with a measurable drop (a model that barely depends on its latent)
        log.warning("model %r: no drop model for %r (%s); only verify='all' keeps a PSNR-drop limit", name, key, exc)
        return _source(_writable(name)), gains, None
    entry = _writable(name)
    entry = replace(entry, drop_model={**entry.drop_model, key: model.to_dict()})
    return register(entry, _source(entry)), gains, model


def _writable(name: str) -> ModelEntry:
    entry = Registry.load().resolve(name)
    if entry.source is None:
        raise ModelError(f"model {name!r} has no registry file to write to")
    return entry


def _source(entry: ModelEntry) -> Path:
    assert entry.source is not None
    return entry.source / REGISTRY_FILE


def calibrate_quality_scale(
    name: str, photos: Sequence[np.ndarray], channel: ChannelTransform, wavelet: Wavelet
) -> Path:
    """Measure a calibrated model's quality scale (the default preset at this channel transform and
    wavelet) and store it with the model."""
    default = Codec.resolve(load_pipeline("default"), name).replaced(channel, wavelet)
    if default.allocation_table is None:
        raise ModelError(f"model {name!r} needs its band gains for {default.calibration_key!r} before a quality scale")
    measured = measure_quality_scale(default, photos)
    entry = _writable(name)
    if measured is None:
        return _source(entry)
    steps, psnr, _ = measured
    updated = replace(entry, quality_scale={**entry.quality_scale, default.calibration_key: (steps, psnr)})
    return register(updated, _source(updated))
