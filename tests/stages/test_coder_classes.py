"""The class coder and the band coder (which shares its tables): exact round trips (any int32 symbols for the
sequential coder too), damage, size against the context coder; what only the class coder does."""

from __future__ import annotations

import hashlib
from types import ModuleType

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages import wavelet
from vaeflow.stages.coders import bands as bandcoder
from vaeflow.stages.coders import classes as classcoder
from vaeflow.stages.coders import context, sequential
from vaeflow.stages.wavelet import Subband

QUALITIES = (70, 90, 100)  # on the default model's scale: steps 1.24, 0.65 and 0.17
CODERS = pytest.mark.parametrize("coder", [classcoder, bandcoder], ids=["classes", "bands"])


@pytest.fixture(scope="module")
def photo_symbols() -> dict[int, list[tuple[np.ndarray, tuple[Subband, ...]]]]:
    """Symbols of scikit-image's coffee, astronaut and chelsea through f8c4-v1's default codec, by
    quality (latents 4x50x75, 4x64x64 and 4x38x57: odd sizes included), which the bounds below were
    set on."""
    skimage_data = pytest.importorskip("skimage.data")
    from vaeflow.codec.api import resolve_codec

    images = [skimage_data.coffee(), skimage_data.astronaut(), skimage_data.chelsea()]
    base = resolve_codec("f8c4-v1", 50, "default")
    coeffs = [base.transform(base.encode_latents(image[None])) for image in images]
    out = {}
    for quality in QUALITIES:
        codec = resolve_codec("f8c4-v1", quality, "default")
        out[quality] = [(s[0], codec.bands(s.shape)) for s in (codec.quantize_coefficients(c) for c in coeffs)]
    return out


@settings(max_examples=150, deadline=None)
@given(
    symbols=hnp.arrays(
        np.int32,
        st.tuples(st.integers(1, 6), st.integers(1, 17), st.integers(1, 17)),
        elements=st.one_of(st.integers(-3, 3), st.integers(-5000, 5000), st.integers(-(2**31), 2**31 - 1)),
    ),
    levels=st.integers(0, 4),
)
@example(symbols=np.full((1, 1, 1), -(2**31), np.int32), levels=0)
@example(symbols=np.array([[[2**31 - 1, -(2**31)] * 8] * 8], np.int32), levels=2)
@example(symbols=np.zeros((3, 16, 16), np.int32), levels=3)
@pytest.mark.parametrize("coder", [classcoder, bandcoder, sequential], ids=["classes", "bands", "sequential"])
def test_any_int32_symbols_round_trip(coder: ModuleType, symbols: np.ndarray, levels: int) -> None:
    bands = wavelet.subbands(symbols.shape[1], symbols.shape[2], levels)
    payload = coder.encode(symbols, bands)
    np.testing.assert_array_equal(coder.decode(payload, symbols.shape, bands), symbols)


def test_wide_latents_round_trip() -> None:
    """32 channels take the wide weight set (first group of 8 channels)."""
    rng = np.random.default_rng(3)
    symbols = np.round(rng.laplace(0, 1.5, (32, 24, 40)) * rng.random((32, 1, 1))).astype(np.int32)
    bands = wavelet.subbands(24, 40, 3)
    payload = classcoder.encode(symbols, bands)
    assert payload[0] >> 3 == 1
    np.testing.assert_array_equal(classcoder.decode(payload, symbols.shape, bands), symbols)


def wide(symbols: np.ndarray) -> np.ndarray:
    """Real symbols made 32 channels wide: eight copies, each shifted and scaled."""
    return np.concatenate([np.roll(symbols, k, axis=-1) * (1 + k % 3) for k in range(8)]).astype(np.int32)


@CODERS
@pytest.mark.parametrize("quality", QUALITIES)
def test_real_latents_round_trip_and_decode_many_agrees(photo_symbols: dict, quality: int, coder: ModuleType) -> None:
    for symbols, bands in photo_symbols[quality]:
        for s in (symbols, wide(symbols)):
            payload = coder.encode(s, bands)
            np.testing.assert_array_equal(coder.decode(payload, s.shape, bands), s)
            many = coder.decode_many([payload, memoryview(payload), payload], s.shape, bands)
            np.testing.assert_array_equal(many, np.stack([s] * 3))
            bits = coder.information_bits(s, bands)
            side = coder.side_info_bytes(payload, s.shape[0], bands)  # parameters, LL models and centres
            assert side <= 1 + 3 * s.shape[0]  # centres below 64
            assert bits / 8 <= len(payload) - side + 8 and len(payload) <= bits / 8 + side + 16


def test_no_larger_than_the_context_coder_beyond_two_percent(photo_symbols: dict) -> None:
    """At equal quantizer steps, summed over the photos, at each quality."""
    for quality in QUALITIES:
        ours = sum(len(classcoder.encode(s, b)) for s, b in photo_symbols[quality])
        theirs = sum(len(context.encode(s, b)) for s, b in photo_symbols[quality])
        assert ours <= 1.02 * theirs, (quality, ours, theirs)


@CODERS
def test_decode_many_of_nothing_and_of_mixed_streams(coder: ModuleType) -> None:
    bands = wavelet.subbands(16, 16, 2)
    assert coder.decode_many([], (2, 16, 16), bands).shape == (0, 2, 16, 16)
    rng = np.random.default_rng(1)
    latents = [rng.integers(-4, 5, (2, 16, 16)).astype(np.int32), np.zeros((2, 16, 16), np.int32)]
    payloads = [coder.encode(s, bands) for s in latents]
    np.testing.assert_array_equal(coder.decode_many(payloads, (2, 16, 16), bands), np.stack(latents))


@CODERS
def test_all_zero_bands_cost_nothing(coder: ModuleType) -> None:
    """A zero band codes no symbols, only its band index or class (under a byte): a zero latent takes
    as many bytes at any size, and zeroing a band frees all the bits its symbols took."""
    small, large = wavelet.subbands(64, 96, 3), wavelet.subbands(128, 192, 3)
    zero_small = coder.encode(np.zeros((4, 64, 96), np.int32), small)
    assert len(zero_small) == len(coder.encode(np.zeros((4, 128, 192), np.int32), large)) < 48
    rng = np.random.default_rng(2)
    symbols = rng.integers(-2, 3, (1, 32, 32)).astype(np.int32)
    bands = wavelet.subbands(32, 32, 1)
    hh = next(b for b in bands if b.name == "HH1")
    without = symbols.copy()
    without[:, hh.rows, hh.cols] = 0
    hh_bits = coder.information_bits(symbols, bands) - coder.information_bits(without, bands)
    assert hh_bits > 0.9 * 256 * np.log2(5)  # 256 independent symbols uniform in -2..2, all freed
    assert coder.information_bits(np.zeros((4, 64, 96), np.int32), small) < 8 * 4 * (len(small) - 1)  # indices
    np.testing.assert_array_equal(coder.decode(coder.encode(without, bands), without.shape, bands), without)


def _mutations(payload: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        damaged = bytearray(payload)
        kind = rng.integers(0, 4)
        if kind == 0:
            damaged[rng.integers(len(damaged))] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            damaged = damaged[: rng.integers(len(damaged))]
        elif kind == 2:
            damaged[rng.integers(min(16, len(damaged)))] = int(rng.integers(256))
        else:
            at = int(rng.integers(len(damaged)))
            damaged = damaged[:at] + bytes(int(v) for v in rng.integers(0, 256, int(rng.integers(1, 6)))) + damaged[at:]
        out.append(bytes(damaged))
    return out


@CODERS
def test_damage_raises_corrupt_stream_error(photo_symbols: dict, coder: ModuleType) -> None:
    """Random damage decodes to some int32 symbols or raises CorruptStreamError, nothing else."""
    rng = np.random.default_rng(0)
    corrupt = 0
    for symbols, bands in photo_symbols[90]:
        for s in (symbols, wide(symbols)):
            payload = coder.encode(s, bands)
            for damaged in _mutations(payload, rng, 100):
                try:
                    out = coder.decode(damaged, s.shape, bands)
                except CorruptStreamError:
                    corrupt += 1
                else:
                    assert out.shape == s.shape and out.dtype == np.int32
            for damaged in (b"", payload[:1], payload + b"\0", bytes([0xF8]) + payload[1:]):
                with pytest.raises(CorruptStreamError):
                    coder.decode(damaged, s.shape, bands)
    assert corrupt > 300


@CODERS
def test_bad_arguments_are_value_errors(coder: ModuleType) -> None:
    bands = wavelet.subbands(8, 8, 1)
    with pytest.raises(ValueError, match="int32 symbols"):
        coder.encode(np.zeros((1, 8, 8), np.int64), bands)
    with pytest.raises(ValueError, match="tile"):
        coder.encode(np.zeros((1, 8, 9), np.int32), bands)


def test_models_are_reproducible() -> None:
    """A fixed input gives the bytes recorded here (any machine must produce them)."""
    rng = np.random.default_rng(12345)
    symbols = np.round(rng.laplace(0, 2.0, (4, 24, 32))).astype(np.int32)
    bands = wavelet.subbands(24, 32, 3)
    payload = classcoder.encode(symbols, bands)
    assert payload == classcoder.encode(symbols.copy(), bands)
    assert hashlib.sha256(payload).hexdigest()[:16] == GOLDEN_PAYLOAD_HASH


GOLDEN_PAYLOAD_HASH = "84648460ec231510"
