"""A small store of real photo crops of mixed sizes, for the loading tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (height, width) of each image: four shapes in groups of 5, 4, 2 and 1; latents (4, h/8, w/8)
SIZES = [(64, 64)] * 5 + [(64, 96)] * 4 + [(96, 64)] * 2 + [(80, 80)]


def photos() -> list[np.ndarray]:
    import skimage.data

    return [skimage.data.coffee(), skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.rocket()]


def mixed_store(root: Path) -> Path:
    """``root/store.zarr``: the crops of SIZES (named so that store order mixes the shapes), every one stored."""
    from PIL import Image

    import vaeflow

    src = root / "src"
    src.mkdir()
    images = photos()
    for i, (h, w) in enumerate(SIZES):
        image = images[i % len(images)]
        top, left = 17 * i, 23 * i
        Image.fromarray(image[top : top + h, left : left + w]).save(src / f"{i % 3}-{i:02d}.png")
    store = root / "store.zarr"
    options = vaeflow.JobOptions(progress=False)
    report = vaeflow.compress_dataset(src, store, scheduler="sync", options=options)
    assert report.stored == len(SIZES) and report.failed == 0
    return store
