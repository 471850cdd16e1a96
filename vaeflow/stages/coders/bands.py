"""The band coder (``Entropy(coder="bands")``, stream format 3): one class per detail band.

Each detail band of each channel is coded with one of the class coder's 64 tables, the one its
own magnitudes cost least under, named in the stream: every band decodes in one ``constriction``
call, with no activities and no passes. Where a band's own scale describes its coefficients as
well as their neighbours do (wide latents coded finely: the ``latent-store`` preset on 16- or
32-channel VAEs), this costs no more bytes than the class coder and decodes at the speed of the
ANS decoder itself. LL bands are coded as the class coder codes them.

Decoding order (the ANS order): the band classes (each band's class + 1, 0 for a band that is
all zero, as deltas in the class coder's side-information order from ``CLASS_BASE``), the LL
residuals of every channel, each coded detail band in turn (levels coarsest first, then
channels, then orientations HL, LH, HH; positions in raster order), then the escapes of all
detail bands. ``docs/format.md`` describes the payload byte by byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import constriction
import numpy as np

from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages.coders import compiled
from vaeflow.stages.coders.classes import (
    _INT32,
    ESCAPE_BITS,
    AnsCoder,
    _bit_lengths,
    _check_symbols,
    _decode_escapes,
    _escape_units,
    _fit_ll,
    _models,
    _read_side,
    _Side,
    _Unit,
    _write_side,
    decode_head,
    escape_cost,
    head_units,
    side_info_bytes,
)
from vaeflow.stages.coders.classes_geometry import Geometry, geometry_of
from vaeflow.stages.coders.classes_model import (
    DEADZONES,
    HALF_WIDTHS,
    HALF_WIDTHS_32,
    N_CLASSES,
    class_table,
    symbol_costs,
)
from vaeflow.stages.wavelet import Subband

__all__ = ["decode", "decode_many", "encode", "information_bits", "side_info_bytes"]

CLASS_BASE = 24  # the coarsest channel-0 band classes are coded from this value (class 23, scale about 1.8)
_EXACT = 64  # when choosing classes, magnitudes below this count exactly, larger ones by octave at their mean
_OCTAVES = 26  # octaves of magnitudes from 64 up to 2**32


@dataclass(frozen=True)
class _Order:
    """The detail bands of a geometry in coding order: their sizes and where their positions are."""

    sizes: np.ndarray  # per present band
    flat: np.ndarray  # every detail position, band after band, as an index into the (C, h, w) symbols


_ORDERS: dict[int, tuple[Geometry, _Order]] = {}


def _order(geo: Geometry, shape: tuple[int, int, int]) -> _Order:
    known = _ORDERS.get(id(geo))
    if known is not None and known[0] is geo:
        return known[1]
    _, h, w = shape
    sizes, flats = [], []
    for lv in geo.levels:
        for c in range(geo.channels):
            for b in lv.bands:
                if b is not None:
                    rows = np.arange(b.rows.start, b.rows.stop, dtype=np.int64)
                    cols = np.arange(b.cols.start, b.cols.stop, dtype=np.int64)
                    flats.append(((c * h + rows[:, None]) * w + cols[None, :]).ravel())
                    sizes.append(flats[-1].size)
    order = _Order(np.array(sizes, np.int64), np.concatenate([np.zeros(0, np.int64), *flats]))
    if len(_ORDERS) >= 64:
        _ORDERS.clear()
    _ORDERS[id(geo)] = (geo, order)
    return order


def _costs(k: np.ndarray, m: np.ndarray, zero_half_width: float) -> np.ndarray:
    """Cost (bits * 2**16) of magnitudes ``m`` under classes ``k`` (broadcast), escape bits included."""
    k, m = np.broadcast_arrays(k, m)
    excess = m - HALF_WIDTHS[k]
    lengths = _bit_lengths(np.maximum(excess, 0))
    escape = np.where(excess >= 0, ESCAPE_BITS + np.maximum(lengths - 1, 0) * 65536, 0)
    return symbol_costs(k, m, zero_half_width) + escape  # type: ignore[no-any-return]


@lru_cache(maxsize=len(DEADZONES))
def _choice_costs(zero_half_width: float) -> np.ndarray:
    """(N_CLASSES, _EXACT) cost of each magnitude below ``_EXACT`` under each class."""
    return _costs(np.arange(N_CLASSES)[:, None], np.arange(_EXACT)[None, :], zero_half_width)


def _choose(details: np.ndarray, sizes: np.ndarray) -> tuple[int, np.ndarray]:
    """The deadzone index and each band's class + 1 (0 for a zero band) that cost fewest bits: small
    magnitudes counted exactly, each octave of larger ones as often as it occurs at its mean."""
    n = sizes.size
    band = np.repeat(np.arange(n), sizes)
    mags = np.abs(details)
    small = mags < _EXACT
    histogram = np.bincount(band[small] * _EXACT + mags[small], minlength=n * _EXACT)
    histogram = histogram.reshape(n, _EXACT).astype(np.float64)
    large = np.flatnonzero(~small)
    octave = np.frexp(mags[large].astype(np.float64))[1] - 7  # 64..127 -> 0
    key = band[large] * _OCTAVES + octave
    counts = np.bincount(key, minlength=n * _OCTAVES)
    rows = np.flatnonzero(counts)  # the (band, octave) pairs that occur
    sums = np.bincount(key, weights=mags[large], minlength=n * _OCTAVES)[rows]
    means = np.rint(sums / counts[rows]).astype(np.int64)
    best_total, best_zone, best_classes = math.inf, 0, np.zeros(n, np.int64)
    for zone, z in enumerate(DEADZONES):
        per_class = histogram @ _choice_costs(z).T.astype(np.float64)  # exact: integer sums below 2**53
        if rows.size:
            tail = _costs(np.arange(N_CLASSES)[None, :], means[:, None], z) * counts[rows, None]
            np.add.at(per_class, rows // _OCTAVES, tail.astype(np.float64))
        classes = np.argmin(per_class, axis=1)
        total = float(per_class[np.arange(n), classes].sum())
        if total < best_total:
            best_total, best_zone, best_classes = total, zone, classes
    nonzero = histogram[:, 0] < sizes  # not every magnitude is 0
    return best_zone, np.where(nonzero, best_classes + 1, 0)


def _plan(symbols: np.ndarray, bands: tuple[Subband, ...]) -> tuple[_Side, list[_Unit], int]:
    _check_symbols(symbols)
    shape = (int(symbols.shape[0]), int(symbols.shape[1]), int(symbols.shape[2]))
    geo = geometry_of(shape, bands)
    order = _order(geo, shape)
    ll = geo.ll
    modes, ll_classes, centres, residuals = _fit_ll(symbols[:, ll.rows, ll.cols].astype(np.int64))
    details = symbols.reshape(-1)[order.flat].astype(np.int64)
    zone, coded = _choose(details, order.sizes)
    z = DEADZONES[zone]
    values = np.zeros((len(geo.levels), geo.channels, 3), np.int64)
    values.reshape(-1)[geo.present] = coded
    units: list[_Unit] = []
    total = head_units(units, geo, values, ll_classes, residuals, CLASS_BASE)
    starts = np.concatenate([[0], np.cumsum(order.sizes)])
    escaped: list[np.ndarray] = []
    for i in np.flatnonzero(coded).tolist():
        k = int(coded[i]) - 1
        v = details[starts[i] : starts[i + 1]]
        r = int(HALF_WIDTHS[k])
        mags = np.abs(v)
        total += int(symbol_costs(np.full(v.size, k), mags, z).sum())
        units.append(((np.clip(v, -r, r) + r).astype(np.int32), class_table(k, z).model, None))
        escaped.append(mags[mags >= r] - r)
    excess = np.concatenate([np.zeros(0, np.int64), *escaped])
    if excess.size:
        escape = _escape_units(excess)
        units.extend(escape)
        total += escape_cost(escape[0][0])
    return _Side(zone, modes, ll_classes, centres, np.zeros(0, np.uint32), values), units, total


def encode(symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes:
    """One image's symbols (C, h, w) int32 -> payload bytes (side information, then ANS words)."""
    side, units, _ = _plan(symbols, bands)
    coder = AnsCoder()
    for values, model, sizes in reversed(units):
        if sizes is None:
            coder.encode_reverse(values.astype(np.int32), model)
        else:
            coder.encode_reverse(values.astype(np.int32), model, sizes.astype(np.int32))
    side.words = coder.get_compressed()
    return _write_side(geometry_of(symbols.shape, bands), side)


def information_bits(symbols: np.ndarray, bands: tuple[Subband, ...]) -> float:
    """Ideal code length in bits of the symbols under the coder's own models, side bytes excluded."""
    return _plan(symbols, bands)[2] / 65536.0


def decode(payload: bytes | memoryview, shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> np.ndarray:
    """Payload bytes -> int32 symbols of ``shape`` (C, h, w). Damage raises CorruptStreamError."""
    return decode_many([payload], shape, bands)[0]  # type: ignore[no-any-return]


def decode_many(
    payloads: Sequence[bytes | memoryview], shape: tuple[int, int, int], bands: tuple[Subband, ...]
) -> np.ndarray:
    """Several payloads of one shape -> (N, C, h, w) int32, in one compiled call (``compiled``)."""
    dims = (int(shape[0]), int(shape[1]), int(shape[2]))
    geo = geometry_of(dims, bands)
    order = _order(geo, dims)
    return compiled.decode_bands(payloads, dims, geo, order.flat, order.sizes)


def decode_many_reference(
    payloads: Sequence[bytes | memoryview], shape: tuple[int, int, int], bands: tuple[Subband, ...]
) -> np.ndarray:
    """``decode_many`` through ``constriction``: the reference the compiled decoder is tested against."""
    dims = (int(shape[0]), int(shape[1]), int(shape[2]))
    geo = geometry_of(dims, bands)
    order = _order(geo, dims)
    out = np.zeros((len(payloads), *dims), np.int32)
    for i, payload in enumerate(payloads):
        try:
            _decode_into(out[i], geo, order, payload)
        except CorruptStreamError:
            raise
        except (ValueError, RuntimeError, OverflowError, TypeError, IndexError) as exc:
            raise CorruptStreamError(f"entropy payload does not decode: {exc}") from exc
    return out


def _decode_into(out: np.ndarray, geo: Geometry, order: _Order, payload: bytes | memoryview) -> None:
    side = _read_side(payload, geo)
    if side.parameters >= len(DEADZONES):
        raise CorruptStreamError(f"entropy payload names parameters {side.parameters}, which the band coder lacks")
    z = side.deadzone
    coder: constriction.stream.stack.AnsCoder = AnsCoder(side.words)
    values, out[:, geo.ll.rows, geo.ll.cols] = decode_head(geo, side, coder, CLASS_BASE, N_CLASSES)
    coded = values.reshape(-1)[geo.present]
    present = np.flatnonzero(coded)
    models = _models(z)
    pieces = []
    for i, k in zip(present.tolist(), (coded[present] - 1).tolist(), strict=True):
        model = models[k]
        if model is None:
            model = models[k] = class_table(k, z).model
        pieces.append(coder.decode(model, int(order.sizes[i])))
    if pieces:
        counts = order.sizes[present]
        r = np.repeat(HALF_WIDTHS_32[coded[present] - 1], counts)
        decoded = (np.concatenate(pieces) if len(pieces) > 1 else pieces[0]) - r
        escaped = np.flatnonzero(np.abs(decoded) >= r)
        if escaped.size:
            wide = decoded.astype(np.int64)
            wide[escaped] += np.sign(wide[escaped]) * _decode_escapes(coder, escaped.size)
            if wide[escaped].min() < _INT32[0] or wide[escaped].max() > _INT32[1]:
                raise CorruptStreamError("decoded symbol is out of the int32 range")
            decoded = wide.astype(np.int32)
        out.reshape(-1)[order.flat[np.repeat(coded > 0, order.sizes)]] = decoded
    if not coder.is_empty():
        raise CorruptStreamError("entropy payload has undecoded data left over")
