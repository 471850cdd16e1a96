"""Decoding a store back to PNG files, as a job over batches of names.

Names come from the store's index, which may hold anything, so every target path is
checked: no absolute paths, no ``..``, no backslash or NUL, and no symbolic link in the
destination may lead outside ``DST_DIR``. An image whose name fails that, or whose file
cannot be made (a folder of its name in ``DST_DIR``, a file where its folder should be), is
skipped with the reason; every other image is written. Each file is written beside its
target and renamed over it, so nothing is ever written through a hard or symbolic link.

Two images never go to one file, and no file takes a path another image needs as a folder.
A stored name becomes a PNG path by these rules, in order:

1. its extension is replaced by ``.png`` (``a.jpg`` -> ``a.png``; no extension: ``.png`` added);
2. if an earlier image took that path, or another image's folder has that name (compared
   without regard to case, as some file systems do), the name keeps its extension:
   ``a.jpg`` -> ``a.jpg.png`` (so ``x.jpg`` beside ``x.png/y.png`` is written as ``x.jpg.png``);
3. if that is taken too, ``~2``, ``~3``, ... go before ``.png``: ``a~2.png``;
4. a path component over 255 bytes (UTF-8) is cut and ends in ``~`` and eight hex digits of
   the SHA-1 of the whole stored name, then ``.png``.

Files already in ``DST_DIR`` are never replaced unless asked (``overwrite``). A damaged
stream is named in the report and every other image is still written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vaeflow.dataset.reader import open_store
from vaeflow.foundations.durable import atomic_write
from vaeflow.foundations.errors import VaeflowError
from vaeflow.foundations.imageio import png_bytes
from vaeflow.models import RuntimeOptions

MAX_COMPONENT_BYTES = 255


@dataclass(frozen=True)
class DecodeTask:
    store: str
    dst: str
    pairs: tuple[tuple[str, str], ...]  # (name in store, target relative to dst)
    runtime: RuntimeOptions
    storage_options: dict[str, Any] | None = None  # for a store at a URL


@dataclass
class DecompressReport:
    written: list[str] = field(default_factory=list)  # targets, relative to the destination
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (stored name, why it did not decode)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (stored name, why it could not be written)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.skipped


def checked_name(name: str) -> PurePosixPath:
    """The stored name as a relative path; refuses names that could escape DST_DIR."""
    path = PurePosixPath(name)
    if not name or "\\" in name or "\0" in name or path.is_absolute() or ".." in path.parts or path.name in ("", "."):
        raise VaeflowError(f"refusing to write stored name {name!r}: it is absolute or leaves the destination")
    return path


def target_name(name: str) -> PurePosixPath:
    """Rule 1 (and 4): the PNG path a stored name gets when nothing else claims it."""
    path = checked_name(name)
    return _fit(path.with_suffix(".png") if path.suffix else path.with_name(path.name + ".png"), name)


def _fit(path: PurePosixPath, name: str, counter: int = 0) -> PurePosixPath:
    """``path`` with ``~counter`` before ``.png`` (when counter > 1), every component within the limit."""
    stem = path.name[: -len(".png")]
    tail = f"~{counter}.png" if counter > 1 else ".png"
    parts = [_short(part, name, "") for part in path.parent.parts]
    if len((stem + tail).encode()) > MAX_COMPONENT_BYTES:
        stem = _cut(stem, MAX_COMPONENT_BYTES - len(tail.encode()) - 9) + "~" + _digest(name)
    return PurePosixPath(*parts, stem + tail)


def _short(part: str, name: str, tail: str) -> str:
    if len(part.encode()) <= MAX_COMPONENT_BYTES:
        return part
    return _cut(part, MAX_COMPONENT_BYTES - 9) + "~" + _digest(name)


def _cut(text: str, limit: int) -> str:
    return text.encode()[:limit].decode("utf-8", "ignore")


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def plan_targets(names: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Each stored name with its own PNG path (the rules above), in order; and the names that cannot be written
    anywhere (unsafe), with the reason."""
    firsts: dict[str, PurePosixPath] = {}
    refused = []
    for name in names:
        try:
            firsts[name] = target_name(name)
        except VaeflowError as exc:
            refused.append((name, str(exc)))
    folders = {str(parent).casefold() for first in firsts.values() for parent in first.parents}
    taken: set[str] = set(folders)  # no file where an image needs a folder
    out = []
    for name, first in firsts.items():
        candidates = [first, _fit(checked_name(name + ".png"), name)]
        target = next((c for c in candidates if str(c).casefold() not in taken), None)
        counter = 2
        while target is None:
            numbered = _fit(first, name, counter)
            target = numbered if str(numbered).casefold() not in taken else None
            counter += 1
        taken.add(str(target).casefold())
        out.append((name, str(target)))
    return out, refused


def safe_path(dst: Path, relative: str) -> Path:
    """``dst / relative``, refused if it resolves (through symlinks) outside ``dst``."""
    root = dst.resolve()
    target = root / relative
    if not target.parent.resolve().is_relative_to(root) or (
        target.is_symlink() and not target.resolve().is_relative_to(root)
    ):
        raise VaeflowError(f"refusing to write {relative!r}: a symbolic link in {dst} leads outside it")
    return target


def decode_batch(task: DecodeTask) -> DecompressReport:
    reader = open_store(task.store, task.runtime, task.storage_options)
    dst = Path(task.dst)
    report = DecompressReport()
    for name, relative in task.pairs:
        try:
            image = reader.read_image(name)
        except VaeflowError as exc:
            report.damaged.append((name, str(exc)))
            continue
        try:
            target = safe_path(dst, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            safe_path(dst, relative)  # again, now that the folders exist
            atomic_write(target, png_bytes(image), sync=False)  # never through a link
        except (VaeflowError, OSError) as exc:
            report.skipped.append((name, f"{relative} cannot be written: {getattr(exc, 'strerror', None) or exc}"))
            continue
        report.written.append(relative)
    return report


def decompress_store(
    store: str | Path,
    dst: str | Path,
    names: list[str] | None = None,
    runtime: RuntimeOptions | None = None,
    batch_size: int = 8,
    run: Callable[[Callable[[DecodeTask], DecompressReport], list[DecodeTask]], Iterator[DecompressReport]]
    | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> DecompressReport:
    """Write the named images (all by default) as PNGs under ``dst``.

    ``run`` maps the decode function over tasks (a Dask client's map, say); by default
    tasks run in this process. Nothing is written when a name is not stored or a file
    exists already (unless ``overwrite``); an image that cannot be written is skipped
    with its reason (``report.skipped``). ``store`` may be a URL (``storage_options`` go to its file system).
    """
    reader = open_store(store, storage_options=storage_options)
    chosen = reader.names if names is None else names
    missing = [n for n in chosen if n not in reader]
    if missing:
        raise VaeflowError(f"not stored in {store}: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    planned, refused = plan_targets(chosen)
    dst = Path(dst).absolute()
    report = DecompressReport(skipped=refused)
    pairs = []
    for name, relative in planned:
        try:
            target = safe_path(dst, relative)
        except VaeflowError as exc:
            report.skipped.append((name, str(exc)))
            continue
        if target.is_dir() and not target.is_symlink():
            report.skipped.append((name, f"{relative} cannot be written: a folder of that name is in {dst}"))
            continue
        if target.exists() and not overwrite:
            raise VaeflowError(f"{target} exists; pass --overwrite to replace files, or choose an empty folder")
        pairs.append((name, relative))
    dst.mkdir(parents=True, exist_ok=True)
    tasks = [
        DecodeTask(str(store), str(dst), tuple(pairs[i : i + batch_size]), runtime or RuntimeOptions(), storage_options)
        for i in range(0, len(pairs), batch_size)
    ]
    mapper = run or (lambda fn, items: map(fn, items))
    for part in mapper(decode_batch, tasks):
        report.written += part.written
        report.damaged += part.damaged
        report.skipped += part.skipped
    return report
