"""The layout of a vaeflow store, in one place: every path, array, attribute key and marker in it.

A store is one zarr v3 group (docs/format.md describes every node)::

    zarr.json                   the root group; its attribute ``vaeflow`` holds the store's meta (``META``),
                                and its ``consolidated_metadata`` appears when a job finishes
    streams/data                uint8, every stream back to back (format 2: shards of uncompressed inner chunks)
    streams/offsets             uint64, N+1: image i is data[offsets[i]:offsets[i+1]]
    index/path_offsets          the text columns (path, note, caption, metadata): UTF-8 bytes back to back
    index/path_bytes            (``{column}_bytes``) with N+1 offsets (``{column}_offsets``)
    index/shape                 int32 N x 2, as are original_size and crop_top_left
    index/check                 int64: each row's CRC32C over its stream, name, sizes, caption and metadata
    index/nbytes, bpp, status   int64, float32, uint8 (STATUS_OK, STATUS_FAILED)
    index-next/, index-previous/  the new index while it is written, the old one while it is swapped out
    index-g{n}/, streams/offsets-g{n}, skipped-g{n}/  on object storage: generation n's (``generation_nodes``)
    skipped/path_*, reason_*    files that are not images, and why
    .vaeflow.lock               the job writing the store (vaeflow.dataset.lock)
    _work/                      the work store while a job runs (vaeflow.dataset.work):
        done/{batch}.json           each finished batch's marker (``BatchMarker``), written last
        streams/{batch}.streams     the batch's streams back to back
        attempts/{batch}            how many runs of the batch have started
        {prefix}g{n}/{array}        per shape group, the rows between stages (``work.STAGE_ARRAYS``)

Nothing else in vaeflow spells these names: the store's modules use the constants below (a test checks it).
Changing a value changes the format on disk: stores written before must keep opening.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

STORE_FORMAT: Final = "vaeflow-store"  # META.format of every store
STORE_VERSION: Final = 2  # 2: streams/data in shards of uncompressed inner chunks; 1: in zstd chunks (still read)
STATUS_OK: Final = 0  # index/status of a stored image
STATUS_FAILED: Final = 1  # index/status of an image that failed (its note says why; it holds no stream bytes)
EXACT_LATENTS: Final = "exact"  # SETTINGS.latents of stores whose latents are the model's own (stream format 4)


@dataclass(frozen=True)
class StoreLayout:
    """Paths in the store's folder (zarr node paths, or plain files and folders beside them)."""

    zarr_json: str = "zarr.json"  # zarr's metadata document of every node
    node_type: str = "node_type"  # in zarr.json: "group" or "array"
    consolidated: str = "consolidated_metadata"  # in the root's zarr.json once the store is consolidated
    consolidated_nodes: str = "metadata"  # in ``consolidated``: each node's metadata by its path
    attribute: str = "vaeflow"  # the root group's attribute that holds the store's meta
    streams: str = "streams"  # the group of data and offsets
    data: str = "streams/data"
    offsets: str = "streams/offsets"
    index: str = "index"
    next_index: str = "index-next"  # built beside the index, then renamed to it
    old_index: str = "index-previous"  # the index being replaced: readable if a swap was cut short
    skipped: str = "skipped"
    lock: str = ".vaeflow.lock"
    lock_breaker: str = ".vaeflow.lock.breaker"  # exists while a stale lock is taken over
    own_prefix: str = ".vaeflow"  # vaeflow's own files beside the store's nodes (lock, probes): never uploaded
    probe_prefix: str = ".vaeflow-probe-"  # a file Dask workers read back to show that they see the store's folder
    work: str = "_work"  # the work store (WORK)


@dataclass(frozen=True)
class IndexColumns:
    """Arrays of ``index/`` (and ``skipped/``): one row per image. Text columns are two arrays each
    (``text_offsets``, ``text_bytes``)."""

    path: str = "path"  # text: the relative path (also in skipped/)
    note: str = "note"  # text: the failure reason, or conversion notes
    caption: str = "caption"  # text, since captions: "" where none
    metadata: str = "metadata"  # text, since captions: a JSON object, or ""
    shape: str = "shape"
    nbytes: str = "nbytes"
    bpp: str = "bpp"
    status: str = "status"
    original_size: str = "original_size"  # since buckets: the size as read (else the stored shape)
    crop_top_left: str = "crop_top_left"  # since buckets: the bucket's crop in the resized image
    check: str = "check"  # since row checks: int64, each row's ``store.row_check``; -1 for rows from before
    source: str = "source"  # since then too: int64 (N, 2), the file's size and mtime (ns) when coded; -1 unknown
    reason: str = "reason"  # text, in skipped/: why the file is no image


@dataclass(frozen=True)
class MetaKeys:
    """Keys of the store's meta (the root attribute ``LAYOUT.attribute``)."""

    format: str = "format"  # STORE_FORMAT
    version: str = "version"  # the store format, 1 to STORE_VERSION
    vaeflow_version: str = "vaeflow_version"  # of the vaeflow that wrote it last
    settings: str = "settings"  # what must match to resume or extend the store (SETTINGS)
    complete: str = "complete"  # true once a job has finished the store
    generation: str = "generation"  # runs that appended to it (--add, --retry-failed)
    stored_bytes: str = "stored_bytes"  # of streams/data that hold streams
    rows: str = "rows"  # rows of the index that are finished
    retrying: str = "retrying"  # while a --retry-failed generation runs
    adding: str = "adding"  # while an --add generation runs
    verification: str = "verification"  # under a PSNR-drop limit: how the drops were kept (DropSummary)
    nodes: str = "nodes"  # on object storage: where this generation's index, offsets and skipped list are


@dataclass(frozen=True)
class SettingsKeys:
    """The keys of ``META.settings`` that a job adds to its codec's settings (``Codec.settings()``)."""

    pipeline: str = "pipeline"  # the preset's name, for people
    buckets: str = "buckets"  # the side of aspect-ratio buckets, or None
    latents: str = "latents"  # EXACT_LATENTS; absent in stores whose latents were padded to batch shapes


@dataclass(frozen=True)
class WorkLayout:
    """Paths in the work store (``LAYOUT.work``), relative to it."""

    done: str = "done"  # the batches' markers
    streams: str = "streams"  # the batches' streams
    attempts: str = "attempts"  # the batches' attempt counts
    streams_suffix: str = ".streams"
    marker_suffix: str = ".json"
    group_prefix: str = "g"  # the stage arrays of shape group n: {prefix}g{n}/{array}
    chunks: str = "c"  # zarr's folder of an array's chunks (its default chunk key encoding)

    def marker(self, key: str) -> str:
        return f"{self.done}/{key}{self.marker_suffix}"

    def streams_file(self, key: str) -> str:
        return f"{self.streams}/{key}{self.streams_suffix}"

    def streams_array(self, key: str) -> str:
        """Where older work stores kept a batch's streams, as a zarr array."""
        return f"{self.streams}/{key}"

    def attempts_file(self, key: str) -> str:
        return f"{self.attempts}/{key}"

    def group(self, prefix: str, index: int) -> str:
        return f"{prefix}{self.group_prefix}{index}"


LAYOUT: Final = StoreLayout()
COLUMNS: Final = IndexColumns()
META: Final = MetaKeys()
SETTINGS: Final = SettingsKeys()
WORK: Final = WorkLayout()
TEXT_COLUMNS: Final = (COLUMNS.path, COLUMNS.note, COLUMNS.caption, COLUMNS.metadata, COLUMNS.reason)


def generation_nodes(generation: int) -> dict[str, str]:
    """Where a store on object storage keeps generation ``generation``'s index, offsets and skipped list (the
    nodes an ``--add`` rewrites): generation 0 at their own names, each later one beside the one before, so
    that a reader of the previous root metadata never sees them change (``META.nodes`` names them)."""
    if generation <= 0:
        return {}
    return {node: f"{node}-g{generation}" for node in (LAYOUT.index, LAYOUT.offsets, LAYOUT.skipped)}


def text_offsets(column: str) -> str:
    """The offsets array (uint64, N+1) of a text column."""
    return f"{column}_offsets"


def text_bytes(column: str) -> str:
    """The bytes array (uint8) of a text column."""
    return f"{column}_bytes"


# Markers: what a finished batch leaves in done/{batch}.json (written last, atomically). A job resumes from the
# markers an earlier run left, so their JSON keeps its keys: add keys only with a default for markers without them.


@dataclass(frozen=True)
class ImageMarker:
    """One image of a finished batch: its row of the index, and where its stream waits in the work store."""

    index: int  # its row in the store's index
    path: str
    ok: bool
    reason: str | None  # why it failed (None when ok)
    notes: tuple[str, ...]
    nbytes: int
    shape: tuple[int, int]  # (height, width) as stored
    stream: tuple[str, int]  # (the batch's streams file, by its key; offset in it)
    drop: tuple[float | None, float | None] | None = None  # under a PSNR-drop limit: (predicted, measured or None)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "ok": self.ok,
            "reason": self.reason,
            "notes": list(self.notes),
            "nbytes": self.nbytes,
            "shape": list(self.shape),
            "stream": list(self.stream),
            "drop": None if self.drop is None else list(self.drop),
        }

    @classmethod
    def from_json(cls, value: Any) -> ImageMarker:
        """The marker ``to_json`` gave (markers from before PSNR-drop limits have no ``drop``)."""
        height, width = value["shape"]
        key, offset = value["stream"]
        drop = value.get("drop")
        return cls(
            index=_int(value["index"]),
            path=_str(value["path"]),
            ok=_bool(value["ok"]),
            reason=None if value["reason"] is None else _str(value["reason"]),
            notes=tuple(_str(n) for n in value["notes"]),
            nbytes=_int(value["nbytes"]),
            shape=(_int(height), _int(width)),
            stream=(_str(key), _int(offset)),
            drop=None if drop is None else (_number(drop[0]), _number(drop[1])),
        )


@dataclass(frozen=True)
class BatchMarker:
    """A finished batch: each of its images, and the time its stages took."""

    key: str  # the batch's key (``Batch.key``)
    items: tuple[ImageMarker, ...]
    spans: tuple[tuple[str, float, float, int], ...] = ()  # (stage, start, end, pid) of each task

    @property
    def failed(self) -> int:
        return sum(1 for item in self.items if not item.ok)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "items": [i.to_json() for i in self.items], "spans": [list(s) for s in self.spans]}

    @classmethod
    def from_json(cls, value: Any) -> BatchMarker:
        """The marker ``to_json`` gave; raises ``ValueError`` (or ``KeyError``, ``TypeError``) for anything else."""
        if not isinstance(value, dict):
            raise ValueError(f"a batch marker is a JSON object, not {type(value).__name__}")
        spans = tuple((_str(s), float(a), float(b), _int(p)) for s, a, b, p in value.get("spans", ()))
        return cls(_str(value["key"]), tuple(ImageMarker.from_json(i) for i in value["items"]), spans)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
