"""Where a store lives: a local path, an fsspec URL (``s3://``, ``gs://``, ``memory://``, ``file://``,
``http(s)://``) or a zarr store object, opened as the store's zarr root group for reading."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from vaeflow.dataset.layout import LAYOUT
from vaeflow.dataset.spans import LoopNotingStore
from vaeflow.foundations.errors import VaeflowError

StoreLocation = str | os.PathLike[str] | Store
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
# zarr raises all of these on missing or damaged metadata
NOT_A_STORE = (
    FileNotFoundError, ValueError, KeyError, TypeError, AttributeError, zarr.errors.GroupNotFoundError,
)  # fmt: skip


def is_url(location: object) -> bool:
    return isinstance(location, str) and URL.match(location) is not None


def local_path(location: StoreLocation) -> Path | None:
    """The local folder ``location`` names (``file://`` URLs included), or None for remote URLs and store objects."""
    if isinstance(location, Store):
        return None
    if isinstance(location, str) and location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if is_url(location):
        return None
    return Path(location)


def describe(location: StoreLocation) -> Path | str:
    """How messages name the store: its local path, its URL, or the store object."""
    path = local_path(location)
    return path if path is not None else location if isinstance(location, str) else str(location)


def open_root(
    location: StoreLocation, storage_options: dict[str, Any] | None = None, consolidated: bool = True
) -> zarr.Group:
    """The root group of the store at ``location``, read-only: from its consolidated metadata, or
    (``consolidated=False``, a store that an ``--add`` is writing) from each node's own."""
    path = local_path(location)
    if path is not None:
        if storage_options:
            raise VaeflowError(f"storage_options apply to URLs, not to the local path {path}")
        _check_local(path, consolidated)
        try:
            return _open(path, consolidated)
        except NOT_A_STORE as exc:
            raise VaeflowError(f"{path} is not a finished vaeflow store: {exc}") from exc
    if isinstance(location, Store):
        if storage_options:
            raise VaeflowError("storage_options apply to URLs; configure the zarr store object itself")
        return _open_remote(location, str(location), consolidated)
    url = str(location)
    return _open_remote(_fsspec_store(url, storage_options or {}), url, consolidated)


def _check_local(path: Path, consolidated: bool) -> None:
    """Say plainly why a local path is no store, before zarr's own messages would."""
    if not path.exists():
        raise VaeflowError(f"{path} does not exist; give the folder that `vaeflow compress SRC OUT.zarr` wrote")
    if not path.is_dir():
        raise VaeflowError(f"{path} is a file, not a store (a store is a folder; `vaeflow info` also reads .vfl files)")
    if not (path / LAYOUT.zarr_json).is_file():
        raise VaeflowError(
            f"{path} is not a vaeflow store (no zarr.json in it); stores are written by `vaeflow compress`"
        )
    if not consolidated:
        return
    try:
        root = json.loads((path / LAYOUT.zarr_json).read_bytes())
    except (OSError, ValueError):
        return  # damaged or unreadable: zarr's error, as damage, says so below
    if isinstance(root, dict) and root.get(LAYOUT.node_type) == "group" and not root.get(LAYOUT.consolidated):
        raise VaeflowError(
            f"{path} is not a finished vaeflow store: a job is writing it or was interrupted "
            "(run the same command again to finish it)"
        )


def _open(location: Path | Store, consolidated: bool) -> zarr.Group:
    """Opened through a ``LoopNotingStore``: stream data are read on the loop the store's requests run on."""
    store = LoopNotingStore(LocalStore(location, read_only=True) if isinstance(location, Path) else location)
    if consolidated:
        return zarr.open_consolidated(store, mode="r", zarr_format=3)
    return zarr.open_group(store, mode="r", use_consolidated=False, zarr_format=3)


def _fsspec_store(url: str, storage_options: dict[str, Any]) -> Store:
    scheme = url.split("://", 1)[0].lower()
    try:
        return FsspecStore.from_url(url, storage_options=storage_options, read_only=True)
    except ImportError as exc:
        package = PACKAGES.get(scheme, f"the fsspec package for {scheme}://")
        hint = "pip install 'vaeflow[remote]'" if package == "s3fs" else f"pip install {package}"
        raise VaeflowError(f"reading {url} needs {package}: {hint}") from exc
    except ValueError as exc:  # fsspec: an unknown protocol
        raise VaeflowError(
            f"cannot open {url}: {exc}; give a local path or an fsspec URL (s3://, gs://, memory://, file://, https://)"
        ) from exc
    except Exception as exc:  # credentials, endpoints: each file system raises its own
        raise VaeflowError(f"cannot open {url}: {type(exc).__name__}: {exc}; check its storage_options") from exc


def _open_remote(store: Store, name: str, consolidated: bool) -> zarr.Group:
    try:
        return _open(store, consolidated)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise VaeflowError(
            f"no vaeflow store at {name}: nothing found there; check the bucket or host, the path and, "
            "for private buckets, the credentials in storage_options"
        ) from exc
    except PermissionError as exc:
        raise VaeflowError(f"{name} refused access: {exc}; check the credentials in storage_options") from exc
    except NOT_A_STORE as exc:
        raise VaeflowError(f"{name} is not a finished vaeflow store: {exc}") from exc
    except Exception as exc:  # network errors differ with every file system
        raise VaeflowError(
            f"cannot reach {name}: {type(exc).__name__}: {exc}; check the address, the endpoint_url and the "
            "network (storage_options)"
        ) from exc


def url_filesystem(url: str, storage_options: dict[str, Any] | None = None, writing: bool = False) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path on it, with one-line errors that say what to install or
    check (for writing a store, reading a source or a stream)."""
    verb = "writing" if writing else "reading"
    try:
        import fsspec  # optional (the remote extra): only URLs need it
    except ImportError as exc:
        raise VaeflowError(f"{verb} {url} needs fsspec and s3fs: pip install 'vaeflow[remote]'") from exc
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        raise VaeflowError(f"{verb} {url} needs a file system for it ({exc}): pip install 'vaeflow[remote]'") from exc
    except Exception as exc:  # an unknown protocol or bad options: each file system raises its own
        raise VaeflowError(
            f"cannot {'write' if writing else 'read'} {url}: {exc}; check the URL and its storage options"
        ) from exc
    return fs, str(root).rstrip("/")


def read_url(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole object at ``url`` (a .vfl stream on object storage, say), with errors that name it."""
    fs, path = url_filesystem(url, storage_options)
    try:
        return fs.cat_file(path)  # type: ignore[no-any-return]
    except FileNotFoundError as exc:
        raise VaeflowError(
            f"nothing at {url}; check the bucket, the path and the credentials in storage_options"
        ) from exc
    except Exception as exc:  # each file system raises its own
        raise VaeflowError(f"cannot read {url}: {type(exc).__name__}: {exc}; check its storage_options") from exc
