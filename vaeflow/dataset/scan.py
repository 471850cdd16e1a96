"""Scanning a folder for images, reading headers only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vaeflow.imageio import IMAGE_SUFFIXES, ImageReadError, read_header


@dataclass(frozen=True)
class ScannedImage:
    path: str  # relative, POSIX separators
    height: int
    width: int
    size_bytes: int
    error: str | None = None  # set when the header could not be read


@dataclass(frozen=True)
class Scan:
    images: tuple[ScannedImage, ...]
    skipped: tuple[tuple[str, str], ...]  # (relative path, reason)


def scan(src: Path, max_pixels: int) -> Scan:
    """Every file under ``src``, sorted by relative path: image types get their header read."""
    if not src.is_dir():
        raise ValueError(f"source {src} is not a directory")
    images: list[ScannedImage] = []
    skipped: list[tuple[str, str]] = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(src).as_posix()
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((rel, f"not an image type ({path.suffix or 'no extension'})"))
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(src.resolve()):
                skipped.append((rel, "symbolic link pointing outside the source folder"))
                continue
            try:
                size = path.stat().st_size
                height, width = read_header(path, max_pixels)
                images.append(ScannedImage(rel, height, width, size))
            except ImageReadError as exc:
                images.append(ScannedImage(rel, 0, 0, size, str(exc)))
            except OSError as exc:
                images.append(ScannedImage(rel, 0, 0, 0, f"cannot read file: {exc.strerror or exc}"))
    images.sort(key=lambda im: im.path)
    return Scan(tuple(images), tuple(sorted(skipped)))
