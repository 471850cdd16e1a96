"""Writing a store to object storage: the job writes it locally, then every file is uploaded and verified.

``vaeflow compress SRC s3://bucket/out.zarr`` codes into a local staging copy (where resuming
and durability work as for any local store), then uploads it file by file. Each object is
verified after upload (its size, and its content: by the ETag where the store gives an MD5,
else by reading it back); an object already there and verified is not sent again, so an
interrupted upload resumes where it stopped. The root ``zarr.json``, which says the store is
complete, goes last, and objects the local store no longer has are removed after it, so that
readers of the remote store only ever see a finished store.

An ``--add`` (any generation after the first) publishes in one step: its index, offsets and
skipped list go to new names beside the old ones (``layout.generation_nodes``), which the root
metadata, uploaded last, points to (``META.nodes``); until then readers see the previous
generation whole, and a kill at any point leaves it readable. The nodes the remote root pointed
to before are kept (readers that opened them go on reading); the next upload removes them. Streams are
only appended: the objects of ``streams/data`` keep every earlier byte where it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaeflow.dataset import store as store_io
from vaeflow.dataset.layout import LAYOUT, META, generation_nodes
from vaeflow.dataset.location import url_filesystem
from vaeflow.foundations.errors import VaeflowError
from vaeflow.models.registry import home_dir

ROOT = LAYOUT.zarr_json  # the root's metadata: uploaded last, it says the store is complete


@dataclass
class UploadReport:
    url: str
    uploaded: int = 0  # objects sent
    kept: int = 0  # objects already there and verified
    removed: int = 0  # stale objects removed
    bytes_sent: int = 0


def staging_dir(url: str) -> Path:
    """Where a remote store is written first: ``$VAEFLOW_HOME/staging/<a hash of the URL>.zarr``."""
    return home_dir() / "staging" / f"{hashlib.sha1(url.encode()).hexdigest()[:16]}.zarr"


def check_writable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse a destination that cannot be reached or written, before any image is coded: a probe object is
    written under the store's prefix and removed at once (a missing bucket or a read-only credential fails here)."""
    fs, root = url_filesystem(url, storage_options, writing=True)
    probe = f"{root}/{LAYOUT.probe_prefix}{uuid.uuid4().hex}"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:  # network and permission errors differ with every file system
        raise VaeflowError(
            f"cannot write to {url} ({type(exc).__name__}: {exc}); check that the bucket exists and that the "
            "credentials may write to it (--storage-option)"
        ) from exc


def _files(local: Path) -> list[str]:
    """The store's files, relative, POSIX, without the lock or the work store; the root metadata last."""
    skip = {LAYOUT.lock, LAYOUT.work}
    found = sorted(
        p.relative_to(local).as_posix()
        for p in local.rglob("*")
        if p.is_file() and p.relative_to(local).parts[0] not in skip and not p.name.startswith(LAYOUT.own_prefix)
    )
    return [f for f in found if f != ROOT] + ([ROOT] if ROOT in found else [])


def _md5(data: bytes | Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(data, bytes):
        digest.update(data)
        return digest.hexdigest()
    with data.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(data: bytes | Path) -> int:
    return len(data) if isinstance(data, bytes) else data.stat().st_size


def _verified(fs: Any, remote: str, local: bytes | Path) -> bool:
    """Whether the object at ``remote`` holds exactly the bytes of ``local`` (a file, or the bytes themselves)."""
    try:
        info = fs.info(remote)
    except FileNotFoundError:
        return False
    if int(info.get("size", -1)) != _size(local):
        return False
    etag = str(info.get("ETag", info.get("etag", ""))).strip('"')
    if etag and "-" not in etag and len(etag) == 32:  # a single-part upload's ETag is its MD5
        return etag == _md5(local)
    return bool(fs.cat_file(remote) == (local if isinstance(local, bytes) else local.read_bytes()))


def _put(fs: Any, local: bytes | Path, remote: str) -> None:
    if isinstance(local, bytes):
        fs.pipe_file(remote, local)
    else:
        fs.put_file(str(local), remote)


def remote_key(rel: str, nodes: dict[str, str]) -> str:
    """Where the file ``rel`` of the local store goes on object storage (its node renamed by ``nodes``)."""
    for node, renamed in nodes.items():
        if rel == node or rel.startswith(node + "/"):
            return renamed + rel[len(node) :]
    return rel


def _published_root(local: Path, nodes: dict[str, str]) -> bytes:
    """The root metadata as published: its consolidated metadata and meta naming the generation's nodes."""
    document = json.loads((local / ROOT).read_bytes())
    document["attributes"][LAYOUT.attribute][META.nodes] = nodes
    consolidated = document.get(LAYOUT.consolidated)
    key = LAYOUT.consolidated_nodes
    if isinstance(consolidated, dict) and isinstance(consolidated.get(key), dict):
        consolidated[key] = {remote_key(k, nodes): v for k, v in consolidated[key].items()}
    return json.dumps(document, indent=2).encode()


def _published_nodes(fs: Any, root: str) -> tuple[str, ...]:
    """The nodes the remote root now points to (its readers' generation, which an upload keeps): those its
    meta names, the plain ones where it names none, none where there is no store yet."""
    try:
        document = json.loads(fs.cat_file(f"{root}/{ROOT}"))
    except FileNotFoundError:
        return ()
    except ValueError:
        return ()  # a damaged root: nothing readable to keep
    meta = document.get("attributes", {}).get(LAYOUT.attribute, {}) if isinstance(document, dict) else {}
    nodes = meta.get(META.nodes) if isinstance(meta, dict) else None
    if isinstance(nodes, dict) and all(isinstance(v, str) for v in nodes.values()):
        return tuple(nodes.values())
    return tuple(generation_nodes(1))


def upload(local: Path, url: str, storage_options: dict[str, Any] | None = None) -> UploadReport:
    """Upload the finished store ``local`` to ``url``, verifying every object (resumable)."""
    fs, root = url_filesystem(url, storage_options, writing=True)
    report = UploadReport(url)
    files = _files(local)
    meta = store_io.read_meta(local) or {}
    generation = int(meta.get(META.generation) or 0)
    nodes = generation_nodes(generation)
    try:
        previous = _published_nodes(fs, root)  # before the new root replaces it
        for rel in files:
            remote = f"{root}/{remote_key(rel, nodes)}"
            source: bytes | Path = _published_root(local, nodes) if rel == ROOT and nodes else local / rel
            if _verified(fs, remote, source):
                report.kept += 1
                continue
            _put(fs, source, remote)
            if not _verified(fs, remote, source):
                raise VaeflowError(f"{url}/{rel} does not hold what was uploaded; run the same command again")
            report.uploaded += 1
            report.bytes_sent += _size(source)
        wanted = {f"{root}/{remote_key(rel, nodes)}" for rel in files}
        kept = tuple(f"{root}/{node}/" for node in previous)  # readers of the previous generation go on
        stale = [p for p in fs.find(root) if p.rstrip("/") not in wanted and not p.startswith(kept)]
        for path in stale:
            fs.rm_file(path)
        report.removed = len(stale)
    except VaeflowError:
        raise
    except Exception as exc:  # network and permission errors differ with every file system
        raise VaeflowError(
            f"uploading to {url} failed ({type(exc).__name__}: {exc}); the store is kept at {local}: run the same "
            "command again to resume the upload"
        ) from exc
    return report


def download(url: str, local: Path, storage_options: dict[str, Any] | None = None) -> bool:
    """Fetch the store at ``url`` into ``local`` (for ``--add`` when no staged copy is left); False if none."""
    fs, root = url_filesystem(url, storage_options, writing=True)
    try:
        if not fs.exists(f"{root}/{ROOT}"):
            return False
        shutil.rmtree(local, ignore_errors=True)
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get(root, str(local), recursive=True)
    except Exception as exc:
        raise VaeflowError(f"cannot fetch {url} ({type(exc).__name__}: {exc}); check its storage options") from exc
    _as_local(local)
    return True


def _as_local(local: Path) -> None:
    """A fetched store in the local layout: its generation's nodes at their own names, the previous
    generation's (kept for readers) dropped, and the meta and consolidated metadata to match."""
    meta = store_io.read_meta(local)
    if meta is None or META.nodes not in meta:
        return
    nodes = meta.pop(META.nodes)
    generation = meta.get(META.generation)
    if not isinstance(generation, int) or nodes != generation_nodes(generation):
        raise VaeflowError(f"{local} was fetched with a damaged index: its nodes {nodes!r}")
    for node, renamed in nodes.items():
        shutil.rmtree(local / node, ignore_errors=True)
        (local / renamed).rename(local / node)
    for node in generation_nodes(1):  # every other generation's (kept for readers, or left by a killed upload)
        parent, name = (local / node).parent, (local / node).name
        for other in parent.glob(f"{name}-g*"):
            shutil.rmtree(other, ignore_errors=True)
    store_io.write_meta(local, meta)
    store_io.consolidate(local)
