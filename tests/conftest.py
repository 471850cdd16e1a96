"""Shared fixtures.

Most tests run on any machine: their images are scikit-image's sample photos (installed
with vaeflow's dependencies), cropped small. Tests of quality and rate-distortion use the
Kodak images and photos in ``../shared`` and the TAEF2 weights there; they are marked
``shared`` (automatically, by the fixtures they use) and skip with the reason when it is
absent. ``pytest -m "not shared"`` runs what a plain clone can.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from hypothesis import settings

import vaeflow
from vaeflow.foundations.imageio import read_rgb

from .helpers import S3Bucket
from .helpers import mixed_store as build_mixed_store

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VAEFLOW_SHARED", REPO.parent / "shared"))
KODAK = SHARED / "data" / "kodak"
PHOTOS = SHARED / "data" / "photos"
TAEF2 = SHARED / "models"
SHARED_FIXTURES = {"kodak_paths", "kodak", "kodim01", "taef2_weights", "photo_paths"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the shared data set beside the repository")
    return path


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Four real photos that ship with scikit-image (public domain or CC0), 256 x 384 each:
    coffee, astronaut, chelsea (the cat) and rocket."""
    sources = (skimage.data.coffee(), skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.rocket())
    return [np.ascontiguousarray(image[:256, :384]) for image in sources]


@pytest.fixture(scope="session")
def photo(photos: list[np.ndarray]) -> np.ndarray:
    """A small real photo, 96 x 128 (the coffee cup)."""
    return np.ascontiguousarray(photos[0][80:176, 120:248])


@pytest.fixture(scope="session")
def real_latents(photos: list[np.ndarray]) -> np.ndarray:
    """Normalised latents of two real photos from the default model, (2, C, 32, 48)."""
    import vaeflow

    return vaeflow.load_model("default").encode(np.stack(photos[:2]))


@pytest.fixture(scope="session")
def kodak_paths() -> list[Path]:
    return sorted(need(KODAK).glob("kodim*.png"))


@pytest.fixture(scope="session")
def kodak(kodak_paths: list[Path]) -> list[np.ndarray]:
    """The first four Kodak images, 512x768 or 768x512 uint8 RGB."""
    return [read_rgb(p) for p in kodak_paths[:4]]


@pytest.fixture(scope="session")
def kodim01(kodak_paths: list[Path]) -> np.ndarray:
    return read_rgb(kodak_paths[0])


@pytest.fixture(scope="session")
def taef2_weights() -> tuple[Path, Path]:
    """The pretrained TAEF2 encoder and decoder state dicts (never copied into the repo)."""
    pytest.importorskip("torch", reason="importing TAE weights needs the convert extra (torch)")
    return need(TAEF2 / "taef2_encoder.pth"), need(TAEF2 / "taef2_decoder.pth")


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    return sorted(need(PHOTOS).glob("*.png"))


@pytest.fixture(scope="session")
def mixed_store(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """A finished store of 12 real photo crops in four shapes (tests/helpers.py MIXED_SIZES), every one stored."""
    return build_mixed_store(tmp_path_factory.mktemp("mixed"), photos)


@pytest.fixture(scope="session")
def mixed_latents(mixed_store: Path) -> dict[str, np.ndarray]:
    """Each latent of ``mixed_store``, read one at a time."""
    reader = vaeflow.open_store(mixed_store)
    return {name: reader.read_latent(name) for name in reader.names}


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Bucket]:
    """A real S3 API on loopback (moto's server mode), reached through s3fs."""
    server_module = pytest.importorskip("moto.server", reason="S3 tests need moto[server] (dev extra)")
    pytest.importorskip("s3fs", reason="S3 tests need s3fs (dev extra)")
    boto3 = pytest.importorskip("boto3", reason="S3 tests need boto3 (dev extra)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **credentials).create_bucket(Bucket="vaeflow-tests")
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "us-east-1"}}  # fmt: skip
        yield S3Bucket("vaeflow-tests", options)
    finally:
        server.stop()


@pytest.fixture()
def vaeflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user registry, so tests never touch ~/.vaeflow."""
    home = tmp_path / "vaeflow-home"
    monkeypatch.setenv("VAEFLOW_HOME", str(home))
    monkeypatch.delenv("VAEFLOW_CONFIG", raising=False)
    return home


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    if "VAEFLOW_HOME" not in os.environ:
        monkeypatch.setenv("VAEFLOW_HOME", str(tmp_path_factory.getbasetemp() / "home"))


# Property tests explore new examples while developing; CI replays a fixed sequence, so a
# run fails only for a reason that reproduces. Set VAEFLOW_HYPOTHESIS=explore to search afresh.
settings.register_profile("replay", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("VAEFLOW_HYPOTHESIS", "replay"))
