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

from collections.abc import Sequence
from dataclasses import dataclass

import constriction
import numpy as np

from vaeflow.foundations.binary import ByteReader, ByteWriter
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages.coders import compiled
from vaeflow.stages.coders.classes_geometry import Geometry, geometry_of, level_static, ll_activity, step_activity
from vaeflow.stages.coders.classes_model import (
    ACTIVITY_BITS,
    CLASS_OFFSET,
    DEADZONES,
    ESCAPE_BITS,
    ESCAPE_LOW_BITS,
    FEATURE_CLIP,
    HALF_WIDTHS,
    HALF_WIDTHS_32,
    INDEX_STRIDES,
    LL_ZERO_HALF_WIDTH,
    N_CLASSES,
    NO_CLASS,
    SIDE_CLASS,
    WEIGHT_SETS,
    ZERO_BAND,
    activity_bins,
    class_table,
    classes_of,
    float_log2,
    lut_index,
    symbol_costs,
)
from vaeflow.stages.wavelet import Subband

AnsCoder = constriction.stream.stack.AnsCoder
_ESCAPE_LENGTH_MODEL = constriction.stream.model.Uniform(33)  # bit length 0..32 of the excess
_UNIFORM = constriction.stream.model.Uniform()
_LOW_BITS = ESCAPE_LOW_BITS
_INT32 = (-(2**31), 2**31 - 1)


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


def escape_cost(lengths: np.ndarray) -> int:
    """Cost (bits * 2**16) of escapes with these bit lengths: each length, then its bits below the leading one."""
    return int(lengths.size) * ESCAPE_BITS + int(np.maximum(lengths - 1, 0).sum()) * 65536


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
        cost = symbol_costs(np.broadcast_to(k[..., None], mags.shape), mags, LL_ZERO_HALF_WIDTH).sum(axis=2)
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
    log = float_log2(np.maximum(mean_magnitude, 2.0**-6))
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


def _write_side(geo: Geometry, side: _Side) -> bytes:
    out = ByteWriter()
    out.u8(side.parameters)
    for c in range(geo.channels):
        out.u8(int(side.ll_modes[c]) << 6 | int(side.ll_classes[c]))
        out.svarint(int(side.ll_centres[c]))
    return out.getvalue() + side.words.astype("<u4").tobytes()


def _read_side(payload: bytes | memoryview, geo: Geometry) -> _Side:
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


def index_deltas(geo: Geometry, indices: np.ndarray, base: int = 128) -> np.ndarray:
    """Band indices (levels, C, 3) as deltas in side-information order: channel 0 from the same
    orientation one level coarser (``base`` at the coarsest), other channels from the channel before."""
    if not geo.levels:
        return np.zeros(0, np.int64)
    flags = np.zeros(indices.size, bool)
    flags[geo.present] = True
    present = flags.reshape(indices.shape)
    carried = indices.copy()
    for i in range(indices.shape[0]):  # a level without an orientation carries the coarser one's index
        above = carried[i - 1, 0] if i else np.full(3, base)
        carried[i] = np.where(present[i], carried[i], above[None, :])
    deltas = carried.copy()
    deltas[:, 1:] -= carried[:, :-1]
    deltas[0, 0] -= base
    deltas[1:, 0] -= carried[:-1, 0]
    return deltas.reshape(-1)[geo.present]  # type: ignore[no-any-return]


def indices_from_deltas(geo: Geometry, deltas: np.ndarray, base: int = 128, top: int = 255) -> np.ndarray:
    """Invert ``index_deltas``; an index outside 0..top is damage."""
    full = np.zeros((len(geo.levels), geo.channels, 3), np.int64)
    full.reshape(-1)[geo.present] = deltas
    full[:, 0] = np.cumsum(full[:, 0], axis=0) + base
    full = np.cumsum(full, axis=1)
    coded = full.reshape(-1)[geo.present]
    if coded.size and (coded.min() < 0 or coded.max() > top):
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
    total: int  # bits * 2**16

    @property
    def bits(self) -> float:
        return self.total / 65536.0


def weight_set_of(channels: int) -> int:
    """The contexts' weight set for latents of this many channels."""
    return 1 if channels >= 16 else 0


def _plan(symbols: np.ndarray, bands: tuple[Subband, ...]) -> _Plan:
    _check_symbols(symbols)
    geo = geometry_of(symbols.shape, bands)
    weight_set = weight_set_of(geo.channels)
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
        parent = level_mags[lv.parent] if lv.parent is not None else ll_activity(symbols[None, :, ll.rows, ll.cols], lv)
        static = level_static(lv, position_weights[i], parent, 1)
        work = np.zeros((1, geo.channels, 3, lv.shape[0] + 2, lv.shape[1] + 2), np.int32)
        work_flat = work.reshape(1, -1)
        acts = []
        for step in lv.steps:
            acts.append(step_activity(geo, step, kind_weights, static, work)[0])
            work_flat[0, lv.padded[step.start : step.stop]] = clipped[step.start : step.stop]
        values.append(v)
        activities.append(np.concatenate(acts) if acts else np.zeros(0, np.int32))
        level_mags.append(work)
    fit = _Fit(geo, activities, values)
    zone = fit.best_deadzone(fit.guess)
    indices = fit.indices(DEADZONES[zone])
    units: list[_Unit] = []
    total = head_units(units, geo, indices, ll_classes, residuals)
    for i, lv in enumerate(geo.levels):
        band = lut_index(indices[i].reshape(-1))[lv.slot]
        for step in lv.steps:
            where = slice(step.start, step.stop)
            k = classes_of(activities[i][where], band[where])
            order = np.argsort(k, kind="stable")
            coded = order[: int((k != NO_CLASS).sum())]
            total += _add_symbols(units, values[i][where][coded], k[coded], DEADZONES[zone])
    side = _Side(weight_set << 3 | zone, modes, ll_classes, centres, np.zeros(0, np.uint32), indices)
    return _Plan(side, units, total)


def head_units(
    units: list[_Unit],
    geo: Geometry,
    indices: np.ndarray,
    ll_classes: np.ndarray,
    residuals: np.ndarray,
    base: int = 128,
) -> int:
    """Append what the ANS words start with (``decode_head``'s order); return its cost (bits * 2**16)."""
    deltas = index_deltas(geo, indices, base)
    total = _add_symbols(units, deltas, np.full(deltas.size, SIDE_CLASS, np.uint8), LL_ZERO_HALF_WIDTH)
    order = np.argsort(ll_classes, kind="stable")
    classes = np.repeat(ll_classes[order].astype(np.uint8), residuals.shape[1])
    return total + _add_symbols(units, residuals[order].ravel(), classes, LL_ZERO_HALF_WIDTH)


def _add_symbols(units: list[_Unit], values: np.ndarray, classes: np.ndarray, zero_half_width: float) -> int:
    """Append a pass's symbols (sorted by class) with their escapes; return their cost (bits * 2**16)."""
    if not values.size:
        return 0
    r = HALF_WIDTHS[classes]
    mags = np.abs(values)
    total = int(symbol_costs(classes, mags, zero_half_width).sum())
    clipped = np.clip(values, -r, r)
    bounds = np.flatnonzero(np.diff(classes.astype(np.int64))) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, classes.size], strict=True):
        k = int(classes[start])
        units.append(((clipped[start:stop] + r[start]).astype(np.int32), class_table(k, zero_half_width).model, None))
    escaped = mags >= r
    if escaped.any():
        escape_units = _escape_units(mags[escaped] - r[escaped])
        units.extend(escape_units)
        total += escape_cost(escape_units[0][0])
    return total


class _Fit:
    """Chooses band indices and the deadzone for an image's detail activities."""

    def __init__(self, geo: Geometry, activities: list[np.ndarray], values: list[np.ndarray]) -> None:
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
        log = np.floor(8.0 * float_log2(np.maximum(ratio, 2.0**-15))).astype(np.int64)
        self.guess = np.clip(131 + log, 1, 255)

    def classes(self, index: np.ndarray) -> np.ndarray:
        return np.clip((self.bins + index[self.slot] - CLASS_OFFSET) >> 1, 0, N_CLASSES - 1)

    def cost(self, index: np.ndarray, zero_half_width: float) -> np.ndarray:
        k = self.classes(index)
        return np.bincount(self.slot, weights=symbol_costs(k, self.mags, zero_half_width), minlength=self.n_slots)

    def indices(self, zero_half_width: float) -> np.ndarray:
        """(levels, C, 3) band indices: the fewest bits over a coarse-to-fine search, 0 for zero bands."""
        best = self.guess
        best_cost = self.cost(best, zero_half_width)
        for stride in INDEX_STRIDES:
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
        costs = [int((symbol_costs(used_k, used_m, z) * counts).sum()) for z in DEADZONES]
        return int(np.argmin(costs))


def encode(symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes:
    """One image's symbols (C, h, w) int32 -> payload bytes (side information, then ANS words), in one
    compiled call (``compiled.encode_classes``): the bytes ``encode_reference`` gives."""
    _check_symbols(symbols)
    geo = geometry_of(symbols.shape, bands)
    parameters, modes, classes, centres, words = compiled.encode_classes(symbols, geo, weight_set_of(geo.channels))
    return _write_side(geo, _Side(parameters, modes, classes, centres, words))


def encode_reference(symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes:
    """``encode`` planned with numpy and coded by ``constriction``: the reference the compiled encoder is
    tested against."""
    plan = _plan(symbols, bands)
    coder = AnsCoder()
    for values, model, sizes in reversed(plan.units):
        if sizes is None:
            coder.encode_reverse(values.astype(np.int32), model)
        else:
            coder.encode_reverse(values.astype(np.int32), model, sizes.astype(np.int32))
    plan.side.words = coder.get_compressed()
    return _write_side(geometry_of(symbols.shape, bands), plan.side)


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
    """Several payloads of one shape -> (N, C, h, w) int32, in one compiled call (``compiled``)."""
    dims = (int(shape[0]), int(shape[1]), int(shape[2]))
    return compiled.decode_classes(payloads, dims, geometry_of(dims, bands))


def decode_many_reference(
    payloads: Sequence[bytes | memoryview], shape: tuple[int, int, int], bands: tuple[Subband, ...]
) -> np.ndarray:
    """``decode_many`` through ``constriction``, the array work shared by streams of one weight set:
    the reference the compiled decoder is tested against."""
    geo = geometry_of(shape, bands)
    out: np.ndarray | None = None  # made only when the streams use several weight sets
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
                if out is None:
                    out = np.zeros((len(payloads), *geo_shape(geo, shape)), np.int32)
                out[members] = decoded
            if not all(coder.is_empty() for coder in coders):
                raise CorruptStreamError("entropy payload has undecoded data left over")
        except CorruptStreamError:
            raise
        except (ValueError, RuntimeError, OverflowError, TypeError, IndexError) as exc:
            raise CorruptStreamError(f"entropy payload does not decode: {exc}") from exc
    return out if out is not None else np.zeros((0, *geo_shape(geo, shape)), np.int32)


def geo_shape(geo: Geometry, shape: tuple[int, int, int]) -> tuple[int, int, int]:
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
            model = models[k] = class_table(k, zero_half_width).model
        pieces.append(coder.decode(model, count))
    skipped = int(counts[N_CLASSES])
    dtype = np.int32 if symbols else np.int64
    if not pieces:
        return np.zeros(skipped, dtype), np.zeros(skipped, dtype)
    r = np.repeat(HALF_WIDTHS_32[present], counts[present])
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


def decode_head(
    geo: Geometry, side: _Side, coder: constriction.stream.stack.AnsCoder, base: int = 128, top: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """What a stream's ANS words start with: its band indices (levels, C, 3) (as ``indices_from_deltas``
    with ``base`` and ``top``), then its LL bands' symbols (C, h, w) as int32."""
    channels, ll = geo.channels, geo.ll
    side_counts = np.zeros(N_CLASSES + 1, np.int64)
    side_counts[SIDE_CLASS] = geo.present.size
    indices = indices_from_deltas(geo, _decode_symbols(coder, side_counts, LL_ZERO_HALF_WIDTH, False)[0], base, top)
    order = np.argsort(side.ll_classes, kind="stable")
    counts = np.bincount(side.ll_classes, minlength=N_CLASSES + 1) * ll.size
    residuals = np.empty((channels, ll.size), np.int64)
    residuals[order] = _decode_symbols(coder, counts, LL_ZERO_HALF_WIDTH, False)[0].reshape(channels, -1)
    values = _ll_reconstruct(
        residuals.reshape(channels, ll.rows.stop - ll.rows.start, -1), side.ll_modes, side.ll_centres
    )
    if values.min() < _INT32[0] or values.max() > _INT32[1]:
        raise CorruptStreamError("decoded LL symbol is out of the int32 range")
    return indices, values


def _decode(
    geo: Geometry,
    shape: tuple[int, int, int],
    sides: list[_Side],
    coders: list[constriction.stream.stack.AnsCoder],
    weights: tuple[tuple[tuple[int, ...], ...], list[np.ndarray]],
) -> np.ndarray:
    n, channels = len(sides), geo.channels
    kind_weights, position_weights = weights
    out = np.zeros((n, channels, int(shape[1]), int(shape[2])), np.int32)
    ll = geo.ll
    for i, (side, coder) in enumerate(zip(sides, coders, strict=True)):
        side.indices, out[i, :, ll.rows, ll.cols] = decode_head(geo, side, coder)
    indices = np.stack([side.indices for side in sides if side.indices is not None])  # (N, levels, C, 3)
    deadzone = [side.deadzone for side in sides]
    level_mags: list[np.ndarray] = []
    for li, lv in enumerate(geo.levels):
        mags = np.zeros((n, channels, 3, lv.shape[0] + 2, lv.shape[1] + 2), np.int32)
        mags_flat = mags.reshape(n, -1)
        values = np.zeros_like(mags)
        values_flat = values.reshape(n, -1)
        parent = level_mags[lv.parent] if lv.parent is not None else ll_activity(out[:, :, ll.rows, ll.cols], lv)
        static = level_static(lv, position_weights[li], parent, n)
        band = np.take(lut_index(indices[:, li].reshape(n, -1)), lv.slot, axis=1)
        for step in lv.steps:
            a = step_activity(geo, step, kind_weights, static, mags)
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
