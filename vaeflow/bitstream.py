"""The vaeflow bitstream: magic, version, a checksummed header, a checksummed payload.

The byte-by-byte layout is in docs/format.md. Parsing trusts nothing: every length,
id and size is checked, and any damage raises ``CorruptStreamError``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from vaeflow.binary import ByteReader, ByteWriter
from vaeflow.errors import CorruptStreamError
from vaeflow.stages.channel import TRANSFORMS
from vaeflow.stages.entropy import CODERS
from vaeflow.stages.wavelet import MAX_LEVELS, WAVELETS

MAGIC = b"VAEF"
VERSION = 1
FINGERPRINT_BYTES = 8
MAX_HEADER_BYTES = 1024
DEFAULT_MAX_PIXELS = 1 << 28
FLAG_WEIGHTED = 1
FLAG_TARGET = 2
FLAG_RDO = 4
TARGET_KINDS = ("bpp", "psnr", "latent")
MAX_LATENT_CHANNELS = 1024
MAX_DOWNSAMPLE = 64


@dataclass(frozen=True)
class StreamHeader:
    model: str
    fingerprint: bytes
    latent_channels: int
    downsample: int
    height: int
    width: int
    channel_transform: str
    wavelet: str
    levels: int
    quality: int | None
    step: float | None
    rounding: float
    coder: str
    postfilter_sigma: float
    weighted: bool = False
    target: tuple[str, float, float] | None = None  # rate control: (kind, target, achieved)
    rdo: bool = False  # informational: the encoder ran its rate-distortion pass


def pack(header: StreamHeader, payload: bytes) -> bytes:
    body = ByteWriter()
    body.text(header.model)
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    body.raw(header.fingerprint)
    body.varint(header.latent_channels)
    body.varint(header.downsample)
    body.varint(header.height)
    body.varint(header.width)
    body.u8(TRANSFORMS.index(header.channel_transform))
    body.u8(WAVELETS.index(header.wavelet))
    body.u8(header.levels)
    body.u8(header.quality or 0)
    if header.quality is None:
        body.f32(float(header.step or 0.0))
    body.u8(round(header.rounding * 256))
    body.u8(CODERS.index(header.coder))
    body.u8(round(header.postfilter_sigma * 16))
    flags = (FLAG_WEIGHTED if header.weighted else 0) | (FLAG_TARGET if header.target else 0)
    body.u8(flags | (FLAG_RDO if header.rdo else 0))
    if header.target:
        kind, target, achieved = header.target
        body.u8(TARGET_KINDS.index(kind))
        body.f32(target)
        body.f32(achieved)
    body.varint(len(payload))
    head = ByteWriter()
    head.raw(MAGIC)
    head.u8(VERSION)
    encoded = body.getvalue()
    head.varint(len(encoded))
    head.raw(encoded)
    out = head.getvalue()
    return out + zlib.crc32(out).to_bytes(4, "little") + payload + zlib.crc32(payload).to_bytes(4, "little")


def _pick(names: tuple[str, ...], index: int, what: str) -> str:
    if index >= len(names):
        raise CorruptStreamError(f"stream names {what} #{index}; this version knows {len(names)}")
    return names[index]


def unpack(
    data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[StreamHeader, memoryview]:
    """Check and split a stream into its header and payload."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"a stream is bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    reader = ByteReader(view)
    if bytes(reader.take(min(4, len(view)))) != MAGIC:
        raise CorruptStreamError("not a vaeflow stream (wrong magic number)")
    version = reader.u8()
    if version != VERSION:
        raise CorruptStreamError(f"stream format version {version} is not supported (this vaeflow reads {VERSION})")
    body_len = reader.varint(MAX_HEADER_BYTES)
    body = reader.take(body_len)
    header_end = reader.pos
    if int.from_bytes(reader.take(4), "little") != zlib.crc32(view[:header_end]):
        raise CorruptStreamError("stream header checksum does not match (damaged header)")
    h = ByteReader(body, "stream header")
    model = h.text(64)
    fingerprint = bytes(h.take(FINGERPRINT_BYTES))
    latent_channels, downsample = h.varint(MAX_LATENT_CHANNELS), h.varint(MAX_DOWNSAMPLE)
    height, width = h.varint(1 << 24), h.varint(1 << 24)
    if latent_channels < 1 or downsample < 1:
        raise CorruptStreamError(f"stream claims {latent_channels} latent channels and downsample {downsample}")
    if height < 1 or width < 1 or height * width > max_pixels:
        raise CorruptStreamError(f"stream claims a {height}x{width} image; the limit is {max_pixels} pixels")
    if latent_channels * -(-height // downsample) * -(-width // downsample) > max_pixels:
        raise CorruptStreamError(
            f"stream claims a latent of {latent_channels} channels for {height}x{width}, over the limit"
        )
    channel = _pick(TRANSFORMS, h.u8(), "channel transform")
    wavelet = _pick(WAVELETS, h.u8(), "wavelet")
    levels = h.u8()
    if levels > MAX_LEVELS:
        raise CorruptStreamError(f"stream has {levels} wavelet levels; the maximum is {MAX_LEVELS}")
    quality: int | None = h.u8()
    step = None
    if quality == 0:
        quality, step = None, h.f32()
        if not 1e-6 <= step <= 1e6:
            raise CorruptStreamError(f"stream holds an invalid quantizer step {step}")
    elif quality is not None and quality > 100:
        raise CorruptStreamError(f"stream holds quality {quality}, outside 1..100")
    rounding = h.u8() / 256
    if not 0 < rounding <= 0.5:
        raise CorruptStreamError(f"stream holds an invalid rounding offset {rounding}")
    coder = _pick(CODERS, h.u8(), "entropy coder")
    sigma = h.u8() / 16
    flags = h.u8()
    if flags & ~(FLAG_WEIGHTED | FLAG_TARGET | FLAG_RDO):
        raise CorruptStreamError(f"stream sets unknown flags {flags:#x}")
    target = None
    if flags & FLAG_TARGET:
        target = (_pick(TARGET_KINDS, h.u8(), "rate-control target"), h.f32(), h.f32())
    payload_len = h.varint()
    h.expect_end()
    if reader.remaining != payload_len + 4:
        raise CorruptStreamError(
            f"stream should hold {payload_len + 4} bytes after its header, holds {reader.remaining}"
        )
    payload = reader.take(payload_len)
    if int.from_bytes(reader.take(4), "little") != zlib.crc32(payload):
        raise CorruptStreamError("stream payload checksum does not match (damaged data)")
    header = StreamHeader(
        model,
        fingerprint,
        latent_channels,
        downsample,
        height,
        width,
        channel,
        wavelet,
        levels,
        quality,
        step,
        rounding,
        coder,
        sigma,
        bool(flags & FLAG_WEIGHTED),
        target,
        bool(flags & FLAG_RDO),
    )
    return header, payload


def latent_shape(header: StreamHeader) -> tuple[int, int, int]:
    s = header.downsample
    return (header.latent_channels, -(-header.height // s), -(-header.width // s))


def overhead_bytes(data: bytes) -> int:
    """Bytes of a stream that are header and framing rather than payload."""
    _, payload = unpack(data)
    return len(data) - len(payload)
