"""Overlapping tiles with blended seams, so that large images run in bounded memory."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tile_layout(length: int, tile: int, overlap: int, unit: int) -> tuple[list[int], int]:
    """Evenly spread tiles over ``length``: (start offsets, tile size).

    Uses the fewest tiles of at most ``tile`` samples that overlap by at least ``overlap``;
    starts and size are multiples of ``unit`` (the last tile may end at ``length``).
    """
    if length <= tile:
        return [0], length
    count = -(-(length - overlap) // (tile - overlap))
    size = -(-(length + (count - 1) * overlap) // count)
    size = min(tile, -(-size // unit) * unit)
    last = -(-(length - size) // unit) * unit
    starts = [round(i * last / (count - 1) / unit) * unit for i in range(count)]
    return starts, size


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
    read: Callable[[int, int, int, int], np.ndarray],
    write: Callable[[int, np.ndarray], None],
    shape: tuple[int, int],
    *,
    tile: int,
    overlap: int,
    unit: int,
    scale: float,
    out_channels: int,
) -> None:
    """Apply ``fn`` (N, C, h, w) -> (N, out_channels, h*scale, w*scale) over an input of ``shape``, tile by tile.

    ``read(r0, r1, c0, c1)`` gives the input tile of those rows and columns. Tiles are at most
    ``tile`` input samples wide, start on multiples of ``unit`` and overlap by at least
    ``overlap``; outputs are blended with linear ramps across overlaps. Output rows are given
    to ``write(first_row, block)`` a strip at a time, as soon as no later tile touches them, so
    that only a strip of the output is ever held as floats.
    """
    height, width = shape
    (rows, tile_h), (cols, tile_w) = tile_layout(height, tile, overlap, unit), tile_layout(width, tile, overlap, unit)
    out_w = round(width * scale)
    done = 0  # output rows finished so far; the strip holds rows from here on
    strip: np.ndarray | None = None
    total = np.zeros((0, out_w), np.float32)
    for i, r in enumerate(rows):
        wy = _weights(rows, tile_h, height, i, scale)
        oy = round(r * scale)
        end = oy + len(wy)
        for j, c in enumerate(cols):
            weight = np.outer(wy, _weights(cols, tile_w, width, j, scale))
            part = fn(read(r, min(r + tile_h, height), c, min(c + tile_w, width)))
            if strip is None:
                strip = np.zeros((part.shape[0], out_channels, 0, out_w), np.float32)
            if strip.shape[2] < end - done:  # grow the strip to this tile row's end
                grow = end - done - strip.shape[2]
                strip = np.concatenate([strip, np.zeros((*strip.shape[:2], grow, out_w), np.float32)], axis=2)
                total = np.concatenate([total, np.zeros((grow, out_w), np.float32)])
            ox = round(c * scale)
            strip[:, :, oy - done : oy - done + part.shape[2], ox : ox + part.shape[3]] += part * weight
            total[oy - done : oy - done + part.shape[2], ox : ox + part.shape[3]] += weight
        final = round(rows[i + 1] * scale) if i + 1 < len(rows) else end
        assert strip is not None
        k = final - done
        write(done, strip[:, :, :k] / total[:k])
        strip, total, done = strip[:, :, k:].copy(), total[k:].copy(), final
