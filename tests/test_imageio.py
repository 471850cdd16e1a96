"""Reading image files: decompression bombs, lying extensions, every mode converted with a note."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from vaeflow.foundations.errors import ImageReadError, VaeflowError
from vaeflow.foundations.imageio import list_images, load_image, read_header


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.fixture()
def picture(photo: np.ndarray) -> Image.Image:
    return Image.fromarray(photo[:48, :80])


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = _save(Image.new("1", (12000, 12000)), tmp_path / "bomb.png")
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(path, max_pixels=50_000_000)


def test_lying_extension_and_garbage(tmp_path: Path, picture: Image.Image) -> None:
    liar = tmp_path / "really-a-png.jpg"
    picture.save(liar, format="PNG")
    assert load_image(liar).pixels.shape == (48, 80, 3)
    (tmp_path / "garbage.png").write_bytes(os.urandom(3000))
    with pytest.raises(ImageReadError, match=r"not a readable image|cannot decode"):
        load_image(tmp_path / "garbage.png")


def test_multi_frame_images_use_the_first_frame(tmp_path: Path, picture: Image.Image) -> None:
    frames = [picture, picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    for name in ("anim.webp", "pages.tiff", "anim.png"):
        path = tmp_path / name
        frames[0].save(path, save_all=True, append_images=frames[1:])
        loaded = load_image(path)
        assert "first of 2 frames" in loaded.notes, name
        assert np.abs(loaded.pixels.astype(int) - np.asarray(picture).astype(int)).mean() < 4


@pytest.mark.parametrize(
    ("mode", "note"),
    [("CMYK", "converted to RGB"), ("P", "converted to RGB"), ("LA", "alpha composited"), ("I;16", "scaled to 8 bits"),
     ("L", None)],
)  # fmt: skip
def test_modes_are_converted_with_notes(tmp_path: Path, picture: Image.Image, mode: str, note: str | None) -> None:
    image = picture.convert("L").convert("I;16") if mode == "I;16" else picture.convert(mode)
    path = _save(image, tmp_path / ("x.tiff" if mode == "CMYK" else "x.png"))
    loaded = load_image(path)
    assert loaded.pixels.shape == (48, 80, 3) and loaded.pixels.dtype == np.uint8
    assert (note is None and not loaded.notes) or any(note in n for n in loaded.notes)


def _png16(path: Path, pixels: np.ndarray) -> Path:
    """A 48-bit RGB PNG (Pillow reads these but cannot write them)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def test_16_bit_rgb_keeps_its_high_bytes_with_a_note(tmp_path: Path, picture: Image.Image) -> None:
    deep = np.asarray(picture).astype(np.uint16) * 257 + 100
    loaded = load_image(_png16(tmp_path / "deep.png", deep))
    assert "16-bit RGB scaled to 8 bits" in loaded.notes
    np.testing.assert_array_equal(loaded.pixels, (deep >> 8).astype(np.uint8))


def test_formats_outside_the_list_are_refused_whatever_their_extension(tmp_path: Path, picture: Image.Image) -> None:
    disguised = tmp_path / "icon.png"
    picture.resize((32, 32)).save(disguised, format="ICO")
    with pytest.raises(ImageReadError, match="not a readable image"):
        load_image(disguised)
    eps = tmp_path / "page.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageReadError, match="not a readable image"):
        load_image(eps)


def test_palette_transparency_and_icc_and_exif_orientation(tmp_path: Path, picture: Image.Image) -> None:
    palette = picture.convert("P")
    palette.info["transparency"] = 0
    assert any("alpha composited" in n for n in load_image(_save(palette, tmp_path / "p.png")).notes)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert "ICC profile ignored" in " ".join(
        load_image(_save(picture, tmp_path / "icc.png", icc_profile=profile)).notes
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(_save(picture, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95))
    assert loaded.pixels.shape == (80, 48, 3)
    assert "EXIF orientation 6 applied" in loaded.notes


def test_image_read_errors_are_vaeflow_errors(tmp_path: Path) -> None:
    assert issubclass(ImageReadError, VaeflowError)


def test_a_folder_lists_its_images_sorted_and_an_empty_one_says_so(tmp_path: Path, picture: Image.Image) -> None:
    for name in ("b.png", "a.JPG", "notes.txt"):
        picture.save(tmp_path / name, format="PNG") if name != "notes.txt" else (tmp_path / name).write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.name for p in list_images(tmp_path, limit=1)] == ["a.JPG"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaeflowError, match="no images in"):
        list_images(tmp_path / "empty")
    with pytest.raises(VaeflowError, match="is not a folder"):
        list_images(tmp_path / "b.png")


def _png_with_chunk_after_data(picture: Image.Image, path: Path, kind: bytes, body: bytes) -> Path:
    """A PNG of ``picture`` with one more chunk just before IEND, after the image data."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])
    return path


def _png_with_late_exif(picture: Image.Image, path: Path, orientation: int) -> Path:
    """A PNG whose eXIf chunk (orientation) comes after the image data, as some writers place it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif\x00\x00") else exif.tobytes()
    return _png_with_chunk_after_data(picture, path, b"eXIf", body)


def _png_with_xmp(picture: Image.Image, path: Path, late: bool) -> Path:
    """A PNG whose orientation 6 is given only by XMP (``tiff:Orientation``), before or after the data."""
    xmp = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    if late:  # an uncompressed iTXt: keyword, then null separator, flag, method, language and translated keyword
        body = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp.encode()
        return _png_with_chunk_after_data(picture, path, b"iTXt", body)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    picture.save(path, format="PNG", pnginfo=info)
    return path


@pytest.mark.parametrize("case", ["eXIf after the data", "eXIf before", "XMP before", "XMP after", "none"])
def test_png_headers_give_the_size_loading_gives(
    tmp_path: Path, picture: Image.Image, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = {
        "eXIf after the data": lambda: _png_with_late_exif(picture, tmp_path / "late.png", 6),
        "eXIf before": lambda: _save(picture, tmp_path / "early.png", exif=exif.tobytes()),
        "XMP before": lambda: _png_with_xmp(picture, tmp_path / "xmp.png", late=False),
        "XMP after": lambda: _png_with_xmp(picture, tmp_path / "late-xmp.png", late=True),
        "none": lambda: _save(picture, tmp_path / "plain.png"),
    }[case]()
    loaded = load_image(path)
    assert loaded.pixels.shape == ((48, 80, 3) if case == "none" else (80, 48, 3))
    assert (case == "none") != ("EXIF orientation 6 applied" in loaded.notes)
    if case != "XMP after":  # only text after the data needs decoding, as Pillow reads it

        def no_decoding(self: Image.Image) -> None:
            raise AssertionError("read_header decoded the image")

        monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    assert read_header(path) == loaded.pixels.shape[:2]
