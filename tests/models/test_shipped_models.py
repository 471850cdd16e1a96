"""The shipped models: f8c12-v2 is the default, f8c4-v1 stays, both load from the package, and v2 is
calibrated for, and round trips through, every preset."""

from __future__ import annotations

import numpy as np
import pytest

import vaeflow
from vaeflow import metrics
from vaeflow.codec.codec import Codec
from vaeflow.codec.presets import load_pipeline, preset_names
from vaeflow.foundations.resources import shipped_models_dir
from vaeflow.models.registry import Registry

V2 = "f8c12-v2"


def test_default_is_v2_and_v1_stays_shipped() -> None:
    registry = Registry.load()
    default, v1 = registry.resolve("default"), registry.resolve("f8c4-v1")
    assert (default.name, default.latent_channels, default.downsample) == (V2, 12, 8)
    assert (v1.latent_channels, v1.downsample) == (4, 8)
    for entry in (default, v1):
        assert entry.encoder.parent.parent == shipped_models_dir().resolve()
        assert entry.encoder.is_file() and entry.decoder.is_file()
    assert default.fingerprint() != v1.fingerprint()
    size = sum(f.stat().st_size for f in (default.encoder, default.decoder))
    assert size <= 32 * 2**20, size


@pytest.mark.parametrize("preset", preset_names())
def test_v2_is_calibrated_for_every_preset(preset: str) -> None:
    codec = Codec.resolve(load_pipeline(preset), "default")
    entry = Registry.load().resolve("default")
    key = codec.calibration_key
    assert codec.channel.transform == "identity"  # 12 channels: no Hadamard
    assert key in entry.calibration and np.asarray(entry.calibration[key]).shape == (12, 10)
    assert key in entry.quality_scale and key in entry.drop_model


@pytest.mark.parametrize("preset", preset_names())
def test_v2_round_trips_every_preset(preset: str, photos: list[np.ndarray]) -> None:
    image = photos[0][:200, :264]
    data = vaeflow.compress(image, pipeline=preset)
    info = vaeflow.info(data)
    assert info["model"] == V2
    decoded = vaeflow.decompress(data)
    assert decoded.shape == image.shape
    exact = vaeflow.decode_latent(vaeflow.encode_latent(image), size=image.shape[:2])
    floor = {"plain": 18.0, "wide-latent": 20.0}.get(preset, 22.0)
    assert metrics.psnr(image, decoded) > floor
    if preset.startswith("latent-store"):  # the preset's promise: within 0.1 dB of the exact decode
        assert metrics.psnr(image, exact) - metrics.psnr(image, decoded) <= 0.11  # (uint8 rounding)
        latent = vaeflow.decompress_latent(data)
        assert latent.shape == (12, 25, 33)
