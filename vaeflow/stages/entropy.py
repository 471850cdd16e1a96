"""Entropy coder: rANS (``constriction``) with a compact per-band quantized-Laplace model.

For each channel and subband the payload holds one byte: the index of a Laplace scale on
a logarithmic grid (``scale = 2 ** ((index - 100) / 12)``), or 0 for a band that is all
zero (after centring) and codes nothing. LL bands also hold their integer centre as a
zigzag varint. All
bands then share one ANS stream of 32-bit words, so the per-image overhead is a few bytes.

Each band's model covers ``[-R, R]`` with ``R`` set by its scale. A symbol at or beyond
the range is coded as ``±R`` followed by an escape: the bit length of ``|q| - R`` with a
uniform model over 0..32, then the bits below the leading one, so every int32 symbol
codes losslessly (values are centred, so an excess can reach 2^32 - 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import constriction
import numpy as np

from vaeflow.binary import ByteReader, ByteWriter
from vaeflow.errors import CorruptStreamError, PipelineError
from vaeflow.stages.base import Stage
from vaeflow.stages.wavelet import Subband

CODERS = ("laplace", "context")
_ESCAPE_LENGTH_MODEL = constriction.stream.model.Uniform(33)  # bit lengths 0..32
_CHUNK_BITS = 15


@dataclass(frozen=True)
class ANS(Stage):
    stage_name: ClassVar[str] = "ans"
    input_kind: ClassVar[str] = "symbols"
    output_kind: ClassVar[str] = "streams"

    coder: str = "laplace"

    def __post_init__(self) -> None:
        if self.coder not in CODERS:
            raise PipelineError(f"unknown entropy coder {self.coder!r}; choose one of {CODERS}")


def scale_of(index: int) -> float:
    return 2.0 ** ((index - 100) / 12.0)


def index_of(scale: float) -> int:
    return int(np.clip(round(100 + 12 * math.log2(max(scale, 1e-9))), 1, 255))


def support_of(index: int) -> int:
    """Half-width R of the band model's symbol range."""
    return int(min(2**15, max(8, math.ceil(16 * scale_of(index)))))


def _laplace_cdf(x: np.ndarray, scale: float) -> np.ndarray:
    return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / scale), 1 - 0.5 * np.exp(-np.maximum(x, 0) / scale))


def model_bits(values: np.ndarray, counts: np.ndarray, index: int) -> float:
    """Information content in bits of the given value histogram under a band model (escapes included)."""
    scale, r = scale_of(index), support_of(index)
    clipped = np.clip(values, -r, r).astype(np.float64)
    upper = np.where(clipped >= r, np.inf, clipped + 0.5)
    lower = np.where(clipped <= -r, -np.inf, clipped - 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = _laplace_cdf(upper, scale) - _laplace_cdf(lower, scale)
    p = np.maximum(p, 2.0**-24)
    bits = -(counts * np.log2(p)).sum()
    excess = np.abs(values.astype(np.int64)) - r
    esc = excess >= 0
    if esc.any():
        lengths = np.array([int(e).bit_length() for e in excess[esc]])
        bits += (counts[esc] * (5 + np.maximum(lengths - 1, 0))).sum()
    return float(bits)


def best_index(bits: Callable[[int], float], guess: int) -> tuple[int, float]:
    """Minimise ``bits`` over scale indices 1..255: a coarse scan around ``guess``, then a walk.

    Code length is convex in log(scale) except where probabilities hit the coder's floor,
    so the scan keeps the walk away from that false minimum at tiny scales.
    """
    coarse = range(max(1, guess - 12), min(255, guess + 12) + 1, 6)
    index = min(coarse, key=lambda i: (bits(i), i))
    best = bits(index)
    for direction in (-1, 1):
        while 1 <= index + direction <= 255:
            trial = bits(index + direction)
            if trial >= best:
                break
            index, best = index + direction, trial
    return index, best


def fit_band(values: np.ndarray) -> int:
    """The scale index that codes ``values`` (already centred) in the fewest bits; 0 if all zero."""
    uniq, counts = np.unique(values, return_counts=True)
    if uniq.size == 1 and uniq[0] == 0:
        return 0
    guess = index_of(max(float(np.abs(values).mean()), 0.05))
    return best_index(lambda i: model_bits(uniq, counts, i), guess)[0]


def zeroth_order_bits(values: np.ndarray) -> float:
    """Bits of ``values`` under their best single Laplace model (0 if all zero)."""
    index = fit_band(values)
    return model_bits(*np.unique(values, return_counts=True), index) if index else 0.0


def _band_centre(band: Subband, values: np.ndarray) -> int:
    return int(np.round(np.median(values))) if band.name.startswith("LL") and values.size else 0


def band_model(index: int) -> constriction.stream.model.QuantizedLaplace:
    r = support_of(index)
    return constriction.stream.model.QuantizedLaplace(-r, r, 0.0, scale_of(index))


def decode_values(coder: constriction.stream.stack.AnsCoder, r: int, *model: Any) -> np.ndarray:
    """Symbols of one model (``coder.decode(*model)``) with range ``[-r, r]``, escapes resolved."""
    values = coder.decode(*model).astype(np.int64)
    for pos in np.flatnonzero(np.abs(values) >= r):
        values[pos] += int(np.sign(values[pos])) * decode_escape(coder)
    return values


@contextmanager
def ans_decoder(reader: ByteReader) -> Iterator[constriction.stream.stack.AnsCoder]:
    """An ANS decoder over the rest of ``reader``. Decoding errors, and words left over when the
    caller is done, raise CorruptStreamError."""
    word_bytes = reader.take(reader.remaining)
    if len(word_bytes) % 4:
        raise CorruptStreamError("entropy payload is not a whole number of 32-bit words")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(word_bytes, "<u4").astype(np.uint32))
        yield coder
        if not coder.is_empty():
            raise CorruptStreamError("entropy payload has undecoded data left over")
    except CorruptStreamError:
        raise
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise CorruptStreamError(f"entropy payload does not decode: {exc}") from exc


def encode(symbols: np.ndarray, bands: tuple[Subband, ...], params: ANS) -> bytes:
    """One image's symbols (C, h, w) int32 -> payload bytes (side information, then ANS words)."""
    if symbols.ndim != 3 or symbols.dtype != np.int32:
        raise ValueError(f"expected int32 symbols of shape (C, h, w), got {symbols.dtype} {symbols.shape}")
    if params.coder == "context":
        from vaeflow.stages import context

        return context.encode(symbols, bands)
    side = ByteWriter()
    plan = []
    for c in range(symbols.shape[0]):
        for band in bands:
            raw = symbols[c, band.rows, band.cols].ravel()
            centre = _band_centre(band, raw)
            values = (raw.astype(np.int64) - centre).astype(np.int64)
            index = fit_band(values)
            side.u8(index)
            if band.name.startswith("LL"):
                side.svarint(centre)
            if index:
                plan.append((index, values))
    coder = constriction.stream.stack.AnsCoder()
    for index, values in reversed(plan):
        r = support_of(index)
        escapes = np.abs(values[np.abs(values) >= r]) - r
        for excess in reversed(escapes.tolist()):
            encode_escape(coder, int(excess))
        coder.encode_reverse(np.clip(values, -r, r).astype(np.int32), band_model(index))
    words = coder.get_compressed()
    return side.getvalue() + words.astype("<u4").tobytes()


def encode_escape(coder: constriction.stream.stack.AnsCoder, excess: int) -> None:
    length = excess.bit_length()
    low_bits = max(length - 1, 0)
    chunks = []
    rest = excess & ((1 << low_bits) - 1)
    while low_bits > 0:
        size = min(_CHUNK_BITS, low_bits)
        chunks.append((rest & ((1 << size) - 1), size))
        rest >>= size
        low_bits -= size
    for value, size in chunks:  # decoded last chunk first, so pushed first chunk first
        coder.encode_reverse(value, constriction.stream.model.Uniform(1 << size))
    coder.encode_reverse(length, _ESCAPE_LENGTH_MODEL)


def decode_escape(coder: constriction.stream.stack.AnsCoder) -> int:
    length = int(coder.decode(_ESCAPE_LENGTH_MODEL))
    if length > 32:
        raise CorruptStreamError(f"escape length {length} is out of range")
    low_bits = max(length - 1, 0)
    sizes = []
    while low_bits > 0:
        sizes.append(min(_CHUNK_BITS, low_bits))
        low_bits -= sizes[-1]
    value = 0
    for size in reversed(sizes):
        value = (value << size) | int(coder.decode(constriction.stream.model.Uniform(1 << size)))
    return (1 << (length - 1)) | value if length else 0


def read_side_info(
    reader: ByteReader, channels: int, bands: tuple[Subband, ...]
) -> list[tuple[int, Subband, int, int]]:
    layout = []
    for c in range(channels):
        for band in bands:
            index = reader.u8()
            centre = reader.svarint(2**31 - 1) if band.name.startswith("LL") else 0
            layout.append((c, band, index, centre))
    return layout


def side_info_bytes(payload: bytes | memoryview, channels: int, bands: tuple[Subband, ...], params: ANS) -> int:
    """Bytes of a payload that hold the band models rather than ANS words."""
    reader = ByteReader(payload, "entropy payload")
    if params.coder == "context":
        reader.u8()  # the context weights
    read_side_info(reader, channels, bands)
    return reader.pos


def decode(
    payload: bytes | memoryview, shape: tuple[int, int, int], bands: tuple[Subband, ...], params: ANS
) -> np.ndarray:
    """Payload bytes -> int32 symbols of ``shape`` (C, h, w). Damage raises CorruptStreamError."""
    if params.coder == "context":
        from vaeflow.stages import context

        return context.decode(payload, shape, bands)
    reader = ByteReader(payload, "entropy payload")
    layout = read_side_info(reader, shape[0], bands)
    out = np.zeros(shape, np.int32)
    with ans_decoder(reader) as coder:
        for c, band, index, centre in layout:
            if not index:
                out[c, band.rows, band.cols] = centre
                continue
            values = decode_values(coder, support_of(index), band_model(index), band.size) + centre
            if np.abs(values).max() > 2**31 - 1:
                raise CorruptStreamError("decoded symbol is out of the int32 range")
            out[c, band.rows, band.cols] = values.reshape(band.rows.stop - band.rows.start, -1)
    return out


def information_bits(symbols: np.ndarray, bands: tuple[Subband, ...], params: ANS | None = None) -> float:
    """Ideal code length in bits of one image's symbols (C, h, w) under the coder's own models."""
    if params is not None and params.coder == "context":
        from vaeflow.stages import context

        return context.information_bits(symbols, bands)
    total = 0.0
    for c in range(symbols.shape[0]):
        for band in bands:
            raw = symbols[c, band.rows, band.cols].ravel()
            total += zeroth_order_bits(raw.astype(np.int64) - _band_centre(band, raw))
    return total
