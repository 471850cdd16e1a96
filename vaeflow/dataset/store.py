"""The output store: one zarr v3 group holding every image's stream and an index.

Layout (see docs/format.md): ``streams/data`` (uint8, every stream back to back) and
``streams/offsets`` (uint64, N+1); ``index/path_*`` (relative paths as UTF-8 bytes with
offsets), ``index/shape`` (int32 N x 2), ``index/nbytes`` (int64), ``index/bpp``
(float32), ``index/status`` (uint8: 0 stored, 1 failed), ``index/note_*`` (the failure
reason, or conversion notes); ``skipped/path_*`` and ``skipped/reason_*`` for files that
are not images. The root attributes hold the format, vaeflow's version and the job's
settings. Text columns and flat byte arrays avoid variable-length types.
"""

from __future__ import annotations

import itertools
import math
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vaeflow.durable import fsync, sync_tree
from vaeflow.errors import VaeflowError

STORE_FORMAT = "vaeflow-store"
STORE_VERSION = 2  # 2: streams/data in shards of uncompressed inner chunks; 1: in zstd chunks (still read)
DATA_CHUNK = 4 << 20  # streams/data's shards (format 1: its chunks)
STREAM_CHUNK = 16 << 10  # the inner chunks of streams/data's shards
STATUS_OK, STATUS_FAILED = 0, 1


def write_text_column(group: zarr.Group, name: str, values: Sequence[str]) -> None:
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, np.uint64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = np.frombuffer(b"".join(encoded), np.uint8)
    _write_array(group, f"{name}_offsets", offsets)
    _write_array(group, f"{name}_bytes", data, chunk=DATA_CHUNK)


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
    offsets = read(group, f"{name}_offsets").astype(np.int64)
    data = read(group, f"{name}_bytes").tobytes() if offsets[-1] else b""
    return [data[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]


def _write_array(group: zarr.Group, name: str, values: np.ndarray, chunk: int | None = None) -> None:
    chunks = (max(1, min(chunk or max(1, values.shape[0]), max(1, values.shape[0]))), *values.shape[1:])
    arr = group.create_array(
        name, shape=values.shape, chunks=chunks, dtype=values.dtype, fill_value=0, overwrite=True,
        compressors=None if values.dtype == np.uint8 else "auto",
    )  # fmt: skip
    if values.size:
        arr[...] = values


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


def read_meta(store: Path) -> dict[str, Any] | None:
    """The store's vaeflow attributes, or None if ``store`` holds no vaeflow store."""
    try:
        group = zarr.open_group(store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, TypeError, KeyError, AttributeError):
        return None  # no store, or metadata too damaged to be one
    meta = group.attrs.get("vaeflow")
    return dict(meta) if isinstance(meta, dict) else None


def write_meta(store: Path, meta: dict[str, Any]) -> None:
    group = zarr.open_group(store, mode="a")
    group.attrs["vaeflow"] = meta


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
        keep = [p not in dropped or s == STATUS_OK for p, s in zip(existing["paths"], existing["status"], strict=True)]
        existing = {k: [v for v, kept in zip(col, keep, strict=True) if kept] if isinstance(col, list)
                    else col[np.asarray(keep, bool)] for k, col in existing.items()}  # fmt: skip
    new_total = total + new_bytes
    if "streams/data" in root and total:
        data = array(root, "streams/data")
        data.resize((new_total,))
    else:
        # format 2: uncompressed (streams do not shrink), so that a reader can fetch any stream's bytes alone;
        # small inner chunks keep the last shard small on disk (inner chunks past the end are left out). A store
        # of format 1 keeps its zstd chunks when images are added (see data_version)
        data = root.create_array(
            "streams/data", shape=(new_total,), shards=(DATA_CHUNK,), chunks=(STREAM_CHUNK,), dtype="uint8",
            compressors=None, fill_value=0, overwrite=True,
        )  # fmt: skip
    paths, notes, nbytes, shapes, status = existing["paths"], existing["notes"], [], [], []
    captions, metadata, original, crops = existing["captions"], existing["metadata"], [], []
    buffer, position = bytearray(), total
    for row in rows:
        paths.append(row.path)
        notes.append(row.note)
        captions.append(row.caption)
        metadata.append(row.metadata)
        original.append(row.original_size or row.shape)
        crops.append(row.crop_top_left)
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
    all_nbytes = np.concatenate([existing["nbytes"], np.array(nbytes, np.int64)])
    all_shapes = np.concatenate([existing["shape"], np.array(shapes, np.int32).reshape(-1, 2)])
    all_status = np.concatenate([existing["status"], np.array(status, np.uint8)])
    all_original = np.concatenate([existing["original_size"], np.array(original, np.int32).reshape(-1, 2)])
    all_crops = np.concatenate([existing["crop_top_left"], np.array(crops, np.int32).reshape(-1, 2)])
    offsets = np.zeros(len(paths) + 1, np.uint64)
    np.cumsum(all_nbytes, out=offsets[1:])
    pixels = all_shapes[:, 0].astype(np.float64) * all_shapes[:, 1]
    bpp = np.where(all_status == STATUS_OK, 8.0 * all_nbytes / np.maximum(pixels, 1), 0.0).astype(np.float32)
    index = root.create_group(NEXT_INDEX, overwrite=True)
    write_text_column(index, "path", paths)
    write_text_column(index, "note", notes)
    _write_array(index, "shape", all_shapes)
    _write_array(index, "nbytes", all_nbytes)
    _write_array(index, "bpp", bpp)
    _write_array(index, "status", all_status)
    write_text_column(index, "caption", captions)
    write_text_column(index, "metadata", metadata)
    _write_array(index, "original_size", all_original)
    _write_array(index, "crop_top_left", all_crops)
    _swap_index(store)
    _write_array(root.require_group("streams"), "offsets", offsets)
    skipped_group = root.require_group("skipped")
    write_text_column(skipped_group, "path", [p for p, _ in skipped])
    write_text_column(skipped_group, "reason", [r for _, r in skipped])
    return new_total


def data_version(meta: dict[str, Any]) -> int:
    """The store format once ``write_index`` has run: streams/data is made anew (format 2) unless it holds
    streams already, which keep their layout."""
    return int(meta.get("version") or STORE_VERSION) if meta.get("stored_bytes") else STORE_VERSION


NEXT_INDEX, OLD_INDEX = "index-next", "index-previous"


def _swap_index(store: Path) -> None:
    """``index-next`` becomes ``index``; a crash in between leaves ``index-previous`` to read from."""
    current, previous = store / "index", store / OLD_INDEX
    if current.exists():
        shutil.rmtree(previous, ignore_errors=True)
        current.rename(previous)
    (store / NEXT_INDEX).rename(current)
    shutil.rmtree(previous, ignore_errors=True)
    sync_tree(current)
    fsync(store)  # the renames themselves


def previous_index(store: Path, rows: int) -> dict[str, Any]:
    """The first ``rows`` rows of the store's index (from the old index if a swap was cut short).

    Columns a store from before them lacks come back as their defaults: no captions or
    metadata, the stored size as the original size, no crop.
    """
    columns: dict[str, Any] = {"paths": [], "notes": [], "captions": [], "metadata": [],
                               "nbytes": np.zeros(0, np.int64), "shape": np.zeros((0, 2), np.int32),
                               "status": np.zeros(0, np.uint8), "original_size": np.zeros((0, 2), np.int32),
                               "crop_top_left": np.zeros((0, 2), np.int32)}  # fmt: skip
    if not rows:
        return columns
    root = zarr.open_group(store, mode="r", use_consolidated=False)
    if "index" not in root and OLD_INDEX not in root:
        raise VaeflowError(f"{store} records {rows} rows but has no index: the store is damaged")
    index = subgroup(root, "index" if "index" in root else OLD_INDEX)
    shape = read(index, "shape")
    columns = {
        "paths": read_text_column(index, "path"),
        "notes": read_text_column(index, "note"),
        "captions": read_text_column(index, "caption") if "caption_offsets" in index else [""] * len(shape),
        "metadata": read_text_column(index, "metadata") if "metadata_offsets" in index else [""] * len(shape),
        "nbytes": read(index, "nbytes"),
        "shape": shape,
        "status": read(index, "status"),
        "original_size": read(index, "original_size") if "original_size" in index else shape.copy(),
        "crop_top_left": read(index, "crop_top_left") if "crop_top_left" in index else np.zeros_like(shape),
    }
    if any(len(v) < rows for v in columns.values()):
        raise ValueError(f"{store}'s index holds fewer than the {rows} rows its attributes record")
    return {k: v[:rows] for k, v in columns.items()}


def consolidate(store: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes that consolidation is not in the v3 spec yet
        zarr.consolidate_metadata(store)


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan
