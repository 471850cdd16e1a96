"""``vaeflow compress SRC s3://...``: staged locally, uploaded when complete, every object verified,
an interrupted upload resumed; against a real S3 API on loopback (moto's server, through s3fs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import vaeflow
from vaeflow import JobOptions, open_store
from vaeflow.dataset.verify import verify_store
from vaeflow.foundations.errors import VaeflowError

from ..helpers import S3Bucket, sync_job


def _source(tmp_path: Path, photos: list[np.ndarray], count: int = 4) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for i in range(count):
        Image.fromarray(photos[i % 4][:48, :64]).save(src / f"{i}.png")
    (src / "0.txt").write_text("a caption")
    return src


def test_a_store_on_s3_reads_back_as_the_local_one(tmp_path: Path, photos: list[np.ndarray], s3: S3Bucket) -> None:
    src = _source(tmp_path, photos)
    local = tmp_path / "local.zarr"
    sync_job(src, local, options=JobOptions(progress=False))
    url = f"s3://{s3.name}/up/one.zarr"
    staging = tmp_path / "staging.zarr"
    report = vaeflow.compress_dataset(src, url, scheduler="sync", storage_options=s3.options, staging=staging,
                                      options=JobOptions(progress=False))  # fmt: skip
    assert report.upload is not None and report.upload.uploaded > 0 and report.stored == 4
    assert not staging.exists()  # removed once the upload was verified
    remote, here = open_store(url, storage_options=s3.options), open_store(local)
    assert remote.names == here.names and remote.caption("0.png") == "a caption"
    for name in here.names:
        assert remote.read_stream(name) == here.read_stream(name)
        np.testing.assert_array_equal(remote.read_latent(name), here.read_latent(name))
    assert verify_store(url, s3.options).ok


def test_an_interrupted_upload_resumes_with_the_same_command(
    tmp_path: Path, photos: list[np.ndarray], s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    src = _source(tmp_path, photos)
    url = f"s3://{s3.name}/up/resumed.zarr"
    staging = tmp_path / "staging.zarr"
    original, sent = s3fs.S3FileSystem._put_file, []

    async def flaky(self: object, lpath: str, rpath: str, *args: object, **kwargs: object) -> object:
        if len(sent) == 5:
            raise ConnectionError("the network went away")
        sent.append(rpath)
        return await original(self, lpath, rpath, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", flaky)
    s3fs.S3FileSystem.clear_instance_cache()  # instances bind their methods when made
    kwargs = {"scheduler": "sync", "storage_options": s3.options, "staging": staging,
              "options": JobOptions(progress=False)}  # fmt: skip
    with pytest.raises(VaeflowError, match="run the same command again to resume the upload"):
        vaeflow.compress_dataset(src, url, **kwargs)  # type: ignore[arg-type]
    assert (staging / "zarr.json").exists()
    with pytest.raises(VaeflowError):  # not readable before its root metadata arrives
        open_store(url, storage_options=s3.options)
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    report = vaeflow.compress_dataset(src, url, **kwargs)  # type: ignore[arg-type]
    assert report.upload is not None and report.upload.kept == 5 and report.upload.uploaded > 0
    assert open_store(url, storage_options=s3.options).names == ["0.png", "1.png", "2.png", "3.png"]


def test_the_cli_writes_to_s3_and_add_continues_from_the_remote_store(
    tmp_path: Path, photos: list[np.ndarray], s3: S3Bucket
) -> None:
    src = _source(tmp_path, photos, 2)
    url = f"s3://{s3.name}/cli/store.zarr"
    options = s3.cli_options
    base = [
        sys.executable,
        "-m",
        "vaeflow",
        "compress",
        str(src),
        url,
        "--scheduler",
        "sync",
        "--no-progress",
        *options,
    ]
    out = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"uploaded to {url}" in out.stdout
    Image.fromarray(photos[2][:48, :64]).save(src / "later.png")
    out = subprocess.run([*base, "--add"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert open_store(url, storage_options=s3.options).names == ["0.png", "1.png", "later.png"]


def test_a_missing_bucket_is_found_before_any_image_is_coded(
    tmp_path: Path, photos: list[np.ndarray], s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By --dry-run, and by the job before it codes anything (a probe object, written and removed)."""
    monkeypatch.setenv("VAEFLOW_HOME", str(tmp_path / "home"))
    src = _source(tmp_path, photos, 2)
    options = s3.cli_options
    for extra in (["--dry-run"], []):
        out = subprocess.run(
            [sys.executable, "-m", "vaeflow", "compress", str(src), "s3://no-such-bucket/p.zarr", "--scheduler",
             "sync", "--no-progress", *options, *extra],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 1, out.stdout + out.stderr
        assert "cannot write to s3://no-such-bucket/p.zarr" in out.stderr and "bucket exists" in out.stderr
        assert not (tmp_path / "home" / "staging").exists()  # nothing coded, nothing staged
    import s3fs

    vaeflow.compress_dataset(src, f"s3://{s3.name}/ok.zarr", scheduler="sync", storage_options=s3.options,
                             options=JobOptions(progress=False))  # fmt: skip
    assert not [p for p in s3fs.S3FileSystem(**s3.options).find(f"{s3.name}/ok.zarr") if "probe" in p]


def test_an_add_on_s3_is_published_in_one_step(
    tmp_path: Path, photos: list[np.ndarray], s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader opened after every object an --add uploads sees the old store or the new one, whole; an upload
    killed half-way leaves the old store readable, and the same command then finishes it; each upload keeps the
    generation before it for its readers and removes the one before that."""
    import s3fs

    from vaeflow.dataset import upload as upload_module

    monkeypatch.setenv("VAEFLOW_HOME", str(tmp_path / "home"))
    src = _source(tmp_path, photos, 3)
    url = f"s3://{s3.name}/atomic.zarr"
    options = JobOptions(progress=False)
    vaeflow.compress_dataset(src, url, scheduler="sync", storage_options=s3.options, options=options)
    generations = [["0.png", "1.png", "2.png"]]
    put = upload_module._put
    seen: list[list[str]] = []

    def put_then_read(fs: Any, local: Any, remote: str) -> None:
        put(fs, local, remote)
        reader = open_store(url, storage_options=s3.options)
        assert len(reader.read_latents(reader.names)) == len(reader.names)  # whole: every row reads
        assert reader.caption("0.png") == "a caption"
        seen.append(reader.names)

    monkeypatch.setattr(upload_module, "_put", put_then_read)
    add = JobOptions(progress=False, add=True)
    for i in (3, 4):  # a reader after every object of the first add; the second shows what is kept
        Image.fromarray(photos[i % 4][:48, :64]).save(src / f"{i}.png")
        vaeflow.compress_dataset(src, url, scheduler="sync", storage_options=s3.options, options=add)
        generations.append([*generations[-1], f"{i}.png"])
        monkeypatch.setattr(upload_module, "_put", put)
    assert len(seen) > 10 and seen[0] == generations[0] and seen[-1] == generations[1]
    assert all(names in generations[:2] for names in seen), seen
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options)
    keys = {k.split("/", 2)[2].split("/")[0] for k in fs.find(f"{s3.name}/atomic.zarr")}
    assert {"index-g2", "index-g1"} <= keys and "index" not in keys  # generation 0's removed by the second add

    calls = []

    def killed(fs: Any, local: Any, remote: str) -> None:
        calls.append(remote)
        if len(calls) > 3:
            raise ConnectionError("killed")
        put(fs, local, remote)

    monkeypatch.setattr(upload_module, "_put", killed)
    Image.fromarray(photos[1][:48, :64]).save(src / "5.png")
    with pytest.raises(VaeflowError, match="uploading to"):
        vaeflow.compress_dataset(src, url, scheduler="sync", storage_options=s3.options, options=add)
    assert open_store(url, storage_options=s3.options).names == generations[-1]  # the old store, readable
    monkeypatch.setattr(upload_module, "_put", put)
    vaeflow.compress_dataset(src, url, scheduler="sync", storage_options=s3.options, options=add)
    reader = open_store(url, storage_options=s3.options)
    assert reader.names == [*generations[-1], "5.png"] and verify_store(url, s3.options).ok
