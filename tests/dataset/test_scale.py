"""Scale: batches that fill on mixed sizes with the same bytes on every executor, a bounded
submission window, time split by stage, and a task per stage giving the same store as fused stages."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster
from PIL import Image

import vaeflow
from vaeflow import JobOptions
from vaeflow.dataset.distributed import DaskExecutor
from vaeflow.dataset.job import execute, plan_job

from ..helpers import sync_job, tree_bytes

SIZES = [(200, 300), (196, 298), (193, 290), (250, 180), (251, 183), (140, 200), (137, 195), (200, 300), (230, 170),
         (226, 172)]  # fmt: skip


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    src = tmp_path_factory.mktemp("mixed") / "src"
    src.mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(photos[i % 4][i % 3 : i % 3 + h, i : i + w]).save(src / f"{i:02d}.png")
    return src


@pytest.fixture(scope="module")
def reference(mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    sync_job(mixed, store, options=JobOptions(progress=False, batch_size=4))
    return store


def test_mixed_sizes_batch_by_padded_shape_and_the_plan_says_how_full(mixed: Path, tmp_path: Path) -> None:
    """Images share a VAE run only at one padded shape (their latents stay the model's own)."""
    codec = vaeflow.resolve_codec()
    plan = plan_job(mixed, tmp_path / "p.zarr", codec, "default", JobOptions(batch_size=4))
    shapes = {(-(-h // 8) * 8, -(-w // 8) * 8) for h, w in SIZES}
    assert len(plan.groups) == len(shapes) < len(SIZES)
    for batch in plan.batches:
        assert {codec.padded_shape(i.height, i.width) for i in batch.items} == {batch.padded_shape}
    assert "mean fill" in str(plan) and "padded shapes" in str(plan)


@pytest.mark.parametrize("workers", [1, 2])
def test_bucketed_batches_give_the_same_bytes_on_every_executor(
    mixed: Path, reference: Path, tmp_path: Path, workers: int
) -> None:
    store = tmp_path / "dist.zarr"
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        vaeflow.compress_dataset(mixed, store, client=client, options=JobOptions(progress=False, batch_size=4))
    assert tree_bytes(store) == tree_bytes(reference)
    reader = vaeflow.open_store(store)
    for name in reader.names:
        image = vaeflow.foundations.imageio.read_rgb(mixed / name)
        assert reader.read_stream(name) == vaeflow.compress(image)  # alone or in any batch: the same bytes


def test_a_task_per_stage_writes_the_same_store_as_fused_stages(mixed: Path, reference: Path, tmp_path: Path) -> None:
    options = JobOptions(progress=False, batch_size=4, fuse_stages=False)
    store = tmp_path / "staged.zarr"
    sync_job(mixed, store, options=options)
    assert tree_bytes(store) == tree_bytes(reference)  # the reference: fused, the default
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        dist = tmp_path / "staged-dist.zarr"
        vaeflow.compress_dataset(mixed, dist, client=client, options=options)
    assert tree_bytes(dist) == tree_bytes(reference)


STAGES = ("load", "vae", "channel", "wavelet", "quantize", "entropy", "write")


def _stage_metrics(cluster: LocalCluster) -> set[tuple[str, ...]]:
    """(span name, stage) of every stage the fused tasks metered, once the workers have reported."""
    found: set[tuple[str, ...]] = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(found) < 2 * len(STAGES):  # the batch span and the job's
        for span in cluster.scheduler.extensions["spans"].spans.values():
            found |= {(*span.name, key[2]) for key in span.cumulative_worker_metrics if key[2] in STAGES}
        time.sleep(0.2)
    return found


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "a task per stage"])
def test_the_submission_window_bounds_what_the_scheduler_holds_and_time_splits_by_stage(
    mixed: Path, reference: Path, tmp_path: Path, fused: bool
) -> None:
    store = tmp_path / "window.zarr"
    options = JobOptions(progress=False, batch_size=1, fuse_stages=fused)
    plan = plan_job(mixed, store, vaeflow.resolve_codec(), "default", options)
    assert len(plan.batches) == len(SIZES)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        executor = DaskExecutor(client, None, None, window=2)
        seen: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append(len(cluster.scheduler.tasks))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            execute(plan, options, executor)
        finally:
            stop.set()
            watcher.join()
        names = {span.name for span in cluster.scheduler.extensions["spans"].spans.values()}
        metered = _stage_metrics(cluster) if fused else set()
    assert executor.peak_in_flight == 2
    assert max(seen) <= 2 * (1 if fused else len(STAGES))  # one task a batch, or one a stage
    if fused:  # one span for the batch task; its time split by stage in the task metrics
        assert ("vaeflow-compress", "batch") in names
        assert {("vaeflow-compress", "batch", stage) for stage in STAGES} <= metered
    else:  # a span per stage
        assert {("vaeflow-compress", stage) for stage in STAGES} <= names
    assert tree_bytes(store) == tree_bytes(reference)


def _profile_interval() -> str:
    import dask

    return str(dask.config.get("distributed.worker.profile.interval"))


def test_vaeflows_own_workers_profile_ten_times_less_often_unless_configured() -> None:
    import dask

    from vaeflow.dataset.distributed import local_cluster

    with local_cluster(1, dashboard_address=":0") as cluster, Client(cluster) as client:
        assert set(client.run(_profile_interval).values()) == {"100ms"}
    with (
        dask.config.set({"distributed.worker.profile.interval": "20ms"}),
        local_cluster(1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        assert set(client.run(_profile_interval).values()) == {"20ms"}
