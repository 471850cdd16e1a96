"""The stream format: header round trips, framing overhead, and damage of every kind detected."""

import math
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaeflow
from vaeflow.codec import format as stream_format
from vaeflow.codec.api import resolve_codec
from vaeflow.codec.codec import Codec
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages import ChannelTransform, Entropy, Wavelet
from vaeflow.stages.coders import bands as bandcoder
from vaeflow.stages.coders.context import CODES
from vaeflow.stages.entropy import CODERS
from vaeflow.stages.target import TARGET_KINDS
from vaeflow.stages.wavelet import WAVELETS


@pytest.fixture(scope="module")
def stream(photos: list[np.ndarray]) -> bytes:
    return vaeflow.compress(photos[0][:96, :136], quality=50)


def test_header_round_trips(stream: bytes) -> None:
    header, payload = stream_format.unpack(stream)
    assert (header.height, header.width) == (96, 136)
    assert header.model == vaeflow.load_model("default").ref
    assert header.entropy == Entropy("sequential")
    assert (header.quantize.quality, header.quantize.step) == (None, resolve_codec(None, 50).quantize.step)
    assert header.version == stream_format.VERSION == 5 and header.latent_unit == 1  # the sequential coder: format 5
    assert stream_format.pack(header, bytes(payload)) == stream


def test_a_band_coded_stream_packs_in_format_3_not_2() -> None:
    """The band coder writes no new streams; its format-3 streams are made here from its own encoder."""
    codec = resolve_codec(None, 50)
    symbols = codec.run(np.zeros((96, 136, 3), np.uint8)[None], until="quantize")
    header, payload = stream_format.unpack(codec.entropy_code(symbols, [(96, 136)])[0])
    coded = Codec.from_stream(header, payload)[1]
    table = bytes(payload[: len(payload) - len(coded)])  # the allocation table before the coder's payload
    banded_payload = table + bandcoder.encode(symbols[0], codec.bands(symbols.shape[1:]))
    header = replace(header, pipeline=header.pipeline.with_stages(Entropy("bands")))
    assert header.entropy == Entropy("bands") and header.version == 5
    banded = stream_format.pack(replace(header, version=3), bytes(banded_payload))
    assert banded[4] == 3 and vaeflow.info(banded)["format_version"] == 3
    with pytest.raises(ValueError, match="format 2 cannot hold coder 'bands'"):
        stream_format.pack(replace(header, version=2), bytes(banded_payload))
    # a format-2 header naming the band coder's byte code is damage
    head_end = len(banded) - len(banded_payload) - 8
    head = banded[:4] + b"\x02" + banded[5:head_end]
    forged = head + zlib.crc32(head).to_bytes(4, "little") + banded[head_end + 4 :]
    with pytest.raises(CorruptStreamError, match="entropy coder #3; this version knows 3"):
        vaeflow.decompress(forged)


GOLDEN_V1 = sorted((Path(__file__).parents[1] / "golden" / "v1").glob("*.vfl"))


@pytest.mark.parametrize("path", GOLDEN_V1, ids=lambda p: p.stem)
def test_a_v1_header_repacks_as_v1_byte_for_byte(path: Path) -> None:
    data = path.read_bytes()
    header, payload = stream_format.unpack(data)
    assert header.version == 1 and data[4] == 1
    assert stream_format.pack(header, bytes(payload)) == data
    assert vaeflow.info(data)["format_version"] == 1


def test_a_sequential_stream_packs_in_format_5_only(stream: bytes) -> None:
    header, payload = stream_format.unpack(stream)
    for version in (1, 2, 3, 4):
        with pytest.raises(ValueError, match=f"format {version} cannot hold coder 'sequential'"):
            stream_format.pack(replace(header, version=version), bytes(payload))
    # a format-4 header naming the sequential coder's byte code is damage
    head_end = len(stream) - len(payload) - 8
    head = stream[:4] + b"\x04" + stream[5:head_end]
    forged = head + zlib.crc32(head).to_bytes(4, "little") + stream[head_end + 4 :]
    with pytest.raises(CorruptStreamError, match="entropy coder #4; this version knows 4"):
        vaeflow.decompress(forged)


def test_format_1_cannot_carry_what_format_2_added(stream: bytes) -> None:
    header, payload = stream_format.unpack(stream)
    with pytest.raises(ValueError, match="format 1 cannot hold coder 'classes'"):
        stream_format.pack(replace(header, version=1).with_stages(Entropy("classes")), bytes(payload))
    # a v1 stream naming the class coder's byte code is damage, not a class-coded stream
    v1 = GOLDEN_V1[0].read_bytes()
    v1_header, v1_payload = stream_format.unpack(v1)
    assert v1_header.entropy.coder in stream_format.CODER_CODES[: stream_format.CODERS_OF_VERSION[1]]
    forged = stream_format.pack(replace(v1_header, version=2).with_stages(Entropy("classes")), bytes(v1_payload))
    head_end = len(forged) - len(v1_payload) - 8
    head = b"VAEF\x01" + forged[5:head_end]  # the same header as format 1, its checksum made anew
    forged = head + zlib.crc32(head).to_bytes(4, "little") + forged[head_end + 4 :]
    with pytest.raises(CorruptStreamError, match="entropy coder #2; this version knows 2"):
        vaeflow.decompress(forged)


@pytest.mark.parametrize("verify", ["all", "none"])
def test_the_drop_record_round_trips_measured_or_predicted(kodak: list[np.ndarray], verify: str) -> None:
    data = vaeflow.compress(kodak[0][:128, :192], pipeline="latent-store", verify=verify)
    header, payload = stream_format.unpack(data)
    record = header.record
    assert record is not None and record.drop_limit == pytest.approx(0.1) and record.predicted_drop is not None
    assert record.measured == (verify == "all") and (record.drop is None) == (verify == "none")
    if record.drop is not None:
        assert 0 <= record.drop <= 0.1
    target = vaeflow.info(data)["target"]
    assert target["max_psnr_drop"] == pytest.approx(0.1) and target["verified"] == record.measured
    assert target["predicted_psnr_drop"] == pytest.approx(record.predicted_drop)
    assert target["psnr_drop"] == (None if record.drop is None else pytest.approx(record.drop))
    assert stream_format.pack(header, bytes(payload)) == data
    with pytest.raises(ValueError, match="format 3 holds neither a latent unit nor a predicted PSNR drop"):
        stream_format.pack(replace(header, version=3).with_stages(Entropy("bands")), bytes(payload))


def test_format_4_damage_in_its_new_fields_is_caught(stream: bytes) -> None:
    header, payload = stream_format.unpack(stream)
    name = header.model.name.encode()
    at = 6 + 1 + len(name) + 8 + 1 + 1  # magic, version, body length; name, fingerprint, channels, downsample
    assert stream[5] < 128 and stream[at] == 1  # a one-byte body length, and this stream's latent unit
    for unit in (0, stream_format.MAX_LATENT_UNIT + 1):
        head = stream[:at] + bytes([unit]) + stream[at + 1 : 6 + stream[5]]
        forged = head + zlib.crc32(head).to_bytes(4, "little") + stream[len(head) + 4 :]
        with pytest.raises(CorruptStreamError, match=f"latent unit {unit}"):
            vaeflow.decompress(forged)
    wide = stream_format.pack(replace(header, latent_unit=2), bytes(payload))  # a patch model's stream
    assert stream_format.unpack(wide)[0].latent_shape == (12, 12, 18)  # 96 x 136 pixels padded to 16
    with pytest.raises(ValueError, match=r"latent unit 17 is outside 1\.\.16"):
        stream_format.pack(replace(header, latent_unit=17), bytes(payload))


def test_an_impossible_drop_record_is_damage(kodak: list[np.ndarray]) -> None:
    data = vaeflow.compress(kodak[0][:64, :96], pipeline="latent-store")
    header, payload = stream_format.unpack(data)
    assert header.record is not None
    for bad in ({"drop_limit": math.nan}, {"drop_limit": -0.1}, {"predicted_drop": math.inf}, {"drop": math.nan}):
        forged = stream_format.pack(replace(header, record=replace(header.record, **bad)), bytes(payload))
        with pytest.raises(CorruptStreamError, match="impossible PSNR-drop record"):
            vaeflow.decompress(forged)


def test_every_stage_option_has_a_byte_code() -> None:
    """The format owns its code tables; every name a stage accepts must have one."""
    from vaeflow.stages.channel import TRANSFORMS

    assert set(TRANSFORMS) == set(stream_format.CHANNEL_CODES) and set(WAVELETS) == set(stream_format.WAVELET_CODES)
    assert set(CODERS) <= set(stream_format.CODER_CODES) and set(TARGET_KINDS) == set(stream_format.TARGET_CODES)
    assert CODES <= 0x80


def test_header_and_framing_under_one_percent_at_quality_100(kodak: list[np.ndarray]) -> None:
    """At about 0.2 bpp (quality 100 of the default model's scale, 0.09 bpp at its default 90)."""
    for image in kodak:
        data = vaeflow.compress(image, quality=100)
        assert stream_format.overhead_bytes(data) <= 0.01 * len(data), (len(data), stream_format.overhead_bytes(data))


def test_a_hadamard_header_for_a_channel_count_it_cannot_take_is_damage(stream: bytes) -> None:
    header, payload = stream_format.unpack(stream)
    odd = replace(header, model=replace(header.model, latent_channels=3)).with_stages(ChannelTransform("hadamard"))
    with pytest.raises(CorruptStreamError, match="impossible settings"):
        stream_format.unpack(stream_format.pack(odd, bytes(payload)))
    assert stream_format.unpack(stream_format.pack(header.with_stages(Wavelet("haar", 6)), bytes(payload)))


def test_wrong_magic(stream: bytes) -> None:
    with pytest.raises(CorruptStreamError, match="magic"):
        vaeflow.decompress(b"JUNK" + stream[4:])


def test_newer_version_is_refused_by_name(stream: bytes) -> None:
    newer = stream[:4] + bytes([stream_format.VERSION + 1]) + stream[5:]
    with pytest.raises(CorruptStreamError, match=r"version 6 is not supported \(this vaeflow reads 1, 2, 3, 4, 5\)"):
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
            stream_format.unpack(mutate(stream, [("flip", i, 0x40)]))


def test_huge_claimed_shape_is_refused_before_allocation(stream: bytes) -> None:
    header, payload = stream_format.unpack(stream)
    huge = stream_format.pack(replace(header, height=1 << 20, width=1 << 20), bytes(payload))
    with pytest.raises(CorruptStreamError, match="limit"):
        vaeflow.decompress(huge)
