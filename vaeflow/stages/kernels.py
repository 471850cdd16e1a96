"""Compiled inverse stages: dequantization and wavelet synthesis over a batch, value for value as
``quantize.dequantize_reference`` and ``wavelet.synthesis_reference`` compute them (the same
IEEE-754 operations in the same order, float64 throughout), with no Python per band or row."""

from __future__ import annotations

import math

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True)  # compiled once, cached on disk
inline = numba.njit(cache=True, nogil=True, inline="always")


@jit
def centroid_offset(total: float, count: int) -> float:
    """Offset in steps from a band's bin start to its reconstruction point, from the sum and count of its
    nonzero magnitudes (the centroid of a Laplace fitted to their mean)."""
    if count == 0:
        return 0.5
    m = total / count - 1.0
    if m > 50.0:
        return 0.5
    if m < 1e-4:
        m = 1e-4
    b = 1.0 / math.log1p(1.0 / m)
    return b - m


@inline
def _magnitude(q: int) -> float:
    """|q| as numpy's int32 ``abs`` then float64 give it (int32's minimum stays negative)."""
    return -2147483648.0 if q == -2147483648 else float(abs(np.int64(q)))


@jit
def dequantize(symbols: np.ndarray, steps: np.ndarray, rects: np.ndarray, rounding: np.ndarray) -> np.ndarray:
    """Symbols (N, C, h, w) int32, steps (N, C, bands) float64, each band's rows and columns
    (bands, 4) and rounding (bands,) -> float32 coefficients at their bands' centroids."""
    n, c, h, w = symbols.shape
    out = np.zeros((n, c, h, w), np.float32)
    for i in range(n):
        for ch in range(c):
            plane = symbols[i, ch]
            target = out[i, ch]
            for j in range(rects.shape[0]):
                r0, r1, c0, c1 = rects[j, 0], rects[j, 1], rects[j, 2], rects[j, 3]
                step = steps[i, ch, j]
                if not np.isfinite(step):
                    continue  # zeros
                band_round = rounding[j]
                if band_round == 0.5:
                    offset = 0.5
                else:
                    total, count = 0.0, 0
                    for y in range(r0, r1):
                        for x in range(c0, c1):  # no branches on the data: symbols are random
                            q = plane[y, x]
                            total += _magnitude(q)
                            count += q != 0
                    offset = centroid_offset(total, count)
                for y in range(r0, r1):
                    for x in range(c0, c1):
                        q = plane[y, x]
                        magnitude = _magnitude(q)
                        value = (magnitude - band_round + offset) * step
                        value = value if magnitude > 0.0 else 0.0
                        target[y, x] = value if q >= 0 else -value
    return out


@jit
def _synthesize_columns(plane: np.ndarray, lh: int, lw: int, even: np.ndarray, odd: np.ndarray, haar: bool,
                        lifting: np.ndarray, low_gain: float, high_gain: float, root2: float) -> None:  # fmt: skip
    """One level's synthesis of each column of ``plane[:lh, :lw]`` in place, row by row across the columns (the
    reference's operations on each column, in its order; rows are synthesized as the columns of the plane
    transposed); ``even``, ``odd``: scratch of the plane's shape."""
    if lh < 2:
        return
    ne = (lh + 1) // 2
    no = lh - ne
    for i in range(ne):
        for x in range(lw):
            even[i, x] = plane[i, x]
    for i in range(no):
        for x in range(lw):
            odd[i, x] = plane[ne + i, x]
    if haar:
        for i in range(no):
            for x in range(lw):
                e = even[i, x] / root2
                o = odd[i, x] * root2
                e -= 0.5 * o
                even[i, x] = e
                odd[i, x] = o + e
    else:
        for i in range(ne):
            for x in range(lw):
                even[i, x] /= low_gain
        for i in range(no):
            for x in range(lw):
                odd[i, x] /= high_gain
        for k in range(lifting.size - 1, -1, -1):
            coef = -lifting[k]
            if k % 2 == 0:  # predict: odd[i] += coef * (even[i] + even[i + 1]), mirrored at the end
                for i in range(no):
                    r = i + 1 if i + 1 < ne else ne - 1
                    for x in range(lw):
                        odd[i, x] += coef * (even[i, x] + even[r, x])
            else:  # update: even[i] += coef * (odd[i - 1] + odd[i]), mirrored at both ends
                for i in range(ne):
                    left = i - 1 if i >= 1 else 0
                    right = i if i < no else no - 1
                    for x in range(lw):
                        even[i, x] += coef * (odd[left, x] + odd[right, x])
    for i in range(ne):
        for x in range(lw):
            plane[2 * i, x] = even[i, x]
    for i in range(no):
        for x in range(lw):
            plane[2 * i + 1, x] = odd[i, x]


@jit
def synthesis(coeffs: np.ndarray, shapes: np.ndarray, haar: bool, lifting: np.ndarray, low_gain: float,
              high_gain: float, root2: float) -> np.ndarray:  # fmt: skip
    """Coefficients (N, C, h, w) float64 -> float32 latents; ``shapes`` (levels, 2): the LL region
    before each level, finest first."""
    n, c, h, w = coeffs.shape
    out = np.empty((n, c, h, w), np.float32)
    plane = np.empty((h, w), np.float64)
    turned = np.empty((w, h), np.float64)  # the plane transposed: rows are synthesized as its columns
    even_rows = np.empty((h, w), np.float64)
    odd_rows = np.empty((h, w), np.float64)
    even_columns = np.empty((w, h), np.float64)
    odd_columns = np.empty((w, h), np.float64)
    for i in range(n):
        for ch in range(c):
            plane[:, :] = coeffs[i, ch]
            for level in range(shapes.shape[0] - 1, -1, -1):
                lh, lw = shapes[level, 0], shapes[level, 1]
                _synthesize_columns(plane, lh, lw, even_rows, odd_rows, haar, lifting, low_gain, high_gain, root2)
                if lw < 2:
                    continue
                for y in range(lh):
                    for x in range(lw):
                        turned[x, y] = plane[y, x]
                _synthesize_columns(turned, lw, lh, even_columns, odd_columns, haar, lifting, low_gain, high_gain,
                                    root2)  # fmt: skip
                for y in range(lh):
                    for x in range(lw):
                        plane[y, x] = turned[x, y]
            for y in range(h):
                for x in range(w):
                    out[i, ch, y, x] = plane[y, x]
    return out


def warm() -> None:
    """Compile both kernels now (or load them from numba's cache), on empty batches."""
    dequantize(np.zeros((0, 1, 2, 2), np.int32), np.zeros((0, 1, 1)), np.zeros((1, 4), np.int64), np.zeros(1))
    synthesis(np.zeros((0, 1, 2, 2)), np.zeros((1, 2), np.int64), False, np.zeros(4), 1.0, 1.0, 1.0)
