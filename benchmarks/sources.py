"""``vaeflow bench sources``: the same images as a folder (with caption and metadata sidecars), as webdataset
shards (on disk, and on an S3 API: moto's server on loopback) and as a parquet file, compressed by the same job
in one run.

- **Identity**: every image's stream, caption and metadata from the shards and from parquet against the folder's.
- **Job time**: each source's job (in-process, the default preset) in alternating rounds; the median of each
  round's ratio to the folder's.
- **Planning**: 10,000 generated shard members planned (scan and plan, nothing written) in a fresh process, time
  and peak memory, against 1,000.
- **Unpacked files**: the files the jobs wrote outside their stores (0: shards and rows are read in place).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import vaeflow
from vaeflow.dataset.options import JobOptions
from vaeflow.foundations.imageio import list_images

SOURCES = ("folder", "webdataset", "parquet", "webdataset-s3")
PER_SHARD = 8


def samples_of(images: Path, limit: int | None) -> list[tuple[str, bytes, str, dict[str, Any]]]:
    """(key, the file's bytes as they are, caption, metadata) of each image."""
    out = []
    for i, path in enumerate(list_images(images)[:limit]):
        metadata = {"source": path.name, "index": i, "aesthetic": round(5 + i / 10, 2), "tags": ["photo", path.stem]}
        out.append((path.stem, path.read_bytes(), f"a photograph ({path.stem})", metadata))
    return out


def extension(data: bytes) -> str:
    return "jpg" if data[:2] == b"\xff\xd8" else "png"


def write_folder(root: Path, samples: list[tuple[str, bytes, str, dict[str, Any]]]) -> Path:
    root.mkdir(parents=True)
    for key, data, caption, metadata in samples:
        (root / f"{key}.{extension(data)}").write_bytes(data)
        (root / f"{key}.txt").write_text(caption)
        (root / f"{key}.json").write_text(json.dumps(metadata))
    return root


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, samples: list[tuple[str, bytes, str, dict[str, Any]]], per_shard: int = PER_SHARD) -> Path:
    """img2dataset's layout: ``00000.tar`` holding ``KEY.jpg``, ``KEY.txt``, ``KEY.json`` for each sample."""
    root.mkdir(parents=True)
    for first in range(0, len(samples), per_shard):
        with tarfile.open(root / f"{first // per_shard:05d}.tar", "w") as tar:
            for key, data, caption, metadata in samples[first : first + per_shard]:
                add_member(tar, f"{key}.{extension(data)}", data)
                add_member(tar, f"{key}.txt", caption.encode())
                add_member(tar, f"{key}.json", json.dumps(metadata).encode())
    return root


def write_parquet(root: Path, samples: list[tuple[str, bytes, str, dict[str, Any]]]) -> Path:
    """Hugging Face's layout: an ``image`` struct column ({"bytes", "path"}), ``text``, and metadata columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    columns: dict[str, list[Any]] = {
        "image": [{"bytes": data, "path": f"{key}.{extension(data)}"} for key, data, _, _ in samples],
        "text": [caption for _, _, caption, _ in samples],
    }
    for field in samples[0][3]:
        columns[field] = [metadata[field] for _, _, _, metadata in samples]
    pq.write_table(pa.table(columns), root / "train-00000-of-00001.parquet", row_group_size=PER_SHARD)
    return root


def _by_key(store: Path, keys: list[str] | None = None) -> dict[str, tuple[bytes, str | None, Any]]:
    """Each image's (stream, caption, metadata), by its sample key: the name's last part without its extension
    (``keys``: parquet rows, by their number)."""
    reader = vaeflow.open_store(store)
    streams = reader.read_streams(reader.names)
    out = {}
    for name, stream in zip(reader.names, streams, strict=True):
        last = name.rsplit("/", 1)[-1]
        out[keys[int(last)] if keys else last.split(".")[0]] = (stream, reader.caption(name), reader.metadata(name))
    return out


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".zarr" not in p.as_posix()}


def jobs(work: Path, samples: list[tuple[str, bytes, str, dict[str, Any]]], rounds: int) -> dict[str, Any]:
    import s3fs

    from benchmarks.store_reads import moto_bucket

    sources: dict[str, Any] = {"folder": write_folder(work / "folder", samples),
                               "webdataset": write_shards(work / "shards", samples),
                               "parquet": write_parquet(work / "parquet", samples)}  # fmt: skip
    server, s3_options = moto_bucket("bench")
    try:
        s3fs.S3FileSystem(**s3_options).put(str(sources["webdataset"]), "bench/shards", recursive=True)
        sources["webdataset-s3"] = "s3://bench/shards"
        return _jobs(work, samples, rounds, sources, s3_options)
    finally:
        server.stop()


def _jobs(work: Path, samples: list[tuple[str, bytes, str, dict[str, Any]]], rounds: int, sources: dict[str, Any],
          s3_options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    vaeflow.compress_dataset(
        sources["folder"], work / "warm-up.zarr", scheduler="sync", options=JobOptions(progress=False)
    )  # models loaded and compiled before any is timed
    before = _files(work)
    seconds: dict[str, list[float]] = {name: [] for name in SOURCES}
    for r in range(rounds):
        for name in SOURCES if r % 2 == 0 else SOURCES[::-1]:
            store = work / f"{name}-{r}.zarr"
            start = time.perf_counter()
            vaeflow.compress_dataset(sources[name], store, scheduler="sync", options=JobOptions(progress=False),
                                     storage_options=s3_options if name.endswith("-s3") else None)  # fmt: skip
            seconds[name].append(time.perf_counter() - start)
    unpacked = sorted(_files(work) - before)
    reference = _by_key(work / "folder-0.zarr")
    identity = {}
    for name in SOURCES[1:]:
        found = _by_key(work / f"{name}-0.zarr", [key for key, *_ in samples] if name == "parquet" else None)
        identity[name] = {
            "images": len(found),
            "streams_identical": sum(found[k][0] == reference[k][0] for k in reference if k in found),
            "captions_identical": sum(found[k][1] == reference[k][1] for k in reference if k in found),
            "metadata_identical": sum(found[k][2] == reference[k][2] for k in reference if k in found),
        }
    ratios = {name: statistics.median(seconds[name][r] / seconds["folder"][r] for r in range(rounds))
              for name in SOURCES[1:]}  # fmt: skip
    return {"images": len(samples), "seconds": seconds, "ratio_to_folder": ratios, "identity": identity,
            "unpacked_files": unpacked}  # fmt: skip


PLAN_PROBE = """
import json, sys, time, tracemalloc
from pathlib import Path
from vaeflow.dataset.job import job_codec, plan_job
from vaeflow.dataset.options import JobOptions

def peak_rss_mb():  # this process's own high-water mark (getrusage's counts the parent's at the fork)
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

src, store = Path(sys.argv[1]), Path(sys.argv[2])
options = JobOptions(progress=False)
codec, preset, options = job_codec(store, None, None, None, None, options)
before = peak_rss_mb()
start = time.perf_counter()
plan = plan_job(src, store, codec, preset, options)
seconds = time.perf_counter() - start
peak = peak_rss_mb()
tracemalloc.start()
plan_job(src, store, codec, preset, options)
allocated = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps({"items": len(plan.items), "seconds": seconds, "peak_rss_mb": peak,
                  "rss_before_mb": before, "allocated_mb": allocated}))
"""


def planning(work: Path, counts: tuple[int, ...]) -> dict[str, Any]:
    """Shards of small generated PNGs (1,000 members a shard), each count planned in a fresh process."""
    rng = np.random.default_rng(0)
    tiles = []
    for _ in range(16):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, "PNG")
        tiles.append(out.getvalue())
    found: dict[str, Any] = {}
    for count in counts:
        root = work / f"plan-{count}"
        root.mkdir()
        for first in range(0, count, 1000):
            with tarfile.open(root / f"{first // 1000:05d}.tar", "w") as tar:
                for i in range(first, min(count, first + 1000)):
                    add_member(tar, f"{i:08d}.png", tiles[i % len(tiles)])
                    add_member(tar, f"{i:08d}.txt", f"sample {i}".encode())
        probe = subprocess.run([sys.executable, "-c", PLAN_PROBE, str(root), str(work / f"plan-{count}.zarr")],
                               capture_output=True, text=True, check=True)  # fmt: skip
        found[str(count)] = json.loads(probe.stdout.strip().splitlines()[-1])
    return found


def run(images: Path, limit: int | None, rounds: int, members: int) -> dict[str, Any]:
    samples = samples_of(images, limit)
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-sources-") as tmp:
        work = Path(tmp)
        result = jobs(work, samples, rounds)
        result["planning"] = planning(work, (1000, members))
    result["members"] = members
    return result


def report(result: dict[str, Any]) -> str:
    n = result["images"]
    folder_s = statistics.median(result["seconds"]["folder"])
    lines = [
        f"sources: {n} images as a folder with sidecars, webdataset shards ({PER_SHARD} a shard) and parquet",
        "",
        f"{'source':<14} {'streams identical':<18} {'captions':<9} {'metadata':<9} job time / the folder's (median)",
        f"{'folder':<14} {f'{n}/{n}':<18} {'-':<9} {'-':<9} 1.000 ({folder_s:.1f} s a job)",
    ]
    for name in SOURCES[1:]:
        same = result["identity"][name]
        counts = [f"{same[k]}/{n}" for k in ("streams_identical", "captions_identical", "metadata_identical")]
        lines.append(f"{name:<14} {counts[0]:<18} {counts[1]:<9} {counts[2]:<9} {result['ratio_to_folder'][name]:.3f}")
    plan = result["planning"]
    small, big = plan["1000"], plan[str(result["members"])]
    growth = big["peak_rss_mb"] / small["peak_rss_mb"]
    lines += [
        "",
        f"planning {result['members']:,} shard members: {big['seconds']:.2f} s, peak RSS {big['peak_rss_mb']:.0f} MB "
        f"({growth:.3f}x that of 1,000 members: {small['peak_rss_mb']:.0f} MB in {small['seconds']:.2f} s); "
        f"the plan's own allocations {big['allocated_mb']:.1f} MB (1,000: {small['allocated_mb']:.1f} MB)",
        f"unpacked files written outside the stores: {len(result['unpacked_files'])}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from vaeflow.cli.parsing import positive_int

    parser = argparse.ArgumentParser(prog="vaeflow bench sources", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data/photos"), help="folder of images")
    parser.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds of the three jobs (timing)")
    parser.add_argument("--members", type=positive_int, default=10_000, help="shard members planned")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.images, args.limit, args.rounds, args.members)
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
