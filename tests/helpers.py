"""Small helpers shared by tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path: two stores are byte-identical when these are equal."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def image_folder(root: Path, images: list[np.ndarray], height: int, width: int) -> Path:
    """``root/src`` holding ``0.png``, ``1.png``, ... : the top-left height x width of each image."""
    src = root / "src"
    src.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[:height, :width]).save(src / f"{i}.png")
    return src


def sync_job(src: Path, store: Path, **kwargs: Any) -> Any:
    """A dataset job run in this process (the reference executor)."""
    from vaeflow import compress_dataset

    return compress_dataset(src, store, scheduler="sync", **kwargs)
