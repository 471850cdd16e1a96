"""Reliability, third round: names that are not UTF-8, deep or huge sidecars, hostile bucket sizes; each through
the real command line, as a user would meet it."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaeflow
from vaeflow.dataset.scan import MAX_JSON_DEPTH, MAX_SIDECAR_BYTES, NAME_NOTE, json_object, original_name, scan
from vaeflow.foundations.imageio import DEFAULT_MAX_PIXELS

from ..helpers import run_cli

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="byte file names and sparse files as Linux has them")


def _source(tmp_path: Path, photos: list[np.ndarray]) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    Image.fromarray(photos[0][:64, :96]).save(src / "good.png")
    return src


def test_a_name_that_is_not_utf8_is_stored_under_its_escaped_name(tmp_path: Path, photos: list[np.ndarray]) -> None:
    """Losslessly: each byte that is not UTF-8 as \\xNN and each backslash doubled, a note on the row saying so."""
    src = _source(tmp_path, photos)
    raw = b"bad\xff\\x.png"  # a byte that is no UTF-8, and a backslash
    Image.fromarray(photos[1][:64, :96]).save(os.fsdecode(bytes(src) + b"/" + raw))
    (Path(os.fsdecode(bytes(src) + b"/notes\xfe.txt"))).write_text("a sidecar of no image")
    Path(os.fsdecode(bytes(src) + b"/bad\xff\\x.json")).write_text("not JSON")  # a note naming that file
    Image.fromarray(photos[2][:64, :96]).save(src / "lone.png")
    (src / "lone.json").write_text('{"caption": "\\udcff"}')  # valid JSON, but no text the index can hold
    dry = run_cli("compress", str(src), str(tmp_path / "dry.zarr"), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "file names not UTF-8: 1 images stored under escaped names (bad\\\\xff\\\\\\\\x.png)" in dry.stdout
    assert not (tmp_path / "dry.zarr").exists()
    out = run_cli("compress", str(src), str(tmp_path / "s.zarr"), "--scheduler", "sync")
    assert out.returncode == 0 and "internal error" not in out.stderr, out.stderr
    reader = vaeflow.open_store(tmp_path / "s.zarr")
    stored = "bad\\xff\\\\x.png"
    assert reader.names == [stored, "good.png", "lone.png"] and original_name(stored) == raw
    assert (
        NAME_NOTE in reader.info(stored)["notes"]
        and "sidecar bad\\xff\\\\x.json is not" in reader.info(stored)["notes"]
    )
    assert "lone surrogate" in reader.info("lone.png")["notes"] and reader.caption("lone.png") is None
    np.testing.assert_array_equal(reader.read_image(stored).shape, (64, 96, 3))
    assert ("notes\\xfe.txt", ".txt sidecar without an image of the name notes\\xfe") in reader.skipped
    again = run_cli("compress", str(src), str(tmp_path / "s.zarr"), "--add", "--scheduler", "sync", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["images"] == 3, again.stderr  # nothing coded again


def test_deep_and_huge_sidecars_are_notes(tmp_path: Path, photos: list[np.ndarray]) -> None:
    src = _source(tmp_path, photos)
    for name in ("deep", "shallow", "sparse"):
        Image.fromarray(photos[2][:64, :96]).save(src / f"{name}.png")
    (src / "deep.json").write_text("[" * 1000 + "]" * 1000)
    nested: object = {"caption": "kept"}
    for _ in range(MAX_JSON_DEPTH - 2):  # with the outer object: MAX_JSON_DEPTH deep
        nested = {"x": nested}
    (src / "shallow.json").write_text(json.dumps({"caption": "a shallow one", "n": nested}))
    with (src / "sparse.json").open("wb") as fh:  # 1 GB, sparse: never read whole
        fh.truncate(1 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scanned = {im.path: im for im in scan(src, DEFAULT_MAX_PIXELS).images}
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: not the 1 GB file
    assert scanned["sparse.png"].sidecar.notes == (f"sidecar sparse.json is over {MAX_SIDECAR_BYTES} bytes; ignored",)
    assert "nested deeper than 32 levels" in scanned["deep.png"].sidecar.notes[0]
    for args in (["--dry-run"], ["--scheduler", "sync"]):
        out = run_cli("compress", str(src), str(tmp_path / "s.zarr"), *args)
        assert out.returncode == 0 and "internal error" not in out.stderr, out.stderr
    listing = run_cli("ls", str(tmp_path / "s.zarr"), "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["shallow.png"]["caption"] == "a shallow one" and rows["deep.png"]["metadata"] == {}
    assert json_object("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) == json.loads("[" * 32 + "]" * 32)
    assert json_object('["[[[[[[", {"a": "}}}}"}]', max_depth=2) == ["[[[[[[", {"a": "}}}}"}]  # strings not counted
    with pytest.raises(ValueError, match="nested deeper than 2 levels"):
        json_object("[[[1]]]", max_depth=2)


def _peak_job(src: Path, store: Path) -> tuple[int, int, int]:
    """(stored, failed, peak RSS in KiB) of a bucketed job in a fresh process."""
    code = (
        "import resource, sys, vaeflow\n"
        "report = vaeflow.compress_dataset(sys.argv[1], sys.argv[2], scheduler='sync',"
        " options=vaeflow.JobOptions(buckets=1024, progress=False))\n"
        "print(report.stored, report.failed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(src), str(store)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    stored, failed, peak = map(int, out.stdout.split()[-3:])
    return stored, failed, peak


def test_buckets_refuse_a_resize_over_max_pixels_and_resample_only_the_crop(
    tmp_path: Path, photos: list[np.ndarray]
) -> None:
    """A 1x4000 PNG of a few KB at --buckets 1024 would be resized to 2,048,000x512 (10 GB): a failed row with the
    reason, from its header; a 1x100 one (26 megapixels once resized) is coded within the memory of its bucket."""
    normal = _source(tmp_path / "normal", photos)
    src = _source(tmp_path, photos)
    Image.fromarray(np.tile(photos[3][:1, :100], (1, 40, 1))).save(src / "line.png")
    Image.fromarray(np.ascontiguousarray(photos[3][:1, :100])).save(src / "short.png")
    dry = run_cli("compress", str(src), str(tmp_path / "dry.zarr"), "--dry-run", "--buckets", "1024")
    assert dry.returncode == 0, dry.stderr
    assert "unreadable: line.png: resizing 4000x1 to cover its 2048x512 bucket" in dry.stdout
    assert _peak_job(normal, tmp_path / "normal.zarr")[:2] == (1, 0)
    normal_peak = _peak_job(normal, tmp_path / "normal2.zarr")[2]
    stored, failed, peak = _peak_job(src, tmp_path / "s.zarr")
    assert (stored, failed) == (2, 1)
    reader = vaeflow.open_store(tmp_path / "s.zarr")
    assert "over the limit of 100000000 (--max-pixels)" in reader.failures[0].reason
    assert reader.original_size("short.png") == (1, 100)
    assert peak < 2 * normal_peak, (peak, normal_peak)


def test_decompress_writes_a_tree_with_a_file_beside_a_folder_of_its_png_name(
    tmp_path: Path, photos: list[np.ndarray]
) -> None:
    """x.jpg beside a folder x.png/ (holding y.png): all three written (x.jpg as x.jpg.png); a name with a
    backslash and a folder in the way in DST are skipped with the reason (exit 3); the rest written; --overwrite
    never writes through a hard link to a file outside DST."""
    src = tmp_path / "src"
    (src / "x.png").mkdir(parents=True)
    Image.fromarray(photos[0][:32, :48]).save(src / "x.jpg", quality=95)
    Image.fromarray(photos[1][:32, :48]).save(src / "x.png" / "y.png")
    Image.fromarray(photos[2][:32, :48]).save(src / "z.png")
    Image.fromarray(photos[3][:32, :48]).save(src / "back\\slash.png")
    store = tmp_path / "s.zarr"
    assert run_cli("compress", str(src), str(store), "--scheduler", "sync").returncode == 0
    reader = vaeflow.open_store(store)
    assert sorted(reader.names) == ["back\\slash.png", "x.jpg", "x.png/y.png", "z.png"]
    out_dir = tmp_path / "out"
    (out_dir / "z.png").mkdir(parents=True)  # a folder where z.png should go
    out = run_cli("decompress", str(store), str(out_dir), "--scheduler", "sync")
    assert out.returncode == 3, out.stderr
    assert "'back\\\\slash.png' skipped: refusing to write" in out.stderr
    assert "'z.png' skipped: z.png cannot be written: a folder of that name is in" in out.stderr
    assert "2 PNG files" in out.stdout
    for name, target in (("x.jpg", "x.jpg.png"), ("x.png/y.png", "x.png/y.png")):
        np.testing.assert_array_equal(np.asarray(Image.open(out_dir / target)), reader.read_image(name))
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not to be touched")
    (out_dir / "x.jpg.png").unlink()
    os.link(outside, out_dir / "x.jpg.png")  # a hard link in DST to a file outside it
    (out_dir / "z.png").rmdir()
    again = run_cli("decompress", str(store), str(out_dir), "--scheduler", "sync", "--overwrite")
    assert again.returncode == 3 and "3 PNG files" in again.stdout, again.stderr  # only the backslash name left
    assert outside.read_bytes() == b"not to be touched"
    np.testing.assert_array_equal(np.asarray(Image.open(out_dir / "x.jpg.png")), reader.read_image("x.jpg"))
    assert not list(out_dir.rglob("*.tmp"))


def test_add_notices_a_source_replaced_since_it_was_coded(tmp_path: Path, photos: list[np.ndarray]) -> None:
    src = _source(tmp_path, photos)
    Image.fromarray(photos[1][:64, :96]).save(src / "kept.png")
    store = tmp_path / "s.zarr"
    assert run_cli("compress", str(src), str(store), "--scheduler", "sync").returncode == 0
    before = vaeflow.open_store(store).read_stream("good.png")
    Image.fromarray(photos[2][:64, :96]).save(src / "good.png")  # replaced: another size and time
    Image.fromarray(photos[3][:64, :96]).save(src / "new.png")
    dry = run_cli("compress", str(src), str(store), "--add", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "changed since they were coded: 1 stored images (good.png)" in dry.stdout
    out = run_cli("compress", str(src), str(store), "--add", "--scheduler", "sync", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["changed"] == ["good.png"]
    reader = vaeflow.open_store(store)
    assert reader.names == ["good.png", "kept.png", "new.png"] and reader.read_stream("good.png") == before
    again = run_cli("compress", str(src), str(store), "--scheduler", "sync")  # a rerun of the finished store
    assert again.returncode == 0 and "changed since they were coded: 1 stored images (good.png)" in again.stdout
