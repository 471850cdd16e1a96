"""PyTorch loading of vaeflow stores (needs torch: ``pip install 'vaeflow[train]'``).

- ``LatentDataset``: map-style; ``ds[i]`` is a dict of the latent (or image) tensor and its metadata.
- ``BucketBatchSampler``: batches of one shape each (so the default collate works), split across ranks.
- ``LatentStream``: an ``IterableDataset`` in store order, split across ranks and DataLoader workers, each batch
  one range read.
- ``collate``: ``default_collate``'s batch of these items, its tensors in one buffer (``DataLoader(collate_fn=...)``).

The datasets open their store lazily in each process (each DataLoader worker opens its own); pickling one carries
only the store's location, its options and the small index arrays (names, sizes, shapes) it needs.

Items::

    {"latent": Tensor (C, h, w) in `dtype`    # or "image": Tensor (3, H, W), floats in [0, 1] (uint8: 0..255)
     "name": str,                             # the image's relative path in the store
     "caption": str,                          # "" where the store holds none (None would break default_collate)
     "original_size": Tensor (2,) int64,      # (height, width): SDXL's micro-conditioning inputs
     "crop_top_left": Tensor (2,) int64,      # (top, left)
     "target_size": Tensor (2,) int64}        # (height, width) as stored

A reader that records captions and crops provides ``caption(name)``, ``original_size(name)`` and
``crop_top_left(name)``; without them (stores written without resizing) original and target size are the stored
size and the crop is (0, 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, IterableDataset, Sampler, default_collate, get_worker_info

from vaeflow.codec import format as stream_format
from vaeflow.codec.api import decompress, warm_decoders
from vaeflow.dataset.location import StoreLocation
from vaeflow.dataset.reader import LATENT_CONVENTIONS, StoreReader, open_store
from vaeflow.foundations.errors import VaeflowError
from vaeflow.models import RuntimeOptions

ITEM_KINDS = ("latent", "image")  # what a dataset's items hold: the latent, or the decoded image
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STREAM_READ = 16  # items per range read when a LatentStream yields single items
SIZE_FIELDS = ("original_size", "crop_top_left", "target_size")  # an item's (2,) int64 tensors
READ_AHEAD = 4  # a LatentStream reads this many batches' worth of neighbours at once


class _StoreItems:
    """What both datasets share: the store's location and index, a reader per process, items as tensors."""

    def __init__(
        self,
        store: StoreLocation | StoreReader,
        kind: str,
        dtype: torch.dtype,
        storage_options: dict[str, Any] | None,
        runtime: RuntimeOptions | None,
        convention: str,
    ) -> None:
        if kind not in ITEM_KINDS:
            raise VaeflowError(f"kind {kind!r} is not one of {ITEM_KINDS}")
        if dtype not in FLOAT_DTYPES and not (kind == "image" and dtype == torch.uint8):
            raise VaeflowError(f"dtype {dtype} is not float16, bfloat16 or float32 (or uint8 for images)")
        if convention not in LATENT_CONVENTIONS:
            raise VaeflowError(f"convention {convention!r} is not one of {LATENT_CONVENTIONS}")
        reader = store if isinstance(store, StoreReader) else open_store(store, runtime, storage_options)
        warm_decoders()  # compiled (or loaded from numba's cache) here, before any worker starts
        self.kind, self.dtype, self.convention = kind, dtype, convention
        self.location, self.storage_options, self.runtime = reader.location, reader.storage_options, reader.runtime
        entries = list(reader.entries())
        self.names: list[str] = [name for name, _, _, _ in entries]
        self.sizes = np.array([size for _, size, _, _ in entries], np.int64).reshape(-1, 2)  # stored (h, w)
        self.shapes: list[tuple[int, ...]] = _item_shapes(reader, self.names, self.sizes, kind, convention)
        self._reader: StoreReader | None = reader
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # each process opens its own
        return state

    @property
    def reader(self) -> StoreReader:
        """This process's reader (a forked DataLoader worker opens its own: file system sessions do not fork)."""
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = open_store(self.location, self.runtime, self.storage_options), os.getpid()
        return self._reader

    def _items(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        names = [self.names[i] for i in indices]
        reader = self.reader
        if self.kind == "latent":
            latents = reader.read_latents(names, self.convention)
            tensors = [torch.from_numpy(latent).to(self.dtype) for latent in latents]
        else:
            images = [decompress(data, runtime=self.runtime) for data in reader.read_streams(names)]
            tensors = [self._image_tensor(image) for image in images]
        return [self._item(reader, i, name, t) for i, name, t in zip(indices, names, tensors, strict=True)]

    def _image_tensor(self, image: np.ndarray) -> torch.Tensor:
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return chw if self.dtype == torch.uint8 else (chw.to(torch.float32) / 255.0).to(self.dtype)

    def _item(self, reader: StoreReader, index: int, name: str, tensor: torch.Tensor) -> dict[str, Any]:
        stored = (int(self.sizes[index, 0]), int(self.sizes[index, 1]))
        caption = _optional(reader, "caption", name, None)
        return {
            self.kind: tensor,
            "name": name,
            "caption": caption if isinstance(caption, str) else "",
            "original_size": torch.tensor(_optional(reader, "original_size", name, stored), dtype=torch.int64),
            "crop_top_left": torch.tensor(_optional(reader, "crop_top_left", name, (0, 0)), dtype=torch.int64),
            "target_size": torch.tensor(stored, dtype=torch.int64),
        }


def _optional(reader: StoreReader, method: str, name: str, default: Any) -> Any:
    """``reader.method(name)`` where the reader has that method, else ``default``."""
    found = getattr(reader, method, None)
    return found(name) if callable(found) else default


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch of items of one shape, as ``default_collate`` makes it (the same keys, values, dtypes and shapes),
    with the batch's latents (or images) and its sizes in one buffer: a DataLoader worker sends each tensor of a
    batch to the main process as a shared-memory segment of its own, which costs more than decoding a small
    latent. Give it as ``DataLoader(..., collate_fn=collate)``; ``LatentStream`` batches with it. Keys other than
    an item's own go through ``default_collate``."""
    if not items:
        raise VaeflowError("a batch needs at least one item")
    kind = next((k for k in ITEM_KINDS if k in items[0]), None)
    if kind is None or any(f not in items[0] for f in SIZE_FIELDS):
        return default_collate(list(items))  # type: ignore[no-any-return]
    values = [item[kind] for item in items]
    first = values[0]
    if any(v.shape != first.shape or v.dtype != first.dtype for v in values):
        shapes = sorted({tuple(v.shape) for v in values})
        raise VaeflowError(
            f"items of shapes {shapes} cannot share a batch: batch them with BucketBatchSampler (or LatentStream)"
        )
    n = len(values)
    data = n * first.numel() * first.element_size()
    at = -(-data // 8) * 8  # the sizes start 8-byte aligned
    buffer = torch.empty(at + 3 * n * 2 * 8, dtype=torch.uint8)
    if get_worker_info() is not None:
        buffer.share_memory_()  # sent to the main process as it is, one segment
    stacked = buffer[:data].view(first.dtype).view(n, *first.shape)
    torch.stack(values, out=stacked)
    sizes = buffer[at:].view(torch.int64).view(3, n, 2)
    for f, field in enumerate(SIZE_FIELDS):
        torch.stack([item[field] for item in items], out=sizes[f])
    batch: dict[str, Any] = {}
    for key in items[0]:
        if key == kind:
            batch[key] = stacked
        elif key in SIZE_FIELDS:
            batch[key] = sizes[SIZE_FIELDS.index(key)]
        elif key in ("name", "caption"):
            batch[key] = [item[key] for item in items]
        else:
            batch[key] = default_collate([item[key] for item in items])
    return batch


def _first_header(reader: StoreReader, names: list[str]) -> stream_format.StreamHeader:
    """The first readable stream's header: a damaged stream fails when its item is read, not here."""
    for name in names[:-1]:
        try:
            return reader.stream_header(name)
        except VaeflowError:
            continue
    return reader.stream_header(names[-1])


def _item_shapes(
    reader: StoreReader, names: list[str], sizes: np.ndarray, kind: str, convention: str
) -> list[tuple[int, ...]]:
    """Each item's tensor shape, from the index and one stream header (a store holds one model's latents)."""
    if not names:
        return []
    if kind == "image":
        return [(3, int(h), int(w)) for h, w in sizes]
    header = _first_header(reader, names)
    shapes: list[tuple[int, ...]] = [header.model.latent_shape(int(h), int(w), header.latent_unit) for h, w in sizes]
    own = reader.convention if convention == "model" else None
    if own is None:
        return shapes
    p = own.patch
    return [(c * p * p, h // p, w // p) for c, h, w in shapes]


class LatentDataset(_StoreItems, Dataset[dict[str, Any]]):
    """A vaeflow store as a map-style dataset of latents (``kind="latent"``, decoded from the streams alone) or
    images (``kind="image"``, through the VAE decoder).

    ``store`` is a local path, an fsspec URL (with ``storage_options``), a zarr store object or an open
    ``StoreReader``. ``dtype`` is float16, bfloat16 or float32 (images also uint8). A DataLoader fetches a batch
    through ``__getitems__``: one read per run of neighbouring streams.
    """

    def __init__(
        self,
        store: StoreLocation | StoreReader,
        kind: str = "latent",
        dtype: torch.dtype = torch.float16,
        *,
        storage_options: dict[str, Any] | None = None,
        runtime: RuntimeOptions | None = None,
        convention: str = "model",
    ) -> None:
        super().__init__(store, kind, dtype, storage_options, runtime, convention)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} images")
        return self._items([index % len(self)])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self._items([int(i) for i in indices])


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``rank`` and ``world_size``, each from torch.distributed when not given and it is initialised."""
    initialised = dist.is_available() and dist.is_initialized()
    world = world_size if world_size is not None else dist.get_world_size() if initialised else 1
    own = rank if rank is not None else dist.get_rank() if initialised else 0
    if world < 1 or not 0 <= own < world:
        raise VaeflowError(f"rank {own} is not in 0..{world - 1} (world_size {world})")
    return own, world


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices of one tensor shape each, for ``DataLoader(ds, batch_sampler=...)``.

    Each epoch the indices of each shape are shuffled (``shuffle``; seeded by ``seed`` and the epoch, so every
    rank must be given the same seed), cut into batches of ``batch_size``, and the batches shuffled; rank ``r`` of
    ``world_size`` takes every ``world_size``-th batch from ``r``, and every rank gets the same number of batches.

    ``drop_last=False``: every index appears exactly once per epoch across all ranks. Each shape's remainder is a
    smaller batch; when the batch count does not divide by ``world_size``, the largest batches are halved until it
    does. Only with fewer images than that needs (every batch a single image) are batches repeated to pad.
    ``drop_last=True``: every batch is full; each shape's remainder is left out, then as many batches as the count
    exceeds a multiple of ``world_size``; what is left out changes with the epoch when shuffling.

    ``rank`` and ``world_size`` default to torch.distributed's when it is initialised, else 0 and 1.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        shapes = getattr(dataset, "shapes", None)
        if shapes is None:
            raise VaeflowError(f"{type(dataset).__name__} has no shapes: give a LatentDataset")
        if batch_size < 1:
            raise VaeflowError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = _distributed(rank, world_size)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, shape in enumerate(shapes):
            groups.setdefault(tuple(shape), []).append(index)
        self.groups = [np.array(g, np.int64) for g in groups.values()]  # in order of first appearance
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch`` (the same on every rank, different for every epoch)."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches of every rank together (rank ``r`` takes ``[r::world_size]``)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[list[int]] = []
        for group in self.groups:
            order = rng.permutation(group) if self.shuffle else group
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append([int(i) for i in batch])
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._even(batches)

    def _even(self, batches: list[list[int]]) -> list[list[int]]:
        """The batches, as many as a multiple of world_size (see the class notes)."""
        over = len(batches) % self.world_size
        if not over:
            return batches
        if self.drop_last:
            return batches[: len(batches) - over]
        for _ in range(self.world_size - over):
            largest = max(range(len(batches)), key=lambda i: len(batches[i]), default=None)
            if largest is None or len(batches[largest]) < 2:
                break
            batch, half = batches[largest], -(-len(batches[largest]) // 2)
            batches[largest : largest + 1] = [batch[:half], batch[half:]]
        padding = (-len(batches)) % self.world_size
        return batches + [batches[i % len(batches)] for i in range(padding)] if batches else batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.rank :: self.world_size]

    def __len__(self) -> int:
        """Batches per rank, without planning the epoch (the same every epoch)."""
        sizes = [len(g) for g in self.groups]
        if self.drop_last:
            return sum(n // self.batch_size for n in sizes) // self.world_size
        return -(-sum(-(-n // self.batch_size) for n in sizes) // self.world_size)


class LatentStream(_StoreItems, IterableDataset[dict[str, Any]]):
    """A vaeflow store read in store order, for ``DataLoader(stream, batch_size=None, num_workers=k)``.

    The images are split into contiguous parts, one per rank and DataLoader worker (sizes differ by at most one),
    and each part read in windows of neighbours, one range read each (``READ_AHEAD`` batches' worth), decoded
    together where shapes agree. With ``batch_size``, each yielded item is a collated batch of one shape: the
    window's images join a batch of their shape, which is yielded as soon as it holds ``batch_size``; the
    unfilled ones at the end of the part. With ``batch_size=None``, single items in store order. Every image
    appears exactly once across all ranks and workers; ranks may get one image more or less than each other.
    """

    def __init__(
        self,
        store: StoreLocation | StoreReader,
        kind: str = "latent",
        dtype: torch.dtype = torch.float16,
        batch_size: int | None = 16,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
        runtime: RuntimeOptions | None = None,
        convention: str = "model",
    ) -> None:
        super().__init__(store, kind, dtype, storage_options, runtime, convention)
        if batch_size is not None and batch_size < 1:
            raise VaeflowError(f"batch_size must be at least 1 or None, got {batch_size}")
        self.batch_size = batch_size
        self.rank, self.world_size = _distributed(rank, world_size)

    def part(self) -> range:
        """The indices this rank and DataLoader worker read."""
        worker = get_worker_info()
        workers, own = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        consumer, consumers = self.rank * workers + own, self.world_size * workers
        n = len(self.names)
        return range(n * consumer // consumers, n * (consumer + 1) // consumers)

    def windows(self) -> Iterator[range]:
        """This part's indices in windows of neighbours, each one range read."""
        part = self.part()
        size = self.batch_size * READ_AHEAD if self.batch_size else STREAM_READ
        for start in range(part.start, part.stop, size):
            yield range(start, min(start + size, part.stop))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        filling: dict[tuple[int, ...], list[dict[str, Any]]] = {}
        for window in self.windows():
            items = self._items(window)
            if self.batch_size is None:
                yield from items
                continue
            for index, item in zip(window, items, strict=True):
                batch = filling.setdefault(self.shapes[index], [])
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield collate(filling.pop(self.shapes[index]))
        for batch in filling.values():
            yield collate(batch)
