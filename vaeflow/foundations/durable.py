"""Durable writes: a file replaced atomically and synced, so that a crash leaves the old or the new one.

Everything vaeflow writes that a later run trusts (batch markers, attempt counts, registry
files, checkpoints) goes through ``atomic_write``; ``sync_tree`` makes a folder's files
durable before a marker says they are there.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any


def fsync(path: Path) -> None:
    """fsync one file or folder (a folder: its entries); file systems that cannot fsync a folder
    (EINVAL) are let off."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (exc.errno == errno.EINVAL and path.is_dir()):
            raise
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync ``root`` and every file and folder under it."""
    for path in [root, *root.rglob("*")]:
        fsync(path)


def atomic_write(path: Path, data: bytes | str, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, synced (with ``sync``), then
    renamed over it, the rename synced too. The directory entry is replaced: a file ``path`` was a hard or
    symbolic link to is never written. The temporary name is short, so any name that fits can be written."""
    path = Path(path)
    tmp = path.with_name(f".vaeflow-{os.getpid()}-{threading.get_ident()}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with tmp.open("wb") as fh:
            fh.write(payload)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync(path.parent)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value))
