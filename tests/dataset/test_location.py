"""Stores read through fsspec URLs and zarr store objects: S3 through a real S3 API on loopback (moto's server with
s3fs), memory://, file://, http://; clear errors for bad addresses."""

from __future__ import annotations

import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.core.buffer import cpu
from zarr.core.sync import sync

import vaeflow
from vaeflow.foundations.errors import VaeflowError

from ..helpers import S3Bucket


@pytest.fixture(scope="module")
def store(mixed_store: Path) -> Path:
    return mixed_store


@pytest.fixture(scope="module")
def latents(mixed_latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return mixed_latents


@pytest.fixture(scope="module")
def s3_url(s3: S3Bucket, store: Path) -> str:
    return s3.put(store, "location/store.zarr")


def same_latents(reader: vaeflow.StoreReader, latents: dict[str, np.ndarray]) -> None:
    assert reader.names == list(latents)
    for name, latent in zip(reader.names, reader.read_latents(reader.names), strict=True):
        assert np.array_equal(latent, latents[name])


def test_s3_returns_the_same_latents_as_the_local_store(
    s3: S3Bucket, s3_url: str, latents: dict[str, np.ndarray]
) -> None:
    reader = vaeflow.open_store(s3_url, storage_options=s3.options)
    assert reader.path == s3_url
    same_latents(reader, latents)
    assert [reader.read_latent(n).tobytes() for n in reader.names[::-1]] == [
        latents[n].tobytes() for n in reader.names[::-1]
    ]
    assert reader.summary()["images"] == len(latents)


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


def test_missing_buckets_and_paths_name_the_url(s3: S3Bucket) -> None:
    for url in ("s3://no-such-bucket/store.zarr", f"s3://{s3.name}/absent.zarr"):
        with pytest.raises(VaeflowError, match=rf"no vaeflow store at {re.escape(url)}: .*check the bucket"):
            vaeflow.open_store(url, storage_options=s3.options)


def test_unreachable_endpoints_say_what_to_check(s3: S3Bucket, s3_url: str) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    options = {**s3.options, "endpoint_url": f"http://127.0.0.1:{closed}",
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}  # fmt: skip
    with pytest.raises(VaeflowError, match=rf"cannot reach {re.escape(s3_url)}: .*check the address, the endpoint_url"):
        vaeflow.open_store(s3_url, storage_options=options)


def test_bad_addresses_give_clear_errors(store: Path) -> None:
    with pytest.raises(VaeflowError, match=r"cannot open nope://bucket/x.zarr: .*give a local path or an fsspec URL"):
        vaeflow.open_store("nope://bucket/x.zarr")
    with pytest.raises(VaeflowError, match="storage_options apply to URLs, not to the local path"):
        vaeflow.open_store(store, storage_options={"anon": True})
    with pytest.raises(VaeflowError, match=r"src is not a vaeflow store \(no zarr.json in it\)"):
        vaeflow.open_store(store.parent / "src")
    with pytest.raises(VaeflowError, match=r"no vaeflow store at memory://nothing/here\.zarr"):
        vaeflow.open_store("memory://nothing/here.zarr")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(VaeflowError, match=r"reading gs://bucket/x.zarr needs gcsfs: pip install gcsfs"):
            vaeflow.open_store("gs://bucket/x.zarr")
