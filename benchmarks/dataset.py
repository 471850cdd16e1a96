"""``vaeflow bench dataset``: a dataset job's throughput, scaling, overhead and memory.

In one run, on a folder of images (30 photos of about 1.3 MP in the shared set):
- bare: ``compress()`` on each image in one process, all cores to ONNX Runtime (baseline);
- the job on a local cluster of 1 worker process with all cores (its overhead over the
  baseline), of 1 worker on one core, and of 2 workers on one core each (the scaling), and
  as ``vaeflow compress`` runs it by default (a worker per core, batches of 8);
- the hardware's own ceiling for that scaling: the bare loop on one core in one process,
  against two such processes side by side, each on half the images;
- the job on 4 copies of the folder (4x the images, one image per batch as in the
  2-worker run), to see whether memory stays flat.
Reported: images/s, the scaling, the job's wall time against the bare loop (the Dask and
zarr overhead), and each worker's peak RSS.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from distributed import Client

import vaeflow
from vaeflow.dataset.distributed import local_cluster
from vaeflow.dataset.job import JobOptions, compress_dataset
from vaeflow.foundations.imageio import list_images, read_rgb


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _image_paths(folder: Path) -> list[Path]:
    return list_images(folder)


def _bare_loop(paths: list[Path], threads: int | None = None, barrier: Any = None) -> dict[str, Any]:
    runtime = vaeflow.RuntimeOptions(threads=threads) if threads else None
    vaeflow.compress(read_rgb(paths[0]), runtime=runtime)  # load the model before timing
    if barrier is not None:  # processes side by side start timing together
        barrier.wait()
    start = time.perf_counter()
    total = 0
    for path in paths:
        total += len(vaeflow.compress(read_rgb(path), runtime=runtime))
    return {"images": len(paths), "wall_s": time.perf_counter() - start, "bytes": total}


def bare(folder: Path) -> dict[str, Any]:
    return _bare_loop(_image_paths(folder))


def hardware_scaling(folder: Path) -> dict[str, float]:
    """images/s of two one-core bare loops side by side over one: what 2 processes can gain here."""
    paths = _image_paths(folder)
    spawn = get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        single = pool.submit(_bare_loop, paths, 1).result()
    with spawn.Manager() as manager, ProcessPoolExecutor(2, mp_context=spawn) as pool:
        barrier = manager.Barrier(2)
        halves = [pool.submit(_bare_loop, paths[i::2], 1, barrier) for i in range(2)]
        pair = [h.result() for h in halves]
    one_rate = single["images"] / single["wall_s"]
    two_rate = len(paths) / max(r["wall_s"] for r in pair)
    return {"one_process_images_per_s": one_rate, "two_processes_images_per_s": two_rate, "ratio": two_rate / one_rate}


def job(
    folder: Path, workers: int, store: Path, onnx_threads: int, batch_size: int = 8, fuse_stages: bool = True
) -> dict[str, Any]:
    with local_cluster(workers, dashboard_address=":0") as cluster, Client(cluster) as client:
        runtime = vaeflow.RuntimeOptions(threads=onnx_threads)
        client.run(lambda: vaeflow.load_model("default", runtime))  # warm the workers alike
        start = time.perf_counter()
        options = JobOptions(progress=False, runtime=runtime, batch_size=batch_size, fuse_stages=fuse_stages)
        report = compress_dataset(folder, store, client=client, options=options)
        wall = time.perf_counter() - start
        peaks = sorted(client.run(_peak_rss_mb).values())
    shutil.rmtree(store)
    return {
        "workers": workers,
        "onnx_threads": onnx_threads,
        "images": report.stored,
        "wall_s": wall,
        "bytes": report.bytes_out,
        "peak_rss_mb": peaks,
        "stage_seconds": report.stage_seconds,
    }


def run(folder: Path, copies: int = 4) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cores = os.cpu_count() or 1
        baseline = bare(folder)
        whole = job(folder, 1, tmp_path / "whole.zarr", cores)
        one = job(folder, 1, tmp_path / "one.zarr", 1, batch_size=1)
        two = job(folder, 2, tmp_path / "two.zarr", 1, batch_size=1)
        default = job(folder, cores, tmp_path / "default.zarr", 1, batch_size=JobOptions().batch_size)
        ceiling = hardware_scaling(folder)
        grown = tmp_path / "grown"
        for i in range(copies):
            shutil.copytree(folder, grown / f"copy{i}")
        big = job(grown, 2, tmp_path / "big.zarr", 1, batch_size=1)
    return {"bare": baseline, "one_worker_all_cores": whole, "one_worker": one, "two_workers": two,
            "default_job": default, "grown": big, "copies": copies, "hardware_scaling": ceiling}  # fmt: skip


def report(result: dict[str, Any]) -> str:
    b, whole, one, two = result["bare"], result["one_worker_all_cores"], result["one_worker"], result["two_workers"]
    big = result["grown"]

    def rate(r: dict[str, Any]) -> float:
        return float(r["images"] / r["wall_s"])

    def peaks(r: dict[str, Any]) -> str:
        return ", ".join(f"{p:.0f}" for p in r["peak_rss_mb"]) + " MB"

    lines = [
        f"vaeflow bench dataset: {b['images']} images",
        f"  bare compress() loop, 1 process, all cores: {b['wall_s']:.1f} s, {rate(b):.2f} images/s (baseline)",
        f"  job, 1 worker, all cores:   {whole['wall_s']:.1f} s, {rate(whole):.2f} images/s, peak RSS {peaks(whole)}",
        f"  job, 1 worker on 1 core:    {one['wall_s']:.1f} s, {rate(one):.2f} images/s, peak RSS {peaks(one)}",
        f"  job, 2 workers, 1 core each: {two['wall_s']:.1f} s, {rate(two):.2f} images/s, peak RSS {peaks(two)}",
        f"  scaling 2 workers / 1 worker (one core each): {rate(two) / rate(one):.2f}x; two bare one-core "
        f"processes / one: {result['hardware_scaling']['ratio']:.2f}x (what these cores allow)",
        f"  job as `vaeflow compress` runs it ({result['default_job']['workers']} workers, one core each, batches of "
        f"{JobOptions().batch_size}): {result['default_job']['wall_s']:.1f} s, {rate(result['default_job']):.2f} "
        f"images/s; against the bare loop {result['default_job']['wall_s'] / b['wall_s']:.3f}",
        f"  overhead, job (1 worker, all cores) / bare loop: {whole['wall_s'] / b['wall_s']:.3f} "
        f"({100 * (whole['wall_s'] / b['wall_s'] - 1):+.1f}%); 2 workers / bare: {two['wall_s'] / b['wall_s']:.3f}",
        f"  same bytes as the bare loop: "
        f"{whole['bytes'] == one['bytes'] == b['bytes'] == two['bytes'] == result['default_job']['bytes']}",
        f"  {result['copies']}x the images ({big['images']}), 2 workers: {rate(big):.2f} images/s, peak RSS "
        f"{peaks(big)} (against {peaks(two)} for {two['images']})",
    ]
    return "\n".join(lines)
