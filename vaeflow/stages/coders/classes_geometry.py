"""The class coder's coding order and activities: each level's passes and parts, where every
position's parent and neighbours are, and the integer activity each position's class comes from
(shared by encoder and decoder; ``docs/format.md`` describes them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaeflow.stages.coders.classes_model import COARSEST_KIND, FEATURE_CLIP, WEIGHT_SETS
from vaeflow.stages.wavelet import Subband

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
    parent: int | None  # index of the next coarser level in ``Geometry.levels``
    steps: tuple[_Step, ...]
    padded: np.ndarray  # coding order -> index into the bordered (C, 3, H + 2, W + 2)
    out: np.ndarray  # coding order -> index into the (C, h, w) symbols
    slot: np.ndarray  # coding order -> channel * 3 + orientation
    kind: np.ndarray
    parent_index: np.ndarray  # coding order -> the parent's index into the coarser (C, 3, Hp, Wp)
    parent_place: np.ndarray  # the same into one channel's (3, Hp, Wp)


@dataclass(frozen=True)
class Geometry:
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


def geometry_of(shape: tuple[int, ...], bands: tuple[Subband, ...]) -> Geometry:
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


_GEOMETRIES: dict[tuple, Geometry] = {}


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


def _build_geometry(shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> Geometry:
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
    return Geometry(channels, first_group, bands[0], tuple(levels), np.array(present, np.int64), {})


# --- activities (shared by encoder and decoder) -------------------------------------------------


def _box3(padded: np.ndarray) -> np.ndarray:
    """3x3 sums of an array with a zero border (..., H + 2, W + 2) -> (..., H, W)."""
    rows = padded[..., :-2, :] + padded[..., 1:-1, :] + padded[..., 2:, :]
    return rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # type: ignore[no-any-return]


def _neighbours4(padded: np.ndarray) -> np.ndarray:
    """Sums of the 4 neighbours of an array with a zero border (..., H + 2, W + 2) -> (..., H, W)."""
    return padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]  # type: ignore[no-any-return]


def ll_activity(ll_values: np.ndarray, lv: _Level) -> np.ndarray:
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


def level_static(lv: _Level, position_weights: np.ndarray, parent_mags: np.ndarray | None, n: int) -> np.ndarray:
    """B + P * parent + PA * all channels' parents for every position (N, positions) int32, from
    the complete coarser level's bordered magnitudes (N, C, 3, Hp + 2, Wp + 2)."""
    b, p, pa = position_weights
    if parent_mags is None:
        return np.broadcast_to(b, (n, b.size))
    boxed = _box3(parent_mags)
    total = np.add.reduce(boxed, axis=1, dtype=np.int32).reshape(n, -1)
    parents = np.take(boxed.reshape(n, -1), lv.parent_index, axis=1)
    return b + p * parents + pa * np.take(total, lv.parent_place, axis=1)  # type: ignore[no-any-return]


def step_activity(
    geo: Geometry, step: _Step, weights: tuple[tuple[int, ...], ...], static: np.ndarray, mags: np.ndarray
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
