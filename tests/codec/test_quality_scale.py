"""A model's own quality scale: quality 100 at the model's ceiling, the PSNR spread evenly below it."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import vaeflow
from vaeflow import VAE, ChannelTransform, Entropy, Quantize, Wavelet, metrics
from vaeflow.codec.api import resolve_codec
from vaeflow.codec.calibrate import CEILING_MARGIN_DB, measure_quality_scale
from vaeflow.foundations.errors import ModelError
from vaeflow.models.registry import ModelEntry, Registry, read_registry_file, register
from vaeflow.stages.quantize import SCALE_QUALITIES, quality_to_step, scale_quality, scaled_step


def _mean_psnr(images: list[np.ndarray], quality: int) -> tuple[float, float]:
    """Mean PSNR and bits per pixel of the images at ``quality`` with the default preset."""
    psnr, bpp = [], []
    for image in images:
        data = vaeflow.compress(image, quality=quality)
        psnr.append(metrics.psnr(image, vaeflow.decompress(data)))
        bpp.append(8 * len(data) / image.shape[0] / image.shape[1])
    return float(np.mean(psnr)), float(np.mean(bpp))


def test_the_shipped_model_has_a_scale_and_streams_record_its_step(photo: np.ndarray) -> None:
    codec = resolve_codec("default", 90)
    assert codec.quality_scale is not None and len(codec.quality_scale) == len(SCALE_QUALITIES)
    assert all(a > b for a, b in zip(codec.quality_scale, codec.quality_scale[1:], strict=False))
    assert codec.quantize.quality is None and codec.quantize.step == scaled_step(90, codec.quality_scale)
    data = vaeflow.compress(photo, quality=90)
    info = vaeflow.info(data)
    assert (info["quality"], info["quality_scale"]) == (90, "f8c12-v2")
    assert info["step"] == pytest.approx(scaled_step(90, codec.quality_scale), rel=1e-6)
    assert vaeflow.compress(photo) == data  # the default preset is quality 90 on the model's scale


def test_a_pipeline_object_keeps_the_global_scale(photo: np.ndarray) -> None:
    pipeline = (
        VAE("default")
        | ChannelTransform("identity")
        | Wavelet("cdf97", 3)
        | Quantize(quality=50, allocation="decoder")
        | Entropy()
    )
    info = vaeflow.info(vaeflow.compress(photo, pipeline=pipeline))
    assert (info["quality"], info["quality_scale"]) == (50, "global")
    assert info["step"] == pytest.approx(quality_to_step(50))


def test_every_ten_quality_points_buy_psnr_up_to_the_ceiling(photos: list[np.ndarray]) -> None:
    """On photos the scale was not measured on: PSNR rises by at least 0.1 dB per 10 points, and
    quality 100 decodes close to the model's reconstruction."""
    images = [p[:128, :192] for p in photos[:2]]
    ladder = [_mean_psnr(images, q) for q in (50, 60, 70, 80, 90, 100)]
    psnr = [p for p, _ in ladder]
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(psnr)), psnr
    assert all(b > a for (_, a), (_, b) in itertools.pairwise(ladder))  # and costs bits
    model = vaeflow.load_model("default")
    ceiling = float(np.mean([metrics.psnr(i, model.decode(model.encode(i[None]), i.shape[:2])[0]) for i in images]))
    assert ceiling - 0.2 < psnr[-1] <= ceiling + 0.05, (psnr[-1], ceiling)


def test_measuring_a_scale_puts_quality_100_within_the_margin_of_the_ceiling(photos: list[np.ndarray]) -> None:
    codec = resolve_codec("default", 50)
    measured = measure_quality_scale(codec, photos[:1])
    assert measured is not None
    steps, psnr, ceiling = measured
    assert steps[0] == 5.0 and all(a > b > 0 for a, b in itertools.pairwise(steps))
    assert psnr[-1] == pytest.approx(ceiling - CEILING_MARGIN_DB, abs=1e-3)
    spacing = np.diff(psnr)
    assert spacing.min() > 0 and spacing.max() - spacing.min() < 1e-2  # even in PSNR


def test_scales_survive_the_registry_and_bad_ones_are_refused(tmp_path: Path) -> None:
    entry = Registry.load().resolve("default")
    registry = tmp_path / "models.toml"
    register(entry, registry)
    assert '[models."f8c12-v2".quality_scale]' in registry.read_text()
    table = read_registry_file(registry)["models"]["f8c12-v2"]
    again = ModelEntry.from_toml("f8c12-v2", table, tmp_path)
    assert again.quality_scale == entry.quality_scale
    key = next(iter(entry.quality_scale))
    flat = (tuple(1.0 for _ in SCALE_QUALITIES), entry.quality_scale[key][1])
    with pytest.raises(ModelError, match=r"quality_scale .* decreasing.*vaeflow models calibrate"):
        replace(entry, quality_scale={key: flat}).validate()


def test_scale_quality_inverts_scaled_step() -> None:
    anchors = tuple(float(s) for s in np.geomspace(5.0, 0.1, len(SCALE_QUALITIES)))
    for quality in (1, 7, 50, 93, 100):
        assert scale_quality(float(np.float32(scaled_step(quality, anchors))), anchors) == quality
    assert scale_quality(0.123456, anchors) is None
