"""Training-data loading: latents/s through a PyTorch DataLoader from a vaeflow store, against the same latents as
one fp16 safetensors file per image (the kohya / SimpleTuner caching convention) and as webdataset tar shards of
fp16 ``.npy`` (read with the ``webdataset`` package); and the bytes each keeps on disk.

    python benchmarks/loader.py DIR [--store STORE.zarr] [--buckets SIDE] [--pipeline PRESET] [--workers 2]
                                    [--batch-size 4] [--rounds 3]

DIR is a folder of images. They are compressed with the ``latent-store`` preset (or ``--pipeline``, e.g.
``latent-store-fast``) into ``--store`` first (slow: the
VAE encoder and the rate search run on every image), with ``--buckets SIDE`` resized and cropped to aspect-ratio
buckets as a trainer's latent cache is (so that batches share shapes and decode together); a finished store there
is reused, so reruns only measure.
The safetensors files and tar shards are written from the store's own decoded latents (cast to fp16) into a temp
folder, so every format holds the same values. Every loader gets the same batches: the bucket sampler's (images
of one shape per batch) for the map-style loaders, store order for the streaming ones. Each round measures every
loader once after a warm-up epoch (persistent workers, so worker start-up is left out); the table shows the median
round. vaeflow's map-style loader batches with ``vaeflow.torch.collate`` (one buffer per batch), and once more with
torch's ``default_collate`` (a shared-memory segment per tensor). All files are in the page cache: this measures
decoding and the loaders, not the disk. With ``--s3`` the
store and the safetensors files are also read from an S3 API (moto's server on loopback, through s3fs). Last, the
seconds from a new DataLoader (workers started by fork, then by spawn) to its first batch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import vaeflow
from benchmarks.store_reads import moto_bucket
from vaeflow.torch import BucketBatchSampler, LatentDataset, LatentStream, collate


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def open_or_build(
    src: Path, store: Path, buckets: int | None = None, pipeline: str = "latent-store"
) -> vaeflow.StoreReader:
    if not (store / "zarr.json").exists():
        print(f"compressing {src} with the {pipeline} preset into {store} (once; reused with --store) ...")
        start = time.perf_counter()
        options = vaeflow.JobOptions(buckets=buckets)
        report = vaeflow.compress_dataset(src, store, pipeline=pipeline, scheduler="sync", options=options)
        print(f"  {report.stored} images in {time.perf_counter() - start:.0f} s")
    reader = vaeflow.open_store(store)
    preset = (reader.meta.get("settings") or {}).get("pipeline")
    if preset != pipeline:
        print(f"note: {store} was written with the {preset!r} preset, not {pipeline}")
    return reader


class SafetensorsFiles(Dataset[dict[str, Any]]):
    """One ``NAME.safetensors`` per image holding ``latent`` (fp16), loaded as a trainer's latent cache does."""

    def __init__(self, files: list[Path], shapes: list[tuple[int, ...]]) -> None:
        self.files, self.shapes = files, shapes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from safetensors.torch import load_file

        return {"latent": load_file(self.files[index])["latent"], "name": self.files[index].stem}


class SafetensorsOnS3(Dataset[dict[str, Any]]):
    """``SafetensorsFiles`` read from an S3 API through fsspec (one GET per file), an s3fs per process."""

    def __init__(self, urls: list[str], options: dict[str, Any]) -> None:
        self.urls, self.options, self._pid = urls, options, -1
        self._fs: Any = None

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import os

        import s3fs
        from safetensors.torch import load

        if self._fs is None or self._pid != os.getpid():
            self._fs, self._pid = s3fs.S3FileSystem(skip_instance_cache=True, **self.options), os.getpid()
        return {"latent": load(self._fs.cat_file(self.urls[index]))["latent"], "name": str(index)}


def s3_copies(store: Path, files: list[Path]) -> tuple[Any, dict[str, Any], str, list[str]]:
    """A moto S3 server on loopback holding the store and the safetensors files: (server, storage options,
    the store's URL, the files' URLs)."""
    import s3fs

    server, options = moto_bucket("bench")
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(store), "bench/store.zarr", recursive=True)
    urls = []
    for f in files:
        fs.put(str(f), f"bench/safetensors/{f.name}")
        urls.append(f"s3://bench/safetensors/{f.name}")
    return server, options, "s3://bench/store.zarr", urls


def write_safetensors(latents: list[np.ndarray], folder: Path) -> list[Path]:
    from safetensors.numpy import save_file

    folder.mkdir()
    files = []
    for i, latent in enumerate(latents):
        files.append(folder / f"{i:06d}.safetensors")
        save_file({"latent": np.ascontiguousarray(latent.astype(np.float16))}, files[-1])
    return files


def write_tar_shards(latents: list[np.ndarray], folder: Path, shards: int) -> list[str]:
    import webdataset as wds

    folder.mkdir()
    paths = []
    for shard in range(shards):
        paths.append(str(folder / f"latents-{shard:04d}.tar"))
        with wds.TarWriter(paths[-1]) as writer:
            for i in range(shard * len(latents) // shards, (shard + 1) * len(latents) // shards):
                writer.write({"__key__": f"{i:06d}", "npy": latents[i].astype(np.float16)})
    return paths


def _wds_sample(sample: dict[str, Any]) -> dict[str, Any]:
    return {"latent": torch.from_numpy(sample["npy"]), "name": sample["__key__"]}


def tar_stream(paths: list[str]) -> Any:
    import webdataset as wds

    return wds.WebDataset(paths, shardshuffle=False, empty_check=False).decode().map(_wds_sample)


def count(batch: dict[str, Any]) -> int:
    latent = batch["latent"]
    return int(latent.shape[0]) if latent.ndim == 4 else 1


def latents_per_second(loader: Iterable[dict[str, Any]], expected: int, seconds: float) -> float:
    """Epochs after a warm-up one, until ``seconds`` have passed; every epoch must give ``expected`` latents."""
    for _ in range(2):  # the warm-up epoch starts the workers; one more settles them
        assert sum(count(b) for b in loader) == expected
    done, start = 0, time.perf_counter()
    while True:
        got = sum(count(b) for b in loader)
        if got != expected:
            raise RuntimeError(f"an epoch gave {got} latents, expected {expected}")
        done += got
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def first_batch_seconds(dataset: LatentDataset, batch_size: int, workers: int, context: str) -> float:
    """Seconds from a new DataLoader's iterator (its workers started fresh, by ``context``) to its first batch."""
    sampler = BucketBatchSampler(dataset, batch_size, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, multiprocessing_context=context,
                        collate_fn=collate)  # fmt: skip
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    seconds = time.perf_counter() - start
    del iterator
    return seconds


def in_process(reader: vaeflow.StoreReader, seconds: float) -> tuple[float, float]:
    """Latents/s of decoding alone and of fetching streams alone, in this process (no DataLoader)."""
    rates = []
    for step in (reader.read_latents, reader.read_streams):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or not done:
            done += len(step(reader.names))
        rates.append(done / (time.perf_counter() - start))
    return rates[0], rates[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vaeflow bench loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a folder of images")
    parser.add_argument("--store", type=Path, help="the vaeflow store to build or reuse (default: a temp folder)")
    parser.add_argument("--buckets", type=int, metavar="SIDE",
                        help="aspect-ratio buckets of about SIDE x SIDE for the store (default: none)")  # fmt: skip
    parser.add_argument("--pipeline", default="latent-store",
                        help="the preset the store is written with (latent-store; latent-store-fast)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (2)")
    parser.add_argument("--batch-size", type=int, default=4, help="latents per batch (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every loader once (3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per loader per round (3)")
    parser.add_argument("--s3", action="store_true",
                        help="also both on an S3 API (moto's server on loopback)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="vaeflow-loader-") as temp:
        tmp = Path(temp)
        reader = open_or_build(args.src, args.store or tmp / "store.zarr", args.buckets, args.pipeline)
        n = len(reader.names)
        if n == 0:
            raise SystemExit(f"no images were stored from {args.src}")
        latents = reader.read_latents(reader.names)
        dataset = LatentDataset(reader, dtype=torch.float16)
        files = write_safetensors(latents, tmp / "safetensors")
        shards = write_tar_shards(latents, tmp / "wds", max(args.workers, 1))

        def map_loader(ds: Dataset[dict[str, Any]], collate_fn: Any = None) -> DataLoader[dict[str, Any]]:
            sampler = BucketBatchSampler(dataset, args.batch_size, seed=0)
            return DataLoader(ds, batch_sampler=sampler, num_workers=args.workers, persistent_workers=args.workers > 0,
                              collate_fn=collate_fn)  # fmt: skip

        def stream_loader(ds: Any) -> DataLoader[dict[str, Any]]:
            return DataLoader(ds, batch_size=None, num_workers=args.workers, persistent_workers=args.workers > 0)

        loaders: dict[str, Callable[[], Any]] = {
            "vaeflow LatentDataset + BucketBatchSampler": lambda: map_loader(dataset, collate),
            "  same, torch's default_collate": lambda: map_loader(dataset),
            "vaeflow LatentStream (store order)": lambda: stream_loader(
                LatentStream(reader, dtype=torch.float16, batch_size=args.batch_size)
            ),
            "safetensors, one file per image": lambda: map_loader(SafetensorsFiles(files, dataset.shapes)),
            "webdataset tar shards of fp16 .npy": lambda: stream_loader(tar_stream(shards)),
        }
        server: Any = None
        if args.s3:
            server, options, store_url, urls = s3_copies(Path(str(reader.path)), files)
            remote = LatentDataset(store_url, dtype=torch.float16, storage_options=options)
            loaders["vaeflow LatentDataset, store on S3"] = lambda: map_loader(remote, collate)
            loaders["safetensors on S3, one file per image"] = lambda: map_loader(SafetensorsOnS3(urls, options))
        built = {name: make() for name, make in loaders.items()}
        rates: dict[str, list[float]] = {name: [] for name in built}
        for _ in range(args.rounds):
            for name, loader in built.items():
                rates[name].append(latents_per_second(loader, n, args.seconds))
        decode_rate, fetch_rate = in_process(reader, args.seconds)
        first = {c: first_batch_seconds(dataset, args.batch_size, max(args.workers, 1), c) for c in ("fork", "spawn")}

        raw = sum(latent.size * 2 for latent in latents)
        sizes = {
            "vaeflow LatentDataset + BucketBatchSampler": folder_bytes(Path(str(reader.path))),
            "safetensors, one file per image": sum(f.stat().st_size for f in files),
            "webdataset tar shards of fp16 .npy": sum(Path(p).stat().st_size for p in shards),
        }
        for name in ("vaeflow LatentStream (store order)", "  same, torch's default_collate"):
            sizes[name] = sizes["vaeflow LatentDataset + BucketBatchSampler"]
        if args.s3:
            sizes["vaeflow LatentDataset, store on S3"] = sizes["vaeflow LatentDataset + BucketBatchSampler"]
            sizes["safetensors on S3, one file per image"] = sizes["safetensors, one file per image"]
        median = {name: statistics.median(r) for name, r in rates.items()}
        base = median["safetensors, one file per image"]
        shapes = len(set(dataset.shapes))
        print(f"\n{n} latents of {shapes} shape(s) from {args.src}; fp16 values: {raw:,} bytes; "
              f"streams: {int(reader.summary()['bytes']):,} bytes")  # fmt: skip
        print(f"DataLoader: {args.workers} workers, batches of {args.batch_size}; median of {args.rounds} rounds")
        print(f"{'loader':45s} {'bytes':>12s} {'vs safet.':>9s} {'latents/s':>10s} {'vs safet.':>9s}")
        for name in built:
            print(f"{name:45s} {sizes[name]:12,d} {sizes[name] / sizes['safetensors, one file per image']:8.2f}x "
                  f"{median[name]:10.1f} {median[name] / base:8.3f}x")  # fmt: skip
        print(f"in this process, no DataLoader: decoding {decode_rate:.1f} latents/s, fetching streams "
              f"{fetch_rate:,.0f} streams/s")  # fmt: skip
        if args.s3:
            s3_ratio = median["vaeflow LatentDataset, store on S3"] / median["safetensors on S3, one file per image"]
            print(f"on S3 (moto on loopback): LatentDataset / safetensors on S3 {s3_ratio:.3f}x")
            server.stop()
        print("first batch from fresh workers: " + ", ".join(f"{c} {s:.2f} s" for c, s in first.items()))
        print("rounds (latents/s):", {name: [round(r, 1) for r in rs] for name, rs in rates.items()})


if __name__ == "__main__":
    main()
