"""Byte ranges of a store's flat ``streams/data`` array, fetching only the bytes asked for where the layout allows.

Uncompressed data (plain chunks, or shards of uncompressed inner chunks: the layout stores are written in) is read
with one ranged GET per chunk or shard touched, exactly the bytes of the range, after one read of each shard's index
(kept). Compressed chunks (stores written before) cannot be read in part: whole chunks are fetched and the last few
kept, so that a run of neighbouring reads fetches each chunk once.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

EMPTY = 2**64 - 1  # a shard index entry of an inner chunk never written
MERGE_GAP = 64 << 10  # ranges closer than this are fetched as one
CACHED_CHUNKS = 2
CACHED_INDICES = 4096  # shard indices kept (4 KiB each for 16 KiB inner chunks)


class SpanReader:
    """Reads ``[start, end)`` byte ranges of a 1-D uint8 zarr array."""

    def __init__(self, data: zarr.Array) -> None:
        self.data = data
        self.size = int(data.shape[0])
        self.fill = int(data.fill_value or 0)
        codecs = data.metadata.codecs  # type: ignore[union-attr]
        self.layout = "chunks"
        self.chunk = int(data.chunks[0])  # the inner chunk of a sharded array
        if len(codecs) == 1 and isinstance(codecs[0], BytesCodec) and data.shards is None:
            self.layout = "plain"
        elif len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) and _plain_shards(codecs[0]):
            self.layout = "shards"
            self.shard = int(data.shards[0])  # type: ignore[index]
            self.index_at_end = codecs[0].index_location == ShardingCodecIndexLocation.end
        self.unit = self.shard if self.layout == "shards" else self.chunk  # one object in the store
        self._indices: OrderedDict[int, np.ndarray] = OrderedDict()
        self._chunks: OrderedDict[int, bytes] = OrderedDict()
        self._chunks_lock = threading.Lock()  # readers may be shared by threads

    def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each range; neighbouring ranges are fetched together, all of them concurrently."""
        for start, end in ranges:
            if not 0 <= start <= end <= self.size:
                raise ValueError(f"byte range {start}:{end} is outside the data (0:{self.size})")
        runs = merge(ranges)
        if self.layout == "chunks":
            spans = [self._read_chunked(a, b) for a, b in runs]
        else:
            spans = sync(_gather([self._read_exact(a, b) for a, b in runs]))
        starts = [a for a, _ in runs]
        out = []
        for start, end in ranges:
            run = bisect.bisect_right(starts, start) - 1
            out.append(spans[run][start - starts[run] : end - starts[run]])
        return out

    async def _read_exact(self, start: int, end: int) -> bytes:
        """One ranged GET per store object the range touches, concurrently."""
        pieces = []
        for unit in range(start // self.unit, -(-end // self.unit) if end > start else start // self.unit):
            low, high = max(start, unit * self.unit), min(end, (unit + 1) * self.unit)
            pieces.append(self._read_unit(unit, low - unit * self.unit, high - unit * self.unit))
        return b"".join(await _gather(pieces))

    async def _read_unit(self, unit: int, low: int, high: int) -> bytes:
        """Bytes ``low:high`` of store object ``unit`` (a chunk or a shard)."""
        key = self.data.metadata.encode_chunk_key((unit,))  # type: ignore[union-attr]
        if self.layout == "plain":
            return await self._get(key, RangeByteRequest(low, high), high - low)
        index = await self._shard_index(unit, key)
        pieces: list[list[int]] = []  # [offset in the shard object or -1 for fill, length]
        for inner in range(low // self.chunk, -(-high // self.chunk)):
            a, b = max(low, inner * self.chunk), min(high, (inner + 1) * self.chunk)
            offset, nbytes = int(index[inner, 0]), int(index[inner, 1])
            if offset != EMPTY and nbytes != self.chunk:
                raise ValueError(f"shard {key} holds an inner chunk of {nbytes} bytes, not {self.chunk}")
            at = -1 if offset == EMPTY else offset + a - inner * self.chunk
            if pieces and at >= 0 and pieces[-1][0] >= 0 and pieces[-1][0] + pieces[-1][1] == at:
                pieces[-1][1] += b - a  # inner chunks lie in order: one GET for the lot
            else:
                pieces.append([at, b - a])
        parts = await _gather([
            self._get(key, RangeByteRequest(at, at + n), n) if at >= 0 else _filled(self.fill, n)
            for at, n in pieces
        ])  # fmt: skip
        return b"".join(parts)

    async def _shard_index(self, unit: int, key: str) -> np.ndarray:
        if unit not in self._indices:
            inner = self.shard // self.chunk
            size = 16 * inner + 4
            request: ByteRequest = SuffixByteRequest(size) if self.index_at_end else RangeByteRequest(0, size)
            raw = await self._get(key, request, size, missing_ok=True)
            if not raw:
                index = np.full((inner, 2), EMPTY, np.uint64)
            else:
                import google_crc32c

                body, checksum = raw[:-4], int.from_bytes(raw[-4:], "little")
                if google_crc32c.value(body) != checksum:
                    raise ValueError(f"shard {key} has a damaged index (CRC32C)")
                index = np.frombuffer(body, "<u8").reshape(inner, 2)
            self._indices[unit] = index
            while len(self._indices) > CACHED_INDICES:
                self._indices.popitem(last=False)
        return self._indices[unit]

    async def _get(self, key: str, request: ByteRequest, expected: int, missing_ok: bool = False) -> bytes:
        buffer = await (self.data.store_path / key).get(default_buffer_prototype(), request)
        if buffer is None:
            if missing_ok or self.layout == "plain":  # a chunk never written holds the fill value
                return b"" if missing_ok else bytes([self.fill]) * expected
            raise ValueError(f"{key} is missing")
        raw = buffer.to_bytes()
        if len(raw) > expected and request is not None:  # a server that ignores Range sends the whole object
            raw = raw[-expected:] if isinstance(request, SuffixByteRequest) else raw[request.start : request.end]  # type: ignore[union-attr]
        if len(raw) != expected:
            raise ValueError(f"{key} gave {len(raw)} bytes where {expected} were asked for")
        return raw

    def _read_chunked(self, start: int, end: int) -> bytes:
        """Whole chunks through zarr (compressed data can only be read so), the last few kept."""
        out = bytearray()
        with self._chunks_lock:
            for chunk in range(start // self.chunk, -(-end // self.chunk) if end > start else start // self.chunk):
                out += self._cached_chunk(chunk, start, end)
        return bytes(out)

    def _cached_chunk(self, chunk: int, start: int, end: int) -> bytes:
        """The part of ``start:end`` in ``chunk``, fetching the chunk unless it is kept."""
        if chunk not in self._chunks:
            low, high = chunk * self.chunk, min(self.size, (chunk + 1) * self.chunk)
            self._chunks[chunk] = np.asarray(self.data[low:high]).tobytes()
            while len(self._chunks) > CACHED_CHUNKS:
                self._chunks.popitem(last=False)
        self._chunks.move_to_end(chunk)
        base = chunk * self.chunk
        return self._chunks[chunk][max(start, base) - base : min(end, base + self.chunk) - base]


async def _gather(coroutines: list[Coroutine[Any, Any, bytes]]) -> list[bytes]:
    return list(await asyncio.gather(*coroutines))


async def _filled(fill: int, n: int) -> bytes:
    return bytes([fill]) * n


def _plain_shards(codec: ShardingCodec) -> bool:
    """Shards of uncompressed inner chunks with the default index (little-endian offsets and a CRC32C)."""
    index = codec.index_codecs
    return (
        len(codec.codecs) == 1 and isinstance(codec.codecs[0], BytesCodec)
        and len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
        and str(getattr(index[0].endian, "value", index[0].endian)) == "little"
    )  # fmt: skip


def merge(ranges: Sequence[tuple[int, int]], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Sorted runs covering every range; ranges less than ``gap`` bytes apart share a run."""
    runs: list[list[int]] = []
    for start, end in sorted(ranges):
        if runs and start - runs[-1][1] < gap:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [(a, b) for a, b in runs]
