"""Every stream bound to its row: damage that each stream's own checksums cannot see (a stream swapped with a
neighbour's, a caption, size or shape edited in the index) is found by ``vaeflow verify``, by ``read_latent`` and by
the loaders, whose errors name the store and the image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import vaeflow
from benchmarks.hostile import edit_index, first_shape, first_size, flip_caption, swap_streams
from vaeflow.dataset.store import UNCHECKED, row_check
from vaeflow.foundations.errors import VaeflowError

from ..helpers import run_cli

torch = pytest.importorskip("torch", reason="the loader checks need the train extra (torch)")

from vaeflow.torch import LatentDataset  # noqa: E402


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """A store of two images of one shape, each with a caption and metadata."""
    root = tmp_path_factory.mktemp("rows")
    src = root / "src"
    src.mkdir()
    for i, word in enumerate(("bird", "fish")):
        Image.fromarray(photos[i][:64, :96]).save(src / f"{word}.png")
        (src / f"{word}.txt").write_text(word)
        (src / f"{word}.json").write_text(json.dumps({"source": word}))
    store = root / "s.zarr"
    out = run_cli("compress", str(src), str(store), "--scheduler", "sync")
    assert out.returncode == 0, out.stderr
    return store


def _copy(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy)
    return copy


DAMAGE = {
    "streams swapped": (swap_streams, "does not match its row's check"),
    "caption byte flipped": (edit_index("caption_bytes", flip_caption), "does not match its row's check"),
    "original size edited": (edit_index("original_size", first_size), "does not match its row's check"),
    "shape edited": (edit_index("shape", first_shape), "is 40x40 in the index"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_to_a_row_is_found_by_verify_and_every_reader(captioned: Path, tmp_path: Path, kind: str) -> None:
    store = _copy(captioned, tmp_path)
    before = vaeflow.open_store(store)
    assert before.caption("bird.png") == "bird" and before.metadata("fish.png") == {"source": "fish"}
    damage, message = DAMAGE[kind]
    damage(store)
    out = run_cli("verify", str(store))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "damaged: bird.png" in out.stdout and message in out.stdout
    reader = vaeflow.open_store(store)
    with pytest.raises(VaeflowError, match=message) as caught:
        reader.read_latent("bird.png")
    assert str(store) in str(caught.value) and "'bird.png'" in str(caught.value)
    dataset = LatentDataset(store)
    with pytest.raises(VaeflowError, match=r"'bird\.png'") as caught:  # read by the loader's one check
        dataset.__getitems__([dataset.names.index("bird.png")])
    assert str(store) in str(caught.value)
    with pytest.raises(VaeflowError, match=message):
        reader.read_image("bird.png")


def test_a_damaged_stream_is_named_with_its_store(captioned: Path, tmp_path: Path) -> None:
    """A flipped payload byte, in a store whose rows carry no checks (as before them): the stream's own CRC finds
    it, and the loader's error names the image and the store."""
    store = _copy(captioned, tmp_path)
    edit_index("check", lambda v: np.full_like(v, UNCHECKED))(store)
    data = zarr.open_array(store / "streams" / "data", mode="a")
    offsets = np.asarray(zarr.open_array(store / "streams" / "offsets", mode="r")[:])
    at = int(offsets[1]) - 10
    data[at] = np.uint8(int(data[at]) ^ 0x40)
    dataset = LatentDataset(store)
    with pytest.raises(VaeflowError, match=r"the stream of 'bird.png' is damaged: .*checksum") as caught:
        dataset.__getitems__(list(range(len(dataset))))
    assert str(store) in str(caught.value)


def test_row_checks_cover_every_field(captioned: Path) -> None:
    """The check is over the stream and each field: changing any one changes it (and nothing else does)."""
    reader = vaeflow.open_store(captioned)
    stream = reader.read_stream("bird.png")
    fields = (stream, "bird.png", (64, 96), (64, 96), (0, 0), "bird", '{"source":"bird"}')
    checks = np.asarray(zarr.open_group(captioned, mode="r")["index"]["check"][:])
    assert row_check(*fields) == int(checks[reader.paths.index("bird.png")])
    changed = [stream[:-1] + bytes([stream[-1] ^ 1]), "bird.pn", (64, 95), (63, 96), (0, 1), "bird ", "{}"]
    for i, value in enumerate(changed):
        assert row_check(*fields[:i], value, *fields[i + 1 :]) != row_check(*fields)  # type: ignore[arg-type]
