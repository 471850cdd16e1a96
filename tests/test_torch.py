"""PyTorch loading: LatentDataset, BucketBatchSampler and LatentStream under DataLoader workers and ranks."""

from __future__ import annotations

import multiprocessing
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch loading needs the train extra (torch)")

from torch.utils.data import DataLoader, default_collate  # noqa: E402

import vaeflow  # noqa: E402
from vaeflow.foundations.errors import VaeflowError  # noqa: E402
from vaeflow.torch import BucketBatchSampler, LatentDataset, LatentStream, collate  # noqa: E402

from .helpers import MIXED_SIZES as SIZES  # noqa: E402
from .helpers import S3Bucket  # noqa: E402


@pytest.fixture(scope="module")
def store(mixed_store: Path) -> Path:
    return mixed_store


@pytest.fixture(scope="module")
def latents(mixed_latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return mixed_latents


@pytest.fixture(scope="module")
def dataset(store: Path) -> LatentDataset:
    return LatentDataset(store)


def epoch_batches(dataset: LatentDataset, sampler: BucketBatchSampler, workers: int = 2) -> list[list[str]]:
    """The names of each batch a DataLoader gives, checking that each batch is one tensor of one shape."""
    out = []
    for batch in DataLoader(dataset, batch_sampler=sampler, num_workers=workers):
        assert batch["latent"].ndim == 4 and batch["latent"].shape[0] == len(batch["name"])
        assert batch["original_size"].shape == (len(batch["name"]), 2)
        out.append(list(batch["name"]))
    return out


def test_items_hold_the_latent_and_the_micro_conditioning(
    dataset: LatentDataset, latents: dict[str, np.ndarray]
) -> None:
    assert len(dataset) == len(SIZES) == len(latents)
    for i in range(len(dataset)):
        item = dataset[i]
        name = item["name"]
        assert torch.equal(item["latent"], torch.from_numpy(latents[name]).to(torch.float16))
        h, w = dataset.sizes[i]
        assert dataset.shapes[i] == (12, -(-h // 8), -(-w // 8)) == tuple(item["latent"].shape)
        assert item["target_size"].tolist() == item["original_size"].tolist() == [h, w]
        assert item["crop_top_left"].tolist() == [0, 0]
        assert item["caption"] == ""  # the store holds no captions
    assert dataset[-1]["name"] == dataset.names[-1]
    with pytest.raises(IndexError, match="out of range"):
        dataset[len(dataset)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes(store: Path, latents: dict[str, np.ndarray], dtype: Any) -> None:
    item = LatentDataset(store, dtype=dtype)[3]
    assert item["latent"].dtype == dtype
    exact = torch.from_numpy(latents[item["name"]])
    tolerance = {torch.float16: 1e-2, torch.bfloat16: 4e-2, torch.float32: 0.0}[dtype]
    assert torch.allclose(item["latent"].float(), exact, rtol=tolerance, atol=tolerance)


def test_bad_kinds_and_dtypes_are_refused(store: Path) -> None:
    with pytest.raises(VaeflowError, match="dtype"):
        LatentDataset(store, dtype=torch.int32)
    with pytest.raises(VaeflowError, match="dtype"):
        LatentDataset(store, dtype=torch.uint8)  # uint8 is for images
    with pytest.raises(VaeflowError, match="kind"):
        LatentDataset(store, kind="stream")
    with pytest.raises(VaeflowError, match="convention"):
        LatentDataset(store, convention="sdxl")


def test_images_come_through_the_decoder(store: Path) -> None:
    reader = vaeflow.open_store(store)
    floats, bytes_ = (
        LatentDataset(store, kind="image", dtype=torch.float32),
        LatentDataset(store, kind="image", dtype=torch.uint8),
    )
    item, raw = floats[11], bytes_[11]
    image = reader.read_image(item["name"])
    assert tuple(item["image"].shape) == (3, *SIZES[11]) == floats.shapes[11]
    assert raw["image"].dtype == torch.uint8 and np.array_equal(raw["image"].permute(1, 2, 0).numpy(), image)
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert torch.allclose(item["image"], raw["image"].float() / 255)


def test_pickling_carries_the_location_and_index_not_the_store(dataset: LatentDataset) -> None:
    _ = dataset[0]  # opens the reader in this process
    blob = pickle.dumps(dataset)
    assert len(blob) < 4096 and b"StoreReader" not in blob
    copy = pickle.loads(blob)
    assert copy._reader is None and copy.names == dataset.names
    assert torch.equal(copy[5]["latent"], dataset[5]["latent"])


def test_two_ranks_two_workers_yield_every_image_once_per_epoch(
    dataset: LatentDataset, latents: dict[str, np.ndarray]
) -> None:
    samplers = [BucketBatchSampler(dataset, 2, seed=7, rank=r, world_size=2) for r in range(2)]
    epochs = []
    for epoch in range(2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        per_rank = [epoch_batches(dataset, sampler) for sampler in samplers]
        assert len(per_rank[0]) == len(per_rank[1]) == len(samplers[0]) == len(samplers[1])
        names = [n for batches in per_rank for batch in batches for n in batch]
        assert Counter(names) == Counter(dataset.names)  # every image exactly once across both ranks
        for batches in per_rank:
            for batch in batches:
                assert len(batch) <= 2 and len({dataset.shapes[dataset.names.index(n)] for n in batch}) == 1
        epochs.append(per_rank)
    assert epochs[0] != epochs[1]  # set_epoch reshuffles
    again = BucketBatchSampler(dataset, 2, seed=7, rank=1, world_size=2)
    again.set_epoch(1)
    assert epoch_batches(dataset, again, workers=0) == epochs[1][1]  # deterministic for a seed and epoch
    other = BucketBatchSampler(dataset, 2, seed=8, rank=1, world_size=2)
    assert list(other) != list(BucketBatchSampler(dataset, 2, seed=7, rank=1, world_size=2))  # seeds differ


def test_batches_carry_the_stored_latents(dataset: LatentDataset, latents: dict[str, np.ndarray]) -> None:
    for batch in DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset, 4, seed=1), num_workers=2):
        for name, latent in zip(batch["name"], batch["latent"], strict=True):
            assert torch.equal(latent, torch.from_numpy(latents[name]).half())


def assert_same_batch(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
        else:
            assert ours[key] == value, key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_collate_gives_what_default_collate_gives(store: Path, dtype: Any) -> None:
    """The same batches (keys, values, dtypes, shapes) through two workers, one buffer per batch; mixed shapes
    and other keys too."""
    dataset = LatentDataset(store, dtype=dtype)
    sampler = BucketBatchSampler(dataset, 3, seed=2)
    ours = list(DataLoader(dataset, batch_sampler=sampler, num_workers=2, collate_fn=collate))
    theirs = list(DataLoader(dataset, batch_sampler=sampler, num_workers=0))
    assert len(ours) == len(theirs) == len(sampler)
    for a, b in zip(ours, theirs, strict=True):
        assert_same_batch(a, b)
        storages = {a[k].untyped_storage().data_ptr() for k in ("latent", "original_size", "target_size")}
        assert len(storages) == 1  # one buffer
    batch = next(iter(sampler))
    items = [{**item, "weight": 0.5} for item in dataset.__getitems__(batch)]
    assert_same_batch(collate(items), default_collate(items))
    shapes = {dataset.shapes[i]: i for i in range(len(dataset))}
    assert len(shapes) > 1
    with pytest.raises(VaeflowError, match="cannot share a batch: batch them with BucketBatchSampler"):
        collate(dataset.__getitems__(list(shapes.values())[:2]))
    with pytest.raises(VaeflowError, match="at least one item"):
        collate([])


def indices(batches: list[list[int]]) -> Counter[int]:
    return Counter(i for batch in batches for i in batch)


@pytest.mark.parametrize(("batch_size", "world_size"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 4), (8, 4), (16, 2)])
def test_without_drop_last_every_index_once_and_ranks_even(
    dataset: LatentDataset, batch_size: int, world_size: int
) -> None:
    per_rank = [list(BucketBatchSampler(dataset, batch_size, rank=r, world_size=world_size)) for r in range(world_size)]
    assert indices([b for batches in per_rank for b in batches]) == Counter(range(len(dataset)))
    assert len({len(batches) for batches in per_rank}) == 1
    assert all(
        len(batches) == len(BucketBatchSampler(dataset, batch_size, world_size=world_size)) for batches in per_rank
    )
    for batches in per_rank:
        assert all(1 <= len(b) <= batch_size and len({dataset.shapes[i] for i in b}) == 1 for b in batches)


def test_with_drop_last_every_batch_is_full_and_ranks_even(dataset: LatentDataset) -> None:
    for world_size in (1, 2, 3):
        per_rank = [
            list(BucketBatchSampler(dataset, 2, drop_last=True, rank=r, world_size=world_size))
            for r in range(world_size)
        ]
        seen = indices([b for batches in per_rank for b in batches])
        assert max(seen.values()) == 1 and all(len(b) == 2 for batches in per_rank for b in batches)
        # shapes of 5, 4, 2 and 1 images: 2 + 2 + 1 + 0 full pairs, then as many as world_size divides
        assert len(per_rank[0]) * world_size == 5 // world_size * world_size
        assert {len(batches) for batches in per_rank} == {
            len(BucketBatchSampler(dataset, 2, drop_last=True, world_size=world_size))
        }


def test_only_single_image_batches_are_padded(dataset: LatentDataset) -> None:
    per_rank = [list(BucketBatchSampler(dataset, 1, rank=r, world_size=5)) for r in range(5)]
    seen = indices([b for batches in per_rank for b in batches])
    assert set(seen) == set(range(12)) and sum(seen.values()) == 15  # 12 images over 5 ranks: 3 repeated
    assert {len(batches) for batches in per_rank} == {3}


def test_unshuffled_batches_follow_the_index(dataset: LatentDataset) -> None:
    batches = list(BucketBatchSampler(dataset, 3, shuffle=False))
    shapes = list(dict.fromkeys(dataset.shapes))  # in order of first appearance
    expected = [i for shape in shapes for i in range(len(dataset)) if dataset.shapes[i] == shape]
    assert [i for b in batches for i in b] == expected  # each shape's images in index order, shape by shape


def _rank_batches(dataset: LatentDataset, init: str, rank: int, queue: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        queue.put((rank, list(BucketBatchSampler(dataset, 2, seed=3))))
    finally:
        dist.destroy_process_group()


def test_rank_and_world_size_come_from_torch_distributed(dataset: LatentDataset, tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    processes = [context.Process(target=_rank_batches, args=(dataset, init, r, queue)) for r in range(2)]
    for p in processes:
        p.start()
    found = dict(queue.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert found == {r: list(BucketBatchSampler(dataset, 2, seed=3, rank=r, world_size=2)) for r in range(2)}


def test_bad_sampler_arguments(dataset: LatentDataset) -> None:
    with pytest.raises(VaeflowError, match="rank 2"):
        BucketBatchSampler(dataset, 2, rank=2, world_size=2)
    with pytest.raises(VaeflowError, match="batch_size"):
        BucketBatchSampler(dataset, 0)
    with pytest.raises(VaeflowError, match="shapes"):
        BucketBatchSampler(list(range(4)), 2)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_stream_over_two_ranks_and_two_workers_covers_every_image_once(
    store: Path, latents: dict[str, np.ndarray], batch_size: int | None
) -> None:
    names: list[str] = []
    for rank in range(2):
        stream = LatentStream(store, batch_size=batch_size, rank=rank, world_size=2, dtype=torch.float32)
        for item in DataLoader(stream, batch_size=None, num_workers=2):
            batch = [item["name"]] if batch_size is None else list(item["name"])
            tensors = [item["latent"]] if batch_size is None else list(item["latent"])
            assert len(batch) <= (batch_size or 1)
            for name, tensor in zip(batch, tensors, strict=True):
                assert torch.equal(tensor, torch.from_numpy(latents[name]))
            names += batch
    assert Counter(names) == Counter(list(latents))


def test_stream_parts_are_contiguous_windows_in_store_order_batched_by_shape(store: Path) -> None:
    parts = [LatentStream(store, rank=r, world_size=3).part() for r in range(3)]
    assert [list(p) for p in parts] == [list(range(0, 4)), list(range(4, 8)), list(range(8, 12))]
    stream = LatentStream(store, batch_size=2, dtype=torch.float32)
    windows = list(stream.windows())
    assert [i for w in windows for i in w] == list(range(len(SIZES))) and all(len(w) <= 8 for w in windows)
    batches = [list(batch["name"]) for batch in stream]
    shapes = dict(zip(stream.names, stream.shapes, strict=True))
    assert sorted(n for b in batches for n in b) == sorted(stream.names)
    assert all(len({shapes[n] for n in b}) == 1 and len(b) <= 2 for b in batches)
    full = Counter(shapes.values())  # each shape leaves at most one unfilled batch
    assert sum(len(b) < 2 for b in batches) <= sum(1 for n in full.values() if n % 2)


def test_dataloader_workers_read_s3(s3: S3Bucket, store: Path, latents: dict[str, np.ndarray]) -> None:
    url = s3.put(store, "torch/store.zarr")
    dataset = LatentDataset(url, dtype=torch.float32, storage_options=s3.options)
    seen = []
    for batch in DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset, 3), num_workers=2):
        for name, latent in zip(batch["name"], batch["latent"], strict=True):
            assert np.array_equal(latent.numpy(), latents[name])
            seen.append(name)
    stream = LatentStream(url, batch_size=None, dtype=torch.float32, storage_options=s3.options)
    streamed = [item["name"] for item in DataLoader(stream, batch_size=None, num_workers=2)]
    assert sorted(seen) == sorted(streamed) == sorted(latents)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_started_by_fork_or_spawn_decode_the_same_latents(
    dataset: LatentDataset, latents: dict[str, np.ndarray], start: str
) -> None:
    """Workers get the compiled decoders either way: inherited (fork) or loaded from numba's cache (spawn)."""
    sampler = BucketBatchSampler(dataset, 3, seed=5)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2, multiprocessing_context=start)
    seen = 0
    for batch in loader:
        for name, latent in zip(batch["name"], batch["latent"], strict=True):
            assert torch.equal(latent, torch.from_numpy(latents[name]).to(torch.float16))
            seen += 1
    assert seen == len(dataset)
