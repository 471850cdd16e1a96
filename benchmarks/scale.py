"""``vaeflow bench scale``: dataset jobs on mixed sizes, a million planned images, GPU workers.

In one run:
- **Mixed sizes**: a folder of real photos of many sizes (the given folders, plus copies of
  them resized to a few scales) through the default job on 2 workers, against a bare
  ``compress()`` loop in one process on all cores, in rounds (ratios within a round, medians
  over rounds); the plan's padded shapes and mean batch fill; 2-worker scaling over 1 worker
  (one core each); the stages run one task each through the zarr work store against fused into
  one task per batch.
- **A million planned images**: a simulated scan of N small images (no files) is planned,
  its batches' markers and streams files made as workers would leave them (synthetic stream
  bytes), and the index assembled from them, each N in a fresh process,
  for N = 10,000, 100,000 and 1,000,000: planning and assembly time, peak memory, and the
  tasks the scheduler holds at once (the submission window: a bound that does not grow with N).
- **GPU workers**, where ONNX Runtime offers CUDA: images/s of the default model on the GPU
  against the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import vaeflow
from benchmarks.dataset import _bare_loop, hardware_scaling, job
from vaeflow.dataset.distributed import WINDOW_PER_THREAD
from vaeflow.dataset.job import JobOptions, plan_job
from vaeflow.foundations.imageio import list_images, read_rgb

SCALES = (0.5, 0.75)
SIZES = (10_000, 100_000, 1_000_000)
TASKS_PER_BATCH = 6  # with a task per stage; fused: 1


def mixed_folder(folders: list[Path], out: Path) -> list[Path]:
    """The images of ``folders`` and copies of them resized to ``SCALES`` (Lanczos), as PNG files."""
    out.mkdir(parents=True)
    for folder in folders:
        for path in list_images(folder):
            image = Image.fromarray(read_rgb(path))
            image.save(out / f"{folder.name}-{path.stem}.png")
            for scale in SCALES:
                size = (round(image.width * scale), round(image.height * scale))
                image.resize(size, Image.Resampling.LANCZOS).save(out / f"{folder.name}-{path.stem}-{scale}.png")
    return list_images(out)


RUNS = ("bare", "staged", "fused", "one_worker", "one_worker_fused")


def mixed(folders: list[Path], rounds: int = 3) -> dict[str, Any]:
    """Each round runs the bare loop and the four jobs once, in turn; ratios are taken within a round
    (this machine's speed drifts between rounds) and their median reported."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = mixed_folder(folders, root / "src")
        plan = plan_job(root / "src", root / "plan.zarr", vaeflow.resolve_codec(), "default", JobOptions())
        sizes = {(i.height, i.width) for i in plan.items}
        cores = os.cpu_count() or 1
        runs: list[dict[str, Any]] = []
        for _ in range(rounds):
            runs.append({
                "bare": _bare_loop(paths),
                "staged": job(root / "src", cores, root / "staged.zarr", 1, fuse_stages=False),
                "fused": job(root / "src", cores, root / "fused.zarr", 1),
                "one_worker": job(root / "src", 1, root / "one.zarr", 1, fuse_stages=False),
                "one_worker_fused": job(root / "src", 1, root / "one-fused.zarr", 1),
            })  # fmt: skip
        return {
            "images": len(paths), "sizes": len(sizes), "padded_shapes": len(plan.groups),
            "batches": len(plan.batches), "batch_fill": plan.batch_fill,
            "rounds": runs, "cores": cores, "hardware_scaling": hardware_scaling(root / "src"),
            "same_bytes": len({r[k]["bytes"] for r in runs for k in RUNS}) == 1,
        }  # fmt: skip


def planned(count: int) -> dict[str, Any]:
    """In this process: plan ``count`` simulated images, make their markers, assemble the index."""
    from vaeflow.dataset import assemble, work
    from vaeflow.dataset.layout import BatchMarker, ImageMarker
    from vaeflow.dataset.plan import build_plan
    from vaeflow.dataset.policy import StorePolicy, fresh_meta
    from vaeflow.dataset.scan import Scan, ScannedImage

    rng = np.random.default_rng(0)
    sizes = rng.choice([(64, 96), (96, 64), (72, 96), (64, 64), (80, 120)], count)
    scanned = Scan(tuple(ScannedImage(f"d{i // 1000:04d}/{i:07d}.png", int(h), int(w), 4096)
                         for i, (h, w) in enumerate(sizes)), ())  # fmt: skip
    codec = vaeflow.resolve_codec()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s.zarr"
        start = time.perf_counter()
        settings = {**codec.settings(), "pipeline": "default"}
        plan = build_plan(scanned, Path(tmp), store, codec, settings, StorePolicy("create", fresh_meta(settings)), 8)
        plan_s = time.perf_counter() - start
        del scanned
        stream = b"\x00" * 96  # what a tiny image's stream weighs, roughly
        markers = {}
        streams = store / work.WORK_DIR / "streams"
        streams.mkdir(parents=True)
        for batch in plan.batches:  # each batch's streams file, as a worker leaves it (unsynced: setup only)
            (streams / f"{batch.key}{work.STREAMS_SUFFIX}").write_bytes(stream * len(batch.items))
            n = len(batch.items)
            size = len(stream)
            items = tuple(ImageMarker(it.index, it.path, True, None, (), size, (it.height, it.width),
                                      (batch.key, k * size)) for k, it in enumerate(batch.items))  # fmt: skip
            markers[batch.key] = BatchMarker(batch.key, items, (("vae", 0.0, 0.0, 0),) * (n > 0))
        start = time.perf_counter()
        vaeflow.dataset.store.write_meta(store, plan.policy.meta)  # type: ignore[attr-defined]
        assemble.assemble(plan, plan.policy.meta, markers, work.WorkStore(store))
        assemble_s = time.perf_counter() - start
        rows = len(vaeflow.open_store(store).names)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"images": count, "batches": len(plan.batches), "plan_s": plan_s, "assemble_s": assemble_s,
            "peak_rss_gb": peak, "rows": rows}  # fmt: skip


def planned_in_child(count: int) -> dict[str, Any]:
    checkout = Path(__file__).resolve().parents[1]
    code = f"import json; from benchmarks.scale import planned; print(json.dumps(planned({count})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def gpu(folder: Path) -> dict[str, Any] | None:
    import onnxruntime as ort  # to ask which providers it offers

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    paths = list_images(folder)[:8]
    images = [read_rgb(p) for p in paths]
    out = {}
    for label, providers in (("cpu", ("CPUExecutionProvider",)), ("cuda", ("cuda",))):
        runtime = vaeflow.RuntimeOptions(providers=providers)
        vaeflow.compress(images[0], runtime=runtime)
        start = time.perf_counter()
        for image in images:
            vaeflow.compress(image, runtime=runtime)
        out[label] = len(images) / (time.perf_counter() - start)
    return out


def run(folders: list[Path], sizes: tuple[int, ...] = SIZES, rounds: int = 3) -> dict[str, Any]:
    threads = os.cpu_count() or 1
    return {
        "mixed": mixed(folders, rounds),
        "planned": [planned_in_child(n) for n in sizes],
        "window": {
            "batches": WINDOW_PER_THREAD * threads,
            "tasks": WINDOW_PER_THREAD * threads,
            "staged_tasks": WINDOW_PER_THREAD * threads * TASKS_PER_BATCH,
        },
        "gpu": gpu(folders[0]),
    }


def report(result: dict[str, Any]) -> str:
    m = result["mixed"]
    rounds = m["rounds"]

    def ratio(a: str, b: str) -> str:
        """The median over rounds of run a's wall time over run b's, and each round's."""
        values = [r[a]["wall_s"] / r[b]["wall_s"] for r in rounds]
        return f"{statistics.median(values):.2f}x (rounds {', '.join(f'{v:.2f}' for v in values)})"

    def seconds(name: str) -> str:
        walls = [r[name]["wall_s"] for r in rounds]
        return f"{statistics.median(walls):.1f} s ({m['images'] / statistics.median(walls):.2f} images/s)"

    lines = [
        f"vaeflow bench scale: {m['images']} mixed-size images of {m['sizes']} sizes",
        f"  plan: {m['padded_shapes']} padded shapes, {m['batches']} batches, mean fill {100 * m['batch_fill']:.0f}%",
        f"  {len(rounds)} rounds, each running everything below once in turn; medians of the rounds' ratios",
        f"  bare compress() loop, 1 process, all cores: {seconds('bare')}",
        f"  job, {m['cores']} workers, stages fused (the default): {seconds('fused')}, "
        f"{ratio('fused', 'bare')} the bare loop's time",
        f"  job, {m['cores']} workers, one task per stage (--no-fuse-stages): {seconds('staged')}, "
        f"{ratio('staged', 'bare')}; fused / staged {ratio('fused', 'staged')}",
        f"  scaling, {m['cores']} workers / 1 worker (one core each): fused {ratio('one_worker_fused', 'fused')}, "
        f"one task per stage {ratio('one_worker', 'staged')}; two bare one-core processes / one: "
        f"{m['hardware_scaling']['ratio']:.2f}x (what these cores allow)",
        f"  same bytes in every run: {m['same_bytes']}",
        "  planned jobs (simulated scans, synthetic streams; a fresh process each):",
    ]  # fmt: skip
    for p in result["planned"]:
        lines.append(
            f"    {p['images']:>9,} images: plan {p['plan_s']:.2f} s, assemble {p['assemble_s']:.1f} s, "
            f"peak memory {p['peak_rss_gb']:.2f} GB, {p['rows']:,} rows"
        )
    w = result["window"]
    lines.append(
        f"  tasks on the scheduler at once: at most {w['tasks']} ({w['batches']} batches; "
        f"{w['staged_tasks']} with a task per stage), whatever the size"
    )
    g = result["gpu"]
    lines.append(f"  GPU: {g['cuda']:.2f} images/s against {g['cpu']:.2f} on the CPU" if g else "  GPU: none here")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vaeflow bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folders", type=Path, nargs="+", help="folders of photos (e.g. ../shared/data/photos ../shared/data/kodak)"
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="planned job sizes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the mixed-size runs (3)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.folders, tuple(int(s) for s in args.sizes.split(",")), args.rounds)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
