"""The sequential coder (every new stream's): exact round trips of real symbols (arbitrary int32 symbols in
``test_coder_classes``, with the other coders), damage that raises ``CorruptStreamError``, its tables pinned,
and its size against the class coder."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vaeflow
from vaeflow.codec.api import open_stream
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages import wavelet
from vaeflow.stages.coders import classes as classcoder
from vaeflow.stages.coders import sequential

from ..helpers import damageable_symbols, damaged
from .test_coder_classes import QUALITIES, photo_symbols  # noqa: F401  (a fixture)


def _real(photos: list[np.ndarray], preset: str) -> list[tuple[np.ndarray, tuple]]:
    """Symbols of the default model's streams of real photo crops (odd sizes included)."""
    out = []
    for image, (h, w) in zip(photos, [(200, 300), (136, 184), (97, 251)], strict=False):
        header, payload, codec = open_stream(vaeflow.compress(image[:h, :w], pipeline=preset))
        spec = codec.latent_spec(header.latent_shape)
        out.append((codec.decode_symbols(payload, spec.latent_shape)[0], spec.bands))
    return out


@pytest.mark.parametrize("preset", ["latent-store", "default"])
def test_real_latents_round_trip_alone_and_together(photos: list[np.ndarray], preset: str) -> None:
    real = _real(photos, preset)
    for symbols, bands in real:
        payload = sequential.encode(symbols, bands)
        np.testing.assert_array_equal(sequential.decode(payload, symbols.shape, bands), symbols)
        bits = sequential.information_bits(symbols, bands)
        side = sequential.side_info_bytes(payload, symbols.shape[0], bands)
        assert 8 * (len(payload) - side) == pytest.approx(bits, rel=0.02, abs=64)
    symbols, bands = real[0]
    batch = np.stack([symbols, -symbols, symbols // 2, np.zeros_like(symbols)])
    together = sequential.decode_many([sequential.encode(s, bands) for s in batch], symbols.shape, bands)
    np.testing.assert_array_equal(together, batch)


def test_the_same_symbols_give_the_same_bytes_and_tables_are_pinned() -> None:
    """The models are part of the format: their digest is fixed, and so are one payload's bytes."""
    m = sequential.models()
    digest = hashlib.sha256()
    for array in (m.packed, m.lookup, m.class_of, m.bin_of):
        digest.update(np.ascontiguousarray(array).tobytes())
    assert digest.hexdigest()[:16] == "71b841b98f83425b"
    rng = np.random.default_rng(7)
    symbols = np.rint(rng.laplace(0, 3.0, (4, 24, 40)) * rng.random((4, 1, 1)) * 2).astype(np.int32)
    bands = wavelet.subbands(24, 40, 3)
    payload = sequential.encode(symbols, bands)
    assert payload == sequential.encode(symbols.copy(), bands)
    assert hashlib.sha256(payload).hexdigest()[:16] == "2aba16eb38f905ba"


@settings(max_examples=300, deadline=None)
@given(data=st.data(), levels=st.integers(0, 3), channels=st.sampled_from([1, 4, 16]))
def test_damage_raises_or_decodes_and_truncation_always_raises(data: st.DataObject, levels: int, channels: int) -> None:
    symbols = damageable_symbols(data, channels)
    bands = wavelet.subbands(12, 20, levels)
    payload, how = damaged(sequential.encode(symbols, bands), data)
    try:
        out = sequential.decode(payload, symbols.shape, bands)
    except CorruptStreamError:
        return
    assert how in ("flip", "byte"), how  # bytes missing or left over are always found
    assert out.shape == symbols.shape and out.dtype == np.int32


def test_no_damage_decodes_to_a_value_beyond_int32() -> None:
    """-2**31 is the one magnitude of 2**31 or more a stream may hold: a flipped bit of its payload raises, or
    decodes another negative value; a magnitude beyond 2**31 with its minus sign once wrapped around to a
    large positive value."""
    symbols = np.full((1, 1, 1), -(2**31), np.int32)
    bands = wavelet.subbands(1, 1, 0)
    payload = sequential.encode(symbols, bands)
    decoded = []
    for at in range(len(payload)):
        for bit in range(8):
            damaged = bytearray(payload)
            damaged[at] ^= 1 << bit
            try:
                decoded.append(int(sequential.decode(bytes(damaged), symbols.shape, bands)[0, 0, 0]))
            except CorruptStreamError:
                continue
    assert decoded and all(value < 0 for value in decoded), decoded


def test_a_damaged_payload_among_good_ones_fails_the_call() -> None:
    symbols = np.arange(2 * 8 * 8, dtype=np.int32).reshape(2, 8, 8) % 5 - 2
    bands = wavelet.subbands(8, 8, 2)
    good = sequential.encode(symbols, bands)
    with pytest.raises(CorruptStreamError, match="entropy payload"):
        sequential.decode_many([good, good[:-1], good], symbols.shape, bands)
    assert sequential.decode_many([], symbols.shape, bands).shape == (0, *symbols.shape)


def test_size_against_the_class_coder(photo_symbols: dict) -> None:  # noqa: F811
    """On f8c4-v1's symbols, whose neighbours say much about a coefficient's scale, the rows above and the
    previous channel describe them within a few percent of the class coder's checkerboard contexts."""
    for quality in QUALITIES:
        ours = sum(len(sequential.encode(s, b)) for s, b in photo_symbols[quality])
        theirs = sum(len(classcoder.encode(s, b)) for s, b in photo_symbols[quality])
        assert 0.9 * theirs <= ours <= 1.08 * theirs, (quality, ours, theirs)
