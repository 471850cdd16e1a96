"""Decoder-aware allocation, calibration, RDO and rate-controlled presets, through the codec."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import vaeflow
from vaeflow.codec.api import open_stream, resolve_codec
from vaeflow.codec.calibrate import band_gains
from vaeflow.foundations import metrics
from vaeflow.foundations.bdrate import bd_rate
from vaeflow.models.registry import Registry, register
from vaeflow.stages import quantize, wavelet

from ..helpers import image_folder


def test_allocation_table_packs_compactly_and_round_trips() -> None:
    table = np.random.default_rng(0).integers(-40, 40, (32, 10))
    packed = quantize.pack_table(table)
    unpacked, used = quantize.unpack_table(packed + b"rest", table.shape)
    np.testing.assert_array_equal(unpacked, table)
    assert used == len(packed)


def test_decoder_allocation_gives_sensitive_bands_finer_steps() -> None:
    codec = resolve_codec(None, 50, "default")
    table = np.asarray(codec.allocation_table)
    steps = codec.steps((1, 12, 64, 96))
    bands = codec.bands((1, 12, 64, 96))
    names = [b.name for b in wavelet.all_subbands(3)]
    order = np.argsort(table[:, [names.index(b.name) for b in bands]].ravel())
    assert steps.ravel()[order[0]] > steps.ravel()[order[-1]]


def test_streams_carry_their_allocation(photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream decodes the same after the model's calibration is redone: it holds its own table."""
    image = photo
    data = vaeflow.compress(image)
    before = vaeflow.decompress(data)
    entry = Registry.load().resolve("default")
    registry = tmp_path / "models.toml"
    flat = {k: tuple(tuple(1.0 for _ in row) for row in rows) for k, rows in entry.calibration.items()}
    register(replace(entry, calibration=flat), registry)
    monkeypatch.setenv("VAEFLOW_CONFIG", str(registry))
    np.testing.assert_array_equal(vaeflow.decompress(data), before)
    assert vaeflow.compress(image) != data  # new streams follow the new calibration


def test_missing_calibration_falls_back_to_uniform_with_a_warning(
    photo: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    image = photo[:64, :64]
    with caplog.at_level(logging.WARNING, logger="vaeflow"):
        data = vaeflow.compress(image)
        pipeline = (
            vaeflow.VAE() | vaeflow.Wavelet("haar", 2) | vaeflow.Quantize(quality=50, allocation="decoder")
        ) | vaeflow.Entropy()
        fallback = vaeflow.compress(image, pipeline=pipeline)
    assert vaeflow.info(data)["pipeline"]["quantize"]["allocation"] == "decoder"
    assert vaeflow.info(fallback)["pipeline"]["quantize"]["allocation"] == "uniform"
    assert "vaeflow models calibrate" in caplog.text
    assert vaeflow.decompress(fallback).shape == (64, 64, 3)


def test_rdo_only_lowers_magnitudes_and_decodes(photos: list[np.ndarray]) -> None:
    image = photos[1]
    codec = resolve_codec("f8c4-v1", 50, "plain")  # uniform steps suit v1's four even channels
    coeffs = codec.transform(codec.encode_latents(image[None]))
    symbols = codec.quantize_coefficients(coeffs)
    tuned = codec.with_quantizer(replace(codec.quantize, rdo=True))
    optimized = tuned.quantize_coefficients(coeffs)
    assert (np.abs(optimized) <= np.abs(symbols)).all() and (optimized != symbols).any()
    assert (np.sign(optimized) * np.sign(symbols) >= 0).all()
    data = vaeflow.compress(image, pipeline=tuned)
    assert vaeflow.info(data)["pipeline"]["quantize"]["rdo"] is True
    assert metrics.psnr(image, vaeflow.decompress(data)) > 20


def test_each_refinement_is_bit_exact_between_encoder_and_decoder(photos: list[np.ndarray]) -> None:
    image = photos[2][:128, :192]
    for pipeline in ("plain", "default", "latent-store", "wide-latent"):
        codec = resolve_codec(None, None, pipeline)
        for variant in (codec, codec.with_quantizer(replace(codec.quantize, rdo=True))):
            data = vaeflow.compress(image, pipeline=variant)
            header, rest, decoder = open_stream(data)
            symbols = decoder.decode_symbols(rest, header.latent_shape)
            if variant.target is None:
                np.testing.assert_array_equal(symbols, variant.run(image[None], "quantize"))
            assert vaeflow.compress(image, pipeline=variant) == data


def test_refined_codec_beats_the_plain_one_on_real_images(kodak: list[np.ndarray]) -> None:
    def curve(pipeline: str) -> tuple[list[float], list[float]]:
        bpp, psnr = [], []
        for quality in (20, 35, 50):
            rates, scores = [], []
            for image in kodak[:2]:
                data = vaeflow.compress(image, quality=quality, pipeline=pipeline, model="f8c4-v1")
                rates.append(vaeflow.info(data)["bpp"])
                scores.append(metrics.psnr(image, vaeflow.decompress(data)))
            bpp.append(float(np.mean(rates)))
            psnr.append(float(np.mean(scores)))
        return bpp, psnr

    plain, best = curve("plain"), curve("default")
    assert bd_rate(plain[0], plain[1], best[0], best[1]) < -10.0


def test_dataset_job_with_a_rate_controlled_preset_matches_compress(photos: list[np.ndarray], tmp_path: Path) -> None:
    src = image_folder(tmp_path, photos[:2], 96, 128)
    store = tmp_path / "s.zarr"
    vaeflow.compress_dataset(
        src, store, pipeline="latent-store", scheduler="sync", options=vaeflow.JobOptions(progress=False)
    )
    reader = vaeflow.open_store(store)
    for i, image in enumerate(photos[:2]):
        data = reader.read_stream(f"{i}.png")
        assert data == vaeflow.compress(image[:96, :128], pipeline="latent-store")
        assert vaeflow.info(data)["target"]["kind"] == "latent"


def test_calibration_measures_positive_gains(photos: list[np.ndarray]) -> None:
    gains = band_gains(resolve_codec(None, 50, "plain"), photos[:1])
    assert gains.shape == (12, 10) and (gains > 0).all()
    assert gains[:, 0].mean() > gains[:, -1].mean()  # the decoder needs the coarse band more than HH1
