"""The class and band coders' decoders, compiled: many payloads of one latent shape in one call.

They decode the payloads ``classes.py`` and ``bands.py`` write, symbol for symbol as their
``constriction`` decoders (kept as ``decode_many_reference``) do: the same side information, the
same ANS order (band indices, LL residuals, then each pass class by class, or each band), the same
activities, escapes and checks. Each payload's error, if any, comes back as a code;
``decode_classes`` and ``decode_bands`` raise it as ``CorruptStreamError``.

The rANS decoder reads ``constriction``'s stack-coder words bit for bit. ``constriction``'s
``AnsCoder`` (64-bit state, 32-bit words, 24-bit probabilities) writes its words as a stack:
the encoder pushes, the decoder pops from the end. A coder starts from the last word (and the
one before it, when there is one); decoding a symbol of a model with left cumulative weights
``bounds`` takes ``q = state mod 2**24``, finds the symbol ``i`` with
``bounds[i] <= q < bounds[i + 1]``, sets ``state = (state >> 24) * (bounds[i + 1] - bounds[i])
+ q - bounds[i]`` and, while words are left and ``state < 2**32``, pulls the next word into the
state's low half. A coder is empty when no words are left and the state is 0. ``Uniform(n)``
gives each symbol ``2**24 // n``, the last one the rest.

A table's ``lookup`` turns the quantile's top bits (more for tables of more symbols) into the
symbol, with no search where one symbol covers the bucket. The functions are numba kernels, compiled once and cached
on disk; every kernel and each helper it inlines live in this one module, so that an edit here
invalidates the cache whole. A coder is the pair ``(state, words left)``, passed by value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np

from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages.coders.classes_geometry import Geometry, geometry_of
from vaeflow.stages.coders.classes_model import (
    _CLASS_LUT,
    _LUT_BASE,
    CLASS_OFFSET,
    DEADZONES,
    ESCAPE_BITS,
    ESCAPE_LOW_BITS,
    FEATURE_CLIP,
    HALF_WIDTHS,
    INDEX_STRIDES,
    LL_ZERO_HALF_WIDTH,
    N_CLASSES,
    SIDE_CLASS,
    WEIGHT_SETS,
    _costs,
    class_bounds,
)
from vaeflow.stages.wavelet import subbands

# --- the rANS decoder ---------------------------------------------------------------------------
PRECISION = 24
TOTAL = 1 << PRECISION
_MASK = np.uint64(TOTAL - 1)
_P = np.uint64(PRECISION)
_WORD = np.uint64(32)
_LOW = np.uint64(1 << 32)

jit = numba.njit(cache=True, nogil=True)
inline = numba.njit(cache=True, nogil=True, inline="always")  # the per-symbol steps, inlined where called


@inline
def start(words: np.ndarray) -> tuple[np.uint64, int, bool]:
    """A coder over ``words`` (uint32): (state, words left, ok); ``ok`` is False when the data ends
    in a zero word, which no encoder writes."""
    n = words.size
    if n == 0:
        return np.uint64(0), 0, True
    if words[n - 1] == 0:
        return np.uint64(0), 0, False
    state = np.uint64(words[n - 1])
    n -= 1
    if n > 0:
        n -= 1
        state = (state << _WORD) | np.uint64(words[n])
    return state, n, True


@inline
def _advance(state: np.uint64, left: int, words: np.ndarray, q: int, low: int, width: int) -> tuple[np.uint64, int]:
    state = (state >> _P) * np.uint64(width) + np.uint64(q - low)
    if state < _LOW and left > 0:
        left -= 1
        state = (state << _WORD) | np.uint64(words[left])
    return state, left


LOOKUP_BITS = (6, 10)  # a table's lookup has 2**bits buckets: 2 to 4 per symbol, within these bounds


def lookup_bits(symbols: int) -> int:
    """Bits of the quantile a table of this many symbols looks up: small tables stay in the cache."""
    return min(max(symbols.bit_length() + 2, LOOKUP_BITS[0]), LOOKUP_BITS[1])


def lookup(bounds: np.ndarray) -> np.ndarray:
    """A table's lookup: for each of its quantile buckets, ``low << 39 | width << 14 | symbol``
    of the symbol the bucket lies in, or the symbol its first quantile falls in (width 0) where the
    bucket holds several."""
    shift = PRECISION - lookup_bits(bounds.size - 1)
    firsts = np.arange(1 << (PRECISION - shift), dtype=np.int64) << shift
    symbol = np.searchsorted(bounds, firsts, side="right") - 1
    low, high = bounds[symbol], bounds[symbol + 1]
    whole = high >= firsts + (1 << shift)
    return np.where(whole, (low << 39) | ((high - low) << 14) | symbol, symbol)  # type: ignore[no-any-return]


@inline
def decode_table(
    state: np.uint64, left: int, words: np.ndarray, bounds: np.ndarray, lookups: np.ndarray, offset: int,
    start: int, shift: int,
) -> tuple[int, np.uint64, int]:  # fmt: skip
    """One symbol of a table (its start in ``bounds``, its lookup's start in ``lookups`` and the
    lookup's shift): (symbol, state, words left)."""
    q = int(np.int64(state & _MASK))
    entry = lookups[start + (q >> shift)]
    i = entry & 0x3FFF
    width = (entry >> 14) & 0x1FFFFFF
    if width:
        low = entry >> 39
    else:
        while bounds[offset + i + 1] <= q:
            i += 1
        low = bounds[offset + i]
        width = bounds[offset + i + 1] - low
    state, left = _advance(state, left, words, q, low, width)
    return i, state, left


@inline
def decode_uniform(state: np.uint64, left: int, words: np.ndarray, n: int) -> tuple[int, np.uint64, int]:
    """One symbol of ``Uniform(n)``: (symbol, state, words left)."""
    q = int(np.int64(state & _MASK))
    width = TOTAL // n
    i = min(q // width, n - 1)
    low = i * width
    state, left = _advance(state, left, words, q, low, width if i < n - 1 else TOTAL - low)
    return i, state, left


_LOW_BITS = ESCAPE_LOW_BITS


@jit
def decode_escapes(state: np.uint64, left: int, words: np.ndarray, excess: np.ndarray) -> tuple[np.uint64, int]:
    """Fill ``excess`` (int64) with escapes as the class coder writes them: every bit length
    (``Uniform(33)``), then the low bits of those that have any, then the high bits."""
    count = excess.size
    lengths = np.empty(count, np.int64)
    for j in range(count):
        lengths[j], state, left = decode_uniform(state, left, words, 33)
    for j in range(count):
        below = max(lengths[j] - 1, 0)
        low = min(below, _LOW_BITS)
        excess[j] = 0
        if low > 0:
            excess[j], state, left = decode_uniform(state, left, words, 1 << low)
    for j in range(count):
        below = max(lengths[j] - 1, 0)
        low = min(below, _LOW_BITS)
        if below - low > 0:
            high, state, left = decode_uniform(state, left, words, 1 << (below - low))
            excess[j] |= high << low
        if lengths[j] > 0:
            excess[j] += 1 << below
    return state, left


# --- the coders' decoders -------------------------------------------------------------------------

_ERRORS = (
    "",
    "entropy payload is truncated",
    "entropy payload names parameters {}, which this version does not know",
    "entropy payload holds an over-long or too large varint",
    "LL centre is out of the int32 range",
    "entropy payload does not decode: ANS compressed data never ends in a zero word",
    "a band index is out of range",
    "decoded LL symbol is out of the int32 range",
    "decoded symbol is out of the int32 range",
    "entropy payload has undecoded data left over",
    "entropy payload is not a whole number of 32-bit words",
    "entropy payload names parameters {}, which the band coder lacks",
)
_LL_SET = DEADZONES.index(LL_ZERO_HALF_WIDTH)


@dataclass(frozen=True)
class Tables:
    """Every class's table for every deadzone, flat: bounds and lookups (``decode_table``), and for
    each (zone, class) where its bounds and its lookup start and the lookup's shift."""

    bounds: np.ndarray  # int64
    offsets: np.ndarray  # (zones, classes, 3)
    lookups: np.ndarray  # int64


@lru_cache(maxsize=1)
def tables() -> Tables:
    pieces, lookups, offsets = [], [], np.zeros((len(DEADZONES), N_CLASSES, 3), np.int64)
    position = start = 0
    for zone, z in enumerate(DEADZONES):
        for k in range(N_CLASSES):
            pieces.append(class_bounds(k, z))
            lookups.append(lookup(pieces[-1]))
            offsets[zone, k] = position, start, PRECISION - lookup_bits(pieces[-1].size - 1)
            position += pieces[-1].size
            start += lookups[-1].size
    return Tables(np.concatenate(pieces), offsets, np.concatenate(lookups))


@dataclass(frozen=True)
class Packed:
    """A geometry as flat arrays for the kernels."""

    levels: np.ndarray  # (L, 5): H, W, parent (-1: the LL band), first position, first step
    positions: np.ndarray  # (7, P): padded, out, kind, parent index, parent place, slot, padded place in a channel
    steps: np.ndarray  # (S + 1,): first part of each step, then the end
    parts: np.ndarray  # (Q, 5): start, stop (level positions), kind, first channel, end channel
    mag_offsets: np.ndarray  # (L + 1,): each level's bordered magnitudes in one int32 buffer
    kind_weights: np.ndarray  # (weight sets, 5, 6) int64
    present: np.ndarray  # coded bands (levels, C, 3) in side-information order
    ll: tuple[int, int]  # the LL band's height and width


_PACKED: dict[int, tuple[Geometry, Packed]] = {}


def pack(geo: Geometry) -> Packed:
    known = _PACKED.get(id(geo))
    if known is not None and known[0] is geo:
        return known[1]
    levels: list[tuple[int, ...]] = []
    positions: list[np.ndarray] = []
    steps: list[int] = []
    parts: list[tuple[int, ...]] = []
    mag_offsets = [0]
    position = 0
    for lv in geo.levels:
        hs, ws = lv.shape
        levels.append((hs, ws, -1 if lv.parent is None else lv.parent, position, len(steps)))
        place = lv.padded % (3 * (hs + 2) * (ws + 2))
        positions.append(np.stack([lv.padded, lv.out, lv.kind, lv.parent_index, lv.parent_place, lv.slot, place]))
        for step in lv.steps:
            steps.append(len(parts))
            parts += [(p.start, p.stop, p.kind, p.channels[0], p.channels[1]) for p in step.parts]
        position += lv.padded.size
        mag_offsets.append(mag_offsets[-1] + geo.channels * 3 * (hs + 2) * (ws + 2))
    steps.append(len(parts))
    kind_weights = np.array([geo.weights(ws)[0] for ws in range(len(WEIGHT_SETS))], np.int64)
    ll = (geo.ll.rows.stop - geo.ll.rows.start, geo.ll.cols.stop - geo.ll.cols.start)
    packed = Packed(
        np.array(levels, np.int64).reshape(-1, 5),
        np.ascontiguousarray(np.concatenate([np.zeros((7, 0), np.int64), *positions], axis=1), np.int64),
        np.array(steps, np.int64),
        np.array(parts, np.int64).reshape(-1, 5),
        np.array(mag_offsets, np.int64),
        kind_weights,
        geo.present.astype(np.int64),
        ll,
    )
    if len(_PACKED) >= 64:
        _PACKED.clear()
    _PACKED[id(geo)] = (geo, packed)
    return packed


def _concatenated(payloads: Sequence[bytes | memoryview]) -> tuple[np.ndarray, np.ndarray]:
    ends = np.cumsum([0, *(len(p) for p in payloads)]).astype(np.int64)
    data = np.frombuffer(b"".join(payloads), np.uint8)
    return data, ends


def _raise(codes: np.ndarray, details: np.ndarray) -> None:
    bad = np.flatnonzero(codes)
    if bad.size:
        code = int(codes[bad[0]])
        raise CorruptStreamError(_ERRORS[code].format(int(details[bad[0]])))


def decode_classes(payloads: Sequence[bytes | memoryview], shape: tuple[int, int, int], geo: Geometry) -> np.ndarray:
    """The class coder's payloads of one shape -> (N, C, h, w) int32."""
    packed = pack(geo)
    data, ends = _concatenated(payloads)
    out = np.zeros((len(payloads), *shape), np.int32)
    codes, details = np.zeros(len(payloads), np.int64), np.zeros(len(payloads), np.int64)
    t = tables()
    _classes_kernel(data, ends, out, packed.levels, packed.positions, packed.steps, packed.parts, packed.mag_offsets,
                    packed.kind_weights, packed.present, packed.ll[0], packed.ll[1], geo.first_group,
                    t.bounds, t.offsets, t.lookups, _CLASS_LUT, codes, details)  # fmt: skip
    _raise(codes, details)
    return out


def decode_bands(
    payloads: Sequence[bytes | memoryview],
    shape: tuple[int, int, int],
    geo: Geometry,
    flat: np.ndarray,
    sizes: np.ndarray,
) -> np.ndarray:
    """The band coder's payloads of one shape -> (N, C, h, w) int32; ``flat`` and ``sizes``: its
    detail positions band after band, and each band's size."""
    packed = pack(geo)
    data, ends = _concatenated(payloads)
    out = np.zeros((len(payloads), *shape), np.int32)
    codes, details = np.zeros(len(payloads), np.int64), np.zeros(len(payloads), np.int64)
    t = tables()
    _bands_kernel(data, ends, out, len(geo.levels), packed.present, packed.ll[0], packed.ll[1], flat, sizes,
                  t.bounds, t.offsets, t.lookups, codes, details)  # fmt: skip
    _raise(codes, details)
    return out


# --- kernels ------------------------------------------------------------------------------------

_HALF = HALF_WIDTHS[:N_CLASSES].copy()
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_N_SETS = len(WEIGHT_SETS)
_N_ZONES = len(DEADZONES)


@jit
def _varint(data: np.ndarray, pos: int, end: int) -> tuple[int, int, int]:
    """An svarint of at most 2**31 in magnitude: (value, position, error code)."""
    value, shift = 0, 0
    while True:
        if pos >= end:
            return 0, pos, 1
        byte = int(np.int64(data[pos]))
        pos += 1
        if byte & 0x7F:
            if shift > 32:
                return 0, pos, 3
            value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            return 0, pos, 3
    if value > 2 * 2**31 + 1:
        return 0, pos, 3
    signed = value >> 1 if not value & 1 else -((value + 1) >> 1)
    return signed, pos, 0


@jit
def _side(data: np.ndarray, pos: int, end: int, channels: int, ll_modes: np.ndarray, ll_classes: np.ndarray,
          centres: np.ndarray) -> tuple[int, int, int, int]:  # fmt: skip
    """Parameters, LL models and centres: (parameters, words start, words end, error code)."""
    if pos >= end:
        return 0, pos, end, 1
    parameters = int(np.int64(data[pos]))
    pos += 1
    if parameters >> 3 >= _N_SETS:
        return parameters, pos, end, 2
    for c in range(channels):
        if pos >= end:
            return parameters, pos, end, 1
        byte = int(np.int64(data[pos]))
        pos += 1
        ll_modes[c], ll_classes[c] = byte >> 6, byte & 63
        centre, pos, error = _varint(data, pos, end)
        if error:
            return parameters, pos, end, error
        if not _INT32_MIN <= centre <= _INT32_MAX:
            return parameters, pos, end, 4
        centres[c] = centre
    if (end - pos) % 4:
        return parameters, pos, end, 10
    return parameters, pos, end, 0


@jit
def _words(data: np.ndarray, begin: int, end: int) -> np.ndarray:
    n = (end - begin) // 4
    words = np.empty(n, np.uint32)
    for i in range(n):
        b = begin + 4 * i
        words[i] = (
            np.uint32(data[b])
            | (np.uint32(data[b + 1]) << 8)
            | (np.uint32(data[b + 2]) << 16)
            | (np.uint32(data[b + 3]) << 24)
        )
    return words


@jit
def _symbols(
    state: np.uint64,
    left: int,
    words: np.ndarray,
    values: np.ndarray,
    classes: np.ndarray,
    order: np.ndarray,
    bounds: np.ndarray,
    offsets: np.ndarray,
    lookups: np.ndarray,
    zone: int,
) -> tuple[np.uint64, int]:
    """Decode symbols each of its class (``classes``, in ANS order; NO_CLASS: 0, not coded), then their
    escapes, as ``classes._decode_symbols`` does; the j-th decoded goes to ``values[order[j]]``."""
    escaped = 0
    current, offset, start, shift, r = -1, 0, 0, 0, 0  # the table of the run of one class
    for j in range(classes.size):
        k = classes[j]
        if k >= N_CLASSES:
            values[order[j]] = 0
            continue
        if k != current:
            current, offset, start, shift, r = (
                k,
                offsets[zone, k, 0],
                offsets[zone, k, 1],
                offsets[zone, k, 2],
                _HALF[k],
            )
        symbol, state, left = decode_table(state, left, words, bounds, lookups, offset, start, shift)
        value = symbol - r
        values[order[j]] = value
        escaped += abs(value) >= r
    if escaped:
        where = np.empty(escaped, np.int64)
        e = 0
        for j in range(classes.size):
            k = classes[j]
            if k < N_CLASSES and abs(values[order[j]]) >= _HALF[k]:
                where[e] = order[j]
                e += 1
        excess = np.empty(escaped, np.int64)
        state, left = decode_escapes(state, left, words, excess)
        for e in range(escaped):
            j = where[e]
            values[j] += excess[e] if values[j] > 0 else -excess[e]
    return state, left


@jit
def _head(state: np.uint64, left: int, words: np.ndarray, out: np.ndarray, present: np.ndarray, n_levels: int,
          ll_h: int, ll_w: int, ll_modes: np.ndarray, ll_classes: np.ndarray, centres: np.ndarray, base: int, top: int,
          bounds: np.ndarray, offsets: np.ndarray, lookups: np.ndarray,
          indices: np.ndarray) -> tuple[np.uint64, int, int]:  # fmt: skip
    """Band indices into ``indices`` (levels, C, 3) and the LL band into ``out`` (C, h, w), as
    ``classes.decode_head``: (state, words left, error code)."""
    channels = out.shape[0]
    deltas = np.empty(present.size, np.int64)
    side = np.full(present.size, SIDE_CLASS, np.int64)
    state, left = _symbols(state, left, words, deltas, side, np.arange(side.size), bounds, offsets, lookups, _LL_SET)
    flat = indices.reshape(-1)
    flat[:] = 0
    for j in range(present.size):
        flat[present[j]] = deltas[j]
    for o in range(3):
        running = base
        for i in range(n_levels):
            running += indices[i, 0, o]
            indices[i, 0, o] = running
    for i in range(n_levels):
        for c in range(1, channels):
            for o in range(3):
                indices[i, c, o] += indices[i, c - 1, o]
    for j in range(present.size):
        if not 0 <= flat[present[j]] <= top:
            return state, left, 6
    size = ll_h * ll_w
    order = np.argsort(ll_classes, kind="mergesort")
    residuals = np.empty(channels * size, np.int64)
    classes = np.empty(channels * size, np.int64)
    for j in range(channels):
        classes[j * size : (j + 1) * size] = ll_classes[order[j]]
    state, left = _symbols(
        state, left, words, residuals, classes, np.arange(classes.size), bounds, offsets, lookups, _LL_SET
    )
    x = np.empty((ll_h, ll_w), np.int64)
    for j in range(channels):
        c = order[j]
        x[:, :] = residuals[j * size : (j + 1) * size].reshape(ll_h, ll_w)
        mode, centre = ll_modes[c], centres[c]
        if mode == 0:
            x += centre
        else:
            x[0, 0] += centre
            if mode == 1:
                for i in range(1, ll_h):
                    x[i, 0] += x[i - 1, 0]
                for i in range(ll_h):
                    for k in range(1, ll_w):
                        x[i, k] += x[i, k - 1]
            elif mode == 2:
                for k in range(1, ll_w):
                    x[0, k] += x[0, k - 1]
                for i in range(1, ll_h):
                    for k in range(ll_w):
                        x[i, k] += x[i - 1, k]
            else:
                for i in range(1, ll_h):
                    for k in range(ll_w):
                        x[i, k] += x[i - 1, k]
                for i in range(ll_h):
                    for k in range(1, ll_w):
                        x[i, k] += x[i, k - 1]
        for i in range(ll_h):
            for k in range(ll_w):
                if not _INT32_MIN <= x[i, k] <= _INT32_MAX:
                    return state, left, 7
                out[c, i, k] = x[i, k]
    return state, left, 0


@inline
def _box3(flat: np.ndarray, corner: int, row: int) -> int:
    """The 3x3 sum of a flat bordered plane (rows of ``row``) from its top-left ``corner``."""
    total = 0
    for di in range(3):
        for dk in range(3):
            total += flat[corner + di * row + dk]
    return total


@inline
def _level(levels: np.ndarray, steps: np.ndarray, li: int) -> tuple[int, int, int, int, int]:
    """Level ``li``'s height and width, its first position, and its steps ``first_step:last_step``."""
    last_step = levels[li + 1, 4] if li + 1 < levels.shape[0] else steps.size - 1
    return levels[li, 0], levels[li, 1], levels[li, 3], levels[li, 4], last_step


@jit
def _parent_terms(image: np.ndarray, mags: np.ndarray, mag_offsets: np.ndarray, levels: np.ndarray, li: int,
                  channels: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A level's parent terms (as ``classes_geometry.level_static``): the 3x3 sums of the coarser level's
    bordered magnitudes (C, 3, Hp, Wp) and their sum over channels (3, Hp, Wp), flat; the coarsest
    level's parent is the LL band's gradients (``ll_activity``) from ``image`` (C, h, w)."""
    hs, ws, parent = levels[li, 0], levels[li, 1], levels[li, 2]
    if parent >= 0:
        ph, pw = levels[parent, 0], levels[parent, 1]
        parent_mags = mags[mag_offsets[parent] : mag_offsets[parent + 1]].reshape(channels, 3, ph + 2, pw + 2)
    else:
        ph, pw = hs, ws
        parent_mags = np.zeros((channels, 3, ph + 2, pw + 2), np.int32)
        for c in range(channels):
            for i in range(hs):
                for k in range(ws):
                    across = abs(np.int64(image[c, i, k]) - np.int64(image[c, i, k - 1])) if k else 0
                    down = abs(np.int64(image[c, i, k]) - np.int64(image[c, i - 1, k])) if i else 0
                    parent_mags[c, 0, i + 1, k + 1] = min(across, FEATURE_CLIP)
                    parent_mags[c, 1, i + 1, k + 1] = min(down, FEATURE_CLIP)
                    parent_mags[c, 2, i + 1, k + 1] = min((across + down) >> 1, FEATURE_CLIP)
    boxed = np.empty((channels, 3, ph, pw), np.int64)
    total = np.zeros((3, ph, pw), np.int64)
    parent_flat = parent_mags.reshape(-1)
    prow = pw + 2
    for c in range(channels):
        for o in range(3):
            plane = (c * 3 + o) * (ph + 2) * prow
            for i in range(ph):
                for k in range(pw):
                    b = _box3(parent_flat, plane + i * prow + k, prow)
                    boxed[c, o, i, k] = b
                    total[o, i, k] += b
    return boxed.reshape(-1), total.reshape(-1)


@jit
def _activities(positions: np.ndarray, first: int, steps: np.ndarray, parts: np.ndarray, si: int,
                weights: np.ndarray, boxed: np.ndarray, total: np.ndarray, flat_mags: np.ndarray, hs: int, ws: int,
                first_group: int) -> np.ndarray:  # fmt: skip
    """The activities of step ``si`` (as ``classes_geometry.step_activity``) from the parent terms and
    the level's bordered magnitudes decoded before the step (``flat_mags``)."""
    step_start, step_stop = parts[steps[si], 0], parts[steps[si + 1] - 1, 1]
    row = ws + 2
    activity = np.empty(step_stop - step_start, np.int64)
    padded, parent_index, parent_place, place = positions[0], positions[3], positions[4], positions[6]
    for pi in range(steps[si], steps[si + 1]):  # a part's positions share their weights
        p_start, p_stop, kind = parts[pi, 0], parts[pi, 1], parts[pi, 2]
        b, p, pa, s, s3, nb = (
            weights[kind, 0],
            weights[kind, 1],
            weights[kind, 2],
            weights[kind, 3],
            weights[kind, 4],
            weights[kind, 5],
        )
        for j in range(first + p_start, first + p_stop):
            activity[j - first - step_start] = b + p * boxed[parent_index[j]] + pa * total[parent_place[j]]
        if kind == 2 or kind == 3:
            group = np.zeros(3 * (hs + 2) * row, np.int64)
            for c in range(first_group):
                group += flat_mags[c * group.size : (c + 1) * group.size]
            for j in range(first + p_start, first + p_stop):
                at = place[j]
                activity[j - first - step_start] += s * group[at] + s3 * _box3(group, at - row - 1, row)
        if kind == 1 or kind == 3:
            for j in range(first + p_start, first + p_stop):
                at = padded[j]
                activity[j - first - step_start] += nb * (
                    flat_mags[at - 1] + flat_mags[at + 1] + flat_mags[at - row] + flat_mags[at + row]
                )
    return activity


@inline
def _bin(activity: int, bits: np.ndarray, bits_int: np.ndarray) -> int:
    """An activity's eighth-octave bin: its float32 exponent and top mantissa bits (``activity_bins``)."""
    bits[0] = np.float32(activity)
    return int(bits_int[0] >> 20)


@jit
def _class_order(activity: np.ndarray, positions: np.ndarray, at: int, band_index: np.ndarray, lut: np.ndarray,
                 bits: np.ndarray, bits_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each position's class (``classes_of``; ``band_index``: (C, 3) indices of the level) and the
    positions in the order the ANS words hold them (by class, stable; NO_CLASS last)."""
    count = activity.size
    classes = np.empty(count, np.int64)
    tally = np.zeros(N_CLASSES + 2, np.int64)
    for j in range(count):
        slot = positions[5, at + j]
        index = band_index[slot // 3, slot % 3]
        classes[j] = lut[_bin(activity[j], bits, bits_int) + (index + _LUT_BASE if index else 0)]
        tally[classes[j] + 1] += 1
    order = np.empty(count, np.int64)
    for k in range(N_CLASSES + 1):
        tally[k + 1] += tally[k]
    for j in range(count):
        order[tally[classes[j]]] = j
        tally[classes[j]] += 1
    return classes, order


@jit
def _classes_kernel(data, ends, out, levels, positions, steps, parts, mag_offsets, kind_weights, present,
                    ll_h, ll_w, first_group, bounds, offsets, lookups, lut, codes, details):  # fmt: skip
    n_images, channels = out.shape[0], out.shape[1]
    n_levels = levels.shape[0]
    ll_modes = np.empty(channels, np.int64)
    ll_classes = np.empty(channels, np.int64)
    centres = np.empty(channels, np.int64)
    indices = np.empty((max(n_levels, 1), channels, 3), np.int64)
    mags = np.empty(mag_offsets[-1], np.int32)
    bits = np.empty(1, np.float32)
    bits_int = bits.view(np.int32)
    for n in range(n_images):
        parameters, begin, end, error = _side(data, ends[n], ends[n + 1], channels, ll_modes, ll_classes, centres)
        if error:
            codes[n], details[n] = error, parameters
            continue
        words = _words(data, begin, end)
        state, left, ok = start(words)
        if not ok:
            codes[n] = 5
            continue
        image = out[n]
        state, left, error = _head(state, left, words, image, present, n_levels, ll_h, ll_w, ll_modes, ll_classes,
                                   centres, 128, 255, bounds, offsets, lookups, indices)  # fmt: skip
        if error:
            codes[n] = error
            continue
        weights = kind_weights[parameters >> 3]
        zone = parameters & 7
        mags[:] = 0
        flat_out = image.reshape(-1)
        for li in range(n_levels):
            hs, ws, first, first_step, last_step = _level(levels, steps, li)
            flat_mags = mags[mag_offsets[li] : mag_offsets[li + 1]]
            boxed, total = _parent_terms(image, mags, mag_offsets, levels, li, channels)
            for si in range(first_step, last_step):
                at = first + parts[steps[si], 0]
                activity = _activities(positions, first, steps, parts, si, weights, boxed, total, flat_mags, hs, ws,
                                       first_group)  # fmt: skip
                classes, order = _class_order(activity, positions, at, indices[li], lut, bits, bits_int)
                count = activity.size
                values = np.empty(count, np.int64)  # in coding order
                state, left = _symbols(state, left, words, values, classes[order], order, bounds, offsets, lookups,
                                       zone)  # fmt: skip
                for j in range(count):
                    v = values[j]
                    if not _INT32_MIN <= v <= _INT32_MAX:
                        error = 8
                    flat_out[positions[1, at + j]] = v
                    flat_mags[positions[0, at + j]] = min(abs(v), FEATURE_CLIP)
                if error:
                    break
            if error:
                break
        if error:
            codes[n] = error
        elif left != 0 or state != 0:
            codes[n] = 9


@jit
def _bands_kernel(data, ends, out, n_levels, present, ll_h, ll_w, flat, band_sizes,
                  bounds, offsets, lookups, codes, details):  # fmt: skip
    n_images, channels = out.shape[0], out.shape[1]
    ll_modes = np.empty(channels, np.int64)
    ll_classes = np.empty(channels, np.int64)
    centres = np.empty(channels, np.int64)
    indices = np.empty((max(n_levels, 1), channels, 3), np.int64)
    starts = np.zeros(band_sizes.size + 1, np.int64)
    for i in range(band_sizes.size):
        starts[i + 1] = starts[i] + band_sizes[i]
    for n in range(n_images):
        parameters, begin, end, error = _side(data, ends[n], ends[n + 1], channels, ll_modes, ll_classes, centres)
        if error:
            codes[n], details[n] = error, parameters
            continue
        if parameters >= _N_ZONES:
            codes[n], details[n] = 11, parameters
            continue
        words = _words(data, begin, end)
        state, left, ok = start(words)
        if not ok:
            codes[n] = 5
            continue
        image = out[n]
        state, left, error = _head(state, left, words, image, present, n_levels, ll_h, ll_w, ll_modes, ll_classes,
                                   centres, 24, N_CLASSES, bounds, offsets, lookups, indices)  # fmt: skip
        if error:
            codes[n] = error
            continue
        index_flat = indices.reshape(-1)
        total = 0
        for i in range(present.size):
            if index_flat[present[i]] > 0:
                total += band_sizes[i]
        classes = np.empty(total, np.int64)
        where = np.empty(total, np.int64)
        j = 0
        for i in range(present.size):
            k = index_flat[present[i]]
            if k > 0:
                classes[j : j + band_sizes[i]] = k - 1
                where[j : j + band_sizes[i]] = flat[starts[i] : starts[i + 1]]
                j += band_sizes[i]
        values = np.empty(total, np.int64)
        state, left = _symbols(
            state, left, words, values, classes, np.arange(total), bounds, offsets, lookups, parameters
        )
        flat_out = image.reshape(-1)
        for j in range(total):
            if not _INT32_MIN <= values[j] <= _INT32_MAX:
                error = 8
                break
            flat_out[where[j]] = values[j]
        if error:
            codes[n] = error
        elif left != 0 or state != 0:
            codes[n] = 9


# --- the class coder's encoder ------------------------------------------------------------------


@dataclass(frozen=True)
class CostTables:
    """Every class's code lengths (bits * 2**16 of each magnitude 0..R, ``classes_model._costs``) for every
    deadzone, flat, and where each (zone, class) starts."""

    costs: np.ndarray  # int64
    offsets: np.ndarray  # (zones, classes)


@lru_cache(maxsize=1)
def cost_tables() -> CostTables:
    pieces, offsets, position = [], np.zeros((len(DEADZONES), N_CLASSES), np.int64), 0
    for zone, z in enumerate(DEADZONES):
        costs, starts = _costs(z)
        pieces.append(costs)
        offsets[zone] = starts + position
        position += costs.size
    return CostTables(np.concatenate(pieces), offsets)


def encode_classes(
    symbols: np.ndarray, geo: Geometry, weight_set: int
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's symbols (C, h, w) int32 -> what ``classes.encode`` writes: parameters, LL modes, LL
    classes, LL centres and the ANS words, the same as the ``constriction`` encoder gives."""
    packed, t, c = pack(geo), tables(), cost_tables()
    plan = _encode_classes_kernel(
        np.ascontiguousarray(symbols, np.int32), packed.levels, packed.positions, packed.steps, packed.parts,
        packed.mag_offsets, packed.kind_weights[weight_set], weight_set, packed.present, packed.ll[0], packed.ll[1],
        geo.first_group, t.bounds, t.offsets, c.costs, c.offsets, _CLASS_LUT,
    )  # fmt: skip
    return plan[:5]  # type: ignore[no-any-return]


@inline
def _cost(costs: np.ndarray, cost_offsets: np.ndarray, zone: int, k: int, magnitude: int) -> int:
    return costs[cost_offsets[zone, k] + min(magnitude, _HALF[k])]


@inline
def _float_log2(x: float) -> float:
    mantissa, exponent = math.frexp(x)
    return exponent - 2.0 + 2.0 * mantissa


@jit
def _fit_ll(values: np.ndarray, costs: np.ndarray, cost_offsets: np.ndarray, modes: np.ndarray, classes: np.ndarray,
            centres: np.ndarray) -> np.ndarray:  # fmt: skip
    """``classes._fit_ll``: each channel's LL predictor, class and centre; returns the residuals (C, n)."""
    channels, h, w = values.shape
    n = h * w
    residuals = np.empty((4, channels, h, w), np.int64)
    for c in range(channels):
        centre = np.sort(values[c].reshape(-1))[(n - 1) // 2]
        centres[c] = centre
        v = values[c]
        for i in range(h):
            for k in range(w):
                x = v[i, k]
                residuals[0, c, i, k] = x - centre
                left = x - v[i, k - 1] if k else (x - v[i - 1, 0] if i else x - centre)
                up = x - v[i - 1, k] if i else (x - v[0, k - 1] if k else x - centre)
                residuals[1, c, i, k] = left
                residuals[2, c, i, k] = up
                residuals[3, c, i, k] = left - (v[i - 1, k] - v[i - 1, k - 1]) if i and k else left
    chosen = np.empty((channels, n), np.int64)
    for c in range(channels):
        best_mode, best_mode_cost, best_mode_class, best_zero = 0, np.iinfo(np.int64).max, 0, False
        for mode in range(4):
            r = residuals[mode, c].reshape(-1)
            total, zero = 0.0, True
            for j in range(n):
                total += abs(r[j])
                zero = zero and r[j] == 0
            mean = total / n
            guess = min(max(int(np.floor(4.0 * (_float_log2(max(mean, 2.0**-6)) + 5.0))), 0), N_CLASSES - 1)
            best_cost, best_class = np.iinfo(np.int64).max, 0
            for delta in range(-3, 4):
                k = min(max(guess + delta, 0), N_CLASSES - 1)
                cost = 0
                for j in range(n):
                    cost += _cost(costs, cost_offsets, _LL_SET, k, abs(r[j]))
                if cost < best_cost:
                    best_cost, best_class = cost, k
            if zero:
                best_cost = 0
            if best_cost < best_mode_cost:
                best_mode, best_mode_cost, best_mode_class, best_zero = mode, best_cost, best_class, zero
        modes[c] = best_mode
        classes[c] = 0 if best_zero else best_mode_class
        chosen[c] = residuals[best_mode, c].reshape(-1)
    return chosen


@jit
def _bit_length(value: int) -> int:
    length = 0
    while value >> length:
        length += 1
    return length


@jit
def _push_symbols(values: np.ndarray, classes: np.ndarray, zone: int, bounds: np.ndarray, offsets: np.ndarray,
                  costs: np.ndarray, cost_offsets: np.ndarray, op_low: np.ndarray, op_width: np.ndarray,
                  n_ops: int) -> tuple[int, int]:  # fmt: skip
    """Append (as ``classes._add_symbols``) the coding operations of ``values`` (in ANS order) each of its
    class, then their escapes: each operation a symbol's (left cumulative weight, weight). Returns the
    operations' count and their cost (bits * 2**16, as ``_add_symbols`` counts it)."""
    escaped, cost = 0, 0
    for j in range(values.size):
        k = classes[j]
        r = _HALF[k]
        cost += _cost(costs, cost_offsets, zone, k, abs(values[j]))
        symbol = min(max(values[j], -r), r) + r
        at = offsets[zone, k, 0] + symbol
        op_low[n_ops], op_width[n_ops] = bounds[at], bounds[at + 1] - bounds[at]
        n_ops += 1
        if abs(values[j]) >= r:
            escaped += 1
    if escaped:
        excess = np.empty(escaped, np.int64)
        e = 0
        for j in range(values.size):
            if abs(values[j]) >= _HALF[classes[j]]:
                excess[e] = abs(values[j]) - _HALF[classes[j]]
                e += 1
        for e in range(escaped):  # every bit length, then the low bits, then the high bits
            length = _bit_length(excess[e])
            cost += ESCAPE_BITS + max(length - 1, 0) * 65536
            n_ops = _push_uniform(length, 33, op_low, op_width, n_ops)
        for part in range(2):
            for e in range(escaped):
                length = _bit_length(excess[e])
                below = max(length - 1, 0)
                low = min(below, _LOW_BITS)
                rest = excess[e] - (1 << below if length else 0)
                if part == 0 and low > 0:
                    n_ops = _push_uniform(rest & ((1 << low) - 1), 1 << low, op_low, op_width, n_ops)
                elif part == 1 and below - low > 0:
                    n_ops = _push_uniform(rest >> low, 1 << (below - low), op_low, op_width, n_ops)
    return n_ops, cost


@inline
def _push_uniform(value: int, n: int, op_low: np.ndarray, op_width: np.ndarray, n_ops: int) -> int:
    width = TOTAL // n
    op_low[n_ops] = value * width
    op_width[n_ops] = width if value < n - 1 else TOTAL - value * width
    return n_ops + 1


@jit
def _encode_ops(op_low: np.ndarray, op_width: np.ndarray, n_ops: int) -> np.ndarray:
    """The words ``constriction``'s ``AnsCoder`` gives after ``encode_reverse`` of these operations."""
    words = np.empty(n_ops + 2, np.uint32)
    n_words = 0
    state = np.uint64(0)
    limit_shift = np.uint64(64 - PRECISION)
    for j in range(n_ops - 1, -1, -1):
        width = np.uint64(op_width[j])
        if (state >> limit_shift) >= width:
            words[n_words] = np.uint32(state & np.uint64(0xFFFFFFFF))
            n_words += 1
            state >>= _WORD
        state = ((state // width) << _P) | (state % width + np.uint64(op_low[j]))
    if state != 0:
        words[n_words] = np.uint32(state & np.uint64(0xFFFFFFFF))
        n_words += 1
        if state >> _WORD:
            words[n_words] = np.uint32(state >> _WORD)
            n_words += 1
    return words[:n_words].copy()


@jit
def _encode_classes_kernel(symbols, levels, positions, steps, parts, mag_offsets, weights, weight_set, present,
                           ll_h, ll_w, first_group, bounds, offsets, costs, cost_offsets, lut):  # fmt: skip
    channels = symbols.shape[0]
    n_levels = levels.shape[0]
    bits = np.empty(1, np.float32)
    bits_int = bits.view(np.int32)
    modes = np.empty(channels, np.int64)
    ll_classes = np.empty(channels, np.int64)
    centres = np.empty(channels, np.int64)
    residuals = _fit_ll(symbols[:, :ll_h, :ll_w].astype(np.int64), costs, cost_offsets, modes, ll_classes, centres)
    # every detail position's activity (coding order), from the magnitudes coded before its step
    n_positions = positions.shape[1]
    activity = np.empty(n_positions, np.int64)
    values = np.empty(n_positions, np.int64)
    mags = np.zeros(mag_offsets[-1], np.int32)
    flat_symbols = symbols.reshape(-1)
    for li in range(n_levels):
        hs, ws, first, first_step, last_step = _level(levels, steps, li)
        flat_mags = mags[mag_offsets[li] : mag_offsets[li + 1]]
        boxed, total = _parent_terms(symbols, mags, mag_offsets, levels, li, channels)
        for si in range(first_step, last_step):
            at = first + parts[steps[si], 0]
            step_activity = _activities(positions, first, steps, parts, si, weights, boxed, total, flat_mags, hs, ws,
                                        first_group)  # fmt: skip
            for j in range(step_activity.size):
                activity[at + j] = step_activity[j]
                v = np.int64(flat_symbols[positions[1, at + j]])
                values[at + j] = v
                flat_mags[positions[0, at + j]] = min(abs(v), FEATURE_CLIP)
    # the band indices and the deadzone (``classes._Fit``)
    n_slots = 3 * channels * max(n_levels, 1)
    slot = np.empty(n_positions, np.int64)
    bins = np.empty(n_positions, np.int64)
    mag_sum = np.zeros(n_slots)
    act_sum = np.zeros(n_slots)
    for li in range(n_levels):
        last = levels[li + 1, 3] if li + 1 < n_levels else n_positions
        for p in range(levels[li, 3], last):
            slot[p] = positions[5, p] + li * 3 * channels
            bins[p] = _bin(activity[p], bits, bits_int)
            mag_sum[slot[p]] += abs(values[p])
            act_sum[slot[p]] += activity[p]
    guess = np.empty(n_slots, np.int64)
    for s in range(n_slots):
        ratio = mag_sum[s] / max(act_sum[s], 1.0) * 65536.0
        guess[s] = min(max(131 + int(np.floor(8.0 * _float_log2(max(ratio, 2.0**-15)))), 1), 255)
    histogram = np.zeros((N_CLASSES, 65), np.int64)
    for p in range(n_positions):
        if mag_sum[slot[p]] > 0:
            k = min(max((bins[p] + guess[slot[p]] - CLASS_OFFSET) >> 1, 0), N_CLASSES - 1)
            histogram[k, min(abs(values[p]), 64)] += 1
    zone, zone_cost = 0, np.iinfo(np.int64).max
    for z in range(_N_ZONES):
        total_cost = 0
        for k in range(N_CLASSES):
            for m in range(65):
                if histogram[k, m]:
                    total_cost += histogram[k, m] * _cost(costs, cost_offsets, z, k, m)
        if total_cost < zone_cost:
            zone, zone_cost = z, total_cost
    best = guess.copy()
    best_cost = _slot_costs(best, bins, slot, values, costs, cost_offsets, zone, n_slots)
    for stride in INDEX_STRIDES:
        for direction in (-1, 1):
            trial = np.empty(n_slots, np.int64)
            for s in range(n_slots):
                trial[s] = min(max(best[s] + direction * stride, 1), 255)
            trial_cost = _slot_costs(trial, bins, slot, values, costs, cost_offsets, zone, n_slots)
            for s in range(n_slots):
                if trial_cost[s] < best_cost[s]:
                    best[s], best_cost[s] = trial[s], trial_cost[s]
    for s in range(n_slots):
        if mag_sum[s] == 0:
            best[s] = 0
    indices = best.reshape(max(n_levels, 1), channels, 3)
    # the coding operations in ANS order: band-index deltas, LL residuals, then each step by class
    op_low = np.empty(4 * (present.size + residuals.size + n_positions) + 8, np.int64)
    op_width = np.empty(op_low.size, np.int64)
    deltas = _index_deltas(indices, present, n_levels, 128)
    n_ops, total = _push_symbols(deltas, np.full(deltas.size, SIDE_CLASS, np.int64), _LL_SET, bounds, offsets, costs,
                                 cost_offsets, op_low, op_width, 0)  # fmt: skip
    order = np.argsort(ll_classes, kind="mergesort")
    size = ll_h * ll_w
    ll_values = np.empty(channels * size, np.int64)
    ll_k = np.empty(channels * size, np.int64)
    for j in range(channels):
        ll_values[j * size : (j + 1) * size] = residuals[order[j]]
        ll_k[j * size : (j + 1) * size] = ll_classes[order[j]]
    n_ops, cost = _push_symbols(ll_values, ll_k, _LL_SET, bounds, offsets, costs, cost_offsets, op_low, op_width,
                                n_ops)  # fmt: skip
    total += cost
    for li in range(n_levels):
        _, _, first, first_step, last_step = _level(levels, steps, li)
        for si in range(first_step, last_step):
            at = first + parts[steps[si], 0]
            count = parts[steps[si + 1] - 1, 1] - parts[steps[si], 0]
            classes, step_order = _class_order(activity[at : at + count], positions, at, indices[li], lut, bits,
                                               bits_int)  # fmt: skip
            coded = 0
            for j in range(count):
                if classes[step_order[j]] < N_CLASSES:
                    coded += 1
            chosen = step_order[:coded]
            n_ops, cost = _push_symbols(values[at + chosen], classes[chosen], zone, bounds, offsets, costs,
                                        cost_offsets, op_low, op_width, n_ops)  # fmt: skip
            total += cost
    words = _encode_ops(op_low, op_width, n_ops)
    return weight_set << 3 | zone, modes, ll_classes, centres, words, total


@jit
def _slot_costs(index: np.ndarray, bins: np.ndarray, slot: np.ndarray, values: np.ndarray, costs: np.ndarray,
                cost_offsets: np.ndarray, zone: int, n_slots: int) -> np.ndarray:  # fmt: skip
    """``classes._Fit.cost``: each band's bits * 2**16 with these band indices."""
    out = np.zeros(n_slots, np.int64)
    for p in range(bins.size):
        s = slot[p]
        k = min(max((bins[p] + index[s] - CLASS_OFFSET) >> 1, 0), N_CLASSES - 1)
        out[s] += _cost(costs, cost_offsets, zone, k, abs(values[p]))
    return out


@jit
def _index_deltas(indices: np.ndarray, present: np.ndarray, n_levels: int, base: int) -> np.ndarray:
    """``classes.index_deltas``: band indices as deltas in side-information order."""
    if n_levels == 0:
        return np.zeros(0, np.int64)
    channels = indices.shape[1]
    is_present = np.zeros(indices.size, np.bool_)
    for j in range(present.size):
        is_present[present[j]] = True
    flags = is_present.reshape(indices.shape)
    carried = indices.copy()
    for i in range(n_levels):
        for c in range(channels):
            for o in range(3):
                if not flags[i, c, o]:
                    carried[i, c, o] = carried[i - 1, 0, o] if i else base
    deltas = carried.copy()
    for i in range(n_levels):
        for c in range(channels - 1, 0, -1):
            for o in range(3):
                deltas[i, c, o] -= carried[i, c - 1, o]
        for o in range(3):
            deltas[i, 0, o] -= carried[i - 1, 0, o] if i else base
    flat = deltas.reshape(-1)
    out = np.empty(present.size, np.int64)
    for j in range(present.size):
        out[j] = flat[present[j]]
    return out


def warm() -> None:
    """Compile both kernels now (or load them from numba's cache), on empty batches."""
    geo = geometry_of((1, 8, 8), subbands(8, 8, 1))
    decode_classes([], (1, 8, 8), geo)
    decode_bands([], (1, 8, 8), geo, np.zeros(0, np.int64), np.zeros(0, np.int64))
