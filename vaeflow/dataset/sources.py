"""What a job reads: a folder of image files (``scan``), a folder of webdataset shards, or a folder of parquet
files, scanned in place; the format found from the folder's files or named (``--source-format``).

- **webdataset**: ``.tar`` shards (img2dataset's ``00000.tar`` with ``KEY.jpg``, ``KEY.txt``, ``KEY.json``). A
  sample is the members that share a key (the member's path up to the first dot of its file name); its image
  is the member with an image extension, ``.txt``/``.caption`` its caption and ``.json`` its metadata, as
  sidecars are in a folder. Planning reads each shard's headers (stepping over the data) and each image's own
  header; a sample is named ``SHARD/KEY`` (the shard's path without ``.tar``).
- **parquet**: files with an image column (encoded bytes, or Hugging Face's ``{"bytes", "path"}`` struct), a
  caption column and any other columns as metadata (a JSON object of them); a row is named ``FILE/ROW`` (the
  file's path without ``.parquet``, the row's number in the file). Planning reads one row group at a time.

Nothing is unpacked to disk. A damaged member or row, or a shard cut short, becomes a failed row with its
reason; the rest of the job goes on.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vaeflow.dataset.location import is_url
from vaeflow.dataset.members import (
    ParquetRow,
    TarMember,
    container,
    file_stamp,
    image_bytes,
    options_key,
    require_pyarrow,
    source_fs,
    stamp_of,
)  # fmt: skip
from vaeflow.dataset.options import SourceOptions
from vaeflow.dataset.scan import (
    MAX_SIDECAR_BYTES,
    Scan,
    ScannedImage,
    Sidecar,
    is_store,
    parse_sidecar,
    scan,
    storable,
)  # fmt: skip
from vaeflow.foundations.errors import ImageReadError, VaeflowError
from vaeflow.foundations.imageio import IMAGE_SUFFIXES, read_header

FOLDER, WEBDATASET, PARQUET = "folder", "webdataset", "parquet"
SOURCE_FORMATS = (FOLDER, WEBDATASET, PARQUET)
SUFFIXES = {WEBDATASET: ".tar", PARQUET: ".parquet"}
IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img")  # the first present is the image column, unless named
CAPTION_COLUMNS = ("caption", "text")
SIDECAR_EXTENSIONS = ("txt", "caption", "json")
SIDECAR_SUFFIXES = tuple("." + e for e in SIDECAR_EXTENSIONS)
# A remote shard's headers are read in blocks this large: each request costs tens of milliseconds, and the tar
# headers and the images' own (a PNG's chunks run to its end) are spread over the whole shard.
REMOTE_BLOCK = 16 << 20


def scan_source(src: Path | str, max_pixels: int, exclude: Path | None = None,
                source: SourceOptions | None = None) -> Scan:  # fmt: skip
    """Every image of the source at ``src`` (a folder, or a URL of a prefix on object storage), sorted by name, in
    whichever format it is."""
    source = source or SourceOptions()
    if is_url(src):
        return scan_remote(str(src), max_pixels, source)
    src = Path(src)
    names = _local_files(src, exclude, source.pattern)
    found = _format_of(src, names, source.format)
    if found == FOLDER:
        return _matching(scan(src, max_pixels, exclude), source.pattern)
    suffix = SUFFIXES[found]
    containers = [n for n in names if n.lower().endswith(suffix) and (src / n).is_file()]
    reason = f"not a {suffix} file (the source is read as {found})"  # img2dataset's parquet and stats beside shards
    others = Scan((), tuple((storable(n), reason) for n in sorted(set(names) - set(containers))))
    if found == WEBDATASET:
        return _sorted(iter([others, *(scan_shard(src, shard, max_pixels) for shard in containers)]))
    require_pyarrow(f"the parquet files of {src}")
    return _sorted(iter([others, *(scan_parquet(src, file, max_pixels, source) for file in containers)]))


def _local_files(src: Path, exclude: Path | None, pattern: str | None) -> list[str]:
    """Every file under the source folder that the glob matches (all without one), relative, in one walk."""
    if not src.is_dir():
        raise VaeflowError(f"source {src} is not a folder; give the folder of images, shards or parquet files")
    names = ((here / name).relative_to(src).as_posix() for here, files in _walk(src, exclude) for name in files)
    matched = sorted(name for name in names if _matches(name, pattern))
    if pattern is not None and not matched:
        raise VaeflowError(f"no file in {src} matches {pattern!r}; check the pattern")
    return matched


def split_glob(src: str | Path) -> tuple[str | Path, str | None]:
    """A source given as a glob (``data/train-*.parquet``: ``*``, ``?`` and ``[...]`` match within one path
    component) as the folder before its first wildcard and the pattern of the rest; a single shard or parquet
    file as its folder and its own name."""
    text = str(src)
    url = is_url(text)
    wildcards = "*[" if text.lower().startswith(("http://", "https://")) else "*?["  # a query's ? is no wildcard
    if not any(c in text for c in wildcards) or (not url and Path(text).exists()):
        if text.lower().endswith(tuple(SUFFIXES.values())) and (url or Path(text).is_file()):
            folder, _, name = text.rstrip("/").rpartition("/")
            return (folder if url else Path(text).parent), glob.escape(name)
        return src, None
    scheme, sep, rest = text.partition("://") if url else ("", "", text)
    parts = rest.split("/")
    first = next(i for i, part in enumerate(parts) if any(c in part for c in wildcards))
    if url and first == 0:
        raise VaeflowError(f"{text}: wildcards go in the path, not in the bucket or host; name the bucket")
    root = "/".join(parts[:first]) or ("/" if rest.startswith("/") else ".")
    return (f"{scheme}{sep}{root}" if sep else Path(root)), "/".join(parts[first:])


def _matches(relative: str, pattern: str | None) -> bool:
    """Whether a path relative to the source matches the glob, one component against one (``*`` stops at ``/``)."""
    if pattern is None:
        return True
    parts, wanted = relative.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True))


def _matching(found: Scan, pattern: str | None) -> Scan:
    if pattern is None:
        return found
    return Scan(tuple(i for i in found.images if _matches(i.file or i.path, pattern)),
                tuple(s for s in found.skipped if _matches(s[0], pattern)))  # fmt: skip


def _format_of(src: Path | str, names: Iterable[str], asked: str | None) -> str:
    if asked is not None:
        if asked not in SOURCE_FORMATS:
            raise VaeflowError(f"unknown source format {asked!r}; choose one of {', '.join(SOURCE_FORMATS)}")
        return asked
    kinds = set()
    for name in names:
        suffix = os.path.splitext(name)[1].lower()
        kinds |= {FOLDER} if suffix in IMAGE_SUFFIXES else {k for k, s in SUFFIXES.items() if s == suffix}
    if kinds == {WEBDATASET, PARQUET}:  # img2dataset writes each shard's metadata as a parquet file beside it
        return WEBDATASET
    if len(kinds) > 1:
        held = " and ".join({FOLDER: "image files", WEBDATASET: ".tar shards", PARQUET: ".parquet files"}[k]
                            for k in sorted(kinds))  # fmt: skip
        raise VaeflowError(f"{src} holds {held}: say which to read with --source-format {'|'.join(sorted(kinds))}")
    return kinds.pop() if kinds else FOLDER


def _walk(src: Path, exclude: Path | None) -> Iterator[tuple[Path, list[str]]]:
    """Each folder under ``src`` with its file names, leaving out stores and symbolic links to folders."""
    for root, dirs, files in os.walk(src):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs
            if not (here / d).is_symlink() and not is_store(here / d)
            and (exclude is None or (here / d).absolute() != exclude.absolute())
        )  # fmt: skip
        yield here, sorted(files)


def _sorted(parts: Iterator[Scan]) -> Scan:
    """The containers' images, one per name (a name two containers give, such as shard ``a.tar``'s ``b/x.jpg``
    and shard ``a/b.tar``'s ``x.jpg``, goes to the first; the other is skipped with the reason)."""
    images: dict[str, ScannedImage] = {}
    skipped: list[tuple[str, str]] = []
    for part in parts:
        skipped += part.skipped
        for image in part.images:
            if image.path in images:
                first = images[image.path].member
                where = container(first) if first is not None else image.path
                skipped.append((image.path, f"another sample has this name (in {where}); rename one of them"))
            else:
                images[image.path] = image
    return Scan(tuple(sorted(images.values(), key=lambda im: im.path)), tuple(sorted(skipped)))


# Sources on object storage


def scan_remote(url: str, max_pixels: int, source: SourceOptions) -> Scan:
    """A prefix on object storage, listed once, each file read through fsspec: image files (with sidecars), shards
    (their headers, then each image's header, in place) or parquet files (a row group at a time)."""
    fs, root = source_fs(url, options_key(source.storage_options))
    try:
        listing = fs.find(root, detail=True)
    except Exception as exc:  # each file system raises its own
        raise VaeflowError(
            f"cannot list {url}: {type(exc).__name__}: {exc}; check the URL and storage options"
        ) from exc
    files = {
        path[len(root) + 1 :]: info
        for path, info in listing.items()
        if info.get("type", "file") == "file"
        and path.startswith(root + "/")
        and ".zarr/" not in path  # no stores
        and _matches(path[len(root) + 1 :], source.pattern)
    }
    if not files:
        matching = f" matches {source.pattern!r}" if source.pattern else ""
        raise VaeflowError(f"nothing at {url}{matching}; check the bucket, the prefix and the storage options")
    found = _format_of(url, files, source.format)
    parts: list[Scan] = []
    for rel in sorted(files):
        size, stamp, path = int(files[rel]["size"]), stamp_of(files[rel]), f"{root}/{rel}"
        try:
            if found == WEBDATASET and rel.lower().endswith(SUFFIXES[WEBDATASET]):
                with fs.open(path, "rb", block_size=REMOTE_BLOCK) as fh:
                    parts.append(read_shard(fh, size, stamp, rel, max_pixels))
            elif found == PARQUET and rel.lower().endswith(SUFFIXES[PARQUET]):
                require_pyarrow(f"the parquet files of {url}")
                parts.append(_remote_parquet(fs, path, rel, stamp, max_pixels, source))
            elif found == FOLDER:
                parts.append(_remote_file(fs, root, rel, files, size, stamp, max_pixels))
        except VaeflowError:
            raise
        except Exception as exc:  # gone since the listing, or a network error: each file system raises its own
            parts.append(Scan((), ((storable(rel), f"cannot be read: {type(exc).__name__}: {exc}"),)))
    return _sorted(iter(parts))


def _remote_parquet(fs: Any, path: str, rel: str, stamp: int, max_pixels: int, source: SourceOptions) -> Scan:
    import pyarrow.parquet as pq  # optional (the sources extra): only parquet sources need it

    try:
        with fs.open(path, "rb") as fh:
            return read_parquet(pq.ParquetFile(fh), rel, stamp, max_pixels, source)
    except Exception as exc:  # pyarrow and the file system raise their own
        return Scan((), ((storable(rel), f"not a readable parquet file ({type(exc).__name__}: {exc})"),))


def _remote_file(fs: Any, root: str, rel: str, files: dict[str, Any], size: int, stamp: int,
                 max_pixels: int) -> Scan:  # fmt: skip
    """One file of a folder of images on object storage: an image (header and sidecars read), a sidecar, or
    another file (skipped, as in a local folder)."""
    stem, suffix = os.path.splitext(rel)
    suffix = suffix.lower()
    if suffix in (".txt", ".caption", ".json"):
        if not any(stem + s in files for s in IMAGE_SUFFIXES | {s.upper() for s in IMAGE_SUFFIXES}):
            return Scan((), ((storable(rel), f"{suffix} sidecar without an image of the name {storable(stem)}"),))
        return Scan((), ())
    if suffix not in IMAGE_SUFFIXES:
        return Scan((), ((storable(rel), f"not an image type ({storable(suffix) or 'no extension'})"),))
    raws = {os.path.basename(stem) + s: fs.cat_file(f"{root}/{stem}{s}", start=0, end=MAX_SIDECAR_BYTES + 1)
            for s in SIDECAR_SUFFIXES if stem + s in files}  # fmt: skip
    sidecar = parse_sidecar(os.path.basename(stem), raws, []) if raws else None  # type: ignore[arg-type]
    try:
        with fs.open(f"{root}/{rel}", "rb") as fh:
            height, width = read_header(fh, max_pixels)
        return Scan((ScannedImage(storable(rel), height, width, size, None, sidecar, stamp),), ())
    except ImageReadError as exc:
        return Scan((ScannedImage(storable(rel), 0, 0, size, str(exc), sidecar, stamp),), ())
    except Exception as exc:  # network errors differ with every file system
        reason = f"cannot read file: {type(exc).__name__}: {exc}"
        return Scan((ScannedImage(storable(rel), 0, 0, size, reason, sidecar, stamp),), ())


# webdataset shards


class _Window(io.RawIOBase):
    """A member's bytes, read in place from its open shard: what Pillow reads an image header from."""

    def __init__(self, fh: BinaryIO, offset: int, size: int) -> None:
        self._fh, self._offset, self._size, self._pos = fh, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        self._pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        self._fh.seek(self._offset + self._pos)
        data = self._fh.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _key(member: str) -> tuple[str, str]:
    """webdataset's (key, extension): the path up to the first dot of the file name, and the rest."""
    folder, _, name = member.rpartition("/")
    stem, _, extension = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension


def scan_shard(src: Path, shard: str, max_pixels: int) -> Scan:
    """One local shard's samples, from its tar headers; its images' own headers read in place."""
    try:
        with (src / shard).open("rb") as fh:
            info = os.fstat(fh.fileno())
            return read_shard(fh, info.st_size, file_stamp(info), shard, max_pixels)
    except OSError as exc:
        return Scan((), ((storable(shard), f"shard cannot be read: {exc.strerror or exc}"),))


def read_shard(fh: BinaryIO, size: int, stamp: int, shard: str, max_pixels: int) -> Scan:
    """The samples of the shard open as ``fh`` (``size`` bytes; ``stamp``: its modification time, or what stands
    for it on object storage)."""
    prefix = shard[: -len(SUFFIXES[WEBDATASET])]
    images: list[ScannedImage] = []
    skipped: list[tuple[str, str]] = []
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    damage = _read_members(fh, samples, skipped, prefix)
    if damage is not None and not samples:
        return Scan((), ((storable(shard), f"not a readable tar shard ({damage})"),))
    if damage is not None:
        skipped.append((storable(shard), f"shard is damaged after its first samples ({damage}); the rest of "
                                         "it is not read"))  # fmt: skip
    for key, members in samples.items():
        images += _sample(fh, size, stamp, shard, prefix, key, members, max_pixels, skipped)
    return Scan(tuple(images), tuple(skipped))


def _read_members(fh: BinaryIO, samples: dict[str, dict[str, tarfile.TarInfo]],
                  skipped: list[tuple[str, str]], prefix: str) -> str | None:  # fmt: skip
    """Every member's header, grouped by key into ``samples``; the damage that stopped the reading, if any."""
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            while (member := tar.next()) is not None:
                if member.isdir():
                    continue
                shown = storable(f"{prefix}/{member.name}")
                if not member.isfile():
                    skipped.append((shown, "not a regular file member"))
                    continue
                name = posixpath.normpath(member.name.removeprefix("./"))
                key, extension = _key(name)
                if name.startswith(("/", "../")) or name == ".." or not key or key.endswith("/"):
                    skipped.append((shown, "member name without a key, absolute or leading out of the shard"))
                    continue
                if not extension:
                    skipped.append((shown, "member without an extension (webdataset names members KEY.EXT)"))
                    continue
                sample = samples.setdefault(key, {})
                if extension.lower() in sample:
                    skipped.append((shown, f"duplicate key: an earlier member of this shard is {key}.{extension}"))
                    continue
                sample[extension.lower()] = member
            end = tar.offset  # Python's tarfile ends quietly at a damaged header after the first
    except (tarfile.TarError, EOFError) as exc:
        return str(exc) or type(exc).__name__
    fh.seek(end)
    if fh.read(tarfile.BLOCKSIZE).strip(b"\0"):
        return f"a damaged tar header at byte {end}"
    return None


def _sample(fh: BinaryIO, size: int, stamp: int, shard: str, prefix: str, key: str,
            members: dict[str, tarfile.TarInfo], max_pixels: int,
            skipped: list[tuple[str, str]]) -> list[ScannedImage]:  # fmt: skip
    found = [e for e in members if "." + e.rsplit(".", 1)[-1] in IMAGE_SUFFIXES]
    for extension, member in members.items():
        shown = storable(f"{prefix}/{member.name}")
        if extension in SIDECAR_EXTENSIONS:
            if not found:
                skipped.append((shown, f".{extension} sidecar without an image of the key {storable(key)}"))
        elif not found or extension != found[0]:
            reason = (f"a second image of the sample {storable(key)} (its first, .{found[0]}, is coded)"
                      if extension in found else f"not an image type (.{storable(extension)})")  # fmt: skip
            skipped.append((shown, reason))
    if not found:
        return []
    member = members[found[0]]
    raws: dict[str, bytes | None] = {}
    for extension in SIDECAR_EXTENSIONS:
        if extension in members:
            side = members[extension]
            fh.seek(side.offset_data)
            raws[f"{key}.{extension}"] = fh.read(min(side.size, MAX_SIDECAR_BYTES + 1))
    sidecar = parse_sidecar(key, raws, []) if raws else None
    raw = f"{prefix}/{key}"
    name = storable(raw)
    height = width = 0
    error = None
    if member.offset_data + member.size > size:
        error = f"shard {storable(shard)} is truncated: the image member ends past the shard's end"
    else:
        window = io.BufferedReader(_Window(fh, member.offset_data, member.size), 1 << 16)
        try:
            height, width = read_header(window, max_pixels)  # type: ignore[arg-type]
        except ImageReadError as exc:
            error = str(exc)
    where = TarMember(shard, member.offset_data, member.size)
    escaped = raw if name != raw else None  # the row notes how a name that is not UTF-8 was stored
    return [ScannedImage(name, height, width, member.size, error, sidecar, stamp, escaped, where)]


# parquet files


def scan_parquet(src: Path, file: str, max_pixels: int, source: SourceOptions) -> Scan:
    """One local parquet file's rows."""
    import pyarrow.parquet as pq  # optional (the sources extra): only parquet sources need it

    try:
        stamp = file_stamp((src / file).stat())
        parquet = pq.ParquetFile(src / file)
    except Exception as exc:  # pyarrow raises its own for a damaged footer
        return Scan((), ((storable(file), f"not a readable parquet file ({type(exc).__name__}: {exc})"),))
    return read_parquet(parquet, file, stamp, max_pixels, source)


def read_parquet(parquet: Any, file: str, stamp: int, max_pixels: int, source: SourceOptions) -> Scan:
    """The rows of an open ``pyarrow.parquet.ParquetFile``, a row group at a time: each image cell's header,
    its caption and metadata."""
    prefix = file[: -len(SUFFIXES[PARQUET])]
    columns = parquet.schema_arrow.names
    image = _column(columns, source.image_column, IMAGE_COLUMNS)
    if image is None:
        wanted = f"no column {source.image_column!r}" if source.image_column else "no image column"
        return Scan((), ((storable(file), f"{wanted} (its columns: {', '.join(columns)}); name it with "
                                          "--image-column"),))  # fmt: skip
    caption = _column(columns, source.caption_column, CAPTION_COLUMNS)
    if source.caption_column and caption is None:
        return Scan((), ((storable(file), f"no column {source.caption_column!r} (its columns: {', '.join(columns)}); "
                                          "name the caption's with --caption-column"),))  # fmt: skip
    metadata = [c for c in columns if c not in (image, caption) and _is_plain(parquet.schema_arrow.field(c).type)]
    images: list[ScannedImage] = []
    first = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        try:
            table = parquet.read_row_group(group, columns=[image, *([caption] if caption else []), *metadata])
            cells = table.column(image).to_pylist()
            captions = table.column(caption).to_pylist() if caption else [None] * rows
            fields = table.select(metadata).to_pylist() if metadata else [{}] * rows
        except Exception as exc:  # a damaged page: its row group's rows fail
            reason = f"row group {group} cannot be read ({type(exc).__name__}: {exc})"
            images += [ScannedImage(storable(f"{prefix}/{first + r}"), 0, 0, 0, reason, None, stamp, None,
                                    ParquetRow(file, group, r, image)) for r in range(rows)]  # fmt: skip
            first += rows
            continue
        for r, (cell, text, row_fields) in enumerate(zip(cells, captions, fields, strict=True)):
            images.append(_row(prefix, first + r, cell, text, row_fields, max_pixels, stamp,
                               ParquetRow(file, group, r, image)))  # fmt: skip
        first += rows
    return Scan(tuple(images), ())


def _column(columns: list[str], asked: str | None, defaults: tuple[str, ...]) -> str | None:
    if asked is not None:
        return asked if asked in columns else None
    return next((c for c in defaults if c in columns), None)


def _is_plain(kind: Any) -> bool:
    """A column that is metadata: no binary in it (images, embeddings as bytes)."""
    import pyarrow as pa  # optional (the sources extra), as above

    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return False
    if pa.types.is_struct(kind):
        return all(_is_plain(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _is_plain(kind.value_type)
    return True


def _row(prefix: str, row: int, cell: Any, text: Any, fields: dict[str, Any], max_pixels: int, mtime_ns: int,
         where: ParquetRow) -> ScannedImage:  # fmt: skip
    name = storable(f"{prefix}/{row}")
    caption = text.strip() if isinstance(text, str) else None
    try:
        metadata = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str) if fields else None
    except ValueError:  # NaN and the like are written by json as they are; only cycles land here
        metadata = None
    sidecar = Sidecar(caption or None, metadata) if caption or metadata else None
    try:
        data = image_bytes(cell)
        height, width = read_header(io.BytesIO(data), max_pixels)
        return ScannedImage(name, height, width, len(data), None, sidecar, mtime_ns, None, where)
    except ImageReadError as exc:
        return ScannedImage(name, 0, 0, 0, str(exc), sidecar, mtime_ns, None, where)
