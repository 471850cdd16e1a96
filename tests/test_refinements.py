"""Decoder-aware allocation, context modelling, RDO and rate-controlled presets."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import vaeflow
from vaeflow import metrics
from vaeflow.api import resolve_codec
from vaeflow.bdrate import bd_rate
from vaeflow.errors import CorruptStreamError
from vaeflow.stages import context, entropy, quantize, wavelet
from vaeflow.stages.entropy import ANS

CONTEXT = ANS("context")


@settings(max_examples=60, deadline=None)
@given(
    symbols=hnp.arrays(
        np.int32,
        st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(1, 20)),
        elements=st.one_of(st.integers(-3, 3), st.integers(-(2**31) + 1, 2**31 - 1)),
    ),
    levels=st.integers(0, 3),
)
@example(symbols=np.array([[[-9] + [2**31 - 1] * 23]], np.int32), levels=0)
@example(symbols=np.array([[[-(2**31) + 1, 2**31 - 1], [2**31 - 1, -(2**31) + 1]]], np.int32), levels=1)
def test_context_coder_round_trips_any_int32(symbols: np.ndarray, levels: int) -> None:
    bands = wavelet.subbands(symbols.shape[1], symbols.shape[2], levels)
    payload = entropy.encode(symbols, bands, CONTEXT)
    np.testing.assert_array_equal(entropy.decode(payload, symbols.shape, bands, CONTEXT), symbols)


@settings(max_examples=60, deadline=None)
@given(values=hnp.arrays(np.int64, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(-1000, 1000)),
       centre=st.integers(-50, 50))  # fmt: skip
def test_med_prediction_inverts(values: np.ndarray, centre: int) -> None:
    np.testing.assert_array_equal(context.med_reconstruct(context.med_residuals(values, centre), centre), values)


def _symbols(kodak: list[np.ndarray], quality: int, pipeline: str = "plain") -> tuple[np.ndarray, tuple]:
    codec = resolve_codec(None, quality, pipeline)
    symbols = codec.run(kodak[0][None], "quantize")[0]
    return symbols, codec.bands(symbols.shape)


@pytest.mark.parametrize("quality", [20, 60])
def test_context_coder_beats_the_zeroth_order_coder_on_real_symbols(kodak: list[np.ndarray], quality: int) -> None:
    symbols, bands = _symbols(kodak, quality)
    plain = entropy.encode(symbols, bands, ANS("laplace"))
    modelled = entropy.encode(symbols, bands, CONTEXT)
    assert len(modelled) < (0.95 if quality == 20 else 1.0) * len(plain)
    side = entropy.side_info_bytes(modelled, symbols.shape[0], bands, CONTEXT)
    assert (len(modelled) - side) * 8 <= 1.01 * entropy.information_bits(symbols, bands, CONTEXT) + 64


def test_context_payload_damage_is_detected(kodak: list[np.ndarray]) -> None:
    symbols, bands = _symbols(kodak, 40)
    payload = bytearray(entropy.encode(symbols, bands, CONTEXT))
    payload[0] = 0x7F  # a parameter code outside the grid
    with pytest.raises(CorruptStreamError):
        entropy.decode(bytes(payload), symbols.shape, bands, CONTEXT)


def test_allocation_table_packs_compactly_and_round_trips() -> None:
    table = np.random.default_rng(0).integers(-40, 40, (32, 10))
    packed = quantize.pack_table(table)
    unpacked, used = quantize.unpack_table(packed + b"rest", table.shape)
    np.testing.assert_array_equal(unpacked, table)
    assert used == len(packed)


def test_decoder_allocation_gives_sensitive_bands_finer_steps() -> None:
    codec = resolve_codec(None, 50, "default")
    table = np.asarray(codec.allocation_table)
    steps = codec.steps((1, 4, 64, 96))
    bands = codec.bands((1, 4, 64, 96))
    names = [b.name for b in wavelet.all_subbands(3)]
    order = np.argsort(table[:, [names.index(b.name) for b in bands]].ravel())
    assert steps.ravel()[order[0]] > steps.ravel()[order[-1]]


def test_streams_carry_their_allocation(
    kodak: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream decodes the same after the model's calibration is redone: it holds its own table."""
    from vaeflow.models.registry import Registry, register

    image = kodak[1][:128, :128]
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
    kodak: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vaeflow"):
        data = vaeflow.compress(kodak[0][:64, :64])
        pipeline = (
            vaeflow.VAE() | vaeflow.Wavelet("haar", 2) | vaeflow.Quantize(quality=50, allocation="decoder") | ANS()
        )
        fallback = vaeflow.compress(kodak[0][:64, :64], pipeline=pipeline)
    assert vaeflow.info(data)["pipeline"]["quantize"]["allocation"] == "decoder"
    assert vaeflow.info(fallback)["pipeline"]["quantize"]["allocation"] == "uniform"
    assert "vaeflow models calibrate" in caplog.text
    assert vaeflow.decompress(fallback).shape == (64, 64, 3)


def test_rdo_only_lowers_magnitudes_and_decodes(kodak: list[np.ndarray]) -> None:
    codec = resolve_codec(None, 50, "plain")
    coeffs = codec.transform(codec.encode_latents(kodak[0][None]))
    symbols = codec.quantize_coefficients(coeffs)
    tuned = replace(codec, quantize=replace(codec.quantize, rdo=True))
    optimized = tuned.quantize_coefficients(coeffs)
    assert (np.abs(optimized) <= np.abs(symbols)).all() and (optimized != symbols).any()
    assert (np.sign(optimized) * np.sign(symbols) >= 0).all()
    data = vaeflow.compress(kodak[0], pipeline=tuned)
    assert vaeflow.info(data)["pipeline"]["quantize"]["rdo"] is True
    assert metrics.psnr(kodak[0], vaeflow.decompress(data)) > 20


def test_each_refinement_is_bit_exact_between_encoder_and_decoder(kodak: list[np.ndarray]) -> None:
    image = kodak[2][:128, :192]
    for pipeline in ("plain", "default", "latent-store", "wide-latent"):
        codec = resolve_codec(None, None, pipeline)
        for variant in (codec, replace(codec, quantize=replace(codec.quantize, rdo=True))):
            data = vaeflow.compress(image, pipeline=variant)
            header, payload = vaeflow.bitstream.unpack(data)
            decoder, rest = vaeflow.Codec.from_stream(header, payload)
            symbols = decoder.decode_symbols(rest, vaeflow.bitstream.latent_shape(header))
            if variant.quantize.target is None:
                np.testing.assert_array_equal(symbols, variant.run(image[None], "quantize"))
            assert vaeflow.compress(image, pipeline=variant) == data


def test_refined_codec_beats_the_plain_one_on_real_images(kodak: list[np.ndarray]) -> None:
    def curve(pipeline: str) -> tuple[list[float], list[float]]:
        bpp, psnr = [], []
        for quality in (20, 35, 50):
            rates, scores = [], []
            for image in kodak[:2]:
                data = vaeflow.compress(image, quality=quality, pipeline=pipeline)
                rates.append(vaeflow.info(data)["bpp"])
                scores.append(metrics.psnr(image, vaeflow.decompress(data)))
            bpp.append(float(np.mean(rates)))
            psnr.append(float(np.mean(scores)))
        return bpp, psnr

    plain, best = curve("plain"), curve("default")
    assert bd_rate(plain[0], plain[1], best[0], best[1]) < -10.0


def test_dataset_job_with_a_rate_controlled_preset_matches_compress(kodak: list[np.ndarray], tmp_path: Path) -> None:
    from .helpers import image_folder

    src = image_folder(tmp_path, kodak[:2], 96, 128)
    store = tmp_path / "s.zarr"
    vaeflow.compress_dataset(
        src, store, pipeline="latent-store", options=vaeflow.JobOptions(scheduler="sync", progress=False)
    )
    reader = vaeflow.open_store(store)
    for i, image in enumerate(kodak[:2]):
        data = reader.read_stream(f"{i}.png")
        assert data == vaeflow.compress(image[:96, :128], pipeline="latent-store")
        assert vaeflow.info(data)["target"]["kind"] == "latent"


def test_calibration_measures_positive_gains(kodak: list[np.ndarray]) -> None:
    from vaeflow.calibrate import band_gains

    gains = band_gains(resolve_codec(None, 50, "plain"), kodak[:1])
    assert gains.shape == (4, 10) and (gains > 0).all()
    assert gains[:, 0].mean() > gains[:, -1].mean()  # the decoder needs the coarse band more than HH1
