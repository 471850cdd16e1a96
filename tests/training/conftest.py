"""Shared fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def training_photos(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """Two photos, 256 x 256, so that a few steps run in seconds."""
    folder = tmp_path_factory.mktemp("photos")
    for i, image in enumerate(photos[:2]):
        Image.fromarray(image[:256, :256]).save(folder / f"{i}.png")
    return folder
