import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaeflow
from vaeflow import bitstream
from vaeflow.errors import CorruptStreamError


@pytest.fixture(scope="module")
def stream(kodak: list[np.ndarray]) -> bytes:
    return vaeflow.compress(kodak[0][:96, :136], quality=50)


def test_header_round_trips(stream: bytes) -> None:
    header, payload = bitstream.unpack(stream)
    assert (header.height, header.width) == (96, 136)
    assert header.model == vaeflow.load_model("default").name
    assert header.fingerprint == vaeflow.load_model("default").fingerprint_bytes
    assert bitstream.pack(header, bytes(payload)) == stream


def test_header_and_framing_under_one_percent_at_quality_50(kodak: list[np.ndarray]) -> None:
    for image in kodak:
        data = vaeflow.compress(image, quality=50)
        assert bitstream.overhead_bytes(data) <= 0.01 * len(data), (len(data), bitstream.overhead_bytes(data))


def test_wrong_magic(stream: bytes) -> None:
    with pytest.raises(CorruptStreamError, match="magic"):
        vaeflow.decompress(b"JUNK" + stream[4:])


def test_newer_version_is_refused_by_name(stream: bytes) -> None:
    newer = stream[:4] + bytes([bitstream.VERSION + 1]) + stream[5:]
    with pytest.raises(CorruptStreamError, match="version 2 is not supported"):
        vaeflow.decompress(newer)


@pytest.mark.parametrize("data", [b"", b"VAEF", b"\x00" * 3, b"VAEF\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"])
def test_tiny_or_garbage_input(data: bytes) -> None:
    with pytest.raises(CorruptStreamError):
        vaeflow.decompress(data)


def test_not_bytes_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        vaeflow.decompress("VAEF")  # type: ignore[arg-type]


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 64), st.integers(0, 255)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, pos, value in mutations:
        i = pos % max(1, len(out))
        if kind == "flip" and out:
            out[i] ^= value
        elif kind == "truncate":
            del out[i:]
        elif kind == "insert":
            out.insert(i, value)
        elif kind == "delete" and out:
            del out[i]
        elif kind == "append":
            out += bytes([value]) * pos
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_any_mutation_raises_corrupt_stream_error(stream: bytes, mutations: list[tuple[str, int, int]]) -> None:
    damaged = mutate(stream, mutations)
    if damaged == stream:
        return
    with pytest.raises(CorruptStreamError):
        vaeflow.decompress(damaged)
    with pytest.raises(CorruptStreamError):
        vaeflow.info(damaged)


def test_every_single_byte_flip_is_caught(stream: bytes) -> None:
    for i in range(len(stream)):
        with pytest.raises(CorruptStreamError):
            bitstream.unpack(mutate(stream, [("flip", i, 0x40)]))


def test_huge_claimed_shape_is_refused_before_allocation(stream: bytes) -> None:
    header, payload = bitstream.unpack(stream)
    from dataclasses import replace

    huge = bitstream.pack(replace(header, height=1 << 20, width=1 << 20), bytes(payload))
    with pytest.raises(CorruptStreamError, match="limit"):
        vaeflow.decompress(huge)
