"""ls, info, verify and decompress on a store at an s3:// URL (a real S3 API on loopback: moto's server, through
s3fs), with --storage-option, giving what they give for the same store on disk; errors that name the URL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vaeflow
from vaeflow.foundations.imageio import read_rgb

from ..helpers import S3Bucket, run_cli, tree_bytes


@pytest.fixture(scope="module")
def url(s3: S3Bucket, mixed_store: Path) -> str:
    return s3.put(mixed_store, "commands/store.zarr")


def test_ls_info_and_verify_read_the_store_at_its_url(s3: S3Bucket, url: str, mixed_store: Path) -> None:
    for command in (["ls", "--json"], ["ls", "--failed", "--json"]):
        remote = run_cli(*command, url, *s3.cli_options)
        assert remote.returncode == 0, remote.stderr
        assert json.loads(remote.stdout) == json.loads(run_cli(*command, str(mixed_store)).stdout)
    info = run_cli("info", url, "--json", *s3.cli_options)
    assert info.returncode == 0, info.stderr
    local = json.loads(run_cli("info", str(mixed_store), "--json").stdout)
    assert json.loads(info.stdout)["images"] == local["images"] == len(vaeflow.open_store(mixed_store).names)
    verify = run_cli("verify", url, "--json", *s3.cli_options)
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] and report["checked"] == local["images"] and report["store"] == url


def test_decompress_writes_the_same_pngs_from_the_url(
    s3: S3Bucket, url: str, mixed_store: Path, tmp_path: Path
) -> None:
    out = run_cli("decompress", url, str(tmp_path / "remote"), "-q", *s3.cli_options)
    assert out.returncode == 0, out.stderr
    assert run_cli("decompress", str(mixed_store), str(tmp_path / "local"), "-q").returncode == 0
    written = tree_bytes(tmp_path / "remote")
    assert len(written) == len(vaeflow.open_store(mixed_store).names)
    assert written == tree_bytes(tmp_path / "local")


def test_a_stream_file_at_a_url(s3: S3Bucket, mixed_store: Path, tmp_path: Path) -> None:
    import s3fs

    reader = vaeflow.open_store(mixed_store)
    name = reader.names[0]
    stream = reader.read_streams([name])[0]
    s3fs.S3FileSystem(**s3.options).pipe(f"{s3.name}/commands/one.vfl", stream)
    stream_url = f"s3://{s3.name}/commands/one.vfl"
    info = run_cli("info", stream_url, "--json", *s3.cli_options)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout) == json.loads(json.dumps(vaeflow.info(stream), default=str))
    out = run_cli("decompress", stream_url, str(tmp_path), "-q", *s3.cli_options)
    assert out.returncode == 0, out.stderr
    assert read_rgb(tmp_path / "one.png").tobytes() == reader.read_image(name).tobytes()


def test_errors_name_the_url(s3: S3Bucket) -> None:
    missing = f"s3://{s3.name}/commands/none.zarr"
    for command in (["ls"], ["info"], ["verify"]):
        out = run_cli(*command, missing, *s3.cli_options)
        assert out.returncode == 1
        assert f"no vaeflow store at {missing}" in out.stderr and "s3:/" + s3.name not in out.stderr
    out = run_cli("info", f"s3://{s3.name}/commands/none.vfl", *s3.cli_options)
    assert out.returncode == 1 and f"nothing at s3://{s3.name}/commands/none.vfl" in out.stderr
    out = run_cli("ls", "local-folder.zarr", "--storage-option", "anon=true")
    assert (
        out.returncode == 1 and "storage_options apply to URLs, not to the local path local-folder.zarr" in out.stderr
    )
