"""``vaeflow bench chaos``: lost images under random worker kills, fuzzing, and verify speed.

- A 60-image job on a local cluster of 3 workers, while a thread kills a random worker
  process (SIGKILL) every 0.5-2 s; reported: images lost (expected 0), kills made, and whether
  the store is byte-identical to an undisturbed in-process run.
- The same job through ``vaeflow compress --scheduler ADDRESS`` on a cluster of real ``dask scheduler``
  and ``dask worker`` processes (2 workers), whose scheduler is killed (SIGKILL) ``scheduler_kills``
  times mid-job, each time restarted, and the same command run again until it completes; reported:
  images lost, failed rows (both expected 0), the exit codes, and whether the store is byte-identical
  to the undisturbed run.
- The fuzz targets of ``vaeflow.bench.fuzz`` for ``decompress`` and ``open_store``:
  executions, crashes (expected 0) and hangs.
- ``verify`` over a store of about ``verify_mb`` MB of real streams: seconds per GB.
- Hostile and careless inputs through the command line (``benchmarks.hostile``): what each did.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from distributed import Client
from PIL import Image

import vaeflow
from benchmarks import hostile
from benchmarks.cluster import ProcessCluster
from benchmarks.fuzz import fuzz_decompress, fuzz_store
from vaeflow.dataset import store as store_io
from vaeflow.dataset.distributed import local_cluster
from vaeflow.dataset.job import JobOptions, compress_dataset
from vaeflow.dataset.verify import verify_store
from vaeflow.foundations.imageio import list_images, read_rgb


def make_images(folder: Path, out: Path, count: int, size: tuple[int, int] = (384, 576)) -> None:
    paths = list_images(folder)
    out.mkdir(parents=True)
    for i in range(count):
        image = read_rgb(paths[i % len(paths)])
        top = (i * 37) % max(1, image.shape[0] - size[0])
        left = (i * 53) % max(1, image.shape[1] - size[1])
        Image.fromarray(image[top : top + size[0], left : left + size[1]]).save(out / f"{i:03d}.png")


def killed_job(src: Path, store: Path, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    kills = []
    done = threading.Event()
    with local_cluster(3, dashboard_address=":0") as cluster, Client(cluster) as client:

        def killer() -> None:
            while not done.wait(rng.uniform(0.5, 2.0)):
                try:
                    pids = list(client.run(os.getpid, wait=True).values())
                except Exception:  # workers restarting: try again at the next tick
                    continue
                if pids:
                    victim = rng.choice(pids)
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)

        thread = threading.Thread(target=killer, daemon=True)
        start = time.perf_counter()
        thread.start()
        try:
            report = compress_dataset(src, store, client=client, options=JobOptions(batch_size=1, progress=False))
        finally:
            done.set()
            thread.join()
        wall = time.perf_counter() - start
    return {"stored": report.stored, "failed": report.failed, "kills": len(kills), "wall_s": wall}


def scheduler_killed_job(src: Path, store: Path, root: Path, kills: int) -> dict[str, Any]:
    """Kill the scheduler ``kills`` times, each after a few more batches are done; rerun the same command."""
    command = [sys.executable, "-m", "vaeflow", "compress", str(src), str(store), "--batch-size", "1", "--no-progress"]
    done, codes, start = store / "_work" / "done", [], time.perf_counter()
    total = len(list(src.iterdir()))
    for kill in range(kills + 1):
        cluster = ProcessCluster(root)
        try:
            job = subprocess.Popen([*command, "--scheduler", cluster.address], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
            if kill < kills:  # wait for a few more finished batches, then kill the scheduler
                goal = (kill + 1) * total // (kills + 2)
                deadline = time.monotonic() + 600
                while job.poll() is None and time.monotonic() < deadline:
                    if done.exists() and len(list(done.glob("*.json"))) >= goal:
                        break
                    time.sleep(0.05)
                cluster.kill_scheduler()
            job.communicate(timeout=900)
            codes.append(job.returncode)
        finally:
            cluster.close()
    reader = vaeflow.open_store(store)
    return {"scheduler_kills": kills, "exit_codes": codes, "stored": len(reader.names),
            "failed": len(reader.failures), "wall_s": time.perf_counter() - start}  # fmt: skip


def verify_speed(seed_store: Path, target_mb: int, tmp: Path) -> dict[str, float]:
    """Build a store of about ``target_mb`` MB from a real store's streams, then verify it."""
    reader = vaeflow.open_store(seed_store)
    streams = [reader.read_stream(n) for n in reader.names]
    shapes = [size for _, size, _, _ in reader.entries()]
    per_round = sum(len(s) for s in streams)
    rounds = max(1, (target_mb << 20) // per_round)
    rows = (
        store_io.Row(f"{r:05d}/{name}", shapes[i], True, "", streams[i])  # type: ignore[arg-type]
        for r in range(rounds)
        for i, name in enumerate(reader.names)
    )
    big = tmp / "big.zarr"
    store_io.write_index(big, rows, rounds * per_round, [])
    store_io.write_meta(big, {**reader.meta, "rows": rounds * len(streams), "stored_bytes": rounds * per_round})
    store_io.consolidate(big)
    report = verify_store(big)
    gigabytes = report.bytes_read / 2**30
    return {"streams": report.checked, "gigabytes": gigabytes, "seconds": report.seconds,
            "seconds_per_gb": report.seconds / gigabytes, "damaged": len(report.damaged)}  # fmt: skip


def run_hostile(folder: Path) -> list[dict[str, Any]]:
    return hostile.run([read_rgb(p) for p in list_images(folder)[:4]])


def run(folder: Path, images: int = 60, decompress_runs: int = 200_000, store_runs: int = 20_000,
        verify_mb: int = 256, scheduler_kills: int = 3) -> dict[str, Any]:  # fmt: skip
    attacks = run_hostile(folder)
    tmp = Path(tempfile.mkdtemp())
    try:
        src = tmp / "src"
        make_images(folder, src, images)
        reference = tmp / "reference.zarr"
        vaeflow.compress_dataset(src, reference, scheduler="sync", options=JobOptions(progress=False, batch_size=2))
        chaos = killed_job(src, tmp / "chaos.zarr")
        identical = _tree(tmp / "chaos.zarr") == _tree(reference)
        chaos.update(images=images, lost=images - chaos["stored"], identical_to_undisturbed_run=identical)
        (tmp / "cluster").mkdir()
        scheduler = scheduler_killed_job(src, tmp / "scheduler.zarr", tmp / "cluster", scheduler_kills)
        scheduler.update(images=images, lost=images - scheduler["stored"],
                         identical_to_undisturbed_run=_tree(tmp / "scheduler.zarr") == _tree(reference))  # fmt: skip
        fuzz = [fuzz_decompress(decompress_runs), fuzz_store(store_runs)]
        verify = verify_speed(reference, verify_mb, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "chaos": chaos,
        "scheduler": scheduler,
        "fuzz": [
            {
                "target": f.target,
                "executions": f.executions,
                "rejected": f.rejected,
                "accepted": f.accepted,
                "crashes": len(f.crashes),
                "hangs": f.hangs,
                "seconds": f.seconds,
                "examples": [reason for _, reason in f.crashes[:5]],
            }
            for f in fuzz
        ],
        "verify": verify,
        "hostile": attacks,
    }


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def report(result: dict[str, Any]) -> str:
    c, v, s = result["chaos"], result["verify"], result["scheduler"]
    lines = [
        f"chaos: {c['images']} images, 3 workers, {c['kills']} workers killed at random during the job "
        f"({c['wall_s']:.0f} s): {c['lost']} images lost, {c['failed']} failed; store identical to an "
        f"undisturbed run: {c['identical_to_undisturbed_run']}",
        f"scheduler: the same job on a dask scheduler and 2 dask workers, the scheduler killed {s['scheduler_kills']} "
        f"times and the same command run again ({s['wall_s']:.0f} s, exit codes {s['exit_codes']}): {s['lost']} "
        f"images lost, {s['failed']} failed rows; store identical to an undisturbed run: "
        f"{s['identical_to_undisturbed_run']}",
    ]
    for f in result["fuzz"]:
        lines.append(
            f"fuzz {f['target']}: {f['executions']:,} executions in {f['seconds']:.0f} s, {f['crashes']} crashes, "
            f"{f['hangs']} hangs ({f['rejected']:,} rejected with vaeflow's errors, {f['accepted']:,} accepted)"
        )
        lines += [f"  crash: {e}" for e in f["examples"]]
    lines.append(
        f"verify: {v['streams']:,} streams, {v['gigabytes']:.2f} GB in {v['seconds']:.2f} s = "
        f"{v['seconds_per_gb']:.2f} s per GB ({v['damaged']} damaged)"
    )
    lines.append(hostile.report(result["hostile"]))
    return "\n".join(lines)
