"""Images that live inside a container file of the source, read in place and never unpacked to disk: a member of
a webdataset shard (a byte range of a ``.tar``) or a row of a parquet file (a cell of its image column).

A task reads only its images' byte ranges (a parquet row: its row group's image column, once for the rows of
a batch). A container that changed since the job was planned (its modification time differs) is refused, so a
store never mixes two versions of a shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

from vaeflow.dataset.location import is_url, url_filesystem
from vaeflow.foundations.errors import ImageReadError, VaeflowError


@dataclass(frozen=True, slots=True)
class TarMember:
    shard: str  # relative to the source folder, POSIX separators
    offset: int  # where the member's data begins in the shard
    size: int


@dataclass(frozen=True, slots=True)
class ParquetRow:
    file: str  # relative to the source folder, POSIX separators
    row_group: int
    row: int  # within its row group
    column: str  # the image column: encoded bytes, or Hugging Face's {"bytes", "path"} struct


Member = TarMember | ParquetRow


def container(member: Member) -> str:
    return member.shard if isinstance(member, TarMember) else member.file


def read_member(src: str, member: Member, stamp: int, storage_options: dict[str, Any] | None = None) -> bytes:
    """The encoded image's bytes; ``ImageReadError`` (the image's failure row) when its container is gone, changed
    since planning (``stamp``, what ``file_stamp`` or ``stamp_of`` gave then, differs), truncated, or holds no
    image there. ``src`` may be a URL (``storage_options`` go to its file system)."""
    item = _Located(member, stamp)
    if is_url(src) or isinstance(member, ParquetRow):
        return read_batch(src, [item], storage_options)[0]()
    path = os.path.join(src, member.shard)
    try:
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            _unchanged(member, file_stamp(info), stamp)
            if member.offset + member.size > info.st_size:
                raise ImageReadError(f"shard {member.shard} is truncated: this member ends past its end")
            fh.seek(member.offset)
            return fh.read(member.size)
    except OSError as exc:
        raise ImageReadError(f"cannot read {member.shard}: {exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class _Located:  # what read_batch needs of an item
    member: Member | None
    mtime_ns: int
    file: str | None = None
    path: str = ""


def file_stamp(info: os.stat_result) -> int:
    """A local container file as one number that changes when it does: its modification time, size and inode."""
    digest = hashlib.sha1(f"{info.st_mtime_ns}|{info.st_size}|{info.st_ino}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def _unchanged(member: Member | str, now: int, stamp: int) -> None:
    if now != stamp:
        what = {TarMember: "shard", ParquetRow: "parquet file"}.get(type(member), "file")
        name = member if isinstance(member, str) else container(member)
        raise ImageReadError(
            f"its {what} {name} changed since the job was planned; run the job again to code it as it is now"
        )


def read_batch(
    src: str, items: Sequence[Any], storage_options: dict[str, Any] | None
) -> dict[int, Callable[[], bytes]]:
    """The encoded bytes of a batch's images that are read together, by position: parquet rows (each row group
    read once) and, from object storage, every shard member and file in one concurrent call (``cat_ranges``).
    Each is a function that returns the bytes or raises the image's ``ImageReadError``. Local shard members and
    files are left to the caller."""
    remote = is_url(src)
    out: dict[int, Callable[[], bytes]] = {}
    groups: dict[tuple[str, int, str], list[tuple[int, ParquetRow]]] = {}
    ranged: list[tuple[int, str, int | None, int | None]] = []  # (position, path, start, end)
    stamps: dict[str, tuple[int, int] | ImageReadError] = {}  # each container's (stamp, size) now
    fs, root = source_fs(src, options_key(storage_options)) if remote else (None, src)
    for pos, item in enumerate(items):
        member = item.member
        if not remote and not isinstance(member, ParquetRow):
            continue
        relative = container(member) if member is not None else (item.file or item.path)
        if relative not in stamps:
            stamps[relative] = _stamp_now(fs, root, relative, src)
        now = stamps[relative]
        try:
            if isinstance(now, ImageReadError):
                raise now
            _unchanged(member or relative, now[0], item.mtime_ns)
            if isinstance(member, TarMember) and member.offset + member.size > now[1]:
                raise ImageReadError(f"shard {member.shard} is truncated: this member ends past its end")
        except ImageReadError as exc:
            out[pos] = partial(_raise, exc)
            continue
        if isinstance(member, ParquetRow):
            groups.setdefault((member.file, member.row_group, member.column), []).append((pos, member))
        else:
            start, end = (member.offset, member.offset + member.size) if member is not None else (None, None)
            ranged.append((pos, f"{root}/{relative}", start, end))
    for (file, row_group, column), rows in groups.items():
        try:
            values = _column(fs, f"{root}/{file}" if remote else os.path.join(src, file), row_group, column)
        except ImageReadError as exc:
            out |= {pos: partial(_raise, exc) for pos, _ in rows}
            continue
        out |= {pos: partial(_cell, values, member.row) for pos, member in rows}
    if ranged and fs is not None:
        data = fs.cat_ranges([r[1] for r in ranged], [r[2] for r in ranged], [r[3] for r in ranged], on_error="return")
        for (pos, path, _, _), value in zip(ranged, data, strict=True):
            if isinstance(value, BaseException):
                value = ImageReadError(f"cannot read {path}: {type(value).__name__}: {value}")
            out[pos] = partial(_raise, value) if isinstance(value, ImageReadError) else partial(bytes, value)
    return out


def _stamp_now(fs: Any, root: str, relative: str, src: str) -> tuple[int, int] | ImageReadError:
    """The container's stamp and size now, or the error that says why there are none."""
    try:
        if fs is None:
            info = os.stat(os.path.join(root, relative))
            return file_stamp(info), info.st_size
        path = f"{root}/{relative}"
        fs.invalidate_cache(path)  # a listing's cached details would hide a change
        details = fs.info(path)
        return stamp_of(details), int(details["size"])
    except FileNotFoundError:
        return ImageReadError(f"{src}/{relative} is gone since the job was planned")
    except OSError as exc:
        return ImageReadError(f"cannot read {src}/{relative}: {exc.strerror or exc}")
    except Exception as exc:  # network errors differ with every file system
        return ImageReadError(f"cannot read {src}/{relative}: {type(exc).__name__}: {exc}")


def _column(fs: Any, path: str, row_group: int, column: str) -> list[Any]:
    """One row group's image column, read once for the rows of a batch."""
    try:
        import pyarrow.parquet as pq  # optional (the sources extra): only parquet sources need it
    except ImportError as exc:  # planned where pyarrow is, run on a worker where it is not
        raise ImageReadError(
            "reading parquet rows needs pyarrow on every worker: pip install 'vaeflow[sources]'"
        ) from exc
    try:
        if fs is not None:
            with fs.open(path, "rb") as fh:
                table = pq.ParquetFile(fh).read_row_group(row_group, columns=[column])
        else:
            table = pq.ParquetFile(path).read_row_group(row_group, columns=[column])
    except Exception as exc:  # pyarrow raises its own for damaged pages and footers
        raise ImageReadError(f"row group {row_group} cannot be read: {type(exc).__name__}: {exc}") from exc
    return table.column(0).to_pylist()  # type: ignore[no-any-return]


def _raise(exc: ImageReadError) -> bytes:
    raise exc


def _cell(values: list[Any], row: int) -> bytes:
    if row >= len(values):
        raise ImageReadError(f"the row group has {len(values)} rows, not {row + 1}; the file changed")
    return image_bytes(values[row])


def image_bytes(value: Any) -> bytes:
    """An image cell's encoded bytes: plain binary, or a struct with ``bytes`` (Hugging Face's Image feature)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, bytes | bytearray | memoryview):
        if not value:
            raise ImageReadError("the image cell is empty")
        return bytes(value)
    if value is None:
        raise ImageReadError("the image cell is null (no image in this row)")
    raise ImageReadError(f"the image cell holds {type(value).__name__}, not encoded image bytes")


def require_pyarrow(what: str) -> None:
    try:
        import pyarrow.parquet  # noqa: F401  # optional (the sources extra): said plainly where it is missing
    except ImportError as exc:
        raise VaeflowError(f"reading {what} needs pyarrow: pip install 'vaeflow[sources]'") from exc


# Sources on object storage (any fsspec URL)


@lru_cache(maxsize=8)  # one file system per source in each process
def source_fs(url: str, options_json: str = "{}") -> tuple[Any, str]:
    """The fsspec file system of a source URL and the source's root path on it."""
    return url_filesystem(url, json.loads(options_json))


def options_key(storage_options: dict[str, Any] | None) -> str:
    return json.dumps(storage_options or {}, sort_keys=True, default=str)


def stamp_of(info: dict[str, Any]) -> int:
    """A file on object storage as one number that changes when it does: its ETag (or modification time) and
    size, hashed (what ``mtime_ns`` is for a local file)."""
    mark = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or info.get("created")
    digest = hashlib.sha1(f"{mark}|{info.get('size')}".encode()).digest()
    return int.from_bytes(digest[:7], "big")
