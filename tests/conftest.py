"""Shared fixtures: real images from ../shared (skipped with a reason when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from vaeflow.imageio import read_rgb

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VAEFLOW_SHARED", REPO.parent / "shared"))
KODAK = SHARED / "data" / "kodak"
PHOTOS = SHARED / "data" / "photos"
TAEF2 = SHARED / "models"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the shared data set beside the repository")
    return path


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
    pytest.importorskip("torch", reason="importing TAE weights needs the train extra (torch)")
    return need(TAEF2 / "taef2_encoder.pth"), need(TAEF2 / "taef2_decoder.pth")


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    return sorted(need(PHOTOS).glob("*.png"))


@pytest.fixture(scope="session")
def real_latents(kodak: list[np.ndarray]) -> np.ndarray:
    """Normalised latents of two Kodak images from the default model, (2, C, h, w)."""
    import vaeflow

    model = vaeflow.load_model("default")
    same = [im for im in kodak if im.shape == kodak[0].shape][:2]
    return model.encode(np.stack(same))


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
