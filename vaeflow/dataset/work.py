"""The work store: each batch's streams and marker until the index is assembled, and, when stages
run as separate tasks, zarr arrays that hold each stage's output between them, per shape group.

Layout under ``STORE/_work`` (``vaeflow.dataset.layout.WORK``): an array of each stage's output rows,
named after the stage (``STAGE_ARRAYS``): ``g{n}/load`` (uint8, rows x H x W x 3, the padded images),
``g{n}/vae``, ``g{n}/channel`` and ``g{n}/wavelet`` (float32, rows x C x h x w), ``g{n}/quantize``
(int32), one image per chunk (big images per tile), with a task per stage or ``keep_intermediates``;
``streams/{batch}.streams`` (the batch's streams back to back, a plain file);
``done/{batch}.json``, each batch's marker (``BatchMarker``), written last and atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TypeVar

import numpy as np
import zarr

from vaeflow.codec.codec import TO_SYMBOLS
from vaeflow.dataset.layout import LAYOUT, WORK, BatchMarker
from vaeflow.dataset.plan import Batch, Plan
from vaeflow.foundations.durable import atomic_write, atomic_write_json
from vaeflow.stages import Stage

WORK_DIR = LAYOUT.work
LOAD = "load"  # the task before the codec's stages: each image read and padded
STAGE_ARRAYS = (LOAD, *TO_SYMBOLS)  # an array of each stage's output rows, named after the stage
ROW_DTYPES = {"image": "uint8", "latent": "float32", "coefficients": "float32", "symbols": "int32"}  # by data kind
TILE = 1024
STREAMS_SUFFIX = WORK.streams_suffix
BLOCK_BYTES = 64 * 2**20  # rows written in one zarr call: at most this much copied at once


T = TypeVar("T")
_OPENED: dict[Path, tuple[int, zarr.Array]] = {}


def _open_cached(path: Path) -> zarr.Array:
    """Open a work array once per process; reopened if its metadata file has changed since."""
    stamp = (path / LAYOUT.zarr_json).stat().st_mtime_ns
    cached = _OPENED.get(path)
    if cached is None or cached[0] != stamp:
        cached = (stamp, zarr.open_array(path, mode="r+"))
        _OPENED[path] = cached
    return cached[1]


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *(min(s, TILE) for s in shape[1:]))


def _runs(positions: list[int], values: list[T]) -> list[tuple[int, list[T]]]:
    """``values`` split where ``positions`` stop being consecutive: (first position, values)."""
    runs: list[tuple[int, list[T]]] = []
    for pos, value in zip(positions, values, strict=True):
        if runs and runs[-1][0] + len(runs[-1][1]) == pos:
            runs[-1][1].append(value)
        else:
            runs.append((pos, [value]))
    return runs


class WorkStore:
    def __init__(self, store: Path | str) -> None:
        self.root = Path(store) / LAYOUT.work

    def create(self, plan: Plan, stage_arrays: bool = True) -> None:
        """Create every group's arrays (kept as they are when they already exist); without
        ``stage_arrays`` (fused stages) only what batches' streams and markers need."""
        group = zarr.open_group(self.root, mode="a")
        (self.root / WORK.done).mkdir(parents=True, exist_ok=True)
        if not stage_arrays:
            return
        channels = plan.groups[0].latent_shape[0] if plan.groups else 0
        for g in plan.groups:
            for name in STAGE_ARRAYS:
                kind = "image" if name == LOAD else Stage.types[name].output_kind
                shape = (g.size, *g.padded_shape, 3) if kind == "image" else (g.size, *g.latent_shape)
                dtype = ROW_DTYPES[kind]
                path = f"{WORK.group(plan.key_prefix, g.index)}/{name}"
                existing = group.get(path)
                if isinstance(existing, zarr.Array) and existing.shape == shape:
                    continue
                chunks = (1, channels, *(min(s, TILE) for s in shape[2:])) if kind != "image" else _chunks(shape)
                # rows live only until their batch is done: raw chunks write three times faster than zstd
                group.create_array(
                    path, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=True, compressors=None
                )

    def array(self, batch: Batch, name: str, prefix: str) -> zarr.Array:
        return _open_cached(self.root / WORK.group(prefix, batch.group) / name)

    def write_rows(self, batch: Batch, name: str, prefix: str, rows: list[np.ndarray], which: list[int]) -> None:
        """Write ``rows`` (each of the group's row shape) into the batch's rows ``which`` (positions
        within the batch), one zarr write per run of consecutive positions."""
        arr = self.array(batch, name, prefix)
        per_block = max(1, BLOCK_BYTES // max(1, arr.dtype.itemsize * int(np.prod(arr.shape[1:]))))
        for first, run in _runs(which, rows):
            for at in range(0, len(run), per_block):
                part = run[at : at + per_block]
                arr[batch.start + first + at : batch.start + first + at + len(part)] = np.stack(part).astype(arr.dtype)

    def read_rows(self, batch: Batch, name: str, prefix: str, which: list[int]) -> list[np.ndarray]:
        """The batch's rows ``which``, one zarr read per run of consecutive positions."""
        arr = self.array(batch, name, prefix)
        out: list[np.ndarray] = []
        for first, run in _runs(which, which):
            block = np.asarray(arr[batch.start + first : batch.start + first + len(run)])
            out += list(block)
        return out

    def write_streams(self, key: str, streams: list[bytes]) -> None:
        """The batch's streams back to back in one file, durable before its marker says they are there."""
        path = self.root / WORK.streams_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, b"".join(streams))

    def read_stream(self, key: str, offset: int, size: int) -> bytes:
        """One image's stream out of its batch's streams."""
        path = self.root / WORK.streams_file(key)
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                return fh.read(size)
        except FileNotFoundError:  # an older work store: the batch's streams as a zarr array
            arr = zarr.open_array(self.root / WORK.streams_array(key), mode="r")
            return np.asarray(arr[offset : offset + size]).tobytes()

    def mark_done(self, marker: BatchMarker) -> None:
        """Write the batch's marker atomically: the last step of a batch."""
        atomic_write_json(self.root / WORK.marker(marker.key), marker.to_json())

    def count_attempt(self, key: str) -> int:
        """Record one more attempt at a batch, durably; returns how many there have been."""
        path = self.root / WORK.attempts_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            count = int(path.read_text()) + 1
        except (OSError, ValueError):
            count = 1
        atomic_write(path, str(count))
        return count

    def forget_attempt(self, key: str) -> None:
        """Take back the attempt just counted (the run was stopped from outside, not by its input)."""
        path = self.root / WORK.attempts_file(key)
        try:
            count = int(path.read_text())
        except (OSError, ValueError):
            return
        atomic_write(path, str(max(0, count - 1)))

    def done(self, key: str) -> BatchMarker | None:
        """The batch's marker, or None if it has none (or one no run could have finished writing)."""
        try:
            return BatchMarker.from_json(json.loads((self.root / WORK.marker(key)).read_text()))
        except (OSError, ValueError, KeyError, TypeError):  # json.JSONDecodeError is a ValueError
            return None

    def drop_rows(self, batch: Batch, prefix: str) -> None:
        """Delete the batch's chunks of every stage array (the marker keeps what matters)."""
        for name in STAGE_ARRAYS:
            for pos in range(len(batch.items)):
                chunk = self.root / WORK.group(prefix, batch.group) / name / WORK.chunks / str(batch.start + pos)
                shutil.rmtree(chunk, True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
