"""Sample photos to try vaeflow on, from those scikit-image installs with it (no download).

Each is public domain or CC0, as scikit-image's own documentation of each says:

| name | what | licence |
|---|---|---|
| astronaut | Eileen Collins, NASA Great Images | public domain |
| coffee | a coffee cup, by Rachel Michetti | CC0 |
| chelsea | Chelsea the cat, by Stefan van der Walt | CC0 |
| rocket | DSCOVR's launch on a Falcon 9, SpaceX | public domain |
| hubble_deep_field | Hubble eXtreme Deep Field, NASA | public domain |
| retina | a fundus photograph, by Mikael Häggström | CC0 |
| immunohistochemistry | colonic glands, CMMI | no known copyright restrictions |
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from vaeflow.foundations.durable import atomic_write
from vaeflow.foundations.errors import VaeflowError

SAMPLES: dict[str, tuple[str, str]] = {
    "astronaut": ("Eileen Collins, NASA Great Images", "public domain"),
    "coffee": ("a coffee cup, by Rachel Michetti", "CC0"),
    "chelsea": ("Chelsea the cat, by Stefan van der Walt", "CC0"),
    "rocket": ("DSCOVR's launch on a Falcon 9, SpaceX", "public domain"),
    "hubble_deep_field": ("Hubble eXtreme Deep Field, NASA", "public domain"),
    "retina": ("a fundus photograph, by Mikael Häggström", "CC0"),
    "immunohistochemistry": ("colonic glands, CMMI", "no known copyright restrictions"),
}


def sample_image(name: str) -> np.ndarray:
    """One sample photo as an HxWx3 uint8 array."""
    if name not in SAMPLES:
        raise VaeflowError(f"unknown sample {name!r}; choose from {', '.join(SAMPLES)}")
    image = np.asarray(getattr(skimage.data, name)())
    return np.ascontiguousarray(image[..., :3])


def write_samples(folder: str | Path, names: Iterable[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Write sample photos (all by default) as ``NAME.png`` into ``folder``, made if needed.

    Existing files are refused unless ``overwrite``; nothing is written then.
    """
    folder = Path(folder)
    chosen = list(SAMPLES if names is None else names)
    unknown = [n for n in chosen if n not in SAMPLES]
    if unknown:
        raise VaeflowError(f"unknown sample {unknown[0]!r}; choose from {', '.join(SAMPLES)}")
    if folder.exists() and not folder.is_dir():
        raise VaeflowError(f"{folder} is a file; give a folder to write the sample photos into")
    targets = [folder / f"{name}.png" for name in chosen]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise VaeflowError(f"{existing[0]} exists; pass --overwrite to replace the samples, or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in zip(chosen, targets, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(sample_image(name)).save(buffer, format="PNG")
        atomic_write(target, buffer.getvalue())
    return targets
