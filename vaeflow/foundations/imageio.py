"""Reading image files into HxWx3 uint8 arrays, and writing PNGs.

Conversions are documented here and reported as notes:
- greyscale, palette, CMYK and YCbCr become RGB;
- an alpha channel is composited onto white;
- 16-bit and 32-bit integer images are scaled to 8 bits (16-bit RGB by its high bytes);
- EXIF orientation is applied; ICC profiles are ignored (pixels are taken as sRGB, and
  the image's notes say so);
- animated and multi-frame files use their first frame.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vaeflow.foundations.errors import ImageReadError, VaeflowError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
# Formats read by content, whatever the extension says; never Pillow's others (EPS, PSD, ...).
READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG covers MPO
DEFAULT_MAX_PIXELS = 100_000_000  # per image file; larger ones need --max-pixels (peak memory grows with it)
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "ImageReadError", "LoadedImage", "as_rgb", "list_images",
           "load_image", "png_bytes", "read_header", "read_rgb", "write_png"]  # fmt: skip


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray
    notes: tuple[str, ...] = field(default=())


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def open_image(path: str | Path | BinaryIO, max_pixels: int) -> Iterator[Image.Image]:
    """Open an image file with vaeflow's pixel limit in force (Pillow's own check follows it).

    Pillow's bomb check reads a module-wide limit when a file is opened, so the limit is set
    under a lock for the moment of opening; decoding happens after, outside the lock.
    """
    with _PILLOW_LIMIT:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(path, formats=READ_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageReadError(f"image is over the limit of {max_pixels} pixels ({exc})") from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageReadError(f"not a readable image: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    try:
        check_size(im.size[1], im.size[0], max_pixels)
        yield im
    finally:
        im.close()


def read_header(path: str | Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) from the file header alone (of a file, or of a seekable binary file object), as the
    image is coded: after EXIF orientation."""
    with open_image(path, max_pixels) as im:
        width, height = im.size
        try:
            late = _png_metadata_after_data(path) if im.format == "PNG" and "exif" not in im.info else None
            if late is True:  # text chunks after the data (XMP, a raw EXIF profile): Pillow reads them by decoding
                exif = im.getexif()
            else:
                if late:
                    im.info["exif"] = b"Exif\x00\x00" + late
                exif = Image.Image.getexif(im)  # Pillow's PNG getexif would decode the image to look further
            orientation = exif.get(0x0112, 1)
        except (OSError, ValueError, SyntaxError, struct.error):  # a damaged EXIF block: loading reports it
            orientation = 1
        return (width, height) if orientation in TRANSPOSED_ORIENTATIONS else (height, width)


_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def _png_metadata_after_data(path: str | Path | BinaryIO) -> bytes | bool | None:
    """What a PNG holds after its image data that Pillow reads only once the image is loaded (up to
    an animation's next frame, or a damaged chunk): the last eXIf chunk's bytes, True for text
    chunks, None for neither; found by stepping over chunk lengths without decoding."""
    after_data, found = False, None
    with open(path, "rb") if isinstance(path, str | Path) else nullcontext(path) as f:
        f.seek(8)
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND" or not kind.isalpha() or (after_data and kind == b"fcTL"):
                break
            if kind == b"IDAT":
                after_data = True
            elif after_data and kind in _PNG_TEXT:
                return True
            elif after_data and kind == b"eXIf":
                found = f.read(length)
                f.seek(4, 1)
                continue
            f.seek(length + 4, 1)
    return found


def check_size(height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise ImageReadError(f"image has no pixels ({height}x{width})")
    if height * width > max_pixels:
        raise ImageReadError(
            f"image is {height}x{width} = {height * width} pixels, over the limit of "
            f"{max_pixels} (raise max_pixels to accept it)"
        )


def load_image(path: str | Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode a file (or a binary file object) to HxWx3 uint8 RGB, with notes on any conversion made."""
    with open_image(path, max_pixels) as im:
        try:
            notes: list[str] = []
            frames = int(getattr(im, "n_frames", 1))
            if frames > 1:
                notes.append(f"first of {frames} frames")
            if im.mode in ("RGB", "RGBA") and any(";16" in str(tile[3]) for tile in getattr(im, "tile", ())):
                notes.append(f"16-bit {im.mode} scaled to 8 bits")  # Pillow keeps each sample's high byte
            im.load()
            return _to_rgb(im, notes)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
            raise ImageReadError(f"cannot decode image: {exc}") from exc


def read_rgb(path: str | Path) -> np.ndarray:
    """The image file at ``path`` as HxWx3 uint8 RGB, converted as a dataset job converts it."""
    return load_image(path).pixels


def _to_rgb(im: Image.Image, notes: list[str]) -> LoadedImage:
    if im.info.get("icc_profile"):
        notes.append("ICC profile ignored (pixels taken as sRGB)")
    orientation = im.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"EXIF orientation {orientation} applied")
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(im).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "I" and arr.max() > 65535:
            peak = float(2**32 - 1)
        notes.append(f"{mode} image scaled to 8 bits")
        grey = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return LoadedImage(np.repeat(grey[..., None], 3, axis=2), tuple(notes))
    if mode == "F":
        raise ImageReadError("floating-point images (mode F) are not supported")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
        notes.append(f"{mode} alpha composited onto white")
    elif mode not in ("RGB", "L"):
        notes.append(f"{mode} converted to RGB")
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return LoadedImage(np.ascontiguousarray(rgb), tuple(notes))


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted by name; the first ``limit`` of them.

    For whole datasets (recursive, with every other entry reported), a job scans the folder instead.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VaeflowError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]
    if not paths:
        raise VaeflowError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def as_rgb(image: object) -> np.ndarray:
    """Check and convert one image array to HxWx3 uint8; HxW and HxWx1 greyscale become RGB."""
    accepted = "accepted: a uint8 array of shape (H, W, 3), (H, W) or (H, W, 1) with H, W >= 1"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}; {accepted}")
    if image.dtype != np.uint8:
        raise ValueError(f"image has dtype {image.dtype}; {accepted} (scale floats to 0..255 and cast first)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image has shape {image.shape}; {accepted}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty, shape {image.shape}; {accepted}")
    return np.ascontiguousarray(image)


def png_bytes(pixels: np.ndarray) -> bytes:
    """An HxWx3 uint8 image as a PNG file's bytes (what ``write_png`` writes)."""
    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, format="PNG")
    return out.getvalue()


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels, mode="RGB").save(path, format="PNG")
