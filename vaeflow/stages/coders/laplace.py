"""The zeroth-order coder: one quantized-Laplace model per channel and subband.

Payload: for each channel and subband (coarsest first) one byte, the model index (0 for
a band that is all zero after centring, which codes nothing); LL bands then hold their
integer centre (the rounded median) as a zigzag varint. All bands then share one rANS
stream of 32-bit little-endian words. Models, escapes and the decoder are in ``rans``.
"""

from __future__ import annotations

from collections.abc import Sequence

import constriction
import numpy as np

from vaeflow.foundations.binary import ByteReader, ByteWriter
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages.coders import Payload, Shape, decode_each, rans
from vaeflow.stages.wavelet import Subband


def _band_centre(band: Subband, values: np.ndarray) -> int:
    return int(np.round(np.median(values))) if band.name.startswith("LL") and values.size else 0


def encode(symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes:
    """One image's symbols (C, h, w) int32 -> payload bytes (side information, then ANS words)."""
    side = ByteWriter()
    plan = []
    for c in range(symbols.shape[0]):
        for band in bands:
            raw = symbols[c, band.rows, band.cols].ravel()
            centre = _band_centre(band, raw)
            values = raw.astype(np.int64) - centre
            index = rans.fit_band(values)
            side.u8(index)
            if band.name.startswith("LL"):
                side.svarint(centre)
            if index:
                plan.append((index, values))
    coder = constriction.stream.stack.AnsCoder()
    for index, values in reversed(plan):
        r = rans.support_of(index)
        escapes = np.abs(values[np.abs(values) >= r]) - r
        for excess in reversed(escapes.tolist()):
            rans.encode_escape(coder, int(excess))
        coder.encode_reverse(np.clip(values, -r, r).astype(np.int32), rans.band_model(index))
    words = coder.get_compressed()
    return side.getvalue() + words.astype("<u4").tobytes()


def decode(payload: bytes | memoryview, shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> np.ndarray:
    """Payload bytes -> int32 symbols of ``shape`` (C, h, w). Damage raises CorruptStreamError."""
    reader = ByteReader(payload, "entropy payload")
    layout = rans.read_side_info(reader, shape[0], bands)
    out = np.zeros(shape, np.int32)
    with rans.ans_decoder(reader) as coder:
        for c, band, index, centre in layout:
            if not index:
                out[c, band.rows, band.cols] = centre
                continue
            values = rans.decode_values(coder, rans.support_of(index), rans.band_model(index), band.size) + centre
            if np.abs(values).max() > 2**31 - 1:
                raise CorruptStreamError("decoded symbol is out of the int32 range")
            out[c, band.rows, band.cols] = values.reshape(band.rows.stop - band.rows.start, -1)
    return out


def decode_many(payloads: Sequence[Payload], shape: Shape, bands: tuple[Subband, ...]) -> np.ndarray:
    """Several payloads of one shape -> (N, C, h, w) int32, one at a time."""
    return decode_each(decode, payloads, shape, bands)


def information_bits(symbols: np.ndarray, bands: tuple[Subband, ...]) -> float:
    """Ideal code length in bits of one image's symbols (C, h, w) under this coder's models."""
    total = 0.0
    for c in range(symbols.shape[0]):
        for band in bands:
            raw = symbols[c, band.rows, band.cols].ravel()
            total += rans.zeroth_order_bits(raw.astype(np.int64) - _band_centre(band, raw))
    return total


def side_info_bytes(payload: bytes | memoryview, channels: int, bands: tuple[Subband, ...]) -> int:
    """Bytes of a payload that hold the band models rather than ANS words."""
    reader = ByteReader(payload, "entropy payload")
    rans.read_side_info(reader, channels, bands)
    return reader.pos
