"""What both rANS coders share: quantized-Laplace band models, code lengths, escapes, the decoder.

A band model is the index of a Laplace scale on a logarithmic grid,
``scale = 2 ** ((index - 100) / 12)`` (index 1..255; 0 means an all-zero band), over the
symbol range ``[-R, R]`` with ``R`` set by its scale. A symbol at or beyond the range is
coded as ``±R`` followed by an escape: the bit length of ``|q| - R`` with a uniform model
over 0..32, then the bits below the leading one, so every int32 symbol codes losslessly.
Probabilities in code-length estimates are floored at ``PROBABILITY_FLOOR``, about what
the coder's 24-bit quantized models give the least likely symbol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import constriction
import numpy as np

from vaeflow.foundations.binary import ByteReader
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages.wavelet import Subband

PROBABILITY_FLOOR = 2.0**-24
_ESCAPE_LENGTH_MODEL = constriction.stream.model.Uniform(33)  # bit lengths 0..32
_CHUNK_BITS = 15


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
    p = np.maximum(p, PROBABILITY_FLOOR)
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


def band_model(index: int) -> constriction.stream.model.QuantizedLaplace:
    r = support_of(index)
    return constriction.stream.model.QuantizedLaplace(-r, r, 0.0, scale_of(index))


def decode_values(coder: constriction.stream.stack.AnsCoder, r: int, *model: Any) -> np.ndarray:
    """Symbols of one model (``coder.decode(*model)``) with range ``[-r, r]``, escapes resolved."""
    values = coder.decode(*model).astype(np.int64)
    for pos in np.flatnonzero(np.abs(values) >= r):
        values[pos] += int(np.sign(values[pos])) * decode_escape(coder)
    return values


def laplace_bits(values: np.ndarray, scales: np.ndarray | float) -> np.ndarray:
    """Bits of each signed integer value under a discrete Laplace of ``scales`` (no range limit)."""
    v = np.abs(values).astype(np.float64)
    upper = np.exp(-np.maximum(v - 0.5, 0) / scales)
    lower = np.exp(-(v + 0.5) / scales)
    p = np.where(v == 0, 1 - np.exp(-0.5 / scales), 0.5 * (upper - lower))
    return -np.log2(np.maximum(p, PROBABILITY_FLOOR))  # type: ignore[no-any-return]


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
