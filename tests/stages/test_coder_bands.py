"""The band coder: exact round trips on any and on real symbols, its size against the class coder,
damage, and bytes that any machine reproduces."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaeflow.errors import CorruptStreamError
from vaeflow.stages import wavelet
from vaeflow.stages.coders import bands as bandcoder
from vaeflow.stages.coders import classes as classcoder
from vaeflow.stages.wavelet import Subband

from .test_coder_classes import QUALITIES, _mutations, photo_symbols  # noqa: F401  (a fixture)


@settings(max_examples=120, deadline=None)
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
def test_any_int32_symbols_round_trip(symbols: np.ndarray, levels: int) -> None:
    bands = wavelet.subbands(symbols.shape[1], symbols.shape[2], levels)
    payload = bandcoder.encode(symbols, bands)
    np.testing.assert_array_equal(bandcoder.decode(payload, symbols.shape, bands), symbols)


def _wide(symbols: np.ndarray) -> np.ndarray:
    """Real symbols made 32 channels wide: eight copies, each shifted and scaled."""
    return np.concatenate([np.roll(symbols, k, axis=-1) * (1 + k % 3) for k in range(8)]).astype(np.int32)


@pytest.mark.parametrize("quality", QUALITIES)
def test_real_latents_round_trip_and_decode_many_agrees(photo_symbols: dict, quality: int) -> None:  # noqa: F811
    for symbols, bands in photo_symbols[quality]:
        for s in (symbols, _wide(symbols)):
            payload = bandcoder.encode(s, bands)
            np.testing.assert_array_equal(bandcoder.decode(payload, s.shape, bands), s)
            many = bandcoder.decode_many([payload, memoryview(payload), payload], s.shape, bands)
            np.testing.assert_array_equal(many, np.stack([s] * 3))
            bits = bandcoder.information_bits(s, bands)
            side = bandcoder.side_info_bytes(payload, s.shape[0], bands)
            assert bits / 8 <= len(payload) - side + 8 and len(payload) <= bits / 8 + side + 16


def test_each_band_takes_the_class_its_magnitudes_cost_least(photo_symbols: dict) -> None:  # noqa: F811
    """Against the class coder, which predicts every coefficient's scale from its neighbours: on
    narrow latents whose contexts matter, the band coder pays for lacking them, within bounds;
    a band coded with any other class than the one chosen would cost more."""
    for quality in QUALITIES:
        ours = sum(len(bandcoder.encode(s, b)) for s, b in photo_symbols[quality])
        theirs = sum(len(classcoder.encode(s, b)) for s, b in photo_symbols[quality])
        assert 0.9 * theirs <= ours <= 1.25 * theirs, (quality, ours, theirs)
    symbols, bands = photo_symbols[QUALITIES[0]][0]
    detail = symbols[:, bands[-1].rows, bands[-1].cols]  # the finest HH band, all channels
    mags = np.abs(detail[0]).ravel()
    zone, coded = bandcoder._choose(detail[:1].reshape(-1).astype(np.int64), np.array([mags.size]))
    chosen = int(coded[0]) - 1
    costs = bandcoder._choice_costs(bandcoder.DEADZONES[zone])[:, np.minimum(mags, 64)].sum(axis=1)
    assert costs[chosen] == costs.min()


def test_decode_many_of_nothing_and_of_different_streams() -> None:
    bands = wavelet.subbands(16, 16, 2)
    assert bandcoder.decode_many([], (2, 16, 16), bands).shape == (0, 2, 16, 16)
    rng = np.random.default_rng(1)
    latents = [rng.integers(-4, 5, (2, 16, 16)).astype(np.int32), np.zeros((2, 16, 16), np.int32)]
    payloads = [bandcoder.encode(s, bands) for s in latents]
    np.testing.assert_array_equal(bandcoder.decode_many(payloads, (2, 16, 16), bands), np.stack(latents))


def test_all_zero_bands_cost_nothing() -> None:
    """A zero band codes no symbols: a zero latent takes as many bytes at any size, and zeroing a band
    frees all the bits its symbols took."""
    small, large = wavelet.subbands(64, 96, 3), wavelet.subbands(128, 192, 3)
    zero_small = bandcoder.encode(np.zeros((4, 64, 96), np.int32), small)
    assert len(zero_small) == len(bandcoder.encode(np.zeros((4, 128, 192), np.int32), large)) < 48
    rng = np.random.default_rng(2)
    symbols = rng.integers(-2, 3, (1, 32, 32)).astype(np.int32)
    bands = wavelet.subbands(32, 32, 1)
    hh = next(b for b in bands if b.name == "HH1")
    without = symbols.copy()
    without[:, hh.rows, hh.cols] = 0
    hh_bits = bandcoder.information_bits(symbols, bands) - bandcoder.information_bits(without, bands)
    assert hh_bits > 0.9 * 256 * np.log2(5)  # 256 independent symbols uniform in -2..2, all freed
    np.testing.assert_array_equal(bandcoder.decode(bandcoder.encode(without, bands), without.shape, bands), without)


def test_damage_raises_corrupt_stream_error(photo_symbols: dict) -> None:  # noqa: F811
    """Random damage decodes to some int32 symbols or raises CorruptStreamError, nothing else; a
    parameter byte naming a class-coder weight set is damage."""
    rng = np.random.default_rng(0)
    corrupt = 0
    for symbols, bands in photo_symbols[90]:
        for s in (symbols, _wide(symbols)):
            payload = bandcoder.encode(s, bands)
            for damaged in _mutations(payload, rng, 100):
                try:
                    out = bandcoder.decode(damaged, s.shape, bands)
                except CorruptStreamError:
                    corrupt += 1
                else:
                    assert out.shape == s.shape and out.dtype == np.int32
            for damaged in (b"", payload[:1], payload + b"\0", bytes([payload[0] | 8]) + payload[1:]):
                with pytest.raises(CorruptStreamError):
                    bandcoder.decode(damaged, s.shape, bands)
    assert corrupt > 300


def test_bad_arguments_are_value_errors() -> None:
    bands = wavelet.subbands(8, 8, 1)
    with pytest.raises(ValueError, match="int32 symbols"):
        bandcoder.encode(np.zeros((1, 8, 8), np.int64), bands)
    with pytest.raises(ValueError, match="tile"):
        bandcoder.encode(np.zeros((1, 8, 9), np.int32), bands)


def test_bytes_are_reproducible() -> None:
    """A fixed input gives the bytes recorded here (any machine must produce them)."""
    rng = np.random.default_rng(7)
    scales = np.array([0.0, 0.3, 2.0, 40.0])[:, None, None]
    symbols = np.round(rng.laplace(0, 1, (4, 20, 28)) * scales).astype(np.int32)
    symbols[3, 0, 0], symbols[3, 19, 27] = 10**6, -(10**6)  # escapes in the LL and the HH1 band
    bands: tuple[Subband, ...] = wavelet.subbands(20, 28, 2)
    payload = bandcoder.encode(symbols, bands)
    assert hashlib.sha256(payload).hexdigest() == "368f42a53576f38fa2c843ae1cf721f14829f5a771acda43be780ac299997be9"
    np.testing.assert_array_equal(bandcoder.decode(payload, symbols.shape, bands), symbols)
