"""Jobs over webdataset shards and parquet files, made here from real photo crops (a tar writer and pyarrow):
the same streams, captions and metadata as from a folder of the same files with sidecars; damaged members,
truncated shards, duplicate keys, undecodable rows and a missing image column as rows with their reasons;
resume after a kill; a shard changed since planning refused; nothing unpacked to disk."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import vaeflow
from benchmarks.sources import add_member, write_folder, write_shards
from vaeflow.dataset.job import execute, job_codec, plan_job
from vaeflow.dataset.members import TarMember, read_member
from vaeflow.dataset.options import JobOptions, SourceOptions
from vaeflow.dataset.serial import SerialExecutor
from vaeflow.foundations.errors import ImageReadError, VaeflowError

from ..helpers import S3Bucket, kill_after_batches, sync_job, tree_bytes

SHAPES = [(64, 64), (64, 96), (64, 64), (96, 64), (64, 96), (64, 64)]


def encoded(image: np.ndarray, kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, kind, **({"quality": 90} if kind == "JPEG" else {}))
    return out.getvalue()


@pytest.fixture(scope="module")
def samples(photos: list[np.ndarray]) -> list[tuple[str, bytes, str, dict[str, object]]]:
    """(key, encoded image, caption, metadata) of six crops, PNG and JPEG."""
    out = []
    for i, (h, w) in enumerate(SHAPES):
        image = photos[i % len(photos)][:h, :w]
        out.append((f"{i:06d}", encoded(image, "JPEG" if i % 2 else "PNG"), f"a photo, number {i}",
                    {"url": f"https://example.org/{i}", "width": w, "similarity": 0.25 + i / 8}))  # fmt: skip
    return out


def shards_of(root: Path, samples: list[Any], per_shard: int = 4) -> Path:
    """The samples as shards of ``per_shard`` (img2dataset's layout, as the sources benchmark writes them)."""
    return write_shards(root, samples, per_shard)


def streams_by_key(store: Path) -> dict[str, tuple[bytes, str, object]]:
    """Each stored image's stream, caption and metadata, by its key (the name's last part, without extension)."""
    reader = vaeflow.open_store(store)
    streams = reader.read_streams(reader.names)
    return {
        name.rsplit("/", 1)[-1].split(".")[0]: (stream, reader.caption(name), reader.metadata(name))
        for name, stream in zip(reader.names, streams, strict=True)
    }


@pytest.fixture(scope="module")
def from_folder(tmp_path_factory: pytest.TempPathFactory, samples: list) -> dict[str, tuple[bytes, str, object]]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("folder")
    sync_job(write_folder(root / "src", samples), root / "s.zarr", options=JobOptions(progress=False))
    return streams_by_key(root / "s.zarr")


def test_shards_give_the_folders_streams_captions_and_metadata(
    tmp_path: Path,
    samples: list,
    from_folder: dict,  # type: ignore[type-arg]
) -> None:
    src = shards_of(tmp_path / "shards", samples)
    before = tree_bytes(tmp_path)
    report = sync_job(src, tmp_path / "s.zarr", options=JobOptions(progress=False))
    assert report.failed == 0 and report.skipped == 0
    reader = vaeflow.open_store(tmp_path / "s.zarr")
    assert reader.names == [f"{s // 4:05d}/{key}" for s, (key, *_) in enumerate(samples)]
    assert streams_by_key(tmp_path / "s.zarr") == from_folder
    after = tree_bytes(tmp_path)
    written = {p for p in after if not p.startswith("s.zarr/")} - set(before)
    assert written == set() and all(after[p] == before[p] for p in before)  # nothing unpacked, the shards untouched


def test_damaged_members_truncated_shards_and_duplicate_keys_are_rows(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    src = shards_of(tmp_path / "src", samples[:4])
    with tarfile.open(src / "00001.tar", "w") as tar:
        add_member(tar, "bad.png", b"\x89PNG\r\n\x1a\n" + b"not a png at all" * 20)
        add_member(tar, "twice.png", samples[4][1])
        add_member(tar, "twice.png", samples[5][1])
        add_member(tar, "label.cls", b"3")
        add_member(tar, "lonely.txt", b"a caption without its image")
    with tarfile.open(src / "00002.tar", "w") as tar:
        add_member(tar, "whole.jpg", samples[1][1])
        add_member(tar, "cut.jpg", samples[3][1])
    data = (src / "00002.tar").read_bytes()
    cut = data.index(samples[3][1][-64:]) - 100  # inside the second image's data
    (src / "00002.tar").write_bytes(data[:cut])
    (src / "00003.tar").write_bytes(b"this is no tar file" * 40)
    report = sync_job(src, tmp_path / "s.zarr", options=JobOptions(progress=False))
    reader = vaeflow.open_store(tmp_path / "s.zarr")
    assert reader.names == ["00000/000000", "00000/000001", "00000/000002", "00000/000003", "00001/twice",
                            "00002/whole"]  # fmt: skip
    failures = {f.path: f.reason for f in reader.failures}
    assert set(failures) == {"00001/bad", "00002/cut"}
    assert "cannot decode image" in failures["00001/bad"] or "not a readable image" in failures["00001/bad"]
    assert "00002.tar is truncated" in failures["00002/cut"]
    skipped = dict(reader.skipped)
    assert "duplicate key" in skipped["00001/twice.png"]
    assert "not an image type (.cls)" in skipped["00001/label.cls"]
    assert "sidecar without an image" in skipped["00001/lonely.txt"]
    assert "damaged" in skipped["00002.tar"] and "not a readable tar shard" in skipped["00003.tar"]
    assert report.failed == 2
    twice = reader.read_streams(["00001/twice"])[0]
    alone = tmp_path / "alone"
    shards_of(alone, [("twice", samples[4][1], "", {})])
    sync_job(alone, tmp_path / "alone.zarr", options=JobOptions(progress=False))
    assert twice == vaeflow.open_store(tmp_path / "alone.zarr").read_streams(["00000/twice"])[0]  # the first kept


def test_a_shard_changed_since_planning_is_refused_not_mixed(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    src = shards_of(tmp_path / "src", samples[:2])
    store = tmp_path / "s.zarr"
    options = JobOptions(progress=False)
    codec, preset, options = job_codec(store, None, None, None, None, options)
    plan = plan_job(src, store, codec, preset, options)
    member = plan.items[0].member
    assert isinstance(member, TarMember)
    assert read_member(str(src), member, plan.items[0].mtime_ns)[:4] == samples[0][1][:4]
    os.utime(src / "00000.tar", ns=(time.time_ns(), time.time_ns() + 10**9))  # rewritten after planning
    with pytest.raises(ImageReadError, match=r"00000\.tar changed since the job was planned"):
        read_member(str(src), member, plan.items[0].mtime_ns)
    report = execute(plan, options, SerialExecutor())
    assert report.failed == 2
    assert all("changed since the job was planned" in f.reason for f in vaeflow.open_store(store).failures)


def test_kill_then_resume_from_shards_gives_the_same_store(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    src = shards_of(tmp_path / "src", samples * 2, per_shard=3)
    reference = tmp_path / "reference.zarr"
    sync_job(src, reference, options=JobOptions(progress=False, batch_size=1))
    store = tmp_path / "resumed.zarr"
    args = [sys.executable, "-m", "vaeflow", "compress", str(src), str(store), "--scheduler", "sync",
            "--batch-size", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finished = kill_after_batches(proc, store, timeout=120)
    assert 3 <= finished < len(samples) * 2  # killed between samples
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "resumed" in out.stdout
    assert tree_bytes(store) == tree_bytes(reference)


def parquet_of(path: Path, samples: list, struct: bool, row_group_size: int = 4) -> Path:  # type: ignore[type-arg]
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images = [{"bytes": data, "path": f"{key}.img"} if struct else data for key, data, _, _ in samples]
    columns = {"image": images, "text": [caption for _, _, caption, _ in samples]}
    for field in samples[0][3]:
        columns[field] = [metadata.get(field) for _, _, _, metadata in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("struct", [True, False], ids=["huggingface-struct", "binary"])
def test_parquet_gives_the_folders_streams_captions_and_metadata(
    tmp_path: Path,
    samples: list,
    from_folder: dict,
    struct: bool,  # type: ignore[type-arg]
) -> None:
    parquet_of(tmp_path / "src" / "train-00000.parquet", samples, struct)
    report = sync_job(tmp_path / "src", tmp_path / "s.zarr", options=JobOptions(progress=False))
    assert report.failed == 0
    reader = vaeflow.open_store(tmp_path / "s.zarr")
    assert sorted(reader.names) == sorted(f"train-00000/{i}" for i in range(len(samples)))
    by_row = {name: stream for name, stream in zip(reader.names, reader.read_streams(reader.names), strict=True)}
    for i, (key, *_) in enumerate(samples):
        name = f"train-00000/{i}"
        assert (by_row[name], reader.caption(name), reader.metadata(name)) == from_folder[key]


def test_parquet_bad_rows_and_a_missing_image_column(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "src"
    rows = [samples[0], (samples[1][0], b"garbage" * 30, "broken", {}), (samples[2][0], b"", "empty", {})]
    parquet_of(src / "a.parquet", rows, struct=False)
    pq.write_table(pa.table({"pixels": [samples[0][1]], "caption": ["x"]}), src / "b.parquet")
    (src / "c.parquet").write_bytes(b"PAR1 but not really")
    sync_job(src, tmp_path / "s.zarr", options=JobOptions(progress=False))
    reader = vaeflow.open_store(tmp_path / "s.zarr")
    assert reader.names == ["a/0"]
    failures = {f.path: f.reason for f in reader.failures}
    assert set(failures) == {"a/1", "a/2"} and "empty" in failures["a/2"]
    skipped = dict(reader.skipped)
    assert "no image column (its columns: pixels, caption); name it with --image-column" in skipped["b.parquet"]
    assert "not a readable parquet file" in skipped["c.parquet"]
    out = subprocess.run([sys.executable, "-m", "vaeflow", "compress", str(src), str(tmp_path / "named.zarr"),
                          "--scheduler", "sync", "--no-progress", "--source-format", "parquet", "--image-column",
                          "pixels"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    named = vaeflow.open_store(tmp_path / "named.zarr")
    assert named.names == ["b/0"] and named.caption("b/0") == "x"
    assert "no column 'pixels'" in dict(named.skipped)["a.parquet"]


def test_the_format_is_found_or_must_be_named(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    src = shards_of(tmp_path / "src", samples[:2])
    (src / "extra.png").write_bytes(samples[0][1])
    with pytest.raises(
        VaeflowError, match=r"holds image files and \.tar shards: say which to read with --source-format"
    ):
        sync_job(src, tmp_path / "s.zarr", options=JobOptions(progress=False))
    assert not (tmp_path / "s.zarr").exists()
    report = sync_job(src, tmp_path / "s.zarr", options=JobOptions(progress=False,
                      source=SourceOptions(format="webdataset")))  # fmt: skip
    assert vaeflow.open_store(tmp_path / "s.zarr").names == ["00000/000000", "00000/000001"]
    assert report.failed == 0


def test_shards_parquet_and_images_on_s3_give_the_folders_streams(
    tmp_path: Path,
    samples: list,
    from_folder: dict,
    s3: S3Bucket,  # type: ignore[type-arg]
) -> None:
    """Sources on a real S3 API (moto's server on loopback): listed once, read in place by byte ranges."""
    urls = {
        "shards": s3.put(shards_of(tmp_path / "shards", samples), "sources/shards"),
        "parquet": s3.put(parquet_of(tmp_path / "parquet" / "p.parquet", samples, struct=True).parent, "sources/pq"),
        "folder": s3.put(write_folder(tmp_path / "folder", samples), "sources/folder"),
    }
    for kind, url in urls.items():
        store = tmp_path / f"{kind}.zarr"
        report = vaeflow.compress_dataset(url, store, scheduler="sync", storage_options=s3.options,
                                          options=JobOptions(progress=False))  # fmt: skip
        assert report.failed == 0 and report.skipped == 0, kind
        keys = [key for key, *_ in samples] if kind == "parquet" else None
        reader = vaeflow.open_store(store)
        found = {
            (keys[int(name.rsplit("/", 1)[-1])] if keys else name.rsplit("/", 1)[-1].split(".")[0]): (
                stream, reader.caption(name), reader.metadata(name))
            for name, stream in zip(reader.names, reader.read_streams(reader.names), strict=True)
        }  # fmt: skip
        assert found == from_folder, kind
    remote_store = f"s3://{s3.name}/sources/out.zarr"  # a source and a store on object storage, one set of options
    vaeflow.compress_dataset(urls["shards"], remote_store, scheduler="sync", storage_options=s3.options,
                             options=JobOptions(progress=False))  # fmt: skip
    remote = vaeflow.open_store(remote_store, storage_options=s3.options)
    assert remote.read_streams(remote.names) == vaeflow.open_store(tmp_path / "shards.zarr").read_streams(remote.names)
    out = subprocess.run([sys.executable, "-m", "vaeflow", "compress", urls["shards"] + "/", str(tmp_path / "cli.zarr"),
                          "--scheduler", "sync", "--no-progress", *s3.cli_options],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert tree_bytes(tmp_path / "cli.zarr") == tree_bytes(tmp_path / "shards.zarr")
    missing = subprocess.run([sys.executable, "-m", "vaeflow", "compress", f"s3://{s3.name}/sources/none",
                              str(tmp_path / "none.zarr"), "--scheduler", "sync", *s3.cli_options],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert missing.returncode == 1 and f"nothing at s3://{s3.name}/sources/none" in missing.stderr
    assert not (tmp_path / "none.zarr").exists()


def test_a_glob_reads_only_the_files_it_matches(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    src = tmp_path / "data"
    parquet_of(src / "train-00000.parquet", samples[:3], struct=True)
    parquet_of(src / "train-00001.parquet", samples[3:5], struct=True)
    parquet_of(src / "test-00000.parquet", samples[5:], struct=True)
    sync_job(str(src / "train-*.parquet"), tmp_path / "s.zarr", options=JobOptions(progress=False))
    names = vaeflow.open_store(tmp_path / "s.zarr").names
    assert names == ["train-00000/0", "train-00000/1", "train-00000/2", "train-00001/0", "train-00001/1"]
    with pytest.raises(VaeflowError, match=r"no file in .* matches 'valid-\*\.parquet'"):
        sync_job(str(src / "valid-*.parquet"), tmp_path / "none.zarr", options=JobOptions(progress=False))


def test_shard_edge_cases_become_rows_not_silence(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    """A damaged header part way, ./ member names, names two shards both give, img2dataset's files beside."""
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "a.tar", "w") as tar:
        add_member(tar, "./one.png", samples[0][1])
        add_member(tar, "sub/two.png", samples[2][1])
        add_member(tar, "three.png", samples[4][1])
    data = bytearray((src / "a.tar").read_bytes())
    third = data.index(b"three.png")
    data[third : third + 9] = b"\xff" * 9  # the third header's checksum no longer holds
    (src / "a.tar").write_bytes(bytes(data))
    (src / "a").mkdir()
    with tarfile.open(src / "a" / "sub.tar", "w") as tar:
        add_member(tar, "two.png", samples[1][1])
    (src / "a.parquet").write_bytes(b"img2dataset's metadata of a.tar")
    (src / "a_stats.json").write_text("{}")
    sync_job(src, tmp_path / "s.zarr", options=JobOptions(progress=False))
    reader = vaeflow.open_store(tmp_path / "s.zarr")
    assert reader.names == ["a/one", "a/sub/two"]
    skipped = dict(reader.skipped)
    assert "a damaged tar header at byte" in skipped["a.tar"]
    assert "another sample has this name (in a.tar)" in skipped["a/sub/two"]
    assert "the source is read as webdataset" in skipped["a.parquet"] and "a_stats.json" in skipped
    assert reader.read_streams(["a/sub/two"]) == [streams_by_key(tmp_path / "s.zarr")["two"][0]]


def test_add_codes_only_a_new_shards_samples(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    src = shards_of(tmp_path / "src", samples[:4], per_shard=2)
    store = tmp_path / "s.zarr"
    sync_job(src, store, options=JobOptions(progress=False))
    before = vaeflow.open_store(store)
    streams = before.read_streams(before.names)
    with tarfile.open(src / "00002.tar", "w") as tar:
        add_member(tar, "late.png", samples[4][1])
        add_member(tar, "late.txt", b"added later")
    report = sync_job(src, store, options=JobOptions(progress=False, add=True))
    after = vaeflow.open_store(store)
    assert report.stored == 5 and after.names == [*before.names, "00002/late"]
    assert after.read_streams(before.names) == streams and after.caption("00002/late") == "added later"
    single = subprocess.run([sys.executable, "-m", "vaeflow", "compress", str(src / "00002.tar"),
                             str(tmp_path / "one.zarr"), "--scheduler", "sync", "--no-progress"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert single.returncode == 0, single.stderr  # one shard file as SRC: a dataset of its samples
    assert vaeflow.open_store(tmp_path / "one.zarr").names == ["00002/late"]


def test_a_glob_component_does_not_cross_folders(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    from vaeflow.dataset.sources import split_glob

    parquet_of(tmp_path / "d" / "train-0.parquet", samples[:1], struct=False)
    parquet_of(tmp_path / "d" / "train-old" / "x.parquet", samples[1:2], struct=False)
    sync_job(str(tmp_path / "d" / "train-*.parquet"), tmp_path / "s.zarr", options=JobOptions(progress=False))
    assert vaeflow.open_store(tmp_path / "s.zarr").names == ["train-0/0"]
    assert split_glob("s3://bucket/shards/part-*.tar") == ("s3://bucket/shards", "part-*.tar")
    assert split_glob("https://host/data.parquet?sig=1") == ("https://host/data.parquet?sig=1", None)
    with pytest.raises(VaeflowError, match="wildcards go in the path"):
        split_glob("s3://bucket-*/x.tar")


def test_retry_failed_reads_a_mended_shard_again(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "s.tar", "w") as tar:
        add_member(tar, "good.png", samples[0][1])
        add_member(tar, "bad.png", b"\x89PNG\r\n\x1a\n" + b"damaged" * 30)
    store = tmp_path / "s.zarr"
    assert sync_job(src, store, options=JobOptions(progress=False)).failed == 1
    with tarfile.open(src / "s.tar", "w") as tar:  # the shard mended
        add_member(tar, "good.png", samples[0][1])
        add_member(tar, "bad.png", samples[2][1])
    report = sync_job(src, store, options=JobOptions(progress=False, retry_failed=True))
    reader = vaeflow.open_store(store)
    assert report.failed == 0 and not reader.failures and sorted(reader.names) == ["s/bad", "s/good"]
    alone = tmp_path / "alone"
    shards_of(alone, [("bad", samples[2][1], "", {})])
    sync_job(alone, tmp_path / "alone.zarr", options=JobOptions(progress=False))
    assert reader.read_streams(["s/bad"]) == vaeflow.open_store(tmp_path / "alone.zarr").read_streams(["00000/bad"])


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, samples: list, monkeypatch) -> None:  # type: ignore[no-untyped-def,type-arg]
    parquet_of(tmp_path / "src" / "p.parquet", samples[:1], struct=True)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(VaeflowError, match=r"needs pyarrow: pip install 'vaeflow\[sources\]'"):
        sync_job(tmp_path / "src", tmp_path / "s.zarr", options=JobOptions(progress=False))
    assert not (tmp_path / "s.zarr").exists()
