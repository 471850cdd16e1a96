"""``vaeflow bench dataset``: a dataset job's throughput, scaling, overhead and memory.

In one run, on a folder of images (30 photos of about 1.3 MP in the shared set):
- bare: ``compress()`` on each image in one process, all cores to ONNX Runtime (baseline);
- the job on a local cluster of 1 worker process (all cores) and of 2 (one core each);
- the job on 4 copies of the folder (4x the images), to see whether memory stays flat.
Reported: images/s, the 2-worker/1-worker scaling, job wall time against the bare sum
(the Dask and zarr overhead), and each worker's peak RSS.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import vaeflow
from vaeflow.dataset.job import JobOptions, compress_dataset
from vaeflow.imageio import IMAGE_SUFFIXES, read_rgb


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare(folder: Path) -> dict[str, Any]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    vaeflow.compress(read_rgb(paths[0]))  # load the model before timing
    start = time.perf_counter()
    total = 0
    for path in paths:
        total += len(vaeflow.compress(read_rgb(path)))
    return {"images": len(paths), "wall_s": time.perf_counter() - start, "bytes": total}


def job(folder: Path, workers: int, store: Path) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        runtime = vaeflow.RuntimeOptions(threads=max(1, cores // workers))
        client.run(lambda: vaeflow.load_model("default", runtime))  # warm the workers alike
        start = time.perf_counter()
        report = compress_dataset(folder, store, client=client, options=JobOptions(progress=False, runtime=runtime))
        wall = time.perf_counter() - start
        peaks = sorted(client.run(_peak_rss_mb).values())
    shutil.rmtree(store)
    return {
        "workers": workers,
        "images": report.stored,
        "wall_s": wall,
        "bytes": report.bytes_out,
        "peak_rss_mb": peaks,
    }


def run(folder: Path, copies: int = 4) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        baseline = bare(folder)
        one = job(folder, 1, tmp_path / "one.zarr")
        two = job(folder, 2, tmp_path / "two.zarr")
        grown = tmp_path / "grown"
        for i in range(copies):
            shutil.copytree(folder, grown / f"copy{i}")
        big = job(grown, 2, tmp_path / "big.zarr")
    return {"bare": baseline, "one_worker": one, "two_workers": two, "grown": big, "copies": copies}


def report(result: dict[str, Any]) -> str:
    b, one, two, big = result["bare"], result["one_worker"], result["two_workers"], result["grown"]

    def rate(r: dict[str, Any]) -> float:
        return float(r["images"] / r["wall_s"])

    lines = [
        f"vaeflow bench dataset: {b['images']} images",
        f"  bare compress() loop, 1 process: {b['wall_s']:.1f} s, {rate(b):.2f} images/s (baseline)",
        f"  job, 1 worker:  {one['wall_s']:.1f} s, {rate(one):.2f} images/s, peak RSS per worker "
        f"{', '.join(f'{p:.0f}' for p in one['peak_rss_mb'])} MB",
        f"  job, 2 workers: {two['wall_s']:.1f} s, {rate(two):.2f} images/s, peak RSS per worker "
        f"{', '.join(f'{p:.0f}' for p in two['peak_rss_mb'])} MB",
        f"  scaling 2 workers / 1 worker: {rate(two) / rate(one):.2f}x",
        f"  overhead, job with 1 worker / bare loop: {one['wall_s'] / b['wall_s']:.3f} "
        f"({100 * (one['wall_s'] / b['wall_s'] - 1):+.1f}%); 2 workers / bare: {two['wall_s'] / b['wall_s']:.3f}",
        f"  same bytes as the bare loop: {one['bytes'] == b['bytes'] == two['bytes']}",
        f"  {result['copies']}x the images ({big['images']}), 2 workers: {rate(big):.2f} images/s, peak RSS per worker "
        f"{', '.join(f'{p:.0f}' for p in big['peak_rss_mb'])} MB (vs "
        f"{', '.join(f'{p:.0f}' for p in two['peak_rss_mb'])} MB for {two['images']})",
    ]
    return "\n".join(lines)
