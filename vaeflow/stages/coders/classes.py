"""The class coder (``Entropy(coder="classes")``): every coefficient's model is known before its pass decodes.

Each coefficient is coded with one of ``N_CLASSES`` fixed tables, discretised Laplace
distributions on a quarter-octave grid of scales. A detail coefficient's class comes from an
integer activity computed only from coefficients decoded in earlier passes (the parent band,
the first channel group, the neighbours of a checkerboard), shifted by its band's index from
the stream. A pass therefore decodes class by class, one ``constriction`` call per class and
stream, with no Python work per row or per symbol.

Decoding order (the ANS order): the band indices, the LL residuals of every channel, the
coarsest detail level in one pass (its parent is the LL band's gradient), then each finer
level in three passes over all of its detail bands:

- pass 0: the anchors (row + column even) of the first channel group,
- pass 1: the other positions of the first group, and the anchors of the second group,
- pass 2: the other positions of the second group.

The first group holds the first ``ceil(C / 4)`` channels. LL bands are coded per channel as
the residual of one of four predictors (none, left, up, gradient), each inverted by
cumulative sums. ``docs/format.md`` describes the payload byte by byte.

Every number that decides a model is an integer or comes from IEEE-754 additions,
multiplications, divisions and square roots in a fixed order, so a stream decodes the same
on any machine, and the same symbols give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import constriction
import numpy as np

from vaeflow.binary import ByteReader, ByteWriter
from vaeflow.errors import CorruptStreamError
from vaeflow.stages.wavelet import Subband

AnsCoder = constriction.stream.stack.AnsCoder

N_CLASSES = 64
NO_CLASS = N_CLASSES  # positions of a band that is all zero: not coded
ZERO_BAND = 0  # band index of a detail band that is all zero
SIDE_CLASS = 26  # class (plain rounding, scale about 3.4) of the deltas of band indices
MAX_HALF_WIDTH = 4096  # a class's table covers -R..R; |v| >= R escapes
TAIL_SCALES = 20  # R is about TAIL_SCALES scales
FEATURE_CLIP = MAX_HALF_WIDTH  # magnitudes enter activities clipped to this (only escapes reach it)
LL_ZERO_HALF_WIDTH = 0.5  # LL residuals: plain rounding
DEADZONES = tuple((5 + i) / 16 for i in range(8))  # zero-bin half-widths a stream may choose for details
LL_MODES = ("centre", "left", "up", "gradient")

# A detail coefficient's activity, in units of 2**-16 of a magnitude, is
#   B + P * mean|parent 3x3| + PA * mean over channels of that + S * mean|first group, same place|
#   + S3 * mean of that over 3x3 + N * mean|own 4 neighbours|,
# weights in 1/256, by kind of position: first-group anchors, first-group others, second-group
# anchors, second-group others (a kind uses only terms decoded before it). A stream names its set.
ACTIVITY_BITS = 16
COARSEST_KIND = 4  # positions of the coarsest detail level: one pass, the LL band's gradient as parent
COARSEST_WEIGHTS = (64, 64, 32, 0, 0, 0)
WEIGHT_SETS = (
    (  # narrow latents (few channels, mixed): strong contexts
        (198, 66, 198, 0, 0, 0),
        (108, 53, 108, 0, 0, 207),
        (51, 34, 26, 78, 219, 0),
        (48, 12, 9, 61, 88, 112),
        COARSEST_WEIGHTS,
    ),
    (  # wide latents (many channels): weaker contexts
        (214, 6, 11, 0, 0, 0),
        (203, 2, 9, 0, 0, 10),
        (93, 31, 12, 37, 65, 0),
        (91, 8, 15, 26, 28, 48),
        COARSEST_WEIGHTS,
    ),
)
# activities stay below 2**31: each term is at most w * 256 * FEATURE_CLIP
if max(sum(kind) for weights in WEIGHT_SETS for kind in weights) * 256 * FEATURE_CLIP >= 2**31:
    raise ImportError("WEIGHT_SETS would overflow int32 activities")
# class = (bin + band index - CLASS_OFFSET) >> 1, clipped to 0..63, where bin is the float32
# exponent and top 3 mantissa bits of the activity (eighth octaves); band index 128 leaves the
# scale at activity / 2**16.
_BIN_SHIFT = 20
CLASS_OFFSET = 8 * (127 + ACTIVITY_BITS) + 128 - 40
_LUT_BASE = 2048  # bins are below 2048; a coded band's index is stored + 2048, a zero band's as 0
_CLASS_LUT = np.concatenate(
    [
        np.full(_LUT_BASE, N_CLASSES, np.uint8),
        np.clip((np.arange(_LUT_BASE + 256) - CLASS_OFFSET) >> 1, 0, N_CLASSES - 1).astype(np.uint8),
    ]
)
_ESCAPE_LENGTH_MODEL = constriction.stream.model.Uniform(33)  # bit length 0..32 of the excess
_UNIFORM = constriction.stream.model.Uniform()
_LOW_BITS = 16  # an excess's bits below its leading one: up to 16, then the rest


# --- bit-reproducible arithmetic -------------------------------------------------------------


def _exp(x: np.ndarray) -> np.ndarray:
    """e**x for x <= 0 with + * / only: a degree-6 Taylor series at x / 2**16, squared 16 times."""
    y = np.asarray(x, np.float64) / 65536.0
    t = 1.0 + y * (1.0 + y / 2.0 * (1.0 + y / 3.0 * (1.0 + y / 4.0 * (1.0 + y / 5.0 * (1.0 + y / 6.0)))))
    for _ in range(16):
        t = t * t
    return t


def _log2(x: np.ndarray) -> np.ndarray:
    """log2(x) for x > 0 with frexp, + * /: ln of the mantissa by the atanh series."""
    mantissa, exponent = np.frexp(np.asarray(x, np.float64))
    u = (mantissa - 1.0) / (mantissa + 1.0)
    u2 = u * u
    series = np.zeros_like(u)
    for k in range(29, 0, -2):
        series = 1.0 / k + u2 * series
    return exponent + 2.0 * u * series / 0.6931471805599453  # type: ignore[no-any-return]


def _float_log2(x: np.ndarray) -> np.ndarray:
    """A piecewise-linear log2 from a float64's bits (exact and cheap; error below 0.09)."""
    mantissa, exponent = np.frexp(np.asarray(x, np.float64))
    return exponent - 2.0 + 2.0 * mantissa  # type: ignore[no-any-return]


def class_scale(k: int) -> float:
    """Laplace scale of class k: 2**(k/4 - 4.875), the middle of its quarter octave."""
    octave, quarter = divmod(k, 4)
    return math.ldexp(math.sqrt(math.sqrt(math.sqrt(float(2 ** (2 * quarter + 1))))), octave - 5)


def half_width(k: int) -> int:
    return int(min(MAX_HALF_WIDTH, max(8, math.ceil(TAIL_SCALES * class_scale(k)))))


HALF_WIDTHS = np.array([half_width(k) for k in range(N_CLASSES)] + [0], np.int64)  # NO_CLASS: nothing
_HALF_WIDTHS_32 = HALF_WIDTHS.astype(np.int32)
_INT32 = (-(2**31), 2**31 - 1)


def activity_bins(activity: np.ndarray) -> np.ndarray:
    """Eighth-octave bin of each activity (int32 >= 1): its float32 exponent and top mantissa bits."""
    return activity.astype(np.float32).view(np.int32) >> _BIN_SHIFT  # type: ignore[no-any-return]


def lut_index(index: np.ndarray) -> np.ndarray:
    """Band indices as ``classes_of`` takes them: + 2048 when coded, 0 for a zero band."""
    return np.where(index == ZERO_BAND, 0, index + _LUT_BASE).astype(np.int32)  # type: ignore[no-any-return]


def classes_of(activity: np.ndarray, band_lut_index: np.ndarray) -> np.ndarray:
    """Class of each activity (NO_CLASS in a zero band) given its band's ``lut_index``."""
    return _CLASS_LUT[activity_bins(activity) + band_lut_index]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Table:
    model: constriction.stream.model.Categorical
    half_width: int
    cost: np.ndarray  # int64, bits * 2**16 of each |value| 0..R (R: the escape's table entry)


@lru_cache(maxsize=12 * N_CLASSES)
def _table(k: int, zero_half_width: float) -> _Table:
    """The model of class k: P(0) = 1 - r**z, P(+-m) = r**(m - 1 + z) (1 - r) / 2 for 0 < m < R, and
    P(+-R) = r**(R - 1 + z) / 2 (escapes), with r = e**(-1/scale) and z the zero bin's half-width."""
    s, r = class_scale(k), half_width(k)
    z = zero_half_width
    m = np.arange(1, r, dtype=np.float64)
    p0 = 1.0 - _exp(np.array([-z / s]))
    one_minus_ratio = 1.0 - _exp(np.array([-1.0 / s]))
    pm = 0.5 * _exp(-(m - 1.0 + z) / s) * one_minus_ratio
    tail = 0.5 * _exp(np.array([-(r - 1.0 + z) / s]))
    probabilities = np.concatenate([tail, pm[::-1], p0, pm, tail])
    model = constriction.stream.model.Categorical(probabilities, perfect=False)
    # the weights constriction gives each symbol (its fast quantization, replayed exactly)
    n = probabilities.size
    running = np.cumsum(probabilities)
    scale = float(2**24 - n) / float(running[-1])
    left = (np.concatenate([[0.0], running[:-1]]) * scale).astype(np.int64) + np.arange(n)
    weights = np.diff(np.append(left, 2**24))
    cost = np.rint((24.0 - _log2(weights.astype(np.float64))) * 65536.0).astype(np.int64)
    return _Table(model, r, cost[r:])


@lru_cache(maxsize=16)
def _costs(zero_half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """All classes' costs in one array, and each class's offset into it."""
    costs = [_table(k, zero_half_width).cost for k in range(N_CLASSES)]
    offsets = np.cumsum([0] + [c.size for c in costs[:-1]]).astype(np.int64)
    return np.concatenate(costs), offsets


def _symbol_costs(classes: np.ndarray, magnitudes: np.ndarray, zero_half_width: float) -> np.ndarray:
    """Integer cost (bits * 2**16) of each magnitude under its class, escapes at the table's edge."""
    costs, offsets = _costs(zero_half_width)
    k = classes.astype(np.int64)
    return costs[offsets[k] + np.minimum(magnitudes, HALF_WIDTHS[k])]  # type: ignore[no-any-return]


# --- geometry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """Positions ``start:stop`` of a level's coding order that share an activity formula."""

    start: int
    stop: int
    kind: int  # 2 * (second group) + (has decoded neighbours)
    channels: tuple[int, int]  # the group's channel range
    place: np.ndarray  # each position's index into one channel's (3, H, W)
    local: np.ndarray  # each position's index into the group's (channels, 3, H, W)


@dataclass(frozen=True)
class _Step:
    start: int
    stop: int
    parts: tuple[_Part, ...]


@dataclass(frozen=True)
class _Level:
    """A level's detail bands, stacked as (C, 3, H, W) (orientations HL, LH, HH; magnitudes are
    kept with a zero border, as (C, 3, H + 2, W + 2)), and the coding order of their positions."""

    level: int
    shape: tuple[int, int]
    bands: tuple[Subband | None, ...]
    parent: int | None  # index of the next coarser level in ``_Geometry.levels``
    steps: tuple[_Step, ...]
    padded: np.ndarray  # coding order -> index into the bordered (C, 3, H + 2, W + 2)
    out: np.ndarray  # coding order -> index into the (C, h, w) symbols
    slot: np.ndarray  # coding order -> channel * 3 + orientation
    kind: np.ndarray
    parent_index: np.ndarray  # coding order -> the parent's index into the coarser (C, 3, Hp, Wp)
    parent_place: np.ndarray  # the same into one channel's (3, Hp, Wp)


@dataclass(frozen=True)
class _Geometry:
    channels: int
    first_group: int
    ll: Subband
    levels: tuple[_Level, ...]  # coarsest first
    present: np.ndarray  # flat indices of coded bands into (levels, C, 3), in side-information order
    _weights: dict[int, tuple[tuple[tuple[int, ...], ...], list[np.ndarray]]]

    def weights(self, weight_set: int) -> tuple[tuple[tuple[int, ...], ...], list[np.ndarray]]:
        """Per kind the weights on the terms' sums for this channel count (w * 256 / values summed),
        and per level the B, P, PA weights of each position (3, positions) as int32."""
        if weight_set not in self._weights:
            counts = (1, 9, 9 * self.channels, self.first_group, 9 * self.first_group, 4)
            table = tuple(
                tuple((w * 256 + d // 2) // d for w, d in zip(kind, counts, strict=True))
                for kind in WEIGHT_SETS[weight_set]
            )
            array = np.array(table, np.int32)
            per_level = [np.ascontiguousarray(array[lv.kind, :3].T) for lv in self.levels]
            self._weights[weight_set] = table, per_level
        return self._weights[weight_set]


def _geometry(shape: tuple[int, ...], bands: tuple[Subband, ...]) -> _Geometry:
    dims = tuple(int(v) for v in shape)
    if len(dims) != 3:
        raise ValueError(f"expected a (C, h, w) shape, got {shape}")
    key = (dims, tuple((b.name, b.level, b.rows.start, b.rows.stop, b.cols.start, b.cols.stop) for b in bands))
    geo = _GEOMETRIES.get(key)
    if geo is None:
        if len(_GEOMETRIES) >= 64:
            _GEOMETRIES.clear()
        geo = _GEOMETRIES[key] = _build_geometry(dims, bands)  # type: ignore[arg-type]
    return geo


_GEOMETRIES: dict[tuple, _Geometry] = {}


def _detail_levels(shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> dict[int, dict[str, Subband]]:
    _, h, w = shape
    if shape[0] < 1 or not bands or not bands[0].name.startswith("LL"):
        raise ValueError(f"expected bands starting with an LL band and a (C, h, w) shape, got {shape}")
    covered = np.zeros((h, w), np.int64)
    for b in bands:
        if b.size <= 0 or b.rows.stop > h or b.cols.stop > w or b.rows.start < 0 or b.cols.start < 0:
            raise ValueError(f"band {b.name} {b.rows}, {b.cols} does not fit a {h}x{w} plane")
        covered[b.rows, b.cols] += 1
    if not (covered == 1).all():
        raise ValueError(f"bands must tile the {h}x{w} plane exactly once")
    by_level: dict[int, dict[str, Subband]] = {}
    for b in bands[1:]:
        if b.name[:2] not in ("HL", "LH", "HH") or b.level < 1 or b.name[:2] in by_level.get(b.level, {}):
            raise ValueError(f"unexpected band {b.name}; detail bands are one HL, LH and HH per level >= 1")
        by_level.setdefault(b.level, {})[b.name[:2]] = b
    return by_level


def _build_geometry(shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> _Geometry:
    channels, h, w = shape
    by_level = _detail_levels(shape, bands)
    first_group = (channels + 3) // 4
    groups = ((0, first_group), (first_group, channels))
    levels: list[_Level] = []
    present: list[int] = []
    for number in sorted(by_level, reverse=True):
        oriented = tuple(by_level[number].get(name) for name in ("HL", "LH", "HH"))
        hs = max(b.rows.stop - b.rows.start for b in oriented if b is not None)
        ws = max(b.cols.stop - b.cols.start for b in oriented if b is not None)
        parent = len(levels) - 1 if levels and levels[-1].level == number + 1 else None
        # the coarsest level's "parent" is the LL band's gradient at the same place
        ph, pw = levels[parent].shape if parent is not None else (hs, ws)
        valid = np.zeros((3, hs, ws), bool)
        for o, b in enumerate(oriented):
            if b is not None:
                valid[o, : b.rows.stop - b.rows.start, : b.cols.stop - b.cols.start] = True
        anchor = (np.add.outer(np.arange(hs), np.arange(ws)) % 2 == 0)[None]
        plane = 3 * hs * ws
        flats, kinds, steps = [], [], []
        position = 0
        plan: tuple[tuple[tuple[int, bool | None], ...], ...] = (
            (((0, True),), ((0, False), (1, True)), ((1, False),)) if parent is not None else (((-1, None),),)
        )
        for step_plan in plan:
            parts = []
            step_start = position
            for group, anchors in step_plan:
                start, stop = groups[group] if group >= 0 else (0, channels)
                chosen = valid if anchors is None else valid & (anchor if anchors else ~anchor)
                local = np.flatnonzero(chosen.ravel())
                flat = (np.arange(start, stop, dtype=np.int64)[:, None] * plane + local[None, :]).ravel()
                if flat.size:
                    kind = 2 * group + (not anchors) if group >= 0 else COARSEST_KIND
                    part = _Part(
                        position, position + flat.size, kind, (start, stop), flat % plane, flat - start * plane
                    )
                    parts.append(part)
                    flats.append(flat)
                    kinds.append(np.full(flat.size, kind, np.int64))
                    position += flat.size
            if parts:
                steps.append(_Step(step_start, position, tuple(parts)))
        flat = np.concatenate([np.zeros(0, np.int64), *flats])
        ch, ori, row, col = np.unravel_index(flat, (channels, 3, hs, ws))
        rows0 = np.array([b.rows.start if b is not None else 0 for b in oriented])[ori]
        cols0 = np.array([b.cols.start if b is not None else 0 for b in oriented])[ori]
        pi, pj = (np.minimum(row // 2, ph - 1), np.minimum(col // 2, pw - 1)) if parent is not None else (row, col)
        levels.append(
            _Level(
                level=number,
                shape=(hs, ws),
                bands=oriented,
                parent=parent,
                steps=tuple(steps),
                padded=(((ch * 3 + ori) * (hs + 2) + row + 1) * (ws + 2) + col + 1).astype(np.int64),
                out=((ch * h + rows0 + row) * w + cols0 + col).astype(np.int64),
                slot=(ch * 3 + ori).astype(np.int64),
                kind=np.concatenate([np.zeros(0, np.int64), *kinds]),
                parent_index=(((ch * 3 + ori) * ph + pi) * pw + pj).astype(np.int64),
                parent_place=((ori * ph + pi) * pw + pj).astype(np.int64),
            )
        )
        for channel in range(channels):
            first_slot = (len(levels) - 1) * 3 * channels + 3 * channel
            present += [first_slot + orientation for orientation, b in enumerate(oriented) if b is not None]
    return _Geometry(channels, first_group, bands[0], tuple(levels), np.array(present, np.int64), {})


# --- activities (shared by encoder and decoder) -------------------------------------------------


def _box3(padded: np.ndarray) -> np.ndarray:
    """3x3 sums of an array with a zero border (..., H + 2, W + 2) -> (..., H, W)."""
    rows = padded[..., :-2, :] + padded[..., 1:-1, :] + padded[..., 2:, :]
    return rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # type: ignore[no-any-return]


def _neighbours4(padded: np.ndarray) -> np.ndarray:
    """Sums of the 4 neighbours of an array with a zero border (..., H + 2, W + 2) -> (..., H, W)."""
    return padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]  # type: ignore[no-any-return]


def _ll_activity(ll_values: np.ndarray, lv: _Level) -> np.ndarray:
    """The coarsest level's parent magnitudes from the LL band (N, C, h, w): the horizontal
    gradient for HL, the vertical for LH, their mean for HH, clipped and bordered
    (N, C, 3, H + 2, W + 2) int32."""
    hs, ws = lv.shape
    x = ll_values[..., :hs, :ws].astype(np.int64)
    across = np.zeros(x.shape, np.int64)
    down = np.zeros(x.shape, np.int64)
    across[..., 1:] = np.abs(x[..., 1:] - x[..., :-1])
    down[..., 1:, :] = np.abs(x[..., 1:, :] - x[..., :-1, :])
    out = np.zeros((*x.shape[:2], 3, hs + 2, ws + 2), np.int32)
    out[:, :, 0, 1:-1, 1:-1] = np.minimum(across, FEATURE_CLIP)
    out[:, :, 1, 1:-1, 1:-1] = np.minimum(down, FEATURE_CLIP)
    out[:, :, 2, 1:-1, 1:-1] = np.minimum((across + down) >> 1, FEATURE_CLIP)
    return out


def _level_static(lv: _Level, position_weights: np.ndarray, parent_mags: np.ndarray | None, n: int) -> np.ndarray:
    """B + P * parent + PA * all channels' parents for every position (N, positions) int32, from
    the complete coarser level's bordered magnitudes (N, C, 3, Hp + 2, Wp + 2)."""
    b, p, pa = position_weights
    if parent_mags is None:
        return np.broadcast_to(b, (n, b.size))
    boxed = _box3(parent_mags)
    total = np.add.reduce(boxed, axis=1, dtype=np.int32).reshape(n, -1)
    parents = np.take(boxed.reshape(n, -1), lv.parent_index, axis=1)
    return b + p * parents + pa * np.take(total, lv.parent_place, axis=1)  # type: ignore[no-any-return]


def _step_activity(
    geo: _Geometry, step: _Step, weights: tuple[tuple[int, ...], ...], static: np.ndarray, mags: np.ndarray
) -> np.ndarray:
    """Activities (N, step positions) from the parent terms and what earlier passes of this level
    decoded (``mags``: bordered N x C x 3 x (H + 2) x (W + 2), zero where not decoded yet)."""
    n = mags.shape[0]
    a = static[:, step.start : step.stop]
    if len(step.parts) > 1 or step.parts[0].kind:
        a = a.copy()
    for part in step.parts:
        where = slice(part.start - step.start, part.stop - step.start)
        _, _, _, s, s3, nb = weights[part.kind]
        if part.kind in (2, 3):
            if geo.first_group == 1:
                first = mags[:, 0]
            else:
                first = np.add.reduce(mags[:, : geo.first_group], axis=1, dtype=np.int32)
            same_place = s * first[..., 1:-1, 1:-1] + s3 * _box3(first)
            a[:, where] += np.take(same_place.reshape(n, -1), part.place, axis=1)
        if part.kind in (1, 3):
            start, stop = part.channels
            a[:, where] += nb * np.take(_neighbours4(mags[:, start:stop]).reshape(n, -1), part.local, axis=1)
    return a


# --- escapes ----------------------------------------------------------------------------------


def _bit_lengths(values: np.ndarray) -> np.ndarray:
    """Bit length of each non-negative int64 below 2**53."""
    _, exponent = np.frexp(values.astype(np.float64))
    return np.where(values > 0, exponent, 0).astype(np.int64)


def _escape_units(excess: np.ndarray) -> list[tuple[np.ndarray, object, np.ndarray | None]]:
    """(symbols, model, sizes) in decode order coding each excess >= 0 (below 2**32)."""
    lengths = _bit_lengths(excess)
    below = np.maximum(lengths - 1, 0)
    rest = excess - np.where(lengths > 0, np.left_shift(1, below), 0)
    low_bits = np.minimum(below, _LOW_BITS)
    high_bits = below - low_bits
    units: list[tuple[np.ndarray, object, np.ndarray | None]] = [(lengths, _ESCAPE_LENGTH_MODEL, None)]
    has_low, has_high = low_bits > 0, high_bits > 0
    if has_low.any():
        low = rest[has_low] & (np.left_shift(1, low_bits[has_low]) - 1)
        units.append((low, _UNIFORM, np.left_shift(1, low_bits[has_low])))
    if has_high.any():
        high = rest[has_high] >> low_bits[has_high]
        units.append((high, _UNIFORM, np.left_shift(1, high_bits[has_high])))
    return units


def _decode_escapes(coder: constriction.stream.stack.AnsCoder, count: int) -> np.ndarray:
    lengths = coder.decode(_ESCAPE_LENGTH_MODEL, count).astype(np.int64)
    if (lengths > 32).any():
        raise CorruptStreamError("escape length is out of range")
    below = np.maximum(lengths - 1, 0)
    low_bits = np.minimum(below, _LOW_BITS)
    high_bits = below - low_bits
    rest = np.zeros(count, np.int64)
    has_low, has_high = low_bits > 0, high_bits > 0
    if has_low.any():
        rest[has_low] = coder.decode(_UNIFORM, np.left_shift(1, low_bits[has_low]).astype(np.int32))
    if has_high.any():
        high = coder.decode(_UNIFORM, np.left_shift(1, high_bits[has_high]).astype(np.int32)).astype(np.int64)
        rest[has_high] |= high << low_bits[has_high]
    return np.where(lengths > 0, np.left_shift(1, below), 0) + rest  # type: ignore[no-any-return]


# --- LL bands -----------------------------------------------------------------------------------


def _ll_residuals(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(4, C, h, w) residuals of each LL predictor; values (C, h, w) int64, centres (C,)."""
    c = centres[:, None, None]
    centre = values - c
    left = values.copy()
    left[:, :, 1:] -= values[:, :, :-1]
    left[:, 1:, 0] -= values[:, :-1, 0]
    left[:, 0, 0] -= centres
    up = values.copy()
    up[:, 1:, :] -= values[:, :-1, :]
    up[:, 0, 1:] -= values[:, 0, :-1]
    up[:, 0, 0] -= centres
    gradient = left.copy()
    gradient[:, 1:, 1:] -= values[:, :-1, 1:] - values[:, :-1, :-1]
    return np.stack([centre, left, up, gradient])


def _ll_reconstruct(residuals: np.ndarray, modes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Invert ``_ll_residuals`` channel by channel mode (int64 throughout)."""
    out = np.empty_like(residuals)
    r = residuals.copy()
    r[:, 0, 0] += centres
    for mode in range(4):
        chosen = modes == mode
        if not chosen.any():
            continue
        x = r[chosen]
        if mode == 0:
            x = x.copy()
            x[:, 0, 0] -= centres[chosen]
            x += centres[chosen][:, None, None]
        elif mode == 1:
            x = x.copy()
            x[:, :, 0] = np.cumsum(x[:, :, 0], axis=1)
            x = np.cumsum(x, axis=2)
        elif mode == 2:
            x = x.copy()
            x[:, 0, :] = np.cumsum(x[:, 0, :], axis=1)
            x = np.cumsum(x, axis=1)
        else:
            x = np.cumsum(np.cumsum(x, axis=1), axis=2)
        out[chosen] = x
    return out


def _lower_median(values: np.ndarray) -> np.ndarray:
    """Lower median of each row (C, n) of int64."""
    k = (values.shape[1] - 1) // 2
    return np.partition(values, k, axis=1)[:, k]


def _fit_ll(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per channel: mode, class (0, which costs nothing, when all residuals are zero), centre, residuals."""
    channels = values.shape[0]
    centres = _lower_median(values.reshape(channels, -1))
    residuals = _ll_residuals(values, centres).reshape(4, channels, -1)
    mags = np.abs(residuals)
    mean = mags.mean(axis=2)  # exact: sums of integers, then one division
    guess = _scale_class_guess(mean)
    best_cost = np.full((4, channels), np.iinfo(np.int64).max)
    best_class = np.zeros((4, channels), np.int64)
    for delta in range(-3, 4):
        k = np.clip(guess + delta, 0, N_CLASSES - 1)
        cost = _symbol_costs(np.broadcast_to(k[..., None], mags.shape), mags, LL_ZERO_HALF_WIDTH).sum(axis=2)
        better = cost < best_cost
        best_cost = np.where(better, cost, best_cost)
        best_class = np.where(better, k, best_class)
    zero = ~mags.any(axis=2)
    best_cost = np.where(zero, 0, best_cost)
    modes = np.argmin(best_cost, axis=0)  # the first mode among equals
    chosen = np.arange(channels)
    classes = np.where(zero[modes, chosen], 0, best_class[modes, chosen])
    return modes, classes, centres, residuals[modes, chosen]


def _scale_class_guess(mean_magnitude: np.ndarray) -> np.ndarray:
    """The class whose scale is near a mean magnitude (a Laplace's mean |x| is about its scale)."""
    log = _float_log2(np.maximum(mean_magnitude, 2.0**-6))
    return np.clip(np.floor(4.0 * (log + 5.0)).astype(np.int64), 0, N_CLASSES - 1)  # type: ignore[no-any-return]


# --- payload side information -------------------------------------------------------------------


@dataclass
class _Side:
    parameters: int  # weight set << 3 | deadzone index
    ll_modes: np.ndarray
    ll_classes: np.ndarray
    ll_centres: np.ndarray
    words: np.ndarray
    indices: np.ndarray | None = None  # (levels, C, 3) band indices 0..255, from the ANS stream

    @property
    def weight_set(self) -> int:
        return self.parameters >> 3

    @property
    def deadzone(self) -> float:
        return DEADZONES[self.parameters & 7]


def _write_side(geo: _Geometry, side: _Side) -> bytes:
    out = ByteWriter()
    out.u8(side.parameters)
    for c in range(geo.channels):
        out.u8(int(side.ll_modes[c]) << 6 | int(side.ll_classes[c]))
        out.svarint(int(side.ll_centres[c]))
    return out.getvalue() + side.words.astype("<u4").tobytes()


def _read_side(payload: bytes | memoryview, geo: _Geometry) -> _Side:
    reader = ByteReader(payload, "entropy payload")
    parameters = reader.u8()
    if parameters >> 3 >= len(WEIGHT_SETS):
        raise CorruptStreamError(f"entropy payload names parameters {parameters}, which this version does not know")
    modes, classes, centres = (np.zeros(geo.channels, np.int64) for _ in range(3))
    for c in range(geo.channels):
        byte = reader.u8()
        modes[c], classes[c] = byte >> 6, byte & 63
        centres[c] = reader.svarint(2**31)
        if not -(2**31) <= centres[c] < 2**31:
            raise CorruptStreamError(f"LL centre of channel {c} is out of the int32 range")
    rest = reader.take(reader.remaining)
    if len(rest) % 4:
        raise CorruptStreamError("entropy payload is not a whole number of 32-bit words")
    return _Side(parameters, modes, classes, centres, np.frombuffer(rest, "<u4").astype(np.uint32))


def _index_deltas(geo: _Geometry, indices: np.ndarray) -> np.ndarray:
    """Band indices (levels, C, 3) as deltas in side-information order: channel 0 from the same
    orientation one level coarser (128 at the coarsest), other channels from the channel before."""
    if not geo.levels:
        return np.zeros(0, np.int64)
    flags = np.zeros(indices.size, bool)
    flags[geo.present] = True
    present = flags.reshape(indices.shape)
    carried = indices.copy()
    for i in range(indices.shape[0]):  # a level without an orientation carries the coarser one's index
        above = carried[i - 1, 0] if i else np.full(3, 128)
        carried[i] = np.where(present[i], carried[i], above[None, :])
    deltas = carried.copy()
    deltas[:, 1:] -= carried[:, :-1]
    deltas[0, 0] -= 128
    deltas[1:, 0] -= carried[:-1, 0]
    return deltas.reshape(-1)[geo.present]  # type: ignore[no-any-return]


def _indices_from_deltas(geo: _Geometry, deltas: np.ndarray) -> np.ndarray:
    full = np.zeros((len(geo.levels), geo.channels, 3), np.int64)
    full.reshape(-1)[geo.present] = deltas
    full[:, 0] = np.cumsum(full[:, 0], axis=0) + 128
    full = np.cumsum(full, axis=1)
    coded = full.reshape(-1)[geo.present]
    if coded.size and (coded.min() < 0 or coded.max() > 255):
        raise CorruptStreamError("a band index is out of range")
    return full


# --- encoder ------------------------------------------------------------------------------------


def _check_symbols(symbols: np.ndarray) -> None:
    if not isinstance(symbols, np.ndarray) or symbols.ndim != 3 or symbols.dtype != np.int32:
        got = f"{symbols.dtype} {symbols.shape}" if isinstance(symbols, np.ndarray) else type(symbols).__name__
        raise ValueError(f"expected int32 symbols of shape (C, h, w), got {got}")


_Unit = tuple[np.ndarray, object, "np.ndarray | None"]


@dataclass
class _Plan:
    side: _Side
    units: list[_Unit]
    bits: float


def _choose_weight_set(channels: int) -> int:
    return 1 if channels >= 16 else 0


def _plan(symbols: np.ndarray, bands: tuple[Subband, ...]) -> _Plan:
    _check_symbols(symbols)
    geo = _geometry(symbols.shape, bands)
    weight_set = _choose_weight_set(geo.channels)
    kind_weights, position_weights = geo.weights(weight_set)
    ll = geo.ll
    modes, ll_classes, centres, residuals = _fit_ll(symbols[:, ll.rows, ll.cols].astype(np.int64))
    # detail levels: activities first (the values of earlier passes do not depend on the models)
    flat_symbols = symbols.reshape(-1)
    values, activities = [], []
    level_mags: list[np.ndarray] = []
    for i, lv in enumerate(geo.levels):
        v = flat_symbols[lv.out].astype(np.int64)
        clipped = np.minimum(np.abs(v), FEATURE_CLIP).astype(np.int32)
        if lv.parent is not None:
            parent = level_mags[lv.parent]
        else:
            parent = _ll_activity(symbols[None, :, ll.rows, ll.cols], lv)
        static = _level_static(lv, position_weights[i], parent, 1)
        work = np.zeros((1, geo.channels, 3, lv.shape[0] + 2, lv.shape[1] + 2), np.int32)
        work_flat = work.reshape(1, -1)
        acts = []
        for step in lv.steps:
            acts.append(_step_activity(geo, step, kind_weights, static, work)[0])
            work_flat[0, lv.padded[step.start : step.stop]] = clipped[step.start : step.stop]
        values.append(v)
        activities.append(np.concatenate(acts) if acts else np.zeros(0, np.int32))
        level_mags.append(work)
    fit = _Fit(geo, activities, values)
    zone = fit.best_deadzone(fit.guess)
    indices = fit.indices(DEADZONES[zone])
    units: list[_Unit] = []
    deltas = _index_deltas(geo, indices)
    total = _add_symbols(units, deltas, np.full(deltas.size, SIDE_CLASS, np.uint8), LL_ZERO_HALF_WIDTH)
    order = np.argsort(ll_classes, kind="stable")
    classes = np.repeat(ll_classes[order].astype(np.uint8), residuals.shape[1])
    total += _add_symbols(units, residuals[order].ravel(), classes, LL_ZERO_HALF_WIDTH)
    for i, lv in enumerate(geo.levels):
        band = lut_index(indices[i].reshape(-1))[lv.slot]
        for step in lv.steps:
            where = slice(step.start, step.stop)
            k = classes_of(activities[i][where], band[where])
            order = np.argsort(k, kind="stable")
            coded = order[: int((k != NO_CLASS).sum())]
            total += _add_symbols(units, values[i][where][coded], k[coded], DEADZONES[zone])
    side = _Side(weight_set << 3 | zone, modes, ll_classes, centres, np.zeros(0, np.uint32), indices)
    return _Plan(side, units, total / 65536.0)


def _add_symbols(units: list[_Unit], values: np.ndarray, classes: np.ndarray, zero_half_width: float) -> int:
    """Append a pass's symbols (sorted by class) with their escapes; return their cost (bits * 2**16)."""
    if not values.size:
        return 0
    r = HALF_WIDTHS[classes]
    mags = np.abs(values)
    total = int(_symbol_costs(classes, mags, zero_half_width).sum())
    clipped = np.clip(values, -r, r)
    bounds = np.flatnonzero(np.diff(classes.astype(np.int64))) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, classes.size], strict=True):
        k = int(classes[start])
        units.append(((clipped[start:stop] + r[start]).astype(np.int32), _table(k, zero_half_width).model, None))
    escaped = mags >= r
    if escaped.any():
        escape_units = _escape_units(mags[escaped] - r[escaped])
        units.extend(escape_units)
        lengths = escape_units[0][0]
        total += int(escaped.sum()) * round(math.log2(33) * 65536) + int(np.maximum(lengths - 1, 0).sum()) * 65536
    return total


class _Fit:
    """Chooses band indices and the deadzone for an image's detail activities."""

    def __init__(self, geo: _Geometry, activities: list[np.ndarray], values: list[np.ndarray]) -> None:
        per_level = 3 * geo.channels
        self.geo = geo
        self.n_slots = per_level * len(geo.levels)
        self.slot = np.concatenate(
            [lv.slot + i * per_level for i, lv in enumerate(geo.levels)] + [np.zeros(0, np.int64)]
        )
        acts = np.concatenate([*activities, np.zeros(0, np.int32)])
        self.bins = activity_bins(acts).astype(np.int64)
        self.mags = np.abs(np.concatenate([*values, np.zeros(0, np.int64)]))
        self.mag_sum = np.bincount(self.slot, weights=self.mags, minlength=self.n_slots)
        act_sum = np.bincount(self.slot, weights=acts, minlength=self.n_slots)
        # a band's scale is near its mean magnitude: index 131 + 8 log2(mean magnitude / mean activity)
        ratio = self.mag_sum / np.maximum(act_sum, 1.0) * 2.0**ACTIVITY_BITS
        log = np.floor(8.0 * _float_log2(np.maximum(ratio, 2.0**-15))).astype(np.int64)
        self.guess = np.clip(131 + log, 1, 255)

    def classes(self, index: np.ndarray) -> np.ndarray:
        return np.clip((self.bins + index[self.slot] - CLASS_OFFSET) >> 1, 0, N_CLASSES - 1)

    def cost(self, index: np.ndarray, zero_half_width: float) -> np.ndarray:
        k = self.classes(index)
        return np.bincount(self.slot, weights=_symbol_costs(k, self.mags, zero_half_width), minlength=self.n_slots)

    def indices(self, zero_half_width: float) -> np.ndarray:
        """(levels, C, 3) band indices: the fewest bits over a coarse-to-fine search, 0 for zero bands."""
        best = self.guess
        best_cost = self.cost(best, zero_half_width)
        for stride in (4, 2, 1):
            for direction in (-1, 1):
                trial = np.clip(best + direction * stride, 1, 255)
                trial_cost = self.cost(trial, zero_half_width)
                better = trial_cost < best_cost
                best = np.where(better, trial, best)
                best_cost = np.where(better, trial_cost, best_cost)
        best = np.where(self.mag_sum == 0, ZERO_BAND, best)
        return best.reshape(len(self.geo.levels), self.geo.channels, 3)  # type: ignore[no-any-return]

    def best_deadzone(self, indices: np.ndarray) -> int:
        """The deadzone index that codes the symbols in the fewest bits with these band indices
        (from a histogram of classes and magnitudes; magnitudes from 64 on count as 64)."""
        coded = (indices.reshape(-1)[self.slot] != ZERO_BAND) & (self.mag_sum[self.slot] > 0)
        k, mags = self.classes(indices.reshape(-1))[coded], np.minimum(self.mags[coded], 64)
        histogram = np.bincount(k * 65 + mags, minlength=N_CLASSES * 65).reshape(N_CLASSES, 65)
        used_k, used_m = np.nonzero(histogram)
        counts = histogram[used_k, used_m]
        costs = [int((_symbol_costs(used_k, used_m, z) * counts).sum()) for z in DEADZONES]
        return int(np.argmin(costs))


def encode(symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes:
    """One image's symbols (C, h, w) int32 -> payload bytes (side information, then ANS words)."""
    plan = _plan(symbols, bands)
    coder = AnsCoder()
    for values, model, sizes in reversed(plan.units):
        if sizes is None:
            coder.encode_reverse(values.astype(np.int32), model)
        else:
            coder.encode_reverse(values.astype(np.int32), model, sizes.astype(np.int32))
    plan.side.words = coder.get_compressed()
    return _write_side(_geometry(symbols.shape, bands), plan.side)


def information_bits(symbols: np.ndarray, bands: tuple[Subband, ...]) -> float:
    """Ideal code length in bits of the symbols under the coder's own (quantized) models, the
    side-information bytes excluded."""
    return _plan(symbols, bands).bits


def side_info_bytes(payload: bytes | memoryview, channels: int, bands: tuple[Subband, ...]) -> int:
    """Bytes of a payload before its ANS words (the parameters, and each channel's LL model and centre)."""
    reader = ByteReader(payload, "entropy payload")
    reader.u8()
    for _ in range(channels):
        reader.u8()
        reader.svarint(2**31)
    return reader.pos


# --- decoder ------------------------------------------------------------------------------------


def decode(payload: bytes | memoryview, shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> np.ndarray:
    """Payload bytes -> int32 symbols of ``shape`` (C, h, w). Damage raises CorruptStreamError."""
    return decode_many([payload], shape, bands)[0]  # type: ignore[no-any-return]


def decode_many(
    payloads: Sequence[bytes | memoryview], shape: tuple[int, int, int], bands: tuple[Subband, ...]
) -> np.ndarray:
    """Several payloads of one shape -> (N, C, h, w) int32; streams that share a weight set share
    the array work."""
    geo = _geometry(shape, bands)
    out = np.zeros((len(payloads), *geo_shape(geo, shape)), np.int32)
    sides = [_read_side(p, geo) for p in payloads]
    by_set: dict[int, list[int]] = {}
    for i, side in enumerate(sides):
        by_set.setdefault(side.weight_set, []).append(i)
    for weight_set, members in by_set.items():
        chosen = [sides[i] for i in members]
        try:
            coders = [AnsCoder(side.words) for side in chosen]
            decoded = _decode(geo, shape, chosen, coders, geo.weights(weight_set))
            if len(members) == len(sides):
                out = decoded
            else:
                out[members] = decoded
            if not all(coder.is_empty() for coder in coders):
                raise CorruptStreamError("entropy payload has undecoded data left over")
        except CorruptStreamError:
            raise
        except (ValueError, RuntimeError, OverflowError, TypeError, IndexError) as exc:
            raise CorruptStreamError(f"entropy payload does not decode: {exc}") from exc
    return out


def geo_shape(geo: _Geometry, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    return (geo.channels, int(shape[1]), int(shape[2]))


def _models(zero_half_width: float) -> list[constriction.stream.model.Categorical | None]:
    models = _MODELS.get(zero_half_width)
    if models is None:
        models = _MODELS[zero_half_width] = [None] * N_CLASSES
    return models


_MODELS: dict[float, list[constriction.stream.model.Categorical | None]] = {}


def _decode_symbols(
    coder: constriction.stream.stack.AnsCoder, counts: np.ndarray, zero_half_width: float, symbols: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Values and magnitudes of a pass's symbols, class by class as ``counts`` (N_CLASSES + 1) says;
    the NO_CLASS positions, last in class order, decode as 0. ``symbols``: the values are int32
    symbols (int32 out, anything else is damage); otherwise residuals (int64 out)."""
    present = np.flatnonzero(counts[:N_CLASSES])
    models = _models(zero_half_width)
    pieces = []
    for k, count in zip(present.tolist(), counts[present].tolist(), strict=True):
        model = models[k]
        if model is None:
            model = models[k] = _table(k, zero_half_width).model
        pieces.append(coder.decode(model, count))
    skipped = int(counts[N_CLASSES])
    dtype = np.int32 if symbols else np.int64
    if not pieces:
        return np.zeros(skipped, dtype), np.zeros(skipped, dtype)
    r = np.repeat(_HALF_WIDTHS_32[present], counts[present])
    values = (np.concatenate(pieces) if len(pieces) > 1 else pieces[0]) - r
    mags = np.abs(values)
    escaped = np.flatnonzero(mags >= r)
    if escaped.size or not symbols:
        values, mags = values.astype(np.int64), mags.astype(np.int64)
    if escaped.size:
        excess = _decode_escapes(coder, escaped.size)
        values[escaped] += np.sign(values[escaped]) * excess
        mags[escaped] = np.minimum(mags[escaped] + excess, FEATURE_CLIP)  # mags feed activities only
        if symbols:
            if values[escaped].min() < _INT32[0] or values[escaped].max() > _INT32[1]:
                raise CorruptStreamError("decoded symbol is out of the int32 range")
            values = values.astype(np.int32)
    if skipped:
        values = np.concatenate([values, np.zeros(skipped, values.dtype)])
        mags = np.concatenate([mags, np.zeros(skipped, mags.dtype)])
    return values, mags


def _decode(
    geo: _Geometry,
    shape: tuple[int, int, int],
    sides: list[_Side],
    coders: list[constriction.stream.stack.AnsCoder],
    weights: tuple[tuple[tuple[int, ...], ...], list[np.ndarray]],
) -> np.ndarray:
    n, channels = len(sides), geo.channels
    kind_weights, position_weights = weights
    out = np.zeros((n, channels, int(shape[1]), int(shape[2])), np.int32)
    ll = geo.ll
    ll_size = ll.size
    side_counts = np.zeros(N_CLASSES + 1, np.int64)
    side_counts[SIDE_CLASS] = geo.present.size
    for i, (side, coder) in enumerate(zip(sides, coders, strict=True)):
        side.indices = _indices_from_deltas(geo, _decode_symbols(coder, side_counts, LL_ZERO_HALF_WIDTH, False)[0])
        order = np.argsort(side.ll_classes, kind="stable")
        counts = np.bincount(side.ll_classes, minlength=N_CLASSES + 1) * ll_size
        residuals = np.empty((channels, ll_size), np.int64)
        residuals[order] = _decode_symbols(coder, counts, LL_ZERO_HALF_WIDTH, False)[0].reshape(channels, -1)
        values = _ll_reconstruct(
            residuals.reshape(channels, ll.rows.stop - ll.rows.start, -1), side.ll_modes, side.ll_centres
        )
        if values.min() < _INT32[0] or values.max() > _INT32[1]:
            raise CorruptStreamError("decoded LL symbol is out of the int32 range")
        out[i, :, ll.rows, ll.cols] = values
    indices = np.stack([side.indices for side in sides if side.indices is not None])  # (N, levels, C, 3)
    deadzone = [side.deadzone for side in sides]
    level_mags: list[np.ndarray] = []
    for li, lv in enumerate(geo.levels):
        mags = np.zeros((n, channels, 3, lv.shape[0] + 2, lv.shape[1] + 2), np.int32)
        mags_flat = mags.reshape(n, -1)
        values = np.zeros_like(mags)
        values_flat = values.reshape(n, -1)
        parent = level_mags[lv.parent] if lv.parent is not None else _ll_activity(out[:, :, ll.rows, ll.cols], lv)
        static = _level_static(lv, position_weights[li], parent, n)
        band = np.take(lut_index(indices[:, li].reshape(n, -1)), lv.slot, axis=1)
        for step in lv.steps:
            a = _step_activity(geo, step, kind_weights, static, mags)
            k = classes_of(a, band[:, step.start : step.stop])
            padded = lv.padded[step.start : step.stop]
            for i in range(n):
                order = np.argsort(k[i], kind="stable")
                decoded, magnitudes = _decode_symbols(
                    coders[i], np.bincount(k[i], minlength=N_CLASSES + 1), deadzone[i]
                )
                positions = padded[order]
                values_flat[i, positions] = decoded
                mags_flat[i, positions] = magnitudes
        level_mags.append(mags)
        for o, b in enumerate(lv.bands):
            if b is not None:
                bh, bw = b.rows.stop - b.rows.start, b.cols.stop - b.cols.start
                out[:, :, b.rows, b.cols] = values[:, :, o, 1 : bh + 1, 1 : bw + 1]
    return out
