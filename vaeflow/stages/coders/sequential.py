"""The sequential coder (``Entropy(coder="sequential")``, stream format 5): every new stream's coder.

Coefficients are coded one after the other, band by band (coarsest first, the LL band included),
channel by channel within a band, in raster order within a channel's band. Each coefficient's
model is one of 64 fixed tables (discretised Laplace distributions of its magnitude on a
quarter-octave grid of scales, for the stream's zero-bin width), chosen by its *activity*, an
integer from magnitudes decoded before it, never from its own row (so that a row's tables are
known before the row decodes and the decoding loop carries no dependence but the rANS state):

    activity = 2 |up| + |up-left| + |up-right| + |two rows up| + 3 |same place, previous channel|
               + 2 |parent (next coarser band, same orientation and channel)|

(magnitudes clipped to 4096; neighbours outside the band count 0), binned in eighth octaves with one
of two strengths (the stream's choice) and shifted by the band's index from the stream. A magnitude
is coded as a *token* (0..15 itself; above, its bit length and the bit below its leading one) by
rANS with 12-bit probabilities, 32-bit state and 16-bit words; the token's remaining bits and the
sign go to a separate raw bit stream. Two rANS states take the symbols in turn. The decoder is one
compiled loop with no search and no data-dependent branch on the common path: a lookup table per
class gives the token of a state's low 12 bits.
``docs/format.md`` describes the payload byte by byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numba
import numpy as np

from vaeflow.foundations.binary import ByteReader
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages.coders.classes_model import DEADZONES, N_CLASSES, _exp, _log2, class_scale
from vaeflow.stages.wavelet import Subband, subbands

__all__ = ["decode", "decode_many", "encode", "information_bits", "side_info_bytes"]

PRECISION = 12  # probabilities in 1/4096
TOTAL = 1 << PRECISION
RANS_LOW = 1 << 16  # the state stays in [2**16, 2**32); words are 16 bits
DIRECT = 16  # magnitudes below this are their own token
MAX_BITS = 32  # magnitudes up to 2**31 (-2**31's)
TOKENS = DIRECT + 2 * (MAX_BITS - 4)  # 72: 0..15, then two per bit length 5..32
CLIP = 4096  # magnitudes enter activities clipped to this
MAX_ACTIVITY = 10 * CLIP  # the activity's weights sum to 10
CONTEXTS = (1024, 16384)  # a = 0 counts as a / 256 of this: strong and weak contexts (parameter bit 3)
BINS = 112  # eighth-octave bins of 256 * activity + CONTEXTS[i] (2**10 .. 2**24)
INDEX_OFFSET = 104  # class = clip((bin + band index - INDEX_OFFSET) >> 1, 0, 63)
ZERO_BAND = 0  # a band index of 0: the band is all zero and not coded
INDEX_START = 128  # the first band index is coded as its difference from this
ZONES = DEADZONES  # the zero bin's half-width, in steps, a stream may name (byte 0 of the payload)
FIRST_ZONE = 5  # 10/16: the zero bin of rounding 0.375, where the encoder's search starts

jit = numba.njit(cache=True, nogil=True)
inline = numba.njit(cache=True, nogil=True, inline="always")


# --- models -------------------------------------------------------------------------------------


def _token_bounds() -> np.ndarray:
    """Each token's smallest magnitude, then 2**31."""
    lows = list(range(DIRECT))
    for bits in range(5, MAX_BITS + 1):
        lows += [1 << (bits - 1), 3 << (bits - 2)]
    return np.array([*lows, 1 << MAX_BITS], np.int64)


TOKEN_LOWS = _token_bounds()
RAW_BITS = np.array([0] * DIRECT + [b - 2 for b in range(5, MAX_BITS + 1) for _ in (0, 1)], np.int64)


def _token_probabilities(k: int, zero_half_width: float) -> np.ndarray:
    """P(token) of class k: P(|v| >= a) = r**(a - 1 + z) for a >= 1, with r = e**(-1/scale) and z the
    zero bin's half-width (the class coder's Laplace, both signs together); each token's is P at its
    smallest magnitude less P at the next token's, the last token's P at its own."""
    s, z = class_scale(k), zero_half_width
    lows = TOKEN_LOWS.astype(np.float64)
    tail = np.where(lows > 0, _exp(np.maximum(-(lows - 1.0 + z) / s, -700.0)), 1.0)  # P(|v| >= low)
    return tail[:-1] - np.append(tail[1:-1], 0.0)  # type: ignore[no-any-return]


def _frequencies(probabilities: np.ndarray) -> np.ndarray:
    """Integer frequencies summing to 2**12, each at least 1: 1 + floor((p / sum p) * (4096 - 72)), what is
    left to the first of the most frequent tokens."""
    spare = TOTAL - TOKENS
    freq = 1 + np.floor(probabilities / probabilities.sum() * spare).astype(np.int64)
    freq[int(np.argmax(freq))] += TOTAL - int(freq.sum())
    return freq


@dataclass(frozen=True)
class Models:
    """Every zone's 64 tables: frequencies, starts, lookups (state's low 12 bits -> token), costs."""

    packed: np.ndarray  # (zones, classes, tokens) int32: start | freq << 12
    lookup: np.ndarray  # (zones, classes, 4096) uint8
    costs: np.ndarray  # (zones, classes, tokens) int64: bits * 2**16 of the token, its raw bits and sign
    class_of: np.ndarray  # (256, BINS) uint8: a band index's class of each activity bin
    bin_of: np.ndarray  # (contexts, MAX_ACTIVITY + 1) uint8: each activity's bin


@lru_cache(maxsize=1)
def models() -> Models:
    zones, classes = len(ZONES), N_CLASSES
    packed = np.empty((zones, classes, TOKENS), np.int32)
    lookup = np.empty((zones, classes, TOTAL), np.uint8)
    costs = np.empty((zones, classes, TOKENS), np.int64)
    extra = RAW_BITS + (TOKEN_LOWS[:-1] > 0)  # raw bits and the sign
    for zi, z in enumerate(ZONES):
        for k in range(classes):
            freq = _frequencies(_token_probabilities(k, z))
            start = np.concatenate([[0], np.cumsum(freq)[:-1]])
            packed[zi, k] = start | (freq << PRECISION)
            lookup[zi, k] = np.repeat(np.arange(TOKENS, dtype=np.uint8), freq)
            costs[zi, k] = np.rint((PRECISION - _log2(freq.astype(np.float64)) + extra) * 65536.0).astype(np.int64)
    x = np.arange(MAX_ACTIVITY + 1, dtype=np.int64)[None, :] * 256 + np.array(CONTEXTS, np.int64)[:, None]
    _, exponent = np.frexp(x.astype(np.float64))  # exact: x < 2**53
    e = exponent.astype(np.int64) - 1
    bin_of = (8 * e + ((x >> (e - 3)) & 7) - 80).astype(np.uint8)
    index = np.arange(256, dtype=np.int64)[:, None]
    class_of = np.clip((np.arange(BINS)[None, :] + index - INDEX_OFFSET) >> 1, 0, classes - 1).astype(np.uint8)
    for array in (packed, lookup, costs, class_of, bin_of):
        array.setflags(write=False)
    return Models(packed, lookup, costs, class_of, bin_of)


def _parents(bands: tuple[Subband, ...]) -> np.ndarray:
    """Each band's parent (the band of the same orientation one level coarser) in ``bands``, or -1 (LL bands,
    the coarsest level's details)."""
    where = {b.name: i for i, b in enumerate(bands)}
    return np.array([where.get(f"{b.name[:2]}{b.level + 1}", -1) if b.name[:2] != "LL" else -1 for b in bands],
                    np.int64).reshape(-1)  # fmt: skip


def _boxes(bands: tuple[Subband, ...]) -> np.ndarray:
    return np.array([[b.rows.start, b.rows.stop, b.cols.start, b.cols.stop] for b in bands], np.int64).reshape(-1, 4)


# --- shared steps -------------------------------------------------------------------------------


@inline
def _activity(plane: np.ndarray, c: int, r: int, k: int) -> int:
    """The activity of position (r, k) of channel c from the bordered magnitudes ``plane`` (C, H + 2, W + 2):
    the row above (three places), two rows above, the previous channel; never the row being coded."""
    a = 2 * plane[c, r + 1, k + 1] + plane[c, r + 1, k] + plane[c, r + 1, k + 2] + plane[c, r, k + 1]
    if c > 0:
        a += 3 * plane[c - 1, r + 2, k + 1]
    return a


@inline
def _parent_row(out: np.ndarray, image: np.ndarray, boxes: np.ndarray, parent: int, c: int, r: int,
                cols: int) -> None:  # fmt: skip
    """``out[:cols]``: 2 |parent| (clipped) of row r's positions: the coefficient of the band of the same
    orientation one level coarser, same channel, at (r // 2, k // 2) clamped into it (decoded before this
    band); 0 for bands without one."""
    if parent < 0:
        for k in range(cols):
            out[k] = 0
        return
    pr = min(boxes[parent, 0] + (r >> 1), boxes[parent, 1] - 1)
    pk0, pk1 = boxes[parent, 2], boxes[parent, 3]
    for k in range(cols):
        out[k] = 2 * min(abs(np.int64(image[c, pr, min(pk0 + (k >> 1), pk1 - 1)])), CLIP)  # type: ignore[operator]


@inline
def _put_bits(raw: np.ndarray, n_raw: int, acc: np.uint64, n_acc: int, bits: int, n: int) -> tuple[int, Any, int]:
    """Append ``n`` bits (least significant first) to the raw bytes: (bytes written, pending bits, their count)."""
    acc |= np.uint64(bits) << np.uint64(n_acc)
    n_acc += n
    while n_acc >= 8:
        raw[n_raw] = np.uint8(acc & np.uint64(255))
        n_raw += 1
        acc >>= np.uint64(8)
        n_acc -= 8
    return n_raw, acc, n_acc


@inline
def _read_bit(data: np.ndarray, rp: int, r_end: int, acc: Any, n_acc: int) -> tuple[Any, int, Any, int]:
    """The next raw bit (-1 past the end), and the reader's position, pending bits and their count."""
    if n_acc == 0:
        if rp >= r_end:
            return -1, rp, acc, n_acc
        acc, n_acc = np.int64(data[rp]), 8
        rp += 1
    return acc & 1, rp, acc >> 1, n_acc - 1


@inline
def _index_code(delta: int) -> tuple[int, int]:
    """A band index's difference from the one before it: zigzagged to u, then u + 1 as n zero bits, a one
    and its n bits below the leading one, read first to last (least significant bit first): (bits, count)."""
    u = 2 * delta if delta >= 0 else -2 * delta - 1
    v = u + 1
    n = 0
    while (v >> (n + 1)) > 0:
        n += 1
    return (1 << n) | ((v & ((1 << n) - 1)) << (n + 1)), 2 * n + 1


@inline
def _token(z: Any) -> tuple[Any, Any, int]:
    """A magnitude's token, its raw bits and how many."""
    if z < DIRECT:
        return z, 0, 0
    bits = 5
    while (z >> bits) > 0:
        bits += 1
    n = bits - 2
    return DIRECT + 2 * (bits - 5) + ((z >> n) & 1), z & ((1 << n) - 1), n


# --- encoder ------------------------------------------------------------------------------------


@inline
def _cost(counts: np.ndarray, cells: np.ndarray, n_cells: int, cost: np.ndarray, class_of: np.ndarray,
          index: int) -> int:  # fmt: skip
    """The cost of a band's (bin, token) counts under band index ``index``."""
    s = 0
    classes = class_of[index]
    for j in range(n_cells):
        s += counts[j] * cost[classes[cells[j, 0]], cells[j, 1]]
    return s


@inline
def _search(counts: np.ndarray, cells: np.ndarray, n_cells: int, cost: np.ndarray, class_of: np.ndarray,
            centre: int, stride: int) -> tuple[int, int]:  # fmt: skip
    """The band index (1..255) of least cost, searched from ``centre`` in halving strides: (index, cost)."""
    best = _cost(counts, cells, n_cells, cost, class_of, centre)
    while stride > 0:
        base = centre
        for index in (base - stride, base + stride):
            if 1 <= index <= 255:
                s = _cost(counts, cells, n_cells, cost, class_of, index)
                if s < best or (s == best and index < centre):
                    best, centre = s, index
        stride >>= 1
    return centre, best


@jit
def _cells(bins: np.ndarray, tokens: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each band-and-channel's distinct (bin, token) pairs and their counts: (cells, counts, first cell of
    each set)."""
    total = bins.size
    slot = np.full(BINS * TOKENS, -1, np.int64)
    cells = np.empty((total, 2), np.int64)
    counts = np.empty(total, np.int64)
    first = np.zeros(sizes.size + 1, np.int64)
    at, n_all = 0, 0
    for i in range(sizes.size):
        start = n_all
        for j in range(at, at + sizes[i]):
            cell = bins[j] * TOKENS + tokens[j]
            if slot[cell] < 0:
                slot[cell] = n_all
                cells[n_all, 0], cells[n_all, 1] = bins[j], tokens[j]
                counts[n_all] = 0
                n_all += 1
            counts[slot[cell]] += 1
        for j in range(start, n_all):
            slot[cells[j, 0] * TOKENS + cells[j, 1]] = -1
        first[i + 1] = n_all
        at += sizes[i]
    return cells, counts, first


@jit
def _plan(symbols: np.ndarray, boxes: np.ndarray, parents: np.ndarray, costs: np.ndarray, class_of: np.ndarray,
          bin_of: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, int]:  # fmt: skip
    """The parameter byte (zone and context) and band indices (bands x channels) that cost least, each
    symbol's class (coding order; -1 where not coded), and the cost in bits * 2**16.

    Each band's indices of least cost at the first zone under either context (the cheaper context kept),
    the zone of least cost at those indices, then the indices refined for that zone."""
    channels = symbols.shape[0]
    n_bands = boxes.shape[0]
    total = symbols.size
    activities = np.empty(total, np.int64)
    tokens = np.empty(total, np.int64)
    sizes = np.empty(n_bands * channels, np.int64)
    row = np.empty(symbols.shape[2], np.int64)
    at = 0
    for b in range(n_bands):
        r0, r1, k0, k1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        plane = np.zeros((channels, r1 - r0 + 2, k1 - k0 + 2), np.int64)
        for c in range(channels):
            sizes[b * channels + c] = (r1 - r0) * (k1 - k0)
            for r in range(r1 - r0):
                _parent_row(row, symbols, boxes, parents[b], c, r, k1 - k0)
                for k in range(k1 - k0):
                    z = abs(np.int64(symbols[c, r0 + r, k0 + k]))
                    activities[at] = _activity(plane, c, r, k) + row[k]
                    tokens[at] = _token(z)[0]
                    plane[c, r + 2, k + 1] = min(z, CLIP)
                    at += 1
    n_sets = sizes.size
    best_context, best_total = 0, -1
    bins = np.empty(total, np.uint8)
    indices = np.zeros(n_sets, np.int64)
    trial = np.zeros(n_sets, np.int64)
    for context in range(bin_of.shape[0]):
        for j in range(total):
            bins[j] = bin_of[context, activities[j]]
        cells, counts, first = _cells(bins, tokens, sizes)
        context_total = 0
        for i in range(n_sets):
            lo, hi = first[i], first[i + 1]
            trial[i] = ZERO_BAND
            if hi - lo > 1 or (hi > lo and cells[lo, 1] != 0):
                centre, stride = 128, 64
                if i % channels and trial[i - 1] != ZERO_BAND:  # from the previous channel's index, nearby
                    centre, stride = trial[i - 1], 8
                trial[i], cost = _search(counts[lo:hi], cells[lo:hi], hi - lo, costs[FIRST_ZONE], class_of, centre,
                                         stride)  # fmt: skip
                context_total += cost
        if best_total < 0 or context_total < best_total:
            best_context, best_total = context, context_total
            indices[:] = trial
            best_cells, best_counts, best_first = cells, counts, first
    cells, counts, first = best_cells, best_counts, best_first
    best_zone, best_total = 0, -1
    for zone in range(costs.shape[0]):
        zone_total = 0
        for i in range(n_sets):
            if indices[i] != ZERO_BAND:
                lo, hi = first[i], first[i + 1]
                zone_total += _cost(counts[lo:hi], cells[lo:hi], hi - lo, costs[zone], class_of, indices[i])
        if best_total < 0 or zone_total < best_total:
            best_zone, best_total = zone, zone_total
    best_total = 0
    for i in range(n_sets):
        if indices[i] != ZERO_BAND:
            lo, hi = first[i], first[i + 1]
            indices[i], cost = _search(counts[lo:hi], cells[lo:hi], hi - lo, costs[best_zone], class_of, indices[i], 4)
            best_total += cost
    classes = np.empty(total, np.int64)
    at = 0
    for i in range(n_sets):
        for j in range(at, at + sizes[i]):
            classes[j] = class_of[indices[i], bin_of[best_context, activities[j]]] if indices[i] != ZERO_BAND else -1
        at += sizes[i]
    return best_zone | best_context << 3, indices.reshape(n_bands, channels), classes, best_total


@jit
def _write(symbols: np.ndarray, boxes: np.ndarray, parameters: int, indices: np.ndarray, classes: np.ndarray,
           packed: np.ndarray) -> np.ndarray:  # fmt: skip
    """The payload: the parameter byte, indices, the rANS part's length and words, the raw bits."""
    zone = parameters & 7
    channels = symbols.shape[0]
    total = symbols.size
    raw = np.empty(total * 5 + 3 * indices.size + 8, np.uint8)
    n_raw, acc, n_acc = 0, np.uint64(0), 0
    previous = INDEX_START
    for j in range(indices.size):  # the band indices: Exp-Golomb codes of their zigzagged differences
        bits, n = _index_code(indices.flat[j] - previous)
        previous = indices.flat[j]
        n_raw, acc, n_acc = _put_bits(raw, n_raw, acc, n_acc, bits, n)
    ops = np.empty(total, np.int64)
    n_ops = 0
    at = 0
    for b in range(boxes.shape[0]):
        r0, r1, k0, k1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        for c in range(channels):
            for r in range(r0, r1):
                for k in range(k0, k1):
                    if classes[at] >= 0:
                        v = np.int64(symbols[c, r, k])
                        z = abs(v)
                        token, bits, n = _token(z)
                        ops[n_ops] = packed[zone, classes[at], token]
                        n_ops += 1
                        if z:
                            bits |= np.int64(v < 0) << n  # type: ignore[assignment]
                            n += 1
                        n_raw, acc, n_acc = _put_bits(raw, n_raw, acc, n_acc, bits, n)
                    at += 1
    if n_acc:
        raw[n_raw] = np.uint8(acc & np.uint64(255))
        n_raw += 1
    words = np.empty(n_ops + 2, np.uint16)
    n_words = 0
    states = np.full(2, RANS_LOW, np.int64)
    for j in range(n_ops - 1, -1, -1):
        start, freq = ops[j] & (TOTAL - 1), ops[j] >> PRECISION
        x = states[j & 1]
        if x >= freq << (32 - PRECISION):
            words[n_words] = x & 0xFFFF
            n_words += 1
            x >>= 16
        states[j & 1] = ((x // freq) << PRECISION) + (x % freq) + start
    rans = 8 + 2 * n_words
    head = 1
    length = np.empty(10, np.uint8)
    n_length, value = 0, rans
    while True:
        length[n_length] = (value & 127) | (128 if value >= 128 else 0)
        n_length += 1
        value >>= 7
        if value == 0:
            break
    out = np.empty(head + n_length + rans + n_raw, np.uint8)
    out[0] = parameters
    out[head : head + n_length] = length[:n_length]
    p = head + n_length
    for i in range(8):
        out[p + i] = (states[i >> 2] >> (8 * (i & 3))) & 255
    p += 8
    for j in range(n_words - 1, -1, -1):
        out[p] = words[j] & 255
        out[p + 1] = words[j] >> 8
        p += 2
    out[p:] = raw[:n_raw]
    return out


def _check(symbols: np.ndarray) -> np.ndarray:
    if symbols.ndim != 3 or symbols.dtype != np.int32:
        raise ValueError(f"expected int32 symbols of shape (C, h, w), got {symbols.dtype} {symbols.shape}")
    return np.ascontiguousarray(symbols)


def encode(symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes:
    """One image's symbols (C, h, w) int32 -> payload."""
    symbols = _check(symbols)
    m, boxes = models(), _boxes(bands)
    parameters, indices, classes, _ = _plan(symbols, boxes, _parents(bands), m.costs, m.class_of, m.bin_of)
    return _write(symbols, boxes, parameters, indices, classes, m.packed).tobytes()  # type: ignore[no-any-return]


def information_bits(symbols: np.ndarray, bands: tuple[Subband, ...]) -> float:
    """Code length in bits of one image's symbols under the models the encoder would choose."""
    m = models()
    return _plan(_check(symbols), _boxes(bands), _parents(bands), m.costs, m.class_of, m.bin_of)[3] / 65536.0


def side_info_bytes(payload: bytes | memoryview, channels: int, bands: tuple[Subband, ...]) -> int:
    """The parameter byte, the rANS part's length field and the band indices' bits (rounded up)."""
    reader = ByteReader(payload, "entropy payload")
    reader.u8()
    rans = reader.varint()
    head = reader.pos
    raw = bytes(payload[head + rans :])
    bits = int.from_bytes(raw, "little")
    at = 0
    for _ in range(channels * len(bands)):
        zeros = 0
        while at < 8 * len(raw) and not (bits >> at) & 1:
            zeros, at = zeros + 1, at + 1
        at += 1 + zeros
    return head + min((at + 7) // 8, len(raw))


# --- decoder ------------------------------------------------------------------------------------

_ERRORS = (
    "",
    "entropy payload ends inside its side information",
    "entropy payload names parameters {}, which the sequential coder lacks",
    "entropy payload's rANS part is malformed (length {})",
    "entropy payload's rANS words end early",
    "entropy payload's raw bits end early",
    "entropy payload has undecoded data left over",
    "entropy payload's final state does not match",
    "entropy payload decodes a value outside int32",
    "entropy payload's band indices are malformed",
)
_INT32_MAX = 2**31 - 1


@jit
def _row_classes(
    row: np.ndarray,
    plane: np.ndarray,
    image: np.ndarray,
    boxes: np.ndarray,
    parent: int,
    c: int,
    r: int,
    cols: int,
    row_classes: np.ndarray,
    bins: np.ndarray,
) -> None:
    """The table of each position of row r (a call of its own: kept out of the decoding loop, it keeps that
    loop's registers)."""
    _parent_row(row, image, boxes, parent, c, r, cols)
    for k in range(cols):
        row[k] = row_classes[bins[_activity(plane, c, r, k) + row[k]]]


@jit
def _decode_kernel(data: np.ndarray, ends: np.ndarray, out: np.ndarray, boxes: np.ndarray, parents: np.ndarray,
                   packed: np.ndarray, lookup: np.ndarray, class_of: np.ndarray, bin_of: np.ndarray,
                   codes: np.ndarray, details: np.ndarray) -> None:  # fmt: skip
    channels = out.shape[1]
    n_bands = boxes.shape[0]
    widest = 1
    for b in range(n_bands):
        widest = max(widest, boxes[b, 3] - boxes[b, 2])
    row = np.empty(widest, np.int64)
    indices = np.empty(n_bands * channels, np.int64)
    for n in range(out.shape[0]):
        begin, end = ends[n], ends[n + 1]
        head = 1
        if end - begin < head + 1:
            codes[n] = 1
            continue
        parameters = data[begin]
        zone, context = parameters & 7, parameters >> 3
        if context >= bin_of.shape[0]:
            codes[n], details[n] = 2, parameters
            continue
        bins = bin_of[context]
        p = begin + head
        rans, shift, ok = 0, 0, False
        while p < end and shift < 35:
            byte = data[p]
            rans |= np.int64(byte & 127) << shift  # type: ignore[assignment]
            shift += 7
            p += 1
            if byte < 128:
                ok = True
                break
        if not ok:
            codes[n] = 1
            continue
        if rans < 8 or rans % 2 or rans > end - p:
            codes[n], details[n] = 3, rans
            continue
        x0 = np.int64(data[p]) | np.int64(data[p + 1]) << 8 | np.int64(data[p + 2]) << 16 | np.int64(data[p + 3]) << 24
        x1 = (np.int64(data[p + 4]) | np.int64(data[p + 5]) << 8 | np.int64(data[p + 6]) << 16
              | np.int64(data[p + 7]) << 24)  # fmt: skip
        w, w_end = p + 8, p + rans
        last = data.size - 2
        rp, r_end = w_end, end
        acc, n_acc = np.int64(0), 0
        zpacked, zlookup = packed[zone], lookup[zone]
        image = out[n]
        error = 0
        previous = INDEX_START
        for i in range(indices.size):  # the band indices, first in the raw bits
            zeros = 0
            while True:
                bit, rp, acc, n_acc = _read_bit(data, rp, r_end, acc, n_acc)
                if bit != 0 or zeros == 8:
                    break
                zeros += 1
            if bit <= 0:
                error = 5 if bit < 0 else 9
                break
            value = np.int64(1) << zeros
            for t in range(zeros):
                bit, rp, acc, n_acc = _read_bit(data, rp, r_end, acc, n_acc)
                if bit < 0:
                    error = 5
                    break
                value |= bit << t
            if error:
                break
            u = value - 1
            index = previous + (u >> 1 if u % 2 == 0 else -((u + 1) >> 1))
            if not 0 <= index <= 255:
                error, details[n] = 9, index
                break
            indices[i] = previous = index  # type: ignore[assignment]
        if error:
            codes[n] = error
            continue
        j = 0  # coded symbols so far: even ones use state x0, odd ones x1
        for b in range(n_bands):
            r0, r1, k0, k1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
            rows, cols = r1 - r0, k1 - k0
            plane = np.zeros((channels, rows + 2, cols + 2), np.int64)
            for c in range(channels):
                index = indices[b * channels + c]
                if index == ZERO_BAND:
                    for r in range(rows):
                        for k in range(cols):
                            image[c, r0 + r, k0 + k] = 0
                    continue
                row_classes = class_of[index]
                for r in range(rows):
                    _row_classes(row, plane, image, boxes, parents[b], c, r, cols, row_classes, bins)
                    for k in range(cols):
                        cls = row[k]
                        x = x1 if j & 1 else x0
                        slot = x & (TOTAL - 1)
                        token = np.int64(zlookup[cls, slot])
                        entry = np.int64(zpacked[cls, token])
                        x = (entry >> PRECISION) * (x >> PRECISION) + slot - (entry & (TOTAL - 1))
                        renorm = np.int64(x < RANS_LOW)
                        at = min(w, last)
                        word = np.int64(data[at]) | np.int64(data[at + 1]) << 8
                        x = (x << (16 * renorm)) | (word & -renorm)
                        w += 2 * renorm
                        if j & 1:
                            x1 = x
                        else:
                            x0 = x
                        j += 1
                        if n_acc < 32:
                            for _ in range(4):
                                if rp < r_end:
                                    acc |= np.int64(data[rp]) << n_acc
                                    rp += 1
                                    n_acc += 8
                        z = token
                        if token >= DIRECT:
                            n_low = 3 + ((token - DIRECT) >> 1)
                            while n_acc < n_low + 1 and rp < r_end:
                                acc |= np.int64(data[rp]) << n_acc
                                rp += 1
                                n_acc += 8
                            if n_acc < n_low + 1:
                                error = 5
                                break
                            z = (np.int64(2 + ((token - DIRECT) & 1)) << n_low) | (acc & ((np.int64(1) << n_low) - 1))
                            acc >>= n_low
                            n_acc -= n_low  # type: ignore[assignment]
                            if z - (acc & 1) > _INT32_MAX:  # only -2**31 lies beyond 2**31 - 1
                                error = 8
                                break
                        nonzero = np.int64(token != 0)
                        if n_acc < nonzero:
                            error = 5
                            break
                        sign = acc & nonzero
                        image[c, r0 + r, k0 + k] = (z ^ -sign) + sign
                        acc >>= nonzero
                        n_acc -= nonzero  # type: ignore[assignment]
                        plane[c, r + 2, k + 1] = min(z, CLIP)
                    if w > w_end:
                        error = 4
                    if error:
                        break
                if error:
                    break
            if error:
                break
        if error:
            codes[n] = error
        elif w != w_end or rp != r_end or n_acc >= 8 or acc != 0:
            codes[n] = 6
        elif x0 != RANS_LOW or x1 != RANS_LOW:
            codes[n] = 7


def decode_many(payloads: Sequence[bytes | memoryview], shape: tuple[int, int, int],
                bands: tuple[Subband, ...]) -> np.ndarray:  # fmt: skip
    """Payloads of one latent shape -> (N, C, h, w) int32, in one compiled call; damage raises
    ``CorruptStreamError``."""
    m = models()
    ends = np.cumsum([0, *(len(p) for p in payloads)]).astype(np.int64)
    data = np.frombuffer(b"".join([*payloads, bytes(2)]), np.uint8)
    out = np.empty((len(payloads), *shape), np.int32)
    codes, details = np.zeros(len(payloads), np.int64), np.zeros(len(payloads), np.int64)
    _decode_kernel(data, ends, out, _boxes(bands), _parents(bands), m.packed, m.lookup, m.class_of, m.bin_of, codes,
                   details)  # fmt: skip
    bad = np.flatnonzero(codes)
    if bad.size:
        raise CorruptStreamError(_ERRORS[int(codes[bad[0]])].format(int(details[bad[0]])))
    return out


def decode(payload: bytes | memoryview, shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> np.ndarray:
    return decode_many([payload], shape, bands)[0]  # type: ignore[no-any-return]


def warm() -> None:
    """Compile the kernels (or load them from numba's cache) on a tiny plane."""
    bands = subbands(4, 4, 1)
    symbols = np.arange(-16, 16, dtype=np.int32).reshape(2, 4, 4) * 3
    decode(encode(symbols, bands), (2, 4, 4), bands)
