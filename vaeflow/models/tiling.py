"""Overlapping tiles with blended seams, so that large images run in bounded memory."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tile_starts(length: int, tile: int, overlap: int, unit: int) -> list[int]:
    """Start offsets (multiples of ``unit``) of tiles of ``tile`` covering ``length``."""
    if length <= tile:
        return [0]
    stride = max(unit, (tile - overlap) // unit * unit)
    last = -(-(length - tile) // unit) * unit
    return [*range(0, last, stride), last]


def _ramp(length: int, before: int, after: int) -> np.ndarray:
    """1 in the middle, rising linearly over ``before`` samples and falling over ``after``."""
    w = np.ones(length, np.float32)
    if before:
        w[:before] = np.minimum(w[:before], (np.arange(before) + 0.5) / before)
    if after:
        w[length - after :] = np.minimum(w[length - after :], (np.arange(after, 0, -1) - 0.5) / after)
    return w


def _weights(starts: list[int], size: int, length: int, i: int, scale: float) -> np.ndarray:
    """Blend weights of tile ``i`` in output samples: ramps across the overlaps with its neighbours."""
    start, end = starts[i], min(starts[i] + size, length)
    before = starts[i - 1] + size - start if i > 0 else 0
    after = end - starts[i + 1] if i + 1 < len(starts) else 0
    return _ramp(round((end - start) * scale), round(max(0, before) * scale), round(max(0, after) * scale))


def apply_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    *,
    tile: int,
    overlap: int,
    unit: int,
    scale: float,
    out_channels: int,
) -> np.ndarray:
    """Apply ``fn`` (N, C, h, w) -> (N, out_channels, h*scale, w*scale) tile by tile.

    Tiles are ``tile`` input samples wide, start on multiples of ``unit`` and overlap by
    at least ``overlap``; outputs are blended with linear ramps across each overlap.
    """
    n, _, height, width = x.shape
    rows, cols = tile_starts(height, tile, overlap, unit), tile_starts(width, tile, overlap, unit)
    out = np.zeros((n, out_channels, round(height * scale), round(width * scale)), np.float32)
    total = np.zeros(out.shape[2:], np.float32)
    for i, r in enumerate(rows):
        wy = _weights(rows, tile, height, i, scale)
        for j, c in enumerate(cols):
            weight = np.outer(wy, _weights(cols, tile, width, j, scale))
            part = fn(x[:, :, r : r + tile, c : c + tile])
            oy, ox = round(r * scale), round(c * scale)
            out[:, :, oy : oy + part.shape[2], ox : ox + part.shape[3]] += part * weight
            total[oy : oy + part.shape[2], ox : ox + part.shape[3]] += weight
    out /= total
    return out
