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


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


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
    assert sha(pixels) == expected["pixels_sha256"]


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
        assert sha(reader.read_image(name)) == want["pixels_sha256"]
    assert [[f.path, f.reason] for f in reader.failures] == expected["failed"]
    assert [list(s) for s in reader.skipped] == expected["skipped"]
