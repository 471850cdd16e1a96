"""Store format versions: new stores are format 2, format 1 stores stay readable and keep their layout when
images are added, and formats newer than this vaeflow are refused with a clear error."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import vaeflow
from vaeflow import JobOptions
from vaeflow.dataset import store as store_io
from vaeflow.dataset.spans import exact_layout
from vaeflow.dataset.verify import verify_store
from vaeflow.foundations.errors import VaeflowError

from ..helpers import sync_job

GOLDEN = Path(__file__).parents[1] / "golden"


def test_images_added_to_a_format_1_store_keep_its_layout(
    tmp_path: Path, photos: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    """... and get the model's own latents (stream format 4 and later), with a note that the earlier ones were
    padded."""
    store = tmp_path / "store.zarr"
    shutil.copytree(GOLDEN / "store-v1.zarr", store)
    before = vaeflow.open_store(store)
    streams = {name: before.read_stream(name) for name in before.names}
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photos[2][:48, :72]).save(src / "added.png")
    sync_job(src, store, options=JobOptions(progress=False, add=True))
    after = vaeflow.open_store(store)
    assert after.meta["version"] == 1 and not exact_layout(after.data)
    assert isinstance(after.data.compressors[0], zarr.codecs.ZstdCodec)
    assert {name: after.read_stream(name) for name in before.names} == streams
    assert sorted(after.names) == sorted([*streams, "added.png"])
    assert after.read_image("added.png").shape == (48, 72, 3)
    assert vaeflow.info(after.read_stream("added.png"))["format_version"] == 5
    assert "written before stream format 4" in caplog.text
    assert verify_store(store).ok and verify_store(store).checked == len(streams) + 1


def test_a_store_made_anew_is_format_2_whatever_it_was() -> None:
    assert store_io.data_version({"version": 1, "stored_bytes": 911}) == 1  # streams kept: their layout too
    assert store_io.data_version({"version": 1, "stored_bytes": 0}) == store_io.STORE_VERSION == 2
    assert store_io.data_version({"stored_bytes": 0}) == 2


def test_newer_formats_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    shutil.copytree(GOLDEN / "store-v1.zarr", store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["vaeflow"]["version"] = 3
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(VaeflowError, match=r"is store format 3; this vaeflow reads formats 1 to 2"):
        vaeflow.open_store(store)


def test_verify_reads_format_2_in_large_windows(mixed_store: Path) -> None:
    report = verify_store(mixed_store)
    reader = vaeflow.open_store(mixed_store)
    assert report.ok and report.checked == len(reader.names)
    assert report.bytes_read == reader.data.shape[0]  # one window: every byte once
    data = b"".join(reader.read_streams(reader.names))
    assert hashlib.sha256(reader.read_span(0, reader.data.shape[0])).digest() == hashlib.sha256(data).digest()


# A batch marker as vaeflow 0.1 wrote it (done/{batch}.json), and one from before PSNR-drop limits (no "drop").
MARKER_0_1 = (
    '{"key": "a1-g0-b0", "items": [{"index": 7, "path": "new-0.png", "ok": true, "reason": null, "notes": [], '
    '"nbytes": 201, "shape": [64, 64], "stream": ["a1-g0-b0", 0], "drop": [0.31, null]}, {"index": 8, "path": '
    '"bad.png", "ok": false, "reason": "vae stage failed", "notes": ["EXIF rotated"], "nbytes": 0, "shape": [9, 7], '
    '"stream": ["a1-g0-b0", 201], "drop": null}], "spans": [["load", 1796625141.9131699, 1796625141.9137824, 6306]]}'
)


def test_batch_markers_keep_their_json_so_that_older_work_stores_resume() -> None:
    from vaeflow.dataset.layout import BatchMarker

    marker = BatchMarker.from_json(json.loads(MARKER_0_1))
    assert json.dumps(marker.to_json()) == MARKER_0_1  # what WorkStore.mark_done writes, byte for byte
    assert [i.path for i in marker.items] == ["new-0.png", "bad.png"] and marker.failed == 1
    assert marker.items[0].drop == (0.31, None) and marker.items[1].shape == (9, 7)
    older = json.loads(MARKER_0_1)
    for item in older["items"]:
        del item["drop"]
    assert all(i.drop is None for i in BatchMarker.from_json(older).items)
    for damaged in ([], {"key": "g0-b0"}, {**older, "items": [{**older["items"][0], "ok": "yes"}]}):
        with pytest.raises((ValueError, KeyError, TypeError)):
            BatchMarker.from_json(damaged)
