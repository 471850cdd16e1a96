"""Byte ranges of streams/data: exact reads of format 2's shards match zarr in every layout, fetch only the
bytes asked for over S3, and turn damaged shards into clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.sync import sync

import vaeflow
from vaeflow.dataset.spans import SpanReader, exact_layout
from vaeflow.foundations.errors import VaeflowError

from ..helpers import S3Bucket

LAYOUTS: dict[str, dict[str, Any]] = {
    "format 2 (shards of uncompressed chunks)": {"shards": (4096,), "chunks": (512,), "compressors": None},
    "format 1 (zstd chunks)": {"chunks": (1000,), "compressors": zarr.codecs.ZstdCodec(level=1)},
    "uncompressed chunks": {"chunks": (1000,), "compressors": None},
    "shards of zstd chunks": {"shards": (4096,), "chunks": (512,), "compressors": zarr.codecs.ZstdCodec(level=1)},
}


@pytest.mark.parametrize("where", ["memory", "local folder"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_span_reads_match_zarr_in_every_layout(layout: str, where: str, tmp_path: Path) -> None:
    """Ranges across inner-chunk and shard edges, empty ones, inner chunks and a whole shard left out as all
    zeros, and the end of the data; in memory (on an event loop) and in a local folder (positioned reads)."""
    rng = np.random.default_rng(5)
    store = zarr.storage.MemoryStore() if where == "memory" else zarr.storage.LocalStore(tmp_path / "a.zarr")
    data = zarr.create_array(store, shape=(14_000,), dtype="uint8", fill_value=0, **LAYOUTS[layout])
    values = rng.integers(1, 256, 14_000, dtype=np.uint8)
    values[1024:2048] = 0  # two inner chunks of zeros: left out of the shard
    values[8192:12288] = 0  # a whole shard of zeros: never written
    data[:] = values
    spans = SpanReader(data)
    assert spans.exact == layout.startswith("format 2")
    assert (spans._folder is not None) == (spans.exact and where == "local folder")
    ranges = [(0, 0), (0, 14_000), (4095, 4097), (511, 513), (1000, 2100), (8000, 12_500), (13_990, 14_000)]
    ranges += [tuple(sorted(rng.integers(0, 14_001, 2))) for _ in range(60)]  # type: ignore[misc]
    assert spans.read(ranges) == [values[a:b].tobytes() for a, b in ranges]
    with pytest.raises(ValueError, match="outside the data"):
        spans.read([(13_999, 14_001)])


def test_stores_are_written_in_format_2_and_read_exactly(mixed_store: Path) -> None:
    import pickle

    reader = pickle.loads(pickle.dumps(vaeflow.open_store(mixed_store)))  # a reader pickles (its reads' lock too)
    assert reader.meta["version"] == 2 and exact_layout(reader.data)
    assert (reader.data.shards, reader.data.chunks) == ((4 << 20,), (16 << 10,))
    plain = zarr.open_array(mixed_store / "streams" / "data", mode="r")  # zarr alone reads it too
    for name in reader.names:
        start, end = reader.stream_range(name)
        assert reader.read_stream(name) == bytes(plain[start:end])
    golden = vaeflow.open_store(Path(__file__).parents[1] / "golden" / "store-v1.zarr")
    assert golden.meta["version"] == 1 and not exact_layout(golden.data)


def test_a_range_read_fetches_only_the_stream(s3: S3Bucket, mixed_store: Path) -> None:
    """Bytes over the wire, from the Content-Length of every GetObject response the S3 server sent."""
    import s3fs
    from zarr.storage import FsspecStore

    s3.put(mixed_store, "spans/store.zarr")
    fs = s3fs.S3FileSystem(asynchronous=True, **s3.options)
    reader = vaeflow.open_store(FsspecStore(fs, path=f"{s3.name}/spans/store.zarr", read_only=True))
    fetched: list[int] = []
    fs.s3.meta.events.register("after-call.s3.GetObject", lambda parsed, **_: fetched.append(parsed["ContentLength"]))

    def size(name: str) -> int:
        start, end = reader.stream_range(name)
        return end - start

    first = reader.names[0]
    assert len(reader.read_stream(first)) == size(first)
    index_bytes = 16 * (4 << 20) // (16 << 10) + 4  # the shard's index of 256 inner chunks: read once, then kept
    assert fetched[:2] == [index_bytes, size(first)]  # then, once, the index columns a row's check covers
    for name in (reader.names[5], reader.names[-1], first):
        fetched.clear()
        assert len(reader.read_stream(name)) == size(name)
        assert fetched == [size(name)]  # one GET of exactly the stream's bytes
    fetched.clear()
    reader.read_streams(reader.names[2:6])  # neighbours: one GET of the span they cover
    low, high = reader.stream_range(reader.names[2])[0], reader.stream_range(reader.names[5])[1]
    assert fetched == [high - low]
    sync(fs.s3.close())


def test_damaged_shards_are_reported_as_damage(tmp_path: Path, mixed_store: Path) -> None:
    """Truncated, lengthened, zeroed shards and flipped bytes in the shard index: every read is a VaeflowError."""
    store = tmp_path / "store.zarr"
    shutil.copytree(mixed_store, store)
    shard = store / "streams" / "data" / "c" / "0"
    original = shard.read_bytes()
    rng = np.random.default_rng(3)
    damaged = [b"", original[:100], original[:-1], original[:-4100], original + b"x", bytes(len(original))]
    for _ in range(20):
        garbled = bytearray(original)
        garbled[int(rng.integers(len(original) - 4100, len(original)))] ^= int(rng.integers(1, 256))
        damaged.append(bytes(garbled))
    for data in damaged:
        shard.write_bytes(data)
        reader = vaeflow.open_store(store)
        for name in reader.names:
            with pytest.raises(VaeflowError, match="has a damaged stream data"):
                reader.read_stream(name)
    shard.unlink()  # a missing shard reads as zeros, as zarr reads it: verify finds every stream damaged
    from vaeflow.dataset.verify import verify_store

    assert len(verify_store(store).damaged) == len(vaeflow.open_store(store).names)
