"""Context-modelled entropy coding: each detail coefficient's Laplace scale is predicted from
what the decoder already has.

For a detail band of channel ``c``, the activity of a coefficient is

    A = w_p |parent| + w_s mean(|same place, channels 0..c-1|) + w_u (2|up| + |up-left| + |up-right|) / 4

where the parent is the co-located coefficient of the same orientation one level coarser.
Its scale is ``alpha_b * (A + beta)``. Bands are decoded row by row, so the row above is
always known; parents and earlier channels are decoded before. The stream carries
(w_p, w_s, w_u, beta) as one byte, chosen per image by the encoder from a small grid, and
one byte per band for ``alpha_b``. LL bands are coded either around their centre, or, when
that is cheaper for the image (bit 7 of the parameter byte), as the residual of the MED
(median edge detector, as in LOCO-I) prediction from their left, upper and upper-left
neighbours; the first value is predicted by the band's centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import constriction
import numpy as np

from vaeflow.foundations.binary import ByteReader, ByteWriter
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages.coders import Payload, Shape, decode_each, rans
from vaeflow.stages.wavelet import Subband

SUPPORT = 4096
GRIDS = ((0.0, 0.5, 1.0), (0.0, 1.0, 3.0), (0.0, 0.5, 1.0), (0.5, 1.0, 2.0, 4.0))  # w_p, w_s, w_u, beta
START = (2, 2, 2, 2)  # the search starts from w = (1, 3, 1), beta 2
_FAMILY = constriction.stream.model.QuantizedLaplace(-SUPPORT, SUPPORT)


def _parent_of(band: Subband, bands: tuple[Subband, ...]) -> Subband | None:
    wanted = f"{band.name[:2]}{band.level + 1}"
    return next((b for b in bands if b.name == wanted), None)


def _expand(parent: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each child position (i, j) takes its parent's (i // 2, j // 2), clipped to the parent."""
    rows = np.minimum(np.arange(shape[0]) // 2, parent.shape[0] - 1)
    cols = np.minimum(np.arange(shape[1]) // 2, parent.shape[1] - 1)
    return parent[np.ix_(rows, cols)]


def _up_activity(previous_row: np.ndarray) -> np.ndarray:
    a = np.abs(previous_row).astype(np.float64)
    left = np.concatenate([a[..., :1], a[..., :-1]], -1)
    right = np.concatenate([a[..., 1:], a[..., -1:]], -1)
    return (2 * a + left + right) / 4


def _fixed_features(plane: np.ndarray, c: int, band: Subband, bands: tuple[Subband, ...]) -> tuple[np.ndarray, ...]:
    """|parent| and the mean |value| of earlier channels, for a whole band (known before it)."""
    shape = (band.rows.stop - band.rows.start, band.cols.stop - band.cols.start)
    parent_band = _parent_of(band, bands)
    parent = (
        _expand(np.abs(plane[c, parent_band.rows, parent_band.cols]).astype(np.float64), shape)
        if parent_band is not None
        else np.zeros(shape)
    )
    earlier = np.abs(plane[:c, band.rows, band.cols]).astype(np.float64).mean(axis=0) if c else np.zeros(shape)
    return parent, earlier


def _features(plane: np.ndarray, c: int, band: Subband, bands: tuple[Subband, ...]) -> tuple[np.ndarray, ...]:
    """All three features of a band whose values are known (encoder side)."""
    values = plane[c, band.rows, band.cols]
    up = np.zeros(values.shape)
    if values.shape[0] > 1:
        up[1:] = _up_activity(values[:-1])
    return (*_fixed_features(plane, c, band, bands), up)


def med_residuals(values: np.ndarray, centre: int) -> np.ndarray:
    """Residuals of the MED prediction of each value from its decoded neighbours (raster order)."""
    v = values.astype(np.int64)
    pad = np.pad(v, ((1, 0), (1, 0)), mode="edge")
    left, up, corner = pad[1:, :-1], pad[:-1, 1:], pad[:-1, :-1]
    prediction = _med(left, up, corner)
    prediction[0, 0] = centre
    prediction[0, 1:] = v[0, :-1]  # first row: the left neighbour
    prediction[1:, 0] = v[:-1, 0]  # first column: the upper neighbour
    return v - prediction


def _med(left: np.ndarray, up: np.ndarray, corner: np.ndarray) -> np.ndarray:
    high, low = np.maximum(left, up), np.minimum(left, up)
    return np.where(corner >= high, low, np.where(corner <= low, high, left + up - corner))


def med_reconstruct(residuals: np.ndarray, centre: int) -> np.ndarray:
    """Invert ``med_residuals``: values rebuilt in raster order (Python ints, no overflow)."""
    h, w = residuals.shape
    r = residuals.tolist()
    v = [[0] * w for _ in range(h)]
    for i in range(h):
        for j in range(w):
            if i == 0:
                prediction = centre if j == 0 else v[0][j - 1]
            elif j == 0:
                prediction = v[i - 1][0]
            else:
                a, b, c = v[i][j - 1], v[i - 1][j], v[i - 1][j - 1]
                prediction = min(a, b) if c >= max(a, b) else max(a, b) if c <= min(a, b) else a + b - c
            v[i][j] = prediction + r[i][j]
    return np.array(v, dtype=object).astype(np.int64) if h and w else np.zeros((h, w), np.int64)


def _bits(values: np.ndarray, scales: np.ndarray) -> float:
    return float(rans.laplace_bits(values, scales).sum())


def _fit_alpha(values: np.ndarray, base: np.ndarray) -> tuple[int, float]:
    """The alpha index (scale = alpha * base) coding ``values`` in the fewest bits; 0 if all zero."""
    if not values.any():
        return 0, 0.0
    guess = rans.index_of(max(float(np.mean(np.abs(values) / base)), 0.05 / float(np.mean(base))))
    return rans.best_index(lambda i: _bits(values, rans.scale_of(i) * base), guess)


def _unpack(code: int) -> tuple[float, ...]:
    """The byte's (w_p, w_s, w_u, beta), mixed-radix over the grids."""
    out = []
    for grid in reversed(GRIDS):
        out.append(grid[code % len(grid)])
        code //= len(grid)
    return tuple(reversed(out))


def _pack(indices: list[int]) -> int:
    code = 0
    for grid, i in zip(GRIDS, indices, strict=True):
        code = code * len(grid) + i
    return code


CODES = math.prod(len(g) for g in GRIDS)
MED_FLAG = 0x80
SEARCH_PASSES = 1
SEARCH_ROW_STEP = 2
FINALISTS = 3


def _base(features: tuple[np.ndarray, ...], params: tuple[float, ...]) -> np.ndarray:
    return params[0] * features[0] + params[1] * features[1] + params[2] * features[2] + params[3]


def _detail(
    symbols: np.ndarray, bands: tuple[Subband, ...], step: int
) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """(values, features) of each nonzero detail band, every ``step``-th row of tall bands."""
    out = []
    for c in range(symbols.shape[0]):
        for b in bands:
            values = symbols[c, b.rows, b.cols]
            if b.name.startswith("LL") or not values.any():
                continue
            rows = slice(None, None, step if values.shape[0] >= 8 else 1)
            out.append((values[rows], tuple(f[rows] for f in _features(symbols, c, b, bands))))
    return out


def _detail_bits(detail: list[tuple[np.ndarray, tuple[np.ndarray, ...]]], code: int, exact: bool = True) -> float:
    """Bits of the detail bands under ``code``: with each band's best alpha, or, for ranking
    parameters quickly, with alpha at a single discrete-aware moment estimate."""
    params = _unpack(code)
    if exact:
        return sum(_fit_alpha(v, _base(f, params))[1] for v, f in detail)
    total = 0.0
    for values, features in detail:
        base = _base(features, params)
        alpha = max(float(np.mean(np.abs(values) / base)), 0.05 / float(np.mean(base)))
        total += _bits(values, rans.scale_of(rans.index_of(alpha)) * base)
    return total


def choose_params(symbols: np.ndarray, bands: tuple[Subband, ...]) -> int:
    """Coordinate descent over the parameter grids (one pass from ``START``) ranked with quick
    alpha estimates, then the best few and no context at all compared exactly; judged on
    every other row of the taller bands."""
    detail = _detail(symbols, bands, SEARCH_ROW_STEP)
    cost: dict[int, float] = {}

    def evaluate(indices: list[int]) -> float:
        code = _pack(indices)
        if code not in cost:
            cost[code] = _detail_bits(detail, code, exact=False)
        return cost[code]

    current = list(START)
    for _ in range(SEARCH_PASSES):
        for k, grid in enumerate(GRIDS):
            current[k] = min(range(len(grid)), key=lambda v: (evaluate([*current[:k], v, *current[k + 1 :]]), v))
    flat = _pack([0, 0, 0, len(GRIDS[3]) - 1])  # no context: one scale per band, as the zeroth-order coder
    evaluate([0, 0, 0, len(GRIDS[3]) - 1])
    finalists = sorted(cost, key=cost.__getitem__)[:FINALISTS]
    finalists += [flat] if flat not in finalists else []
    return min(finalists, key=lambda code: (_detail_bits(detail, code), code))


def _ll_bits(symbols: np.ndarray, bands: tuple[Subband, ...], med: bool) -> float:
    total = 0.0
    for c in range(symbols.shape[0]):
        for band in (b for b in bands if b.name.startswith("LL")):
            values = symbols[c, band.rows, band.cols]
            total += rans.zeroth_order_bits(_ll_coded(values, _centre(values), med))
    return total


def _centre(values: np.ndarray) -> int:
    return int(np.round(np.median(values))) if values.size else 0


def _ll_coded(values: np.ndarray, centre: int, med: bool) -> np.ndarray:
    return (med_residuals(values, centre) if med else values.astype(np.int64) - centre).ravel()


def encode(symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes:
    code = choose_params(symbols, bands)
    params = _unpack(code)
    med = _ll_bits(symbols, bands, True) < _ll_bits(symbols, bands, False)
    side = ByteWriter()
    side.u8(code | (MED_FLAG if med else 0))
    units: list[tuple[np.ndarray, object]] = []  # (values, model or per-symbol scales)
    for c in range(symbols.shape[0]):
        for band in bands:
            values = symbols[c, band.rows, band.cols].astype(np.int64)
            if band.name.startswith("LL"):
                centre = _centre(values)
                residuals = _ll_coded(values, centre, med)
                index = rans.fit_band(residuals)
                side.u8(index)
                side.svarint(centre)
                if index:
                    units.append((residuals, index))
                continue
            base = _base(_features(symbols, c, band, bands), params)
            index, _ = _fit_alpha(values, base)
            side.u8(index)
            if index:
                scales = rans.scale_of(index) * base
                units += [(values[r], scales[r]) for r in range(values.shape[0])]
    coder = constriction.stream.stack.AnsCoder()
    for values, model in reversed(units):
        r = rans.support_of(model) if isinstance(model, int) else SUPPORT
        for excess in reversed((np.abs(values[np.abs(values) >= r]) - r).tolist()):
            rans.encode_escape(coder, int(excess))
        clipped = np.clip(values, -r, r).astype(np.int32)
        if isinstance(model, int):
            coder.encode_reverse(clipped, rans.band_model(model))
        else:
            coder.encode_reverse(clipped, _FAMILY, np.zeros(clipped.size), np.asarray(model, np.float64))
    return side.getvalue() + coder.get_compressed().astype("<u4").tobytes()


def decode(payload: bytes | memoryview, shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> np.ndarray:
    reader = ByteReader(payload, "entropy payload")
    code = reader.u8()
    med, code = bool(code & MED_FLAG), code & ~MED_FLAG
    if code >= CODES:
        raise CorruptStreamError(f"context parameter code {code} is out of range")
    params = _unpack(code)
    layout = rans.read_side_info(reader, shape[0], bands)
    plane = np.zeros(shape, np.int64)
    with rans.ans_decoder(reader) as coder:
        for c, band, index, centre in layout:
            region = plane[c, band.rows, band.cols]
            if band.name.startswith("LL"):
                residuals = np.zeros(region.shape, np.int64)
                if index:
                    residuals = rans.decode_values(
                        coder, rans.support_of(index), rans.band_model(index), band.size
                    ).reshape(region.shape)
                values = med_reconstruct(residuals, centre) if med else residuals + centre
                if np.abs(values).max(initial=0) > 2**31 - 1:
                    raise CorruptStreamError("decoded symbol is out of the int32 range")
                region[...] = values
                continue
            if not index:
                continue
            parent, earlier = _fixed_features(plane, c, band, bands)
            fixed = params[0] * parent + params[1] * earlier
            alpha = rans.scale_of(index)
            for r in range(region.shape[0]):
                up = _up_activity(region[r - 1]) if r else np.zeros(region.shape[1])
                scales = alpha * (fixed[r] + params[2] * up + params[3])
                region[r] = rans.decode_values(coder, SUPPORT, _FAMILY, np.zeros(region.shape[1]), scales)
    if np.abs(plane).max(initial=0) > 2**31 - 1:
        raise CorruptStreamError("decoded symbol is out of the int32 range")
    return plane.astype(np.int32)


def decode_many(payloads: Sequence[Payload], shape: Shape, bands: tuple[Subband, ...]) -> np.ndarray:
    """Several payloads of one shape -> (N, C, h, w) int32, one at a time."""
    return decode_each(decode, payloads, shape, bands)


def information_bits(symbols: np.ndarray, bands: tuple[Subband, ...]) -> float:
    """Ideal code length of the symbols under the context models the encoder would choose."""
    detail_bits = _detail_bits(_detail(symbols, bands, 1), choose_params(symbols, bands))
    return detail_bits + min(_ll_bits(symbols, bands, True), _ll_bits(symbols, bands, False))


def side_info_bytes(payload: bytes | memoryview, channels: int, bands: tuple[Subband, ...]) -> int:
    """Bytes of a payload that hold the context weights and band models rather than ANS words."""
    reader = ByteReader(payload, "entropy payload")
    reader.u8()  # the context weights
    rans.read_side_info(reader, channels, bands)
    return reader.pos
