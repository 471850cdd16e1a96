import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaeflow.errors import CorruptStreamError
from vaeflow.stages import entropy, quantize, wavelet
from vaeflow.stages.entropy import ANS
from vaeflow.stages.wavelet import Wavelet


@settings(max_examples=60, deadline=None)
@given(
    symbols=hnp.arrays(
        np.int32,
        st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12)),
        elements=st.one_of(st.integers(-3, 3), st.integers(-(2**31) + 1, 2**31 - 1)),
    ),
    levels=st.integers(0, 3),
)
@example(symbols=np.array([[[-9] + [2**31 - 1] * 23]], np.int32), levels=0)  # centred excess of 2**31 + 8
@example(symbols=np.array([[[-(2**31) + 1, 2**31 - 1, 0]]], np.int32), levels=0)
def test_any_int32_symbols_round_trip(symbols: np.ndarray, levels: int) -> None:
    bands = wavelet.subbands(symbols.shape[1], symbols.shape[2], levels)
    payload = entropy.encode(symbols, bands, ANS())
    np.testing.assert_array_equal(entropy.decode(payload, symbols.shape, bands, ANS()), symbols)


def _real_symbols(real_latents: np.ndarray, step: float) -> tuple[np.ndarray, tuple]:
    coeffs = wavelet.forward(real_latents[:1], Wavelet("cdf97", 3))
    bands = wavelet.subbands(*coeffs.shape[2:], 3)
    steps = quantize.band_steps(bands, wavelet.synthesis_gains("cdf97", 3), step, np.ones((coeffs.shape[1], 1)))
    return quantize.forward(coeffs, steps, bands, 0.375)[0], bands


@pytest.mark.parametrize("step", [0.1, 0.5, 2.0])
def test_real_symbols_code_close_to_their_information(real_latents: np.ndarray, step: float) -> None:
    symbols, bands = _real_symbols(real_latents, step)
    payload = entropy.encode(symbols, bands, ANS())
    np.testing.assert_array_equal(entropy.decode(payload, symbols.shape, bands, ANS()), symbols)
    side_bytes = symbols.shape[0] * len(bands) + 3 * symbols.shape[0]
    ideal = entropy.information_bits(symbols, bands) / 8
    assert len(payload) <= ideal * 1.01 + side_bytes + 8


def test_model_side_information_is_one_byte_per_band(real_latents: np.ndarray) -> None:
    symbols, bands = _real_symbols(real_latents, 0.5)
    payload = entropy.encode(symbols, bands, ANS())
    words = (len(payload) - symbols.shape[0] * len(bands)) % 4
    assert words in range(4)  # side info (1 byte/band, LL centres as varints) then whole words
    assert symbols.shape[0] * len(bands) <= 64


def test_all_zero_bands_cost_nothing() -> None:
    symbols = np.zeros((4, 16, 16), np.int32)
    bands = wavelet.subbands(16, 16, 2)
    payload = entropy.encode(symbols, bands, ANS())
    assert len(payload) <= 4 * len(bands) + 8
    np.testing.assert_array_equal(entropy.decode(payload, symbols.shape, bands, ANS()), symbols)


def test_damaged_payload_is_detected() -> None:
    symbols = np.random.default_rng(1).laplace(0, 3, (2, 16, 16)).round().astype(np.int32)
    bands = wavelet.subbands(16, 16, 2)
    payload = bytearray(entropy.encode(symbols, bands, ANS()))
    with pytest.raises(CorruptStreamError):
        entropy.decode(bytes(payload[:-3]), symbols.shape, bands, ANS())
