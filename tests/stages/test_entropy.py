"""The entropy stage and its first two rANS coders (which now only decode the streams of format 1;
their encoders stay as the references that write them here): any int32 symbols round-trip, real ones
code close to their information, damage is detected; the stage writes with the class coder alone."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaeflow.foundations.errors import CorruptStreamError, PipelineError
from vaeflow.stages import Entropy, Wavelet, quantize, wavelet
from vaeflow.stages.coders import context
from vaeflow.stages.spec import coding_spec


def encode(coder: Entropy, symbols: np.ndarray, bands: tuple[wavelet.Subband, ...]) -> bytes:
    """One image's payload by the coder's own encoder (the stage writes with the class coder alone)."""
    return coder.module.encode(symbols, bands)  # type: ignore[no-any-return]


def decode(
    coder: Entropy, payload: bytes, shape: tuple[int, int, int], bands: tuple[wavelet.Subband, ...]
) -> np.ndarray:
    return coder.inverse([payload], coding_spec(shape, bands))[0]  # type: ignore[no-any-return]


LAPLACE, CONTEXT = Entropy("laplace"), Entropy("context")
INT32_SYMBOLS = hnp.arrays(
    np.int32,
    st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(1, 20)),
    elements=st.one_of(st.integers(-3, 3), st.integers(-(2**31) + 1, 2**31 - 1)),
)


@settings(max_examples=60, deadline=None)
@given(symbols=INT32_SYMBOLS, levels=st.integers(0, 3), coder=st.sampled_from([LAPLACE, CONTEXT]))
@example(symbols=np.array([[[-9] + [2**31 - 1] * 23]], np.int32), levels=0, coder=LAPLACE)  # centred excess 2**31+8
@example(symbols=np.array([[[-9] + [2**31 - 1] * 23]], np.int32), levels=0, coder=CONTEXT)
@example(symbols=np.array([[[-(2**31) + 1, 2**31 - 1, 0]]], np.int32), levels=0, coder=LAPLACE)
@example(symbols=np.array([[[-(2**31) + 1, 2**31 - 1], [2**31 - 1, -(2**31) + 1]]], np.int32), levels=1, coder=CONTEXT)
def test_any_int32_symbols_round_trip(symbols: np.ndarray, levels: int, coder: Entropy) -> None:
    bands = wavelet.subbands(symbols.shape[1], symbols.shape[2], levels)
    np.testing.assert_array_equal(decode(coder, encode(coder, symbols, bands), symbols.shape, bands), symbols)


@settings(max_examples=60, deadline=None)
@given(values=hnp.arrays(np.int64, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(-1000, 1000)),
       centre=st.integers(-50, 50))  # fmt: skip
def test_med_prediction_inverts(values: np.ndarray, centre: int) -> None:
    np.testing.assert_array_equal(context.med_reconstruct(context.med_residuals(values, centre), centre), values)


def _real_symbols(real_latents: np.ndarray, step: float) -> tuple[np.ndarray, tuple]:
    coeffs = Wavelet("cdf97", 3).forward(real_latents[:1])
    bands = wavelet.subbands(*coeffs.shape[2:], 3)
    steps = quantize.band_steps(bands, wavelet.synthesis_gains("cdf97", 3), step, np.ones((coeffs.shape[1], 1)))
    return quantize.quantize(coeffs, steps, bands, 0.375)[0], bands


@pytest.mark.parametrize("step", [0.1, 0.5, 2.0])
def test_real_symbols_code_close_to_their_information(real_latents: np.ndarray, step: float) -> None:
    symbols, bands = _real_symbols(real_latents, step)
    for coder in (LAPLACE, CONTEXT):
        payload = encode(coder, symbols, bands)
        np.testing.assert_array_equal(decode(coder, payload, symbols.shape, bands), symbols)
        side = coder.side_info_bytes(payload, symbols.shape[0], bands)
        assert (len(payload) - side) * 8 <= 1.01 * coder.information_bits(symbols, bands) + 64


@pytest.mark.parametrize("step", [0.3, 1.0])
def test_the_context_coder_beats_the_zeroth_order_coder_on_real_symbols(real_latents: np.ndarray, step: float) -> None:
    symbols, bands = _real_symbols(real_latents, step)
    assert len(encode(CONTEXT, symbols, bands)) < 0.97 * len(encode(LAPLACE, symbols, bands))


def test_model_side_information_is_one_byte_per_band(real_latents: np.ndarray) -> None:
    symbols, bands = _real_symbols(real_latents, 0.5)
    payload = encode(LAPLACE, symbols, bands)
    side = LAPLACE.side_info_bytes(payload, symbols.shape[0], bands)
    assert symbols.shape[0] * len(bands) <= side <= symbols.shape[0] * (len(bands) + 5)  # LL centres as varints
    assert (len(payload) - side) % 4 == 0  # then whole 32-bit words


@pytest.mark.parametrize("coder", [LAPLACE, CONTEXT])
def test_all_zero_bands_cost_nothing(coder: Entropy) -> None:
    symbols = np.zeros((4, 16, 16), np.int32)
    bands = wavelet.subbands(16, 16, 2)
    payload = encode(coder, symbols, bands)
    assert len(payload) <= 4 * len(bands) + 9
    np.testing.assert_array_equal(decode(coder, payload, symbols.shape, bands), symbols)


@pytest.mark.parametrize("coder", [LAPLACE, CONTEXT])
def test_damaged_payload_is_detected(coder: Entropy) -> None:
    symbols = np.random.default_rng(1).laplace(0, 3, (2, 16, 16)).round().astype(np.int32)
    bands = wavelet.subbands(16, 16, 2)
    payload = bytearray(encode(coder, symbols, bands))
    with pytest.raises(CorruptStreamError):
        decode(coder, bytes(payload[:-3]), symbols.shape, bands)


def test_a_context_parameter_code_outside_the_grid_is_damage(real_latents: np.ndarray) -> None:
    symbols, bands = _real_symbols(real_latents, 0.5)
    payload = bytearray(encode(CONTEXT, symbols, bands))
    payload[0] = 0x7F
    with pytest.raises(CorruptStreamError, match="out of range"):
        decode(CONTEXT, bytes(payload), symbols.shape, bands)


def test_entropy_stage_validates_its_coder_and_symbols() -> None:
    with pytest.raises(PipelineError, match=r"laplace.*context"):
        Entropy("huffman")
    bands = wavelet.subbands(4, 4, 0)
    with pytest.raises(ValueError, match="int32"):
        Entropy("sequential").forward(np.zeros((1, 1, 4, 4), np.int64), coding_spec((1, 4, 4), bands))
    for coder in ("laplace", "context", "classes", "bands"):
        with pytest.raises(PipelineError, match=rf"'{coder}' entropy coder decodes .* writes no new ones.*sequential"):
            Entropy(coder).forward(np.zeros((1, 1, 4, 4), np.int32), coding_spec((1, 4, 4), bands))


def test_auto_is_the_sequential_coder_for_every_channel_count() -> None:
    """``auto`` is the sequential coder for every channel count; a resolved codec never holds it, and a
    pipeline naming a coder that only decodes is refused when it is resolved."""
    from vaeflow.codec.api import resolve_codec
    from vaeflow.stages import VAE, Hadamard, Quantize

    for channels in (1, 4, 12, 16, 32, 128):
        assert Entropy("auto").fitting(channels) == Entropy("sequential")
    assert Entropy("bands").fitting(4) == Entropy("bands")
    for preset in ("latent-store", "latent-store-fast", "default", "plain", "wide-latent"):
        assert resolve_codec(None, None, preset).entropy == Entropy("sequential")
    legacy = VAE() | Hadamard() | Wavelet() | Quantize() | Entropy("context")
    with pytest.raises(PipelineError, match="writes no new ones"):
        resolve_codec(None, 50, legacy)
    with pytest.raises(PipelineError, match=r"classes.*bands.*sequential.*auto"):
        Entropy("arithmetic")
    with pytest.raises(PipelineError, match="chosen when the codec is resolved"):
        encode(Entropy("auto"), np.zeros((1, 4, 4), np.int32), wavelet.subbands(4, 4, 0))
