"""Decoding a store back to PNG files, as a job over batches of names.

Names come from the store's index, which may hold anything, so every target path is
checked: no absolute paths, no ``..``, and no symbolic link in the destination may lead
outside ``DST_DIR``. Such names are refused with an error before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vaeflow.dataset.reader import open_store
from vaeflow.errors import VaeflowError
from vaeflow.imageio import write_png
from vaeflow.models import RuntimeOptions


@dataclass(frozen=True)
class DecodeTask:
    store: str
    dst: str
    pairs: tuple[tuple[str, str], ...]  # (name in store, target relative to dst)
    runtime: RuntimeOptions


def target_name(name: str) -> PurePosixPath:
    """The relative PNG path for a stored name; refuses names that could escape DST_DIR."""
    path = PurePosixPath(name)
    if not name or "\\" in name or "\0" in name or path.is_absolute() or ".." in path.parts or path.name in ("", "."):
        raise VaeflowError(f"refusing to write stored name {name!r}: it is absolute or leaves the destination")
    return path.with_suffix(".png") if path.suffix else path.with_name(path.name + ".png")


def plan_targets(names: list[str]) -> list[tuple[str, str]]:
    targets: dict[PurePosixPath, str] = {}
    out = []
    for name in names:
        target = target_name(name)
        if target in targets:  # a.jpg and a.png: keep both, the second as a.jpg.png
            target = PurePosixPath(name + ".png")
        targets[target] = name
        out.append((name, str(target)))
    return out


def safe_path(dst: Path, relative: str) -> Path:
    """``dst / relative``, refused if it resolves (through symlinks) outside ``dst``."""
    root = dst.resolve()
    target = root / relative
    if not target.parent.resolve().is_relative_to(root) or (
        target.is_symlink() and not target.resolve().is_relative_to(root)
    ):
        raise VaeflowError(f"refusing to write {relative!r}: a symbolic link in {dst} leads outside it")
    return target


def decode_batch(task: DecodeTask) -> list[str]:
    reader = open_store(task.store, task.runtime)
    dst = Path(task.dst)
    written = []
    for name, relative in task.pairs:
        target = safe_path(dst, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        safe_path(dst, relative)  # again, now that the folders exist
        write_png(target, reader.read_image(name))
        written.append(relative)
    return written


def decompress_store(
    store: str | Path,
    dst: str | Path,
    names: list[str] | None = None,
    runtime: RuntimeOptions | None = None,
    batch_size: int = 8,
    run: Callable[[Callable[[DecodeTask], list[str]], list[DecodeTask]], Iterator[list[str]]] | None = None,
) -> list[str]:
    """Write the named images (all by default) as PNGs under ``dst``; returns the paths written.

    ``run`` maps the decode function over tasks (a Dask client's map, say); by default
    tasks run in this process.
    """
    reader = open_store(store)
    chosen = reader.names if names is None else names
    missing = [n for n in chosen if n not in reader]
    if missing:
        raise VaeflowError(f"not stored in {store}: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    pairs = plan_targets(chosen)
    Path(dst).mkdir(parents=True, exist_ok=True)
    for _, relative in pairs:
        safe_path(Path(dst), relative)
    tasks = [
        DecodeTask(str(store), str(dst), tuple(pairs[i : i + batch_size]), runtime or RuntimeOptions())
        for i in range(0, len(pairs), batch_size)
    ]
    mapper = run or (lambda fn, items: map(fn, items))
    return [path for batch in mapper(decode_batch, tasks) for path in batch]
