"""Golden streams and stores: every file ever written keeps decoding to the same pixels and latents."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import vaeflow

GOLDEN = Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
PIXEL_SUMS = json.loads((GOLDEN / "pixel_sums.json").read_text())
ROUNDING_FLIPS = 1e-2  # decoded values of a row or column that another CPU's float rounding may move by one, at most


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def assert_recorded_pixels(pixels: np.ndarray, recorded_sha: str, key: str) -> None:
    """The recorded pixels: the same bytes, or, where ONNX Runtime rounds its float arithmetic differently
    on this CPU, the same image but for a few values one apart (``make_pixel_sums.py`` says why)."""
    if sha(pixels) == recorded_sha:
        return
    values = pixels.astype(np.int64).sum(axis=2)
    for axis, lines in ((1, "rows"), (0, "columns")):
        found, recorded = values.sum(axis=axis), np.asarray(PIXEL_SUMS[key][lines])
        assert found.shape == recorded.shape, f"{key}: {len(found)} {lines}, recorded {len(recorded)}"
        allowed = max(6, ROUNDING_FLIPS * 3 * values.shape[axis])
        worst = int(np.abs(found - recorded).max())
        assert worst <= allowed, f"{key}: a sum of {lines} off by {worst}: the decoded image changed"


@pytest.mark.parametrize("name", sorted(MANIFEST["streams"]))
def test_golden_stream_decodes_to_its_recorded_pixels_and_latent(name: str) -> None:
    expected = MANIFEST["streams"][name]
    data = (GOLDEN / expected["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected["stream_sha256"]
    assert vaeflow.info(data)["format_version"] == expected.get("format_version", 1)
    latent = vaeflow.decompress_latent(data)
    assert list(latent.shape) == expected["latent_shape"] and str(latent.dtype) == expected["latent_dtype"]
    assert sha(latent) == expected["latent_sha256"]
    if expected["pixels_sha256"] is None:  # a stream of a model that exists only to name its latent
        return
    pixels = vaeflow.decompress(data)
    assert list(pixels.shape) == expected["pixels_shape"]
    assert_recorded_pixels(pixels, expected["pixels_sha256"], name)


def test_every_format_has_golden_streams() -> None:
    from vaeflow.codec.format import VERSIONS

    versions = {entry.get("format_version", 1) for entry in MANIFEST["streams"].values()}
    assert versions == set(VERSIONS)
    wide = MANIFEST["streams"]["v2-classes-wide-32"]
    assert wide["latent_shape"][0] >= 16  # the class coder's wide weight set
    banded = [e for e in MANIFEST["streams"].values() if e.get("format_version") == 3]
    assert {e["info"]["pipeline"]["entropy"]["coder"] for e in banded} == {"bands"}
    assert max(e["latent_shape"][0] for e in banded) == 32 and any(e["pixels_sha256"] for e in banded)


def test_golden_latents_decode_together_as_alone() -> None:
    from vaeflow.codec.api import decompress_latents

    names = sorted(MANIFEST["streams"])
    streams = [(GOLDEN / MANIFEST["streams"][n]["file"]).read_bytes() for n in names]
    for name, latent in zip(names, decompress_latents(streams), strict=True):
        assert sha(latent) == MANIFEST["streams"][name]["latent_sha256"], name


@pytest.mark.parametrize("store", ["store", "store_v2"])
def test_golden_store_reads_every_image_as_recorded(store: str) -> None:
    expected = MANIFEST[store]
    reader = vaeflow.open_store(GOLDEN / expected["path"])
    assert sorted(reader.names) == sorted(expected["images"])
    for name, want in expected["images"].items():
        assert hashlib.sha256(reader.read_stream(name)).hexdigest() == want["stream_sha256"]
        assert sha(reader.read_latent(name)) == want["latent_sha256"]
        assert_recorded_pixels(reader.read_image(name), want["pixels_sha256"], f"{store}/{name}")
    assert [[f.path, f.reason] for f in reader.failures] == expected["failed"]
    assert [list(s) for s in reader.skipped] == expected["skipped"]
