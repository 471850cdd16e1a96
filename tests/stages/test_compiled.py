"""The compiled decoders against their references: the class and band coders' ``constriction``
decoders, numpy dequantization and numpy wavelet synthesis. Bit for bit, on real latents, on any
int32 symbols, and on damaged payloads (both raise ``CorruptStreamError``, or both decode the same)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import vaeflow
from vaeflow.codec.api import decompress_latents, open_stream
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages import quantize, wavelet
from vaeflow.stages.coders import bands as bandcoder
from vaeflow.stages.coders import classes as classcoder

from ..helpers import damageable_symbols, damaged

CODERS = pytest.mark.parametrize("coder", [classcoder, bandcoder], ids=["classes", "bands"])


def _decoded(decode, payloads: list[bytes], shape: tuple[int, int, int], bands: tuple) -> np.ndarray | str:
    try:
        return decode(payloads, shape, bands)  # type: ignore[no-any-return]
    except CorruptStreamError:
        return "corrupt"


@pytest.mark.parametrize("preset", ["latent-store", "default"])
@CODERS
def test_real_streams_decode_bit_exactly(photos: list[np.ndarray], preset: str, coder: ModuleType) -> None:
    """Real symbols (a preset's streams, written by the sequential coder) coded by an older coder decode as its
    reference decoder gives them; the compiled dequantization and synthesis give the numpy stages' latents."""
    streams = [vaeflow.compress(image[:200, :300], pipeline=preset) for image in photos]
    latents = decompress_latents(streams)
    for stream, latent in zip(streams, latents, strict=True):
        header, payload, codec = open_stream(stream)
        spec = codec.latent_spec(header.latent_shape)
        symbols = codec.decode_symbols(payload, spec.latent_shape)[0]
        older = coder.encode(symbols, spec.bands)
        decoded = coder.decode_many([older], spec.latent_shape, spec.bands)
        np.testing.assert_array_equal(decoded[0], symbols)
        np.testing.assert_array_equal(decoded, coder.decode_many_reference([older], spec.latent_shape, spec.bands))
        steps, rounding = spec.quantizer_steps, codec.quantize.rounding
        coeffs = quantize.dequantize(symbols[None], steps, spec.bands, rounding)
        assert coeffs.tobytes() == quantize.dequantize_reference(symbols[None], steps, spec.bands, rounding).tobytes()
        name, levels = codec.wavelet.name, codec.wavelet.levels
        mixed = wavelet.synthesis(coeffs, name, levels)
        assert mixed.tobytes() == wavelet.synthesis_reference(coeffs, name, levels).tobytes()
        assert codec.channel.inverse(mixed)[0].tobytes() == latent.tobytes()
    # many payloads of one shape in one call decode as each alone
    header, _, codec = open_stream(streams[0])
    spec = codec.latent_spec(header.latent_shape)
    same = [open_stream(s) for s in streams if open_stream(s)[0].latent_shape == header.latent_shape]
    payloads = [coder.encode(c.decode_symbols(p, spec.latent_shape)[0], spec.bands) for _, p, c in same]
    together = coder.decode_many(payloads, spec.latent_shape, spec.bands)
    for row, payload in zip(together, payloads, strict=True):
        np.testing.assert_array_equal(row, coder.decode_many([payload], spec.latent_shape, spec.bands)[0])


@settings(max_examples=120, deadline=None)
@given(
    symbols=hnp.arrays(
        np.int32,
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 17), st.integers(1, 17)),
        elements=st.one_of(st.integers(-3, 3), st.integers(-5000, 5000), st.integers(-(2**31), 2**31 - 1)),
    ),
    levels=st.integers(0, 4),
)
@CODERS
def test_any_symbols_decode_as_the_reference(coder: ModuleType, symbols: np.ndarray, levels: int) -> None:
    bands = wavelet.subbands(symbols.shape[2], symbols.shape[3], levels)
    payloads = [coder.encode(image, bands) for image in symbols]
    np.testing.assert_array_equal(coder.decode_many(payloads, symbols.shape[1:], bands), symbols)


@settings(max_examples=150, deadline=None)
@given(
    symbols=hnp.arrays(
        np.int32,
        st.tuples(st.integers(1, 20), st.integers(1, 17), st.integers(1, 17)),
        elements=st.one_of(st.integers(-3, 3), st.integers(-5000, 5000), st.integers(-(2**31), 2**31 - 1)),
    ),
    levels=st.integers(0, 4),
)
@example(symbols=np.array([[[2**31 - 1, -(2**31)] * 8] * 8], np.int32), levels=2)  # int32's extremes everywhere
@example(symbols=np.full((17, 9, 13), -(2**31), np.int32), levels=3)  # a wide latent: the second weight set
def test_the_compiled_encoder_writes_the_reference_bytes(symbols: np.ndarray, levels: int) -> None:
    bands = wavelet.subbands(symbols.shape[1], symbols.shape[2], levels)
    assert classcoder.encode(symbols, bands) == classcoder.encode_reference(symbols, bands)


def test_real_latents_encode_to_the_reference_bytes(photos: list[np.ndarray]) -> None:
    for preset in ("latent-store", "default"):
        for image in photos:
            header, payload, codec = open_stream(vaeflow.compress(image[:160, :224], pipeline=preset))
            spec = codec.latent_spec(header.latent_shape)
            symbols = codec.entropy.inverse([payload], spec)[0]
            assert classcoder.encode(symbols, spec.bands) == classcoder.encode_reference(symbols, spec.bands)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), levels=st.integers(1, 3), channels=st.sampled_from([1, 4, 16]))
@CODERS
def test_damaged_payloads_fail_or_decode_as_the_reference(
    coder: ModuleType, data: st.DataObject, levels: int, channels: int
) -> None:
    symbols = damageable_symbols(data, channels)
    bands = wavelet.subbands(12, 20, levels)
    payload, _ = damaged(coder.encode(symbols, bands), data)
    compiled = _decoded(coder.decode_many, [payload], symbols.shape, bands)
    reference = _decoded(coder.decode_many_reference, [payload], symbols.shape, bands)
    if isinstance(reference, str) or isinstance(compiled, str):
        assert compiled == reference
    else:
        np.testing.assert_array_equal(compiled, reference)


def test_a_damaged_payload_among_good_ones_fails_the_call() -> None:
    symbols = np.arange(2 * 8 * 8, dtype=np.int32).reshape(2, 8, 8) % 5 - 2
    bands = wavelet.subbands(8, 8, 2)
    good = classcoder.encode(symbols, bands)
    with pytest.raises(CorruptStreamError, match=r"left over|does not decode|truncated|out of range"):
        classcoder.decode_many([good, good[:-4] + b"\x01\x00\x00\x00", good], symbols.shape, bands)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)),
    name=st.sampled_from(wavelet.WAVELETS),
    levels=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_synthesis_matches_the_reference(shape: tuple[int, ...], name: str, levels: int, seed: int) -> None:
    coeffs = (np.random.default_rng(seed).standard_normal(shape) * 10).astype(np.float32)
    assert (
        wavelet.synthesis(coeffs, name, levels).tobytes() == wavelet.synthesis_reference(coeffs, name, levels).tobytes()
    )


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 30), st.integers(2, 30)),
    levels=st.integers(0, 3),
    rounding=st.sampled_from([0.25, 0.375, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_dequantize_matches_the_reference(shape: tuple[int, ...], levels: int, rounding: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = np.rint(rng.laplace(0, 1.5, shape)).astype(np.int32)
    symbols.flat[rng.integers(0, symbols.size, 3)] = [-(2**31), 2**31 - 1, -(2**31) + 1]  # int32's extremes
    bands = wavelet.subbands(shape[2], shape[3], levels)
    steps = rng.uniform(0.05, 3.0, (shape[0], shape[1], len(bands)))
    steps[rng.random(steps.shape) < 0.1] = np.inf  # bands left out
    got = quantize.dequantize(symbols, steps, bands, rounding)
    assert got.tobytes() == quantize.dequantize_reference(symbols, steps, bands, rounding).tobytes()
