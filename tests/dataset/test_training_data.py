"""Training data: captions and metadata from sidecar files, and aspect-ratio buckets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import vaeflow
from vaeflow import JobOptions, open_store
from vaeflow.codec.shapes import buckets, fit_bucket

from ..helpers import run_cli, sync_job


def test_sidecars_travel_with_their_images(tmp_path: Path, photos: list[np.ndarray]) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name, image in zip(("a.png", "b.jpg", "sub/c.png", "d.png", "e.png"), photos + photos[:1], strict=False):
        Image.fromarray(image[:40, :56]).save(src / name)
    (src / "a.txt").write_text("a cup of coffee on a saucer\n")
    (src / "b.caption").write_text("an astronaut", encoding="utf-8")
    (src / "b.json").write_text(json.dumps({"url": "https://example.org/b.jpg", "width": 512}))
    (src / "sub" / "c.json").write_text(json.dumps({"caption": "a cat, named in its json", "key": "000003"}))
    (src / "d.txt").write_bytes(b"\xff\xfe not utf-8 \x80")
    (src / "e.json").write_text("[1, 2]")
    (src / "orphan.txt").write_text("no image of this name")
    store = tmp_path / "s.zarr"
    report = sync_job(src, store, options=JobOptions(progress=False))
    assert (report.stored, report.failed) == (5, 0)
    reader = open_store(store)
    assert reader.caption("a.png") == "a cup of coffee on a saucer"
    assert reader.caption("b.jpg") == "an astronaut" and reader.metadata("b.jpg") == {
        "url": "https://example.org/b.jpg",
        "width": 512,
    }
    assert reader.caption("sub/c.png") == "a cat, named in its json" and reader.metadata("sub/c.png")["key"] == "000003"
    assert reader.caption("d.png") is None and "d.txt is not UTF-8; ignored" in reader.info("d.png")["notes"]
    assert reader.metadata("e.png") == {} and "e.json is not a JSON object" in reader.info("e.png")["notes"]
    assert reader.skipped == [("orphan.txt", ".txt sidecar without an image of the name orphan")]
    listing = run_cli("ls", str(store), "--json")
    assert listing.returncode == 0, listing.stderr
    listed = {row["name"]: row for row in json.loads(listing.stdout)}
    assert listed["b.jpg"]["caption"] == "an astronaut" and listed["b.jpg"]["metadata"]["width"] == 512
    assert listed["d.png"]["caption"] is None and listed["a.png"]["original_size"] == [40, 56]


def test_stores_without_captions_read_as_none(tmp_path: Path) -> None:
    golden = Path(__file__).parents[1] / "golden" / "store-v1.zarr"
    reader = open_store(golden)
    name = reader.names[0]
    assert reader.caption(name) is None and reader.metadata(name) == {}
    assert reader.original_size(name) == reader.target_size(name) and reader.crop_top_left(name) == (0, 0)


def test_buckets_resize_crop_and_record_the_micro_conditioning(tmp_path: Path, photos: list[np.ndarray]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"wide.png": (120, 300), "tall.png": (256, 100), "square.png": (200, 200), "odd.png": (97, 131)}
    for (name, (h, w)), image in zip(sizes.items(), photos, strict=True):
        Image.fromarray(image[:h, :w]).save(src / name)
    store = tmp_path / "s.zarr"
    report = sync_job(src, store, options=JobOptions(progress=False, buckets=256))
    assert report.failed == 0
    reader = open_store(store)
    allowed = {(b.height, b.width) for b in buckets(256)}
    for name, (h, w) in sizes.items():
        fit = fit_bucket(h, w, 256)
        assert reader.target_size(name) == fit.target and fit.target in allowed
        assert reader.original_size(name) == (h, w) and reader.crop_top_left(name) == fit.crop_top_left
        (rh, rw), (top, left), (th, tw) = fit.resized, fit.crop_top_left, fit.target
        resized = Image.open(src / name).resize((rw, rh), Image.Resampling.LANCZOS)
        whole = np.asarray(resized)[top : top + th, left : left + tw]  # resized whole, then cropped
        box = (left * w / rw, top * h / rh, (left + tw) * w / rw, (top + th) * h / rh)
        expected = np.asarray(Image.open(src / name).resize((tw, th), Image.Resampling.LANCZOS, box=box))
        assert np.abs(expected.astype(int) - whole).max() <= 1  # the crop's region alone, resampled
        assert reader.read_stream(name) == vaeflow.compress(np.ascontiguousarray(expected))
    assert reader.summary()["settings"]["buckets"] == 256


def test_the_dry_run_lists_the_buckets(tmp_path: Path, photos: list[np.ndarray]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photos[0][:100, :150]).save(src / "a.png")
    out = run_cli("compress", str(src), str(tmp_path / "x.zarr"), "--dry-run", "--buckets", "1024")
    assert out.returncode == 0, out.stderr
    assert "aspect-ratio buckets of about 1024x1024" in out.stdout and "1024x1024" in out.stdout
    assert "512x2048" in out.stdout and "2048x512" in out.stdout
    assert not (tmp_path / "x.zarr").exists()
