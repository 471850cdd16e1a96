"""The vaeflow stream: magic, version, a checksummed header, a checksummed payload.

The byte-by-byte layout is in docs/format.md. The header holds the model reference, the
image size and the pipeline of every stage the decoder needs; this module alone maps
them to bytes, with its own tables of byte codes. Parsing trusts nothing: every length, id
and size is checked, and any damage raises ``CorruptStreamError``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

from vaeflow.foundations.binary import ByteReader, ByteWriter
from vaeflow.foundations.errors import CorruptStreamError, PipelineError
from vaeflow.models.registry import FINGERPRINT_BYTES, MAX_PATCH, ModelRef
from vaeflow.stages import (
    STAGE_ORDER,
    VAE,
    ChannelTransform,
    Entropy,
    Pipeline,
    PostFilter,
    Quantize,
    Stage,
    TargetRecord,
    Wavelet,
)
from vaeflow.stages.views import StageViews
from vaeflow.stages.wavelet import MAX_LEVELS

MAGIC = b"VAEF"
VERSION = 5  # what this vaeflow writes: format 4 with the sequential coder (see docs/format.md)
VERSIONS = (1, 2, 3, 4, 5)  # what it reads
MAX_HEADER_BYTES = 1024
MAX_STREAM_PIXELS = 1 << 28  # the largest image a stream may claim, checked before anything is allocated
MAX_LATENT_CHANNELS = 1024
MAX_DOWNSAMPLE = 64
MAX_LATENT_UNIT = MAX_PATCH  # a model's latent patch, the unit its images are padded to
MAX_MODEL_NAME_BYTES = 64

# Byte codes: an index into each table. Never reorder; append only.
CHANNEL_CODES = ("hadamard", "identity")
WAVELET_CODES = ("haar", "cdf53", "cdf97")
CODER_CODES = ("laplace", "context", "classes", "bands", "sequential")
CODERS_OF_VERSION = {1: 2, 2: 3, 3: 4, 4: 4, 5: 5}  # how many of CODER_CODES each format knows
TARGET_CODES = ("bpp", "psnr", "latent")
FLAG_DECODER_ALLOCATION = 1
FLAG_TARGET = 2
FLAG_RDO = 4
FLAG_DROP = 8  # formats 2 to 4: a PSNR-drop record follows the rate-control record
FLAG_MEASURED = 16  # format 4: the drop was measured by decoding (its value follows the predicted one)
FLAGS = {
    1: FLAG_DECODER_ALLOCATION | FLAG_TARGET | FLAG_RDO,
    2: FLAG_DECODER_ALLOCATION | FLAG_TARGET | FLAG_RDO | FLAG_DROP,
    3: FLAG_DECODER_ALLOCATION | FLAG_TARGET | FLAG_RDO | FLAG_DROP,
    4: FLAG_DECODER_ALLOCATION | FLAG_TARGET | FLAG_RDO | FLAG_DROP | FLAG_MEASURED,
    5: FLAG_DECODER_ALLOCATION | FLAG_TARGET | FLAG_RDO | FLAG_DROP | FLAG_MEASURED,
}
ROUNDING_UNITS = 256  # rounding offset in 1/256
SIGMA_UNITS = 16  # post-filter sigma in 1/16 pixel


@dataclass(frozen=True)
class StreamHeader(StageViews):
    """What a stream says about itself: its model, the image's size, the pipeline that decodes it (every
    stage, no target), and any rate-control record."""

    model: ModelRef
    height: int
    width: int
    pipeline: Pipeline
    record: TargetRecord | None = None
    version: int = VERSION
    latent_unit: int = 1  # format 4: the image is padded to a multiple of this many latent samples

    def __post_init__(self) -> None:
        if self.pipeline.names != STAGE_ORDER or self.pipeline.target is not None:
            raise PipelineError(f"a stream header holds every stage {STAGE_ORDER} and no target, got {self.pipeline}")
        if self.entropy.coder not in CODER_CODES:  # "auto", which only a pipeline holds
            raise PipelineError(f"entropy coder {self.entropy.coder!r} is chosen when the codec is resolved")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.model.latent_shape(self.height, self.width, self.latent_unit)

    def with_stages(self, *stages: Stage) -> StreamHeader:
        return replace(self, pipeline=self.pipeline.with_stages(*stages))


def pack(header: StreamHeader, payload: bytes) -> bytes:
    """The stream of ``header`` and ``payload``, in the header's format version."""
    if header.version not in VERSIONS:
        raise ValueError(f"format version {header.version} is not one of {VERSIONS}")
    if CODER_CODES.index(header.entropy.coder) >= CODERS_OF_VERSION[header.version]:
        raise ValueError(f"format {header.version} cannot hold coder {header.entropy.coder!r}")
    if not 1 <= header.latent_unit <= MAX_LATENT_UNIT:
        raise ValueError(f"latent unit {header.latent_unit} is outside 1..{MAX_LATENT_UNIT}")
    drop = header.record is not None and header.record.drop_limit is not None
    if header.version == 1 and drop:
        raise ValueError("format 1 cannot hold a PSNR-drop record")
    if header.version < 4 and (header.latent_unit != 1 or (drop and header.record.predicted_drop is not None)):  # type: ignore[union-attr]
        raise ValueError(f"format {header.version} holds neither a latent unit nor a predicted PSNR drop")
    if header.version >= 4 and drop and header.record.predicted_drop is None:  # type: ignore[union-attr]
        raise ValueError("a format-4 PSNR-drop record holds the predicted drop")
    body = ByteWriter()
    body.text(header.model.name)
    fingerprint = header.model.fingerprint_bytes
    if len(fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    body.raw(fingerprint)
    body.varint(header.model.latent_channels)
    body.varint(header.model.downsample)
    if header.version >= 4:
        body.u8(header.latent_unit)
    body.varint(header.height)
    body.varint(header.width)
    body.u8(CHANNEL_CODES.index(header.channel.transform))
    body.u8(WAVELET_CODES.index(header.wavelet.name))
    body.u8(header.wavelet.levels)
    quantize = header.quantize
    body.u8(quantize.quality or 0)
    if quantize.quality is None:
        body.f32(float(quantize.step or 0.0))
    body.u8(round(quantize.rounding * ROUNDING_UNITS))
    body.u8(CODER_CODES.index(header.entropy.coder))
    body.u8(round(header.postfilter.sigma * SIGMA_UNITS))
    flags = FLAG_DECODER_ALLOCATION if quantize.allocation == "decoder" else 0
    flags |= (FLAG_TARGET if header.record else 0) | (FLAG_RDO if quantize.rdo else 0)
    record = header.record
    flags |= FLAG_DROP if drop else 0
    flags |= FLAG_MEASURED if drop and header.version >= 4 and record.drop is not None else 0  # type: ignore[union-attr]
    body.u8(flags)
    if record:
        body.u8(TARGET_CODES.index(record.kind))
        body.f32(record.value)
        body.f32(record.achieved)
        if drop and header.version >= 4:
            body.f32(record.drop_limit or 0.0)
            body.f32(record.predicted_drop or 0.0)
            if record.drop is not None:
                body.f32(record.drop)
        elif drop:
            body.f32(record.drop_limit or 0.0)
            body.f32(record.drop if record.drop is not None else 0.0)
    body.varint(len(payload))
    head = ByteWriter()
    head.raw(MAGIC)
    head.u8(header.version)
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
    data: bytes | bytearray | memoryview, max_pixels: int = MAX_STREAM_PIXELS
) -> tuple[StreamHeader, memoryview]:
    """Check and split a stream into its header and payload."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"a stream is bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    reader = ByteReader(view)
    if bytes(reader.take(min(4, len(view)))) != MAGIC:
        raise CorruptStreamError("not a vaeflow stream (wrong magic number)")
    version = reader.u8()
    if version not in VERSIONS:
        raise CorruptStreamError(
            f"stream format version {version} is not supported (this vaeflow reads {', '.join(map(str, VERSIONS))})"
        )
    body_len = reader.varint(MAX_HEADER_BYTES)
    body = reader.take(body_len)
    header_end = reader.pos
    if int.from_bytes(reader.take(4), "little") != zlib.crc32(view[:header_end]):
        raise CorruptStreamError("stream header checksum does not match (damaged header)")
    h = ByteReader(body, "stream header")
    name = h.text(MAX_MODEL_NAME_BYTES)
    fingerprint = bytes(h.take(FINGERPRINT_BYTES)).hex()
    latent_channels, downsample = h.varint(MAX_LATENT_CHANNELS), h.varint(MAX_DOWNSAMPLE)
    unit = h.u8() if version >= 4 else 1
    height, width = h.varint(1 << 24), h.varint(1 << 24)
    if latent_channels < 1 or downsample < 1 or not 1 <= unit <= MAX_LATENT_UNIT:
        raise CorruptStreamError(
            f"stream claims {latent_channels} latent channels, downsample {downsample} and latent unit {unit}"
        )
    if height < 1 or width < 1 or height * width > max_pixels:
        raise CorruptStreamError(f"stream claims a {height}x{width} image; the limit is {max_pixels} pixels")
    step_px = downsample * unit
    if latent_channels * -(-height // step_px) * -(-width // step_px) * unit * unit > max_pixels:
        raise CorruptStreamError(
            f"stream claims a latent of {latent_channels} channels for {height}x{width}, over the limit"
        )
    transform = _pick(CHANNEL_CODES, h.u8(), "channel transform")
    wavelet = _pick(WAVELET_CODES, h.u8(), "wavelet")
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
    rounding = h.u8() / ROUNDING_UNITS
    if not 0 < rounding <= 0.5:
        raise CorruptStreamError(f"stream holds an invalid rounding offset {rounding}")
    coder = _pick(CODER_CODES[: CODERS_OF_VERSION[version]], h.u8(), "entropy coder")
    sigma = h.u8() / SIGMA_UNITS
    flags = h.u8()
    if (
        flags & ~FLAGS[version]
        or (flags & FLAG_DROP and not flags & FLAG_TARGET)
        or (flags & FLAG_MEASURED and not flags & FLAG_DROP)
    ):
        raise CorruptStreamError(f"stream sets unknown flags {flags:#x}")
    record: tuple[str, float, float, float | None, float | None, float | None] | None = None
    if flags & FLAG_TARGET:
        kind, value, achieved = _pick(TARGET_CODES, h.u8(), "rate-control target"), h.f32(), h.f32()
        if not flags & FLAG_DROP:
            record = (kind, value, achieved, None, None, None)
        elif version >= 4:  # the limit, the predicted drop, then the measured one if it was measured
            limit, predicted = h.f32(), h.f32()
            measured = h.f32() if flags & FLAG_MEASURED else None
            if not (math.isfinite(limit) and limit > 0 and math.isfinite(predicted) and math.isfinite(measured or 0)):
                raise CorruptStreamError(
                    f"stream holds an impossible PSNR-drop record {limit}, {predicted}, {measured}"
                )
            record = (kind, value, achieved, limit, measured, predicted)
        else:  # formats 2 and 3: every drop was measured
            record = (kind, value, achieved, h.f32(), h.f32(), None)
    payload_len = h.varint()
    h.expect_end()
    if reader.remaining != payload_len + 4:
        raise CorruptStreamError(
            f"stream should hold {payload_len + 4} bytes after its header, holds {reader.remaining}"
        )
    payload = reader.take(payload_len)
    if int.from_bytes(reader.take(4), "little") != zlib.crc32(payload):
        raise CorruptStreamError("stream payload checksum does not match (damaged data)")
    try:
        channel = ChannelTransform(transform)
        channel.check(latent_channels)
        quantizer = Quantize(
            quality=quality,
            step=step,
            rounding=rounding,
            allocation="decoder" if flags & FLAG_DECODER_ALLOCATION else "uniform",
            rdo=bool(flags & FLAG_RDO),
        )
        stages = (PostFilter(sigma), VAE(name), channel, Wavelet(wavelet, levels), quantizer, Entropy(coder))
        header = StreamHeader(
            model=ModelRef(name, fingerprint, latent_channels, downsample),
            height=height,
            width=width,
            pipeline=_complete(Pipeline(stages)),
            record=TargetRecord(*record) if record else None,
            version=version,
            latent_unit=unit,
        )
    except PipelineError as exc:
        raise CorruptStreamError(f"stream header holds impossible settings: {exc}") from exc
    return header, payload


def _complete(pipeline: Pipeline) -> Pipeline:
    """The stages a stream records, with any it does not record at their pass-through."""
    return pipeline if pipeline.names == STAGE_ORDER else pipeline.completed()


def overhead_bytes(data: bytes) -> int:
    """Bytes of a stream that are header and framing rather than payload."""
    _, payload = unpack(data)
    return len(data) - len(payload)
