"""Stores read through fsspec URLs and zarr store objects: S3 through a real S3 API on loopback (moto's server with
s3fs), memory://, file://, http://; byte-exact range reads; clear errors for bad addresses."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.core.sync import sync

import vaeflow
from vaeflow.dataset.spans import SpanReader
from vaeflow.errors import VaeflowError

from .loading_stores import mixed_store

BUCKET = "vaeflow-loading"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_store(tmp_path_factory.mktemp("remote"))


@pytest.fixture(scope="module")
def latents(store: Path) -> dict[str, np.ndarray]:
    reader = vaeflow.open_store(store)
    return {name: reader.read_latent(name) for name in reader.names}


@pytest.fixture(scope="module")
def s3(store: Path) -> Iterator[dict[str, Any]]:
    """storage_options for a moto S3 server on loopback whose bucket holds the store at store.zarr."""
    server_module = pytest.importorskip("moto.server", reason="S3 tests need moto[server] (dev extra)")
    s3fs = pytest.importorskip("s3fs", reason="S3 tests need s3fs (remote extra)")
    boto3 = pytest.importorskip("boto3")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **credentials).create_bucket(Bucket=BUCKET)
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "us-east-1"}}  # fmt: skip
        s3fs.S3FileSystem(**options).put(str(store), f"{BUCKET}/store.zarr", recursive=True)
        yield options
    finally:
        server.stop()


def same_latents(reader: vaeflow.StoreReader, latents: dict[str, np.ndarray]) -> None:
    assert reader.names == list(latents)
    for name, latent in zip(reader.names, reader.read_latents(reader.names), strict=True):
        assert np.array_equal(latent, latents[name])


def test_s3_returns_the_same_latents_as_the_local_store(s3: dict[str, Any], latents: dict[str, np.ndarray]) -> None:
    reader = vaeflow.open_store(f"s3://{BUCKET}/store.zarr", storage_options=s3)
    assert reader.path == f"s3://{BUCKET}/store.zarr"
    same_latents(reader, latents)
    assert [reader.read_latent(n).tobytes() for n in reader.names[::-1]] == [
        latents[n].tobytes() for n in reader.names[::-1]
    ]
    assert reader.summary()["images"] == len(latents)


def test_a_range_read_fetches_only_the_stream(s3: dict[str, Any]) -> None:
    """Bytes over the wire, from the Content-Length of every GetObject response the S3 server sent."""
    import s3fs
    from zarr.storage import FsspecStore

    fs = s3fs.S3FileSystem(asynchronous=True, **s3)
    reader = vaeflow.open_store(FsspecStore(fs, path=f"{BUCKET}/store.zarr", read_only=True))
    fetched: list[int] = []
    fs.s3.meta.events.register("after-call.s3.GetObject", lambda parsed, **_: fetched.append(parsed["ContentLength"]))

    def size(name: str) -> int:
        start, end = reader.stream_range(name)
        return end - start

    first = reader.names[0]
    assert len(reader.read_stream(first)) == size(first)
    index_bytes = 16 * (4 << 20) // (16 << 10) + 4  # the shard's index of 256 inner chunks: read once, then kept
    assert fetched == [index_bytes, size(first)]
    for name in (reader.names[5], reader.names[-1], first):
        fetched.clear()
        assert len(reader.read_stream(name)) == size(name)
        assert fetched == [size(name)]  # one GET of exactly the stream's bytes
    fetched.clear()
    reader.read_streams(reader.names[2:6])  # neighbours: one GET of the span they cover
    low, high = reader.stream_range(reader.names[2])[0], reader.stream_range(reader.names[5])[1]
    assert fetched == [high - low]


def test_dataloader_workers_read_s3(s3: dict[str, Any], latents: dict[str, np.ndarray]) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch loading needs the train extra (torch)")
    from torch.utils.data import DataLoader

    from vaeflow.torch import BucketBatchSampler, LatentDataset, LatentStream

    dataset = LatentDataset(f"s3://{BUCKET}/store.zarr", dtype=torch.float32, storage_options=s3)
    seen = []
    for batch in DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset, 3), num_workers=2):
        for name, latent in zip(batch["name"], batch["latent"], strict=True):
            assert np.array_equal(latent.numpy(), latents[name])
            seen.append(name)
    stream = LatentStream(f"s3://{BUCKET}/store.zarr", batch_size=None, dtype=torch.float32, storage_options=s3)
    streamed = [item["name"] for item in DataLoader(stream, batch_size=None, num_workers=2)]
    assert sorted(seen) == sorted(streamed) == sorted(latents)


def test_memory_and_file_urls(store: Path, latents: dict[str, np.ndarray]) -> None:
    import fsspec

    fsspec.filesystem("memory").put(str(store), "/loading/store.zarr", recursive=True)
    same_latents(vaeflow.open_store("memory://loading/store.zarr"), latents)
    local = vaeflow.open_store(f"file://{store}")
    assert local.path == store
    same_latents(local, latents)


def test_zarr_store_objects(store: Path, latents: dict[str, np.ndarray]) -> None:
    from zarr.storage import LocalStore, MemoryStore

    same_latents(vaeflow.open_store(LocalStore(store, read_only=True)), latents)
    memory = MemoryStore()
    for path in store.rglob("*"):
        if path.is_file():
            sync(memory.set(path.relative_to(store).as_posix(), cpu.Buffer.from_bytes(path.read_bytes())))
    same_latents(vaeflow.open_store(memory), latents)
    with pytest.raises(VaeflowError, match="storage_options apply to URLs"):
        vaeflow.open_store(memory, storage_options={"anon": True})


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with Range requests (``bytes=a-b``, ``a-``, ``-n``), as object stores and CDNs serve them."""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        found = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if found:
            a, b = found.groups()
            start, end = (len(data) - int(b), len(data)) if not a else (int(a), int(b) + 1 if b else len(data))
            data = data[max(start, 0) : end]
        self.send_response(206 if found else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_http_is_read_only_and_works(store: Path, latents: dict[str, np.ndarray]) -> None:
    pytest.importorskip("aiohttp", reason="http:// needs aiohttp (remote extra)")

    def handler(*args: Any) -> RangeHandler:
        return RangeHandler(*args, directory=str(store.parent))

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        same_latents(vaeflow.open_store(f"{url}/store.zarr"), latents)
        with pytest.raises(VaeflowError, match=f"no vaeflow store at {url}/absent.zarr"):
            vaeflow.open_store(f"{url}/absent.zarr")
    finally:
        server.shutdown()
        thread.join()


def test_missing_buckets_and_paths_name_the_url(s3: dict[str, Any]) -> None:
    for url in ("s3://no-such-bucket/store.zarr", f"s3://{BUCKET}/absent.zarr"):
        with pytest.raises(VaeflowError, match=rf"no vaeflow store at {re.escape(url)}: .*check the bucket"):
            vaeflow.open_store(url, storage_options=s3)


def test_unreachable_endpoints_say_what_to_check(s3: dict[str, Any]) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    options = {**s3, "endpoint_url": f"http://127.0.0.1:{closed}",
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}  # fmt: skip
    with pytest.raises(
        VaeflowError, match=rf"cannot reach s3://{BUCKET}/store.zarr: .*check the address, the endpoint_url"
    ):
        vaeflow.open_store(f"s3://{BUCKET}/store.zarr", storage_options=options)


def test_bad_addresses_give_clear_errors(store: Path) -> None:
    with pytest.raises(VaeflowError, match=r"cannot open nope://bucket/x.zarr: .*give a local path or an fsspec URL"):
        vaeflow.open_store("nope://bucket/x.zarr")
    with pytest.raises(VaeflowError, match="storage_options apply to URLs, not to the local path"):
        vaeflow.open_store(store, storage_options={"anon": True})
    with pytest.raises(VaeflowError, match="is not a finished vaeflow store"):
        vaeflow.open_store(store.parent / "src")
    with pytest.raises(VaeflowError, match=r"no vaeflow store at memory://nothing/here\.zarr"):
        vaeflow.open_store("memory://nothing/here.zarr")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(VaeflowError, match=r"reading gs://bucket/x.zarr needs gcsfs: pip install gcsfs"):
            vaeflow.open_store("gs://bucket/x.zarr")


LAYOUTS: dict[str, dict[str, Any]] = {
    "shards": {"shards": (4096,), "chunks": (512,), "compressors": None},
    "plain": {"chunks": (1000,), "compressors": None},
    "zstd chunks": {"chunks": (1000,), "compressors": zarr.codecs.ZstdCodec(level=1)},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_span_reads_match_zarr_in_every_layout(layout: str) -> None:
    """Ranges across chunk and shard edges, empty ones, and the unwritten tail (the fill value)."""
    rng = np.random.default_rng(5)
    data = zarr.create_array(
        zarr.storage.MemoryStore(), shape=(10_000,), dtype="uint8", fill_value=0, **LAYOUTS[layout]
    )
    values = rng.integers(0, 256, 10_000, dtype=np.uint8)
    values[9000:] = 0
    data[:9000] = values[:9000]  # the rest stays unwritten
    spans = SpanReader(data)
    assert spans.layout == layout.split()[-1]
    ranges = [(0, 0), (0, 10_000), (4095, 4097), (511, 513), (999, 1001), (8990, 10_000), (9500, 9600), (3, 3)]
    ranges += [tuple(sorted(rng.integers(0, 10_001, 2))) for _ in range(40)]  # type: ignore[misc]
    assert spans.read(ranges) == [values[a:b].tobytes() for a, b in ranges]
    with pytest.raises(ValueError, match="outside the data"):
        spans.read([(9_999, 10_001)])
