"""The output store: one zarr v3 group holding every image's stream and an index.

Its layout (``vaeflow.dataset.layout``, docs/format.md): ``streams/data`` (uint8, every stream back
to back) and ``streams/offsets`` (uint64, N+1); the index's columns (the relative paths, shapes,
sizes, bpp, status, notes); the files that are not images in ``skipped``. The root attribute holds
the format, vaeflow's version and the job's settings. Text columns and flat byte arrays avoid
variable-length types.
"""

from __future__ import annotations

import itertools
import math
import shutil
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr

from vaeflow.dataset.layout import (
    COLUMNS,
    LAYOUT,
    META,
    STATUS_FAILED,
    STATUS_OK,
    STORE_VERSION,
    text_bytes,
    text_offsets,
)
from vaeflow.dataset.layout import STORE_FORMAT as STORE_FORMAT
from vaeflow.foundations.durable import fsync, sync_tree
from vaeflow.foundations.errors import VaeflowError

DATA_CHUNK = 4 << 20  # streams/data's shards (format 1: its chunks)
STREAM_CHUNK = 16 << 10  # the inner chunks of streams/data's shards
NEXT_INDEX, OLD_INDEX = LAYOUT.next_index, LAYOUT.old_index


def write_text_column(group: zarr.Group, name: str, values: Sequence[str]) -> None:
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, np.uint64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = np.frombuffer(b"".join(encoded), np.uint8)
    _write_array(group, text_offsets(name), offsets)
    _write_array(group, text_bytes(name), data, chunk=DATA_CHUNK)


def array(group: zarr.Group, path: str) -> zarr.Array:
    """The array at ``path`` in ``group``; a group or a missing node is a damaged store."""
    node = group.get(path)
    if not isinstance(node, zarr.Array):
        raise KeyError(f"store has no array {path!r}")
    return node


def subgroup(group: zarr.Group, path: str) -> zarr.Group:
    node = group.get(path)
    if not isinstance(node, zarr.Group):
        raise KeyError(f"store has no group {path!r}")
    return node


def read(group: zarr.Group, path: str) -> np.ndarray:
    """The whole array at ``path`` as numpy."""
    return np.asarray(array(group, path)[...])


def read_text_column(group: zarr.Group, name: str) -> list[str]:
    offsets = read(group, text_offsets(name)).astype(np.int64)
    data = read(group, text_bytes(name)).tobytes() if offsets[-1] else b""
    return [data[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]


def _write_array(group: zarr.Group, name: str, values: np.ndarray, chunk: int | None = None) -> None:
    chunks = (max(1, min(chunk or max(1, values.shape[0]), max(1, values.shape[0]))), *values.shape[1:])
    arr = group.create_array(
        name, shape=values.shape, chunks=chunks, dtype=values.dtype, fill_value=0, overwrite=True,
        compressors=None if values.dtype == np.uint8 else "auto",
    )  # fmt: skip
    if values.size:
        arr[...] = values


UNKNOWN_SOURCE = (-1, -1)  # index/source of a row written before it was recorded, or of no file


@dataclass(frozen=True)
class Row:
    """One image's entry in the index."""

    path: str
    shape: tuple[int, int]
    ok: bool
    note: str
    stream: bytes
    caption: str = ""  # "" when the image has none
    metadata: str = ""  # a JSON object, or ""
    original_size: tuple[int, int] | None = None  # before resizing to an aspect-ratio bucket (else: shape)
    crop_top_left: tuple[int, int] = (0, 0)  # of the bucket's crop in the resized image
    source: tuple[int, int] = UNKNOWN_SOURCE  # the file's (size, mtime_ns) when it was coded


UNCHECKED = -1  # index/check of a row written before row checks


def row_check(
    stream: bytes | memoryview,
    name: str,
    shape: Sequence[int],
    original_size: Sequence[int],
    crop_top_left: Sequence[int],
    caption: str,
    metadata: str,
) -> int:
    """A row's CRC32C over its stream and everything the index says of it, which binds the stream to its row:
    the six sizes as little-endian int32, then the name, caption and metadata as UTF-8, each after its length
    (uint32 LE), then the stream."""
    texts = [t.encode("utf-8") for t in (name, caption, metadata)]
    head = struct.pack("<6i3I", *shape, *original_size, *crop_top_left, *(len(t) for t in texts))
    return int(google_crc32c.extend(google_crc32c.value(head + b"".join(texts)), bytes(stream)))


def read_meta(store: Path) -> dict[str, Any] | None:
    """The store's vaeflow attributes, or None if ``store`` holds no vaeflow store."""
    try:
        group = zarr.open_group(store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, TypeError, KeyError, AttributeError):
        return None  # no store, or metadata too damaged to be one
    meta = group.attrs.get(LAYOUT.attribute)
    return dict(meta) if isinstance(meta, dict) else None


def write_meta(store: Path, meta: dict[str, Any]) -> None:
    group = zarr.open_group(store, mode="a")
    group.attrs[LAYOUT.attribute] = meta


@dataclass
class IndexRows:
    """The columns of an index's first rows, as ``write_index`` extends them (what ``previous_index`` reads)."""

    paths: list[str]
    notes: list[str]
    captions: list[str]
    metadata: list[str]
    nbytes: np.ndarray  # int64 (N,)
    shape: np.ndarray  # int32 (N, 2)
    status: np.ndarray  # uint8 (N,)
    original_size: np.ndarray  # int32 (N, 2)
    crop_top_left: np.ndarray  # int32 (N, 2)
    checks: np.ndarray  # int64 (N,): row_check, or UNCHECKED
    sources: np.ndarray  # int64 (N, 2): the file's size and mtime_ns when coded, or UNKNOWN_SOURCE

    @classmethod
    def empty(cls) -> IndexRows:
        pairs = np.zeros((0, 2), np.int32)
        return cls([], [], [], [], np.zeros(0, np.int64), pairs, np.zeros(0, np.uint8), pairs.copy(), pairs.copy(),
                   np.zeros(0, np.int64), np.zeros((0, 2), np.int64))  # fmt: skip

    def columns(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def head(self, rows: int) -> IndexRows:
        return IndexRows(**{name: column[:rows] for name, column in self.columns().items()})

    def kept(self, keep: Sequence[bool]) -> IndexRows:
        """The rows where ``keep`` is true."""
        mask = np.asarray(keep, bool)
        kept: dict[str, Any] = {name: [v for v, k in zip(column, keep, strict=True) if k] if isinstance(column, list)
                                else column[mask] for name, column in self.columns().items()}  # fmt: skip
        return IndexRows(**kept)


def write_index(
    store: Path,
    rows: Iterable[Row],
    new_bytes: int,
    skipped: Sequence[tuple[str, str]],
    total: int = 0,
    kept_rows: int = 0,
    dropped: frozenset[str] = frozenset(),
) -> int:
    """Append ``rows`` (in order; ``new_bytes`` of streams in all) after the first ``kept_rows``
    rows and ``total`` stored bytes, leaving out the failed rows named in ``dropped`` (which
    ``--retry-failed`` codes again; a failed row holds no stream bytes).

    Rows may be a generator: streams are written chunk by chunk, so memory stays bounded
    by the chunk size. The new index is built beside the old one and swapped in by
    renaming folders, so an interrupted append leaves the earlier rows readable and the
    same call can simply be made again. Returns the new total of stream bytes.
    """
    root = zarr.open_group(store, mode="a", use_consolidated=False)
    existing = previous_index(store, kept_rows)
    if dropped:
        existing = existing.kept([p not in dropped or s == STATUS_OK
                                  for p, s in zip(existing.paths, existing.status, strict=True)])  # fmt: skip
    new_total = total + new_bytes
    if LAYOUT.data in root and total:
        data = array(root, LAYOUT.data)
        data.resize((new_total,))
    else:
        # format 2: uncompressed (streams do not shrink), so that a reader can fetch any stream's bytes alone;
        # small inner chunks keep the last shard small on disk (inner chunks past the end are left out). A store
        # of format 1 keeps its zstd chunks when images are added (see data_version)
        data = root.create_array(
            LAYOUT.data, shape=(new_total,), shards=(DATA_CHUNK,), chunks=(STREAM_CHUNK,), dtype="uint8",
            compressors=None, fill_value=0, overwrite=True,
        )  # fmt: skip
    paths, notes, nbytes, shapes, status = existing.paths, existing.notes, [], [], []
    captions, metadata, original, crops, checks, sources = existing.captions, existing.metadata, [], [], [], []
    buffer, position = bytearray(), total
    for row in rows:
        paths.append(row.path)
        notes.append(row.note)
        captions.append(row.caption)
        metadata.append(row.metadata)
        original.append(row.original_size or row.shape)
        crops.append(row.crop_top_left)
        sources.append(row.source)
        checks.append(row_check(row.stream, row.path, row.shape, original[-1], row.crop_top_left, row.caption,
                                row.metadata))  # fmt: skip
        nbytes.append(len(row.stream))
        shapes.append(row.shape)
        status.append(STATUS_OK if row.ok else STATUS_FAILED)
        buffer += row.stream
        if len(buffer) >= DATA_CHUNK:
            data[position : position + len(buffer)] = np.frombuffer(bytes(buffer), np.uint8)
            position, buffer = position + len(buffer), bytearray()
    if buffer:
        data[position : position + len(buffer)] = np.frombuffer(bytes(buffer), np.uint8)
    if position + len(buffer) != new_total:
        raise ValueError(f"streams hold {position + len(buffer) - total} bytes, expected {new_total - total}")
    all_nbytes = np.concatenate([existing.nbytes, np.array(nbytes, np.int64)])
    all_shapes = np.concatenate([existing.shape, np.array(shapes, np.int32).reshape(-1, 2)])
    all_status = np.concatenate([existing.status, np.array(status, np.uint8)])
    all_original = np.concatenate([existing.original_size, np.array(original, np.int32).reshape(-1, 2)])
    all_crops = np.concatenate([existing.crop_top_left, np.array(crops, np.int32).reshape(-1, 2)])
    all_checks = np.concatenate([existing.checks, np.array(checks, np.int64)])
    all_sources = np.concatenate([existing.sources, np.array(sources, np.int64).reshape(-1, 2)])
    offsets = np.zeros(len(paths) + 1, np.uint64)
    np.cumsum(all_nbytes, out=offsets[1:])
    pixels = all_shapes[:, 0].astype(np.float64) * all_shapes[:, 1]
    bpp = np.where(all_status == STATUS_OK, 8.0 * all_nbytes / np.maximum(pixels, 1), 0.0).astype(np.float32)
    index = root.create_group(LAYOUT.next_index, overwrite=True)
    write_text_column(index, COLUMNS.path, paths)
    write_text_column(index, COLUMNS.note, notes)
    _write_array(index, COLUMNS.shape, all_shapes)
    _write_array(index, COLUMNS.nbytes, all_nbytes)
    _write_array(index, COLUMNS.bpp, bpp)
    _write_array(index, COLUMNS.status, all_status)
    write_text_column(index, COLUMNS.caption, captions)
    write_text_column(index, COLUMNS.metadata, metadata)
    _write_array(index, COLUMNS.original_size, all_original)
    _write_array(index, COLUMNS.crop_top_left, all_crops)
    _write_array(index, COLUMNS.check, all_checks)
    _write_array(index, COLUMNS.source, all_sources)
    _swap_index(store)
    _write_array(root, LAYOUT.offsets, offsets)
    skipped_group = root.require_group(LAYOUT.skipped)
    write_text_column(skipped_group, COLUMNS.path, [p for p, _ in skipped])
    write_text_column(skipped_group, COLUMNS.reason, [r for _, r in skipped])
    return new_total


def data_version(meta: dict[str, Any]) -> int:
    """The store format once ``write_index`` has run: streams/data is made anew (format 2) unless it holds
    streams already, which keep their layout."""
    return int(meta.get(META.version) or STORE_VERSION) if meta.get(META.stored_bytes) else STORE_VERSION


def _swap_index(store: Path) -> None:
    """``index-next`` becomes ``index``; a crash in between leaves ``index-previous`` to read from."""
    current, previous = store / LAYOUT.index, store / LAYOUT.old_index
    if current.exists():
        shutil.rmtree(previous, ignore_errors=True)
        current.rename(previous)
    (store / LAYOUT.next_index).rename(current)
    shutil.rmtree(previous, ignore_errors=True)
    sync_tree(current)
    fsync(store)  # the renames themselves


def previous_index(store: Path, rows: int) -> IndexRows:
    """The first ``rows`` rows of the store's index (from the old index if a swap was cut short).

    Columns a store from before them lacks come back as their defaults: no captions or
    metadata, the stored size as the original size, no crop.
    """
    if not rows:
        return IndexRows.empty()
    index = _current_index(store, rows)
    shape = read(index, COLUMNS.shape)

    def text(column: str) -> list[str]:
        return read_text_column(index, column) if text_offsets(column) in index else [""] * len(shape)

    def pairs(column: str, default: np.ndarray) -> np.ndarray:
        return read(index, column) if column in index else default

    found = IndexRows(
        paths=read_text_column(index, COLUMNS.path),
        notes=read_text_column(index, COLUMNS.note),
        captions=text(COLUMNS.caption),
        metadata=text(COLUMNS.metadata),
        nbytes=read(index, COLUMNS.nbytes),
        shape=shape,
        status=read(index, COLUMNS.status),
        original_size=pairs(COLUMNS.original_size, shape.copy()),
        crop_top_left=pairs(COLUMNS.crop_top_left, np.zeros_like(shape)),
        checks=read(index, COLUMNS.check) if COLUMNS.check in index else np.full(len(shape), UNCHECKED, np.int64),
        sources=_sources_column(index, len(shape)),
    )
    if any(len(v) < rows for v in found.columns().values()):
        raise ValueError(f"{store}'s index holds fewer than the {rows} rows its attributes record")
    return found.head(rows)


def _current_index(store: Path, rows: int) -> zarr.Group:
    """The store's index group (the old one if a swap was cut short)."""
    root = zarr.open_group(store, mode="r", use_consolidated=False)
    if LAYOUT.index not in root and LAYOUT.old_index not in root:
        raise VaeflowError(f"{store} records {rows} rows but has no index: the store is damaged")
    return subgroup(root, LAYOUT.index if LAYOUT.index in root else LAYOUT.old_index)


def _sources_column(index: zarr.Group, rows: int) -> np.ndarray:
    return read(index, COLUMNS.source) if COLUMNS.source in index else np.full((rows, 2), UNKNOWN_SOURCE, np.int64)


def stored_sources(paths: Sequence[str], sources: np.ndarray, status: np.ndarray) -> dict[str, tuple[int, int]]:
    """Each stored image's file (size, mtime_ns) as recorded when it was coded."""
    return {p: (int(a), int(b)) for p, (a, b), s in zip(paths, sources, status, strict=True) if s == STATUS_OK}


def recorded_sources(store: Path, rows: int) -> dict[str, tuple[int, int]]:
    """``stored_sources`` of the first ``rows`` rows, reading only the paths, status and source columns."""
    if not rows:
        return {}
    index = _current_index(store, rows)
    paths = read_text_column(index, COLUMNS.path)[:rows]
    return stored_sources(paths, _sources_column(index, rows)[:rows], read(index, COLUMNS.status)[:rows])


def consolidate(store: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes that consolidation is not in the v3 spec yet
        zarr.consolidate_metadata(store)


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan
