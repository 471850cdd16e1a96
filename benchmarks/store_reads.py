"""Stream reads from a format 2 store: vaeflow's exact range reads against plain zarr slicing of ``streams/data``,
on local disk and over S3 (moto's server on loopback, through s3fs): requests and bytes fetched per read, and
streams/s; and ``vaeflow verify`` on the same streams stored as format 1 (zstd chunks) and format 2 (shards).

    python benchmarks/store_reads.py SEED.zarr [--mb 128] [--rounds 2]

SEED.zarr is a finished store of real streams (any preset); its streams are repeated into a store of about
``--mb`` MB, written once in each format. Needs the dev extra (moto, s3fs, boto3).
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import vaeflow
from vaeflow.dataset import store as store_io
from vaeflow.dataset.verify import verify_store

BATCH = 16


def build(seed: Path, target_mb: int, out: Path) -> Path:
    """A format 2 store of about ``target_mb`` MB: the seed's streams, repeated."""
    reader = vaeflow.open_store(seed)
    streams = reader.read_streams(reader.names)
    shapes = [size for _, size, _, _ in reader.entries()]
    per_round = sum(len(s) for s in streams)
    rounds = max(1, (target_mb << 20) // per_round)
    rows = (
        store_io.Row(f"{r:05d}/{name}", shapes[i], True, "", streams[i])
        for r in range(rounds)
        for i, name in enumerate(reader.names)
    )
    store_io.write_index(out, rows, rounds * per_round, [])
    meta = {**reader.meta, "version": 2, "rows": rounds * len(streams), "stored_bytes": rounds * per_round}
    store_io.write_meta(out, meta)
    store_io.consolidate(out)
    return out


def as_format_1(store: Path, out: Path) -> Path:
    """The same store with streams/data in format 1's zstd chunks."""
    shutil.copytree(store, out)
    data = np.asarray(zarr.open_array(store / "streams" / "data", mode="r")[...])
    shutil.rmtree(out / "streams" / "data")
    root = zarr.open_group(out, mode="a", use_consolidated=False)
    array = root.create_array("streams/data", shape=data.shape, chunks=(store_io.DATA_CHUNK,), dtype="uint8",
                              compressors=zarr.codecs.ZstdCodec(level=1), fill_value=0)  # fmt: skip
    array[...] = data
    store_io.write_meta(out, {**vaeflow.open_store(store).meta, "version": 1})
    store_io.consolidate(out)
    return out


def zarr_slice(reader: vaeflow.StoreReader, start: int, end: int) -> bytes:
    return np.asarray(reader.data[start:end]).tobytes()


def read_singles(reader: vaeflow.StoreReader, names: list[str], method: str) -> int:
    """Reads each name on its own; returns the stream bytes asked for."""
    asked = 0
    for name in names:
        start, end = reader.stream_range(name)
        asked += end - start
        reader.read_stream(name) if method == "vaeflow" else zarr_slice(reader, start, end)
    return asked


def read_batches(reader: vaeflow.StoreReader, batches: list[list[str]], method: str) -> int:
    asked = 0
    for batch in batches:
        start, end = reader.stream_range(batch[0])[0], reader.stream_range(batch[-1])[1]
        asked += end - start
        reader.read_streams(batch) if method == "vaeflow" else zarr_slice(reader, start, end)
    return asked


def rate(step: Callable[[], Any], count: int) -> float:
    start = time.perf_counter()
    step()
    return count / (time.perf_counter() - start)


def moto_bucket(bucket: str) -> tuple[Any, dict[str, Any]]:
    """A moto S3 server on loopback holding an empty ``bucket``, and the storage options that reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}}  # fmt: skip
    boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)  # fmt: skip
    return server, options


def s3_server(store: Path) -> tuple[Any, Any]:
    """A moto S3 server holding ``store`` at ``bench/store.zarr``, and an async s3fs file system for it."""
    import s3fs

    server, options = moto_bucket("bench")
    s3fs.S3FileSystem(**options).put(str(store), "bench/store.zarr", recursive=True)
    return server, s3fs.S3FileSystem(asynchronous=True, **options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seed", type=Path, help="a finished store of real streams")
    parser.add_argument("--mb", type=int, default=128, help="size of the store measured (128 MB)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    from zarr.storage import FsspecStore

    with tempfile.TemporaryDirectory(prefix="vaeflow-reads-") as temp:
        v2 = build(args.seed, args.mb, Path(temp) / "v2.zarr")
        v1 = as_format_1(v2, Path(temp) / "v1.zarr")
        reader = vaeflow.open_store(v2)
        names = reader.names
        sizes = [e - s for s, e in map(reader.stream_range, names)]
        print(f"{len(names):,} streams, {sum(sizes):,} bytes, median {np.median(sizes):,.0f} bytes per stream")
        for _ in range(args.rounds):
            for label, path in (("format 1 (zstd chunks)", v1), ("format 2 (shards)", v2)):
                report = verify_store(path)
                print(f"verify, {label}: {report.bytes_read / 2**30 / report.seconds:.3f} GB/s, {report.checked:,} "
                      f"streams, {len(report.damaged)} damaged")  # fmt: skip

        rng = random.Random(0)
        singles = rng.sample(names, min(300, len(names)))
        batches = [names[s : s + BATCH] for s in rng.sample(range(len(names) - BATCH), min(40, len(names) // BATCH))]
        for _ in range(args.rounds):
            for method in ("vaeflow", "zarr"):
                local = vaeflow.open_store(v2)
                one = rate(lambda: read_singles(local, singles, method), len(singles))  # noqa: B023
                many = rate(lambda: read_batches(local, batches, method), BATCH * len(batches))  # noqa: B023
                print(f"local, {method:7s}: {one:8,.0f} streams/s one at a time, {many:8,.0f} in batches of {BATCH}")

        server, fs = s3_server(v2)
        try:

            def remote() -> vaeflow.StoreReader:
                return vaeflow.open_store(FsspecStore(fs, path="bench/store.zarr", read_only=True))

            fetched: list[int] = []
            remote()  # starts the file system's session, which the hook needs
            count = lambda parsed, **_: fetched.append(parsed["ContentLength"])  # noqa: E731
            fs.s3.meta.events.register("after-call.s3.GetObject", count)
            for method in ("vaeflow", "zarr"):
                r = remote()
                fetched.clear()
                asked = read_singles(r, singles[:100], method)
                single = (sum(fetched) / asked, len(fetched) / 100)
                fetched.clear()
                asked = read_batches(r, batches[:20], method)
                batch = (sum(fetched) / asked, len(fetched) / 20)
                print(f"S3, {method:7s}: one stream: {single[1]:.2f} GETs, {single[0]:.2f}x its bytes; {BATCH} "
                      f"neighbours: {batch[1]:.2f} GETs, {batch[0]:.2f}x their bytes")  # fmt: skip
            for _ in range(args.rounds):
                for method in ("vaeflow", "zarr"):
                    r = remote()
                    one = rate(lambda: read_singles(r, singles[:150], method), 150)  # noqa: B023
                    many = rate(lambda: read_batches(r, batches[:20], method), BATCH * 20)  # noqa: B023
                    print(f"S3, {method:7s}: {one:8,.1f} streams/s one at a time, {many:8,.1f} in batches of {BATCH}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
