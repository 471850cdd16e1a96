"""Scanning a folder for images, reading headers only.

Captions and metadata in sidecar files (``NAME.txt``, ``NAME.caption``, ``NAME.json``: the
kohya and img2dataset conventions) travel with their image; a sidecar without an image is
reported as skipped, a bad one becomes a note. The scan never blocks or stops on one entry:
symbolic-link loops, links out of the source folder, FIFOs, sockets, devices and unreadable
folders become skipped rows with their reasons; image files whose header cannot be read
become failed rows. Sizes are those the
image is coded at (after EXIF orientation).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from vaeflow.dataset.layout import LAYOUT
from vaeflow.dataset.members import Member
from vaeflow.dataset.store import STORE_FORMAT
from vaeflow.foundations.errors import ImageReadError, VaeflowError
from vaeflow.foundations.imageio import IMAGE_SUFFIXES, read_header

SIDECAR_SUFFIXES = frozenset({".txt", ".caption", ".json"})
MAX_SIDECAR_BYTES = 1 << 16
MAX_JSON_DEPTH = 32  # a metadata sidecar nested deeper is a note (Python's json recurses per level)
NAME_NOTE = "its file name is not UTF-8: stored with each other byte as \\xNN and each backslash doubled"

_SPECIAL_FILE_TYPES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sidecar:
    """What files next to an image say of it: ``NAME.txt`` or ``NAME.caption`` (its caption, UTF-8)
    and ``NAME.json`` (its metadata, a JSON object; its "caption" is used when there is no text file)."""

    caption: str | None = None
    metadata: str | None = None  # the JSON object, compact
    notes: tuple[str, ...] = ()  # sidecars that could not be used, and why


@dataclass(frozen=True, slots=True)
class ScannedImage:
    path: str  # relative, POSIX separators
    height: int
    width: int
    size_bytes: int
    error: str | None = None  # set when the header could not be read
    sidecar: Sidecar | None = None
    mtime_ns: int = 0  # the file's modification time: with its size, how --add sees that it changed
    file: str | None = None  # the file's own relative path, where ``path`` (its name in the store) differs
    member: Member | None = None  # where it lies inside a shard or parquet file (its size_bytes and mtime_ns: the
    # member's size and the container's modification time)


@dataclass(frozen=True)
class Scan:
    images: tuple[ScannedImage, ...]
    skipped: tuple[tuple[str, str], ...]  # (relative path, reason)


def scan(src: Path, max_pixels: int, exclude: Path | None = None) -> Scan:
    """Every entry under ``src``, sorted by relative path: image files get their header read.

    ``exclude`` (the job's own store, when it lies inside ``src``) is left out silently.
    """
    if not src.is_dir():
        raise VaeflowError(f"source {src} is not a folder; give the folder of images to compress")
    root_real = src.resolve()
    images: list[ScannedImage] = []
    skipped: list[tuple[str, str]] = []

    def unreadable(error: OSError) -> None:
        where = Path(error.filename).relative_to(src).as_posix() if error.filename else "."
        skipped.append((storable(where), f"folder cannot be read: {error.strerror or error}"))

    for root, dirs, files in os.walk(src, onerror=unreadable):
        here = Path(root)
        kept = []
        for name in sorted(dirs):
            folder = here / name
            rel = folder.relative_to(src).as_posix()
            if exclude is not None and folder.absolute() == exclude.absolute():
                continue  # the job's own store
            if folder.is_symlink():
                skipped.append((storable(rel), "symbolic link to a folder (not followed)"))
            elif is_store(folder):
                skipped.append((storable(rel), "a vaeflow store (not scanned)"))
            else:
                kept.append(name)
        dirs[:] = kept
        stems = {Path(n).stem for n in files if Path(n).suffix.lower() in IMAGE_SUFFIXES}
        names = set(files)  # the folder's names, once: sidecars are looked up in it
        for name in sorted(files):
            path = here / name
            rel = path.relative_to(src).as_posix()
            shown = storable(rel)
            reason = _not_a_file(path, root_real)
            if reason is not None:
                skipped.append((shown, reason))
                continue
            if path.suffix.lower() in SIDECAR_SUFFIXES:
                if path.stem not in stems:
                    stem = storable(path.stem)
                    skipped.append((shown, f"{path.suffix} sidecar without an image of the name {stem}"))
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((shown, f"not an image type ({storable(path.suffix) or 'no extension'})"))
                continue
            file = rel if shown != rel else None  # a name that is not UTF-8: stored under its escaped name
            sidecar = read_sidecar(here, path.stem, names)
            size, mtime = 0, 0
            try:
                info = path.stat()
                size, mtime = info.st_size, info.st_mtime_ns
                height, width = read_header(path, max_pixels)
                images.append(ScannedImage(shown, height, width, size, None, sidecar, mtime, file))
            except ImageReadError as exc:
                images.append(ScannedImage(shown, 0, 0, size, str(exc), sidecar, mtime, file))
            except OSError as exc:
                reason = f"cannot read file: {exc.strerror or exc}"
                images.append(ScannedImage(shown, 0, 0, size, reason, sidecar, mtime, file))
    unique = _unique(images, skipped)
    return Scan(unique, tuple(sorted(skipped)))


def storable(name: str) -> str:
    """``name`` as the index stores it: itself when it is UTF-8 (what the store's text columns hold); a name
    the file system gave as other bytes (Python's surrogate escapes) losslessly, each backslash doubled and
    each byte that is not UTF-8 as ``\\xNN`` (``original_name`` reverses it)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape").replace(b"\\", b"\\\\")
        return raw.decode("utf-8", "backslashreplace")


def original_name(stored: str) -> bytes:
    """The file name's bytes of a name ``storable`` escaped (one whose row notes ``NAME_NOTE``)."""
    out, i = bytearray(), 0
    while i < len(stored):
        if stored.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif stored.startswith("\\x", i):
            out.append(int(stored[i + 2 : i + 4], 16))
            i += 4
        else:
            out += stored[i].encode("utf-8")
            i += 1
    return bytes(out)


def _unique(images: list[ScannedImage], skipped: list[tuple[str, str]]) -> tuple[ScannedImage, ...]:
    """The images, one per stored name: a file whose escaped name is also another file's own name is skipped
    with the reason (the file of that very name keeps the row)."""
    by_name: dict[str, ScannedImage] = {}
    for image in sorted(images, key=lambda im: (im.path, im.file is not None)):
        if image.path not in by_name:
            by_name[image.path] = image
        else:
            skipped.append((image.path, "its file name is not UTF-8 and, escaped, is another file's name; rename it"))
    return tuple(by_name.values())


def read_sidecar(folder: Path, stem: str, names: set[str]) -> Sidecar | None:
    """The caption and metadata files of the image ``stem`` in ``folder`` (None when it has none)."""
    found = [stem + suffix for suffix in (".txt", ".caption", ".json") if stem + suffix in names]
    if not found:
        return None
    raws: dict[str, bytes | None] = {}
    notes = []
    for name in found:
        try:
            raws[name] = (
                _head(folder / name, MAX_SIDECAR_BYTES + 1)
                if _not_a_file(folder / name, folder.resolve()) is None
                else None
            )
        except OSError as exc:
            notes.append(f"sidecar {name} cannot be read ({exc.strerror or exc}); ignored")
    return parse_sidecar(stem, raws, notes)


def parse_sidecar(stem: str, raws: dict[str, bytes | None], notes: list[str]) -> Sidecar:
    """The caption and metadata of the image ``stem`` from its sidecars' bytes (``STEM.txt``, ``STEM.caption``,
    ``STEM.json``; None for one that is no regular file), at most ``MAX_SIDECAR_BYTES + 1`` of each."""
    texts: dict[str, str] = {}
    for name, raw in raws.items():
        if raw is None:
            notes.append(f"sidecar {name} is not a regular file; ignored")
        elif len(raw) > MAX_SIDECAR_BYTES:
            notes.append(f"sidecar {name} is over {MAX_SIDECAR_BYTES} bytes; ignored")
        else:
            try:
                texts[name] = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                notes.append(f"sidecar {name} is not UTF-8; ignored")
    metadata, from_json = None, None
    if stem + ".json" in texts:
        try:
            value = json_object(texts[stem + ".json"])
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            metadata = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            metadata.encode("utf-8")  # a lone surrogate escape ("\\udcff") is no text the index can hold
            from_json = value.get("caption") if isinstance(value.get("caption"), str) else None
        except UnicodeEncodeError:
            metadata = None
            notes.append(f"sidecar {stem}.json holds a lone surrogate escape, which is not UTF-8; ignored")
        except ValueError as exc:
            notes.append(f"sidecar {stem}.json is not a JSON object ({exc}); ignored")
    captions = [texts[n].strip() for n in (stem + ".txt", stem + ".caption") if n in texts]
    if len(captions) == 2 and captions[0] != captions[1]:
        notes.append(f"{stem}.txt and {stem}.caption differ; the caption is {stem}.txt's")
    caption = captions[0] if captions else from_json
    return Sidecar(caption, metadata, tuple(storable(n) for n in notes))  # a file name in a note may be no UTF-8


def json_object(text: str, max_depth: int = MAX_JSON_DEPTH) -> object:
    """``json.loads(text)``, refused (``ValueError``) when its arrays and objects nest deeper than ``max_depth``:
    counted before parsing, since the parser recurses once per level."""
    if text.count("[") + text.count("{") <= max_depth:
        return json.loads(text)
    depth, deepest, in_string, escaped = 0, 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise ValueError(f"nested deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1
    return json.loads(text)


def _head(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes from the start of a file (a huge or sparse one is never read whole)."""
    with path.open("rb") as fh:
        return fh.read(limit)


def is_store(folder: Path) -> bool:
    try:
        with (folder / LAYOUT.zarr_json).open("rb") as fh:
            return STORE_FORMAT.encode() in fh.read(1 << 16)
    except OSError:
        return False


def _not_a_file(path: Path, root: Path) -> str | None:
    """Why ``path`` is not a regular file to read (None if it is one)."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            try:
                target = path.resolve(strict=True)
            except RuntimeError:
                return "symbolic link loop"
            except OSError:
                return "broken symbolic link"
            if not target.is_relative_to(root):
                return "symbolic link pointing outside the source folder"
            mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    for test, file_type in _SPECIAL_FILE_TYPES:
        if test(mode):
            return f"not a regular file ({file_type})"
    return None if stat.S_ISREG(mode) else "not a regular file"
