"""Byte ranges of ``streams/data``, fetched exactly in store format 2.

Format 2 writes ``streams/data`` as shards of uncompressed inner chunks, each shard's index at its end
(docs/format.md), so any range can be fetched alone. zarr (3.1) reads a slice of such an array by fetching the
shard's index again for every slice, then each inner chunk the slice touches, one request after another: over
S3 (moto's server on loopback) a 25 KB stream took 3.6 requests and 1.8x its bytes, a batch of 16 neighbours
26 requests, and reads were about 4x (single streams) and 30x (batches) slower than here. This reader keeps each
shard's index once read and fetches a range with one request per shard it touches, exactly its bytes, all
concurrently; a local folder's shards with positioned reads (``os.pread``) in the calling thread, since a
round trip through an event loop costs more than a stream's read. Any other layout (format 1's zstd chunks,
which can only be read whole) is read through zarr.

Only zarr's public API is used: the array's store and path, the store's ``get`` of a byte range
(``zarr.abc.store``) and ``zarr.buffer``'s default prototype. Requests are coroutines, and zarr has no public way
to run one: they run on the event loop the store's own requests ran on, which ``LoopNotingStore`` (what
``location.open_root`` opens every store through) notes, because some stores' clients belong to that loop
(s3fs's aiohttp sessions fail on any other). Stores that belong to no loop (local folders, memory) opened
otherwise are read on a loop of this module's own; any other store is read through zarr. Each shard index's
CRC32C is checked as zarr checks it, with ``google_crc32c`` (declared in pyproject.toml: zarr's codec offers no
public way to check a checksum alone).
"""

from __future__ import annotations

import asyncio
import bisect
import os
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, Self, TypeVar

import google_crc32c
import numpy as np
import zarr
from zarr.abc.buffer import Buffer
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ShardingCodecIndexLocation
from zarr.storage import LocalStore, MemoryStore, WrapperStore

T = TypeVar("T")
EMPTY = 2**64 - 1  # the index entry of an inner chunk left out (all fill value)
MERGE_GAP = 64 << 10  # ranges closer than this are fetched as one
CACHED_INDEXES = 4096  # shard indexes kept: 16 MiB for 16 KiB inner chunks of 4 MiB shards


def exact_layout(data: zarr.Array) -> bool:
    """Whether ``data`` is a 1-D array of shards of uncompressed inner chunks with the index at the end, filled
    with zeros (format 2's ``streams/data``)."""
    codecs = data.metadata.codecs  # type: ignore[union-attr]
    if data.ndim != 1 or data.shards is None or data.fill_value != 0:
        return False
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    sharding = codecs[0]
    return (
        sharding.index_location == ShardingCodecIndexLocation.end
        and len(sharding.codecs) == 1 and isinstance(sharding.codecs[0], BytesCodec)
        and sharding.index_codecs == (BytesCodec(endian="little"), Crc32cCodec())
    )  # fmt: skip


class LoopNotingStore(WrapperStore[Store]):
    """A store that notes the event loop its requests run on (zarr's own, when zarr's synchronous API reads it):
    the loop its clients may belong to, where ``SpanReader`` runs its requests too."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._noted: tuple[int, asyncio.AbstractEventLoop] | None = None  # (process, loop)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop this process's last request ran on, while it runs (None before any, and in a forked child)."""
        noted = self._noted
        if noted is None or noted[0] != os.getpid() or not noted[1].is_running():
            return None
        return noted[1]

    @property
    def wrapped(self) -> Store:
        return self._store

    def with_read_only(self, read_only: bool = False) -> Self:
        """This store, read-only or not, still noting its loop (zarr 3.1.0's ``WrapperStore`` lacks this)."""
        return type(self)(self._store.with_read_only(read_only))

    def _note(self) -> None:
        self._noted = (os.getpid(), asyncio.get_running_loop())

    async def get(self, key: str, prototype: Any, byte_range: ByteRequest | None = None) -> Buffer | None:
        self._note()
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: Any, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        self._note()
        return await super().get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        self._note()
        return await super().exists(key)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_noted": None}  # a loop does not pickle, nor would it run elsewhere


_OWN_LOOP: list[tuple[int, asyncio.AbstractEventLoop]] = []  # (process, loop)
_OWN_LOOP_LOCK = threading.Lock()


def _own_loop() -> asyncio.AbstractEventLoop:
    """This module's own event loop, in a daemon thread (one per process), for stores that belong to no loop."""
    with _OWN_LOOP_LOCK:
        if not _OWN_LOOP or _OWN_LOOP[0][0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="vaeflow-spans", daemon=True).start()
            _OWN_LOOP[:] = [(os.getpid(), loop)]
        return _OWN_LOOP[0][1]


def request_loop(store: Store) -> asyncio.AbstractEventLoop | None:
    """Where to run ``store``'s requests: on the loop its requests ran on, or, for a store that belongs to no loop,
    on this module's own; None when neither is known."""
    if isinstance(store, LoopNotingStore):
        noted = store.loop
        if noted is not None:
            return noted
        store = store.wrapped
    return _own_loop() if isinstance(store, LocalStore | MemoryStore) else None


def run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on ``loop`` (in another thread) and wait for it."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coroutine.close()
        raise RuntimeError("stream data are read synchronously: not on the event loop that reads them")
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


class SpanReader:
    """Reads ``[start, end)`` byte ranges of a 1-D uint8 zarr array (``streams/data``)."""

    def __init__(self, data: zarr.Array) -> None:
        self.data = data
        self.size = int(data.shape[0])
        self.exact = exact_layout(data)
        if self.exact:
            self.shard, self.chunk = int(data.shards[0]), int(data.chunks[0])  # type: ignore[index]
        self._store, self._prefix = data.store, f"{data.path}/" if data.path else ""
        self._folder = _local_folder(self._store) if self.exact else None  # read with pread, no event loop
        self._indexes: OrderedDict[int, np.ndarray] = OrderedDict()  # used only on the loop that reads
        self._lock = threading.Lock()  # the local path's index cache, shared by threads

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lock": None, "_indexes": OrderedDict()}  # a lock does not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each range; ranges close together are fetched as one."""
        for start, end in ranges:
            if not 0 <= start <= end <= self.size:
                raise ValueError(f"byte range {start}:{end} is outside the data (0:{self.size})")
        runs = merge(ranges)
        loop = request_loop(self._store) if self.exact and self._folder is None else None
        if self._folder is not None:
            spans = [self._read_run_here(a, b) for a, b in runs]
        elif loop is not None:
            spans = run_on(loop, _gather([self._read_run(a, b) for a, b in runs]))
        else:
            spans = [np.asarray(self.data[a:b]).tobytes() for a, b in runs]
        starts = [a for a, _ in runs]
        out = []
        for start, end in ranges:
            run = bisect.bisect_right(starts, start) - 1
            out.append(spans[run][start - starts[run] : end - starts[run]])
        return out

    def _shards(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """(shard, low, high) of each shard the range touches: the range's bytes in it."""
        out = []
        for shard in range(start // self.shard, max(start, end - 1) // self.shard + 1):
            base = shard * self.shard
            out.append((shard, max(start, base) - base, min(end, base + self.shard) - base))
        return out

    def _key(self, shard: int) -> str:
        return self.data.metadata.encode_chunk_key((shard,))  # type: ignore[union-attr,no-any-return]

    def _pieces(self, key: str, index: np.ndarray, low: int, high: int) -> list[list[int]]:
        """Bytes ``low:high`` of a shard as [offset in the shard object, or -1 for a left-out chunk; length]:
        the inner chunks they span lie in order, so neighbours join."""
        pieces: list[list[int]] = []
        for inner in range(low // self.chunk, -(-high // self.chunk)):
            a, b = max(low, inner * self.chunk), min(high, (inner + 1) * self.chunk)
            offset, nbytes = int(index[inner, 0]), int(index[inner, 1])
            if offset != EMPTY and nbytes != self.chunk:
                raise ValueError(f"shard {key} holds an inner chunk of {nbytes} bytes, not {self.chunk}")
            at = -1 if offset == EMPTY else offset + a - inner * self.chunk
            if pieces and at >= 0 and pieces[-1][0] >= 0 and pieces[-1][0] + pieces[-1][1] == at:
                pieces[-1][1] += b - a
            else:
                pieces.append([at, b - a])
        return pieces

    def _checked_index(self, shard: int, key: str, raw: bytes | None) -> np.ndarray:
        """The shard's (offset, length) of each inner chunk from its index bytes (checked against its
        CRC32C), kept once read."""
        inner = self.shard // self.chunk
        if raw is None:  # a shard never written holds only the fill value, as zarr reads it
            index = np.full((inner, 2), EMPTY, np.uint64)
        elif google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise ValueError(f"shard {key} has a damaged index (CRC32C)")
        else:
            index = np.frombuffer(raw[:-4], "<u8").reshape(inner, 2)
        self._indexes[shard] = index
        while len(self._indexes) > CACHED_INDEXES:
            self._indexes.popitem(last=False)
        return index

    @property
    def _index_bytes(self) -> int:
        return 16 * (self.shard // self.chunk) + 4

    # --- a local folder: positioned reads in this thread (an event loop's round trip costs more than the read)
    def _read_run_here(self, start: int, end: int) -> bytes:
        assert self._folder is not None
        parts = []
        for shard, low, high in self._shards(start, end):
            if high <= low:
                continue
            key = self._key(shard)
            path = os.path.join(self._folder, self._prefix + key)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                fd = -1
            try:
                with self._lock:
                    index = self._indexes.get(shard)
                    if index is None:
                        index = self._checked_index(shard, key, _tail(fd, self._index_bytes, key))
                for at, n in self._pieces(key, index, low, high):
                    parts.append(bytes(n) if at < 0 else _pread(fd, at, n, key))
            finally:
                if fd >= 0:
                    os.close(fd)
        return b"".join(parts)

    # --- any other store that belongs to a loop (object storage): concurrent requests on that loop
    async def _read_run(self, start: int, end: int) -> bytes:
        """One request per shard the range touches, each for the bytes of the range in that shard."""
        parts = [self._read_in_shard(shard, low, high) for shard, low, high in self._shards(start, end)]
        return b"".join(await _gather(parts))

    async def _read_in_shard(self, shard: int, low: int, high: int) -> bytes:
        """Bytes ``low:high`` of shard ``shard``, one request per run of stored inner chunks."""
        if high <= low:
            return b""
        key = self._key(shard)
        index = self._indexes.get(shard)
        if index is None:
            raw = await self._get(key, SuffixByteRequest(self._index_bytes), self._index_bytes)
            index = self._checked_index(shard, key, raw)
        return b"".join(await _gather([self._piece(key, at, n) for at, n in self._pieces(key, index, low, high)]))

    async def _piece(self, key: str, at: int, n: int) -> bytes:
        if at < 0:
            return bytes(n)  # an inner chunk left out: the fill value
        raw = await self._get(key, RangeByteRequest(at, at + n), n)
        if raw is None:
            raise ValueError(f"{key} is missing")
        return raw

    async def _get(self, key: str, request: ByteRequest, expected: int) -> bytes | None:
        """The bytes asked for, or None when there is no such object."""
        buffer = await self._store.get(self._prefix + key, default_buffer_prototype(), request)
        if buffer is None:
            return None
        raw = buffer.to_bytes()
        if len(raw) != expected:
            raise ValueError(f"{key} gave {len(raw)} bytes where {expected} were asked for")
        return raw


def _local_folder(store: Store) -> str | None:
    """The folder of a local store (seen through ``LoopNotingStore``), where positioned reads need no loop."""
    inner = store.wrapped if isinstance(store, LoopNotingStore) else store
    return str(inner.root) if isinstance(inner, LocalStore) and hasattr(os, "pread") else None


def _pread(fd: int, at: int, n: int, key: str) -> bytes:
    if fd < 0:
        raise ValueError(f"{key} is missing")
    raw = os.pread(fd, n, at)
    if len(raw) != n:
        raise ValueError(f"{key} gave {len(raw)} bytes where {n} were asked for")
    return raw


def _tail(fd: int, n: int, key: str) -> bytes | None:
    """The last ``n`` bytes of an open file (None for a file that is not there)."""
    if fd < 0:
        return None
    size = os.fstat(fd).st_size
    if size < n:
        raise ValueError(f"{key} gave {size} bytes where {n} were asked for")
    return _pread(fd, size - n, n, key)


async def _gather(coroutines: Sequence[Coroutine[Any, Any, bytes]]) -> list[bytes]:
    return list(await asyncio.gather(*coroutines))


def merge(ranges: Sequence[tuple[int, int]], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Sorted runs covering every range; ranges less than ``gap`` bytes apart share a run."""
    runs: list[list[int]] = []
    for start, end in sorted(ranges):
        if runs and start - runs[-1][1] < gap:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [(a, b) for a, b in runs]
