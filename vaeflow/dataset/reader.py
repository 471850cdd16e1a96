"""Reading a store back: any image, latent or stream on its own, or all of them in batches.

Latents come in the model's own convention (what a diffusion model of its family trains on)
for models that have one, as the store's settings recorded it when the store was written;
``convention="normalised"`` gives vaeflow's unit-variance latent, the one the quantizer
works in and ``decompress_latent`` returns (see ``vaeflow.models.convention``). For models
without a convention of their own, such as ``default``, the two are the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vaeflow.codec import format as stream_format
from vaeflow.codec.api import decompress, decompress_latent, decompress_latents, info
from vaeflow.codec.ratecontrol import DropSummary
from vaeflow.dataset.layout import (
    COLUMNS,
    LAYOUT,
    META,
    STATUS_FAILED,
    STATUS_OK,
    STORE_FORMAT,
    STORE_VERSION,
    generation_nodes,
    text_bytes,
    text_offsets,
)
from vaeflow.dataset.location import StoreLocation, describe, open_root
from vaeflow.dataset.scan import json_object
from vaeflow.dataset.spans import SpanReader
from vaeflow.dataset.store import UNCHECKED, array, read, row_check, subgroup
from vaeflow.foundations.display import html_list_table, html_table
from vaeflow.foundations.errors import CorruptStreamError, VaeflowError
from vaeflow.models import LatentConvention, ModelRef, RuntimeOptions

MAX_STORED_JSON_DEPTH = 256  # metadata of stores from before the sidecar limit: deeper would recurse in json
READABLE = ("image", "latent", "stream")  # what iter_batches reads: decoded images, latents or the streams
LATENT_CONVENTIONS = ("model", "normalised")  # the model's own latent, or vaeflow's unit-variance one
MAX_ROWS = 2**31  # images in one store
MAX_TEXT_BYTES_PER_ROW = 1 << 16  # a path or a note


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


@contextmanager
def damage(path: Path | str, what: str) -> Iterator[None]:
    """Turn whatever zarr or numpy raise on damaged files into one clear ``VaeflowError``."""
    try:
        yield
    except VaeflowError:
        raise
    except (
        KeyError, ValueError, TypeError, RuntimeError, OSError, UnicodeDecodeError, IndexError, OverflowError,
        MemoryError, AttributeError,
    ) as exc:  # fmt: skip
        raise VaeflowError(f"{path} has a damaged {what}: {type(exc).__name__}: {exc}") from exc


class StoreReader:
    """A vaeflow store opened for reading; the index is loaded, the streams read on demand.

    ``location`` is where the store lives, as given (what reopens it); ``path`` names it in messages.
    """

    meta: dict[str, Any]

    def __init__(
        self,
        location: StoreLocation,
        runtime: RuntimeOptions | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.location, self.storage_options = location, storage_options  # what reopens it (in a DataLoader worker)
        self.path = describe(location)  # how messages name it: a local Path, a URL or the zarr store object's name
        self.runtime = runtime
        self.meta = self._read_meta()
        rows = self.meta.get(META.rows)
        if not isinstance(rows, int) or isinstance(rows, bool) or not 0 <= rows <= MAX_ROWS:
            raise VaeflowError(f"{self.path} has a damaged index: row count {rows!r}")
        exact = self.meta.get(META.complete) is True  # mid --add: the index may already hold more rows
        self._nodes = _nodes(self.meta, self.path)
        index_node = self._nodes.get(LAYOUT.index, LAYOUT.index)
        with damage(self.path, LAYOUT.index):
            self._index = index = subgroup(self._root, index_node if index_node in self._root else LAYOUT.old_index)
            self._check_sizes(index, rows, exact)
            self._paths = _text_column(index, COLUMNS.path, rows, self.path)
            self._notes = _text_column(index, COLUMNS.note, rows, self.path)
            self._status = read(index, COLUMNS.status)[:rows]
            self.shapes = read(index, COLUMNS.shape)[:rows]
            self._bpp = read(index, COLUMNS.bpp)[:rows]
            self._checks = self._read_checks(index, rows)  # with the offsets: a later swap cannot mix them
            offsets = read(self._root, self._offsets_node)[: rows + 1]
            self._data = array(self._root, LAYOUT.data)
            self._spans = SpanReader(self._data)
        self._offsets = _checked_offsets(offsets, self._data.shape[0], "stream offsets", self.path)
        self._rows = {p: i for i, p in enumerate(self._paths)}
        self._check_index()

    def _read_meta(self) -> dict[str, Any]:
        """The store's attributes; a finished store opens consolidated, one in the middle of an
        ``--add`` from its own metadata, showing the previous generation's rows."""
        try:
            self._root = open_root(self.location, self.storage_options)
            meta = self._root.attrs.get(LAYOUT.attribute)
            if isinstance(meta, dict) and meta.get(META.complete) is not True and _earlier_generation(meta):
                self._root = open_root(self.location, self.storage_options, consolidated=False)
                meta = self._root.attrs.get(LAYOUT.attribute)
        except (
            FileNotFoundError, ValueError, KeyError, TypeError, AttributeError, zarr.errors.GroupNotFoundError
        ) as exc:  # fmt: skip  # zarr raises all of these on damaged metadata
            if isinstance(exc, VaeflowError):
                raise
            raise VaeflowError(f"{self.path} is not a finished vaeflow store: {exc}") from exc
        if not isinstance(meta, dict) or meta.get(META.format) != STORE_FORMAT:
            raise VaeflowError(f"{self.path} is not a vaeflow store (no vaeflow attributes)")
        if meta.get(META.version) not in range(1, STORE_VERSION + 1):
            raise VaeflowError(
                f"{self.path} is store format {meta.get(META.version)!r}; this vaeflow reads formats 1 to "
                f"{STORE_VERSION} (a newer vaeflow may read it)"
            )
        if meta.get(META.complete) is not True and not _earlier_generation(meta):
            raise VaeflowError(
                f"{self.path} is not a finished vaeflow store: a job is writing it or was interrupted "
                "(run the same command again to finish it)"
            )
        return dict(meta)

    @property
    def _offsets_node(self) -> str:
        return self._nodes.get(LAYOUT.offsets, LAYOUT.offsets)

    @property
    def complete(self) -> bool:
        """False while an ``--add`` is writing the store: readers then see the rows before it."""
        return self.meta.get(META.complete) is True

    def _check_sizes(self, index: zarr.Group, rows: int, exact: bool) -> None:
        """Array shapes come from the file too: check them against the row count before reading."""
        expected = {COLUMNS.status: (rows,), COLUMNS.shape: (rows, 2), COLUMNS.bpp: (rows,), COLUMNS.nbytes: (rows,),
                    text_offsets(COLUMNS.path): (rows + 1,), text_offsets(COLUMNS.note): (rows + 1,)}  # fmt: skip
        for name, shape in {**expected, self._offsets_node: (rows + 1,)}.items():
            found = array(self._root if name == self._offsets_node else index, name).shape
            if found != shape and (exact or len(found) != len(shape) or found[0] < shape[0] or found[1:] != shape[1:]):
                raise VaeflowError(f"{self.path} has a damaged index: {name} is {found}, not {shape}")
        for name in (text_bytes(COLUMNS.path), text_bytes(COLUMNS.note)):
            if array(index, name).shape[0] > MAX_TEXT_BYTES_PER_ROW * max(rows, 1) * (1 if exact else 2):
                raise VaeflowError(f"{self.path} has a damaged index: {name} is too long for {rows} rows")

    def _check_index(self) -> None:
        """Index values come from the file: check them before any of them is used."""
        n = len(self._paths)
        problems = []
        if len(self._notes) != n or self._status.shape != (n,) or self.shapes.shape != (n, 2):
            problems.append("columns of different lengths")
        if not np.isin(self._status, (STATUS_OK, STATUS_FAILED)).all():
            problems.append("unknown status codes")
        if self.shapes.size and (self.shapes < 0).any():
            problems.append("negative image shapes")
        if len(self._rows) != n:
            problems.append("repeated names")
        if problems:
            raise VaeflowError(f"{self.path} has a damaged index: {'; '.join(problems)}")

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._rows and self._status[self._rows[name]] == STATUS_OK  # type: ignore[index]

    @property
    def paths(self) -> list[str]:
        """Every relative path in the index, stored or failed."""
        return list(self._paths)

    @property
    def names(self) -> list[str]:
        """Relative paths of the stored images, in index order."""
        return [p for p, s in zip(self._paths, self._status, strict=True) if s == STATUS_OK]

    @property
    def failures(self) -> list[Failure]:
        return [Failure(p, n) for p, n, s in zip(self._paths, self._notes, self._status, strict=True) if s != STATUS_OK]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        with damage(self.path, "list of skipped files"):
            group = subgroup(self._root, self._nodes.get(LAYOUT.skipped, LAYOUT.skipped))
            rows = array(group, text_offsets(COLUMNS.path)).shape[0] - 1
            if not 0 <= rows <= MAX_ROWS or array(group, text_offsets(COLUMNS.reason)).shape != (rows + 1,):
                raise VaeflowError(f"{self.path} has a damaged list of skipped files: {rows + 1} offsets")
            paths, reasons = (_text_column(group, n, rows, self.path) for n in (COLUMNS.path, COLUMNS.reason))
            return list(zip(paths, reasons, strict=True))

    def _row(self, name: str) -> int:
        row = self._rows.get(name)
        if row is None:
            raise KeyError(f"{name!r} is not in {self.path}")
        if self._status[row] != STATUS_OK:
            raise KeyError(f"{name!r} failed when the store was written: {self._notes[row]}")
        return row

    @property
    def data(self) -> zarr.Array:
        """The flat array of every stream, back to back."""
        return self._data

    def stream_range(self, name: str) -> tuple[int, int]:
        row = self._row(name)
        return int(self._offsets[row]), int(self._offsets[row + 1])

    def read_span(self, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of the stream data, however many streams they hold."""
        with damage(self.path, "stream data"):
            return self._spans.read([(start, end)])[0]

    def read_stream(self, name: str) -> bytes:
        """The stream of ``name``, refused (naming it) unless it is the one its row was written with."""
        data = self._fetch(name)
        self.check_row(name, data)
        return data

    def stream_header(self, name: str) -> stream_format.StreamHeader:
        """The header of the stream of ``name`` (checked by its own CRC32, not against the row)."""
        return stream_format.unpack(self._fetch(name))[0]

    def _fetch(self, name: str) -> bytes:
        start, end = self.stream_range(name)
        with damage(self.path, f"stream data of {name!r}"):
            return self._spans.read([(start, end)])[0]

    def _read_checks(self, index: zarr.Group, rows: int) -> np.ndarray | None:
        """Each row's check (``store.row_check``), or None in stores written before them."""
        if COLUMNS.check not in index:
            return None
        values = read(index, COLUMNS.check)[:rows]
        if values.shape != (rows,) or values.dtype.kind != "i":
            raise VaeflowError(f"{self.path} has a damaged index: {COLUMNS.check} is {values.shape} {values.dtype}")
        return values

    def check_row(self, name: str, data: bytes | memoryview) -> None:
        """Refuse ``data`` as the stream of ``name`` unless it, with the name, sizes, caption and metadata the index
        gives, is what the row's check was computed over when the store was written."""
        checks, row = self._checks, self._row(name)
        if checks is None or checks[row] == UNCHECKED:
            return
        columns = self._columns
        texts = [columns[c][row] if columns[c] is not None else "" for c in (COLUMNS.caption, COLUMNS.metadata)]
        found = row_check(data, name, self.shapes[row], self.original_size(name), self.crop_top_left(name), *texts)
        if found != int(checks[row]):
            raise VaeflowError(
                f"{self.path}: the stream of {name!r} does not match its row's check (the stream or its entry in the "
                f"index is damaged, or they belong to different images); run vaeflow verify {self.path}"
            )

    def checked_stream(self, name: str) -> bytes:
        """The stream of ``name``, refused (naming it) if its header disagrees with the index or it is not the
        one its row was written with."""
        data = self._fetch(name)
        check_stream_shape(self.path, name, data, self.shapes[self._rows[name]])
        self.check_row(name, data)
        return data

    def read_streams(self, names: list[str]) -> list[bytes]:
        """Several streams with one read of each run of neighbours (neighbours in the index are
        neighbours in the data, so a batch in index order is one range read); runs are read concurrently."""
        rows = [self._row(n) for n in names]
        with damage(self.path, "stream data"):
            streams = self._spans.read([(int(self._offsets[r]), int(self._offsets[r + 1])) for r in rows])
        for name, data in zip(names, streams, strict=True):
            self.check_row(name, data)
        return streams

    def entries(self) -> Iterator[tuple[str, tuple[int, int], int, float]]:
        """(name, (height, width), bytes, bpp) of each stored image, from the index alone."""
        for row, (path, status) in enumerate(zip(self._paths, self._status, strict=True)):
            if status == STATUS_OK:
                size = (int(self.shapes[row, 0]), int(self.shapes[row, 1]))
                yield path, size, int(self._offsets[row + 1] - self._offsets[row]), float(self._bpp[row])

    def caption(self, name: str) -> str | None:
        """The image's caption (from its ``NAME.txt``, ``NAME.caption`` or ``NAME.json``), or None."""
        return self._optional_text(COLUMNS.caption, name)

    def metadata(self, name: str) -> dict[str, Any]:
        """The image's metadata (its ``NAME.json``), or an empty dict."""
        text = self._optional_text(COLUMNS.metadata, name)
        try:
            value = json_object(text, MAX_STORED_JSON_DEPTH) if text else {}
        except ValueError as exc:
            damaged = f"{self.path} has a damaged index: the metadata of {name!r} is not JSON ({exc})"
            raise VaeflowError(damaged) from exc
        return value if isinstance(value, dict) else {}

    def original_size(self, name: str) -> tuple[int, int]:
        """(height, width) of the image as read, before an aspect-ratio bucket resized it."""
        return self._pair(COLUMNS.original_size, name)

    def crop_top_left(self, name: str) -> tuple[int, int]:
        """(top, left) of the bucket's crop in the resized image; (0, 0) when not cropped."""
        return self._pair(COLUMNS.crop_top_left, name)

    def target_size(self, name: str) -> tuple[int, int]:
        """(height, width) the image is stored at."""
        shape = self.shapes[self._row(name)]
        return int(shape[0]), int(shape[1])

    @cached_property
    def _columns(self) -> dict[str, Any]:
        """The index columns stores from before them may lack, read once (None where absent)."""
        rows = len(self._paths)
        index = self._index
        with damage(self.path, LAYOUT.index):
            out: dict[str, Any] = {}
            for name in (COLUMNS.caption, COLUMNS.metadata):
                out[name] = _text_column(index, name, rows, self.path) if text_offsets(name) in index else None
            for name in (COLUMNS.original_size, COLUMNS.crop_top_left):
                values = read(index, name)[:rows] if name in index else None
                if values is not None and values.shape != (rows, 2):
                    raise VaeflowError(f"{self.path} has a damaged index: {name} is not ({rows}, 2)")
                out[name] = values
            return out

    def _optional_text(self, column: str, name: str) -> str | None:
        values = self._columns[column]
        text = values[self._row(name)] if values is not None else ""
        return text or None

    def _pair(self, column: str, name: str) -> tuple[int, int]:
        row = self._row(name)
        values = self._columns[column]
        if values is None:
            return self.target_size(name) if column == COLUMNS.original_size else (0, 0)
        return int(values[row, 0]), int(values[row, 1])

    def read_image(self, name: str) -> np.ndarray:
        data = self.checked_stream(name)
        try:
            return decompress(data, runtime=self.runtime)
        except CorruptStreamError as exc:
            raise CorruptStreamError(f"{self.path}: the stream of {name!r} is damaged: {exc}") from exc

    @cached_property
    def model(self) -> ModelRef | None:
        """The model the store was written with, as its settings record it (None in v1 stores, which name it only)."""
        with damage(self.path, META.settings):
            return _recorded_model(self.meta.get(META.settings))

    @property
    def convention(self) -> LatentConvention | None:
        """How the model's own latents relate to the normalised ones (None: they are the same)."""
        return self.model.convention if self.model is not None else None

    def read_latent(self, name: str, convention: str = "model") -> np.ndarray:
        """The dequantized latent, decoded from the stream without the VAE, float32.

        ``convention="model"``: in the model's own convention, (C*p*p, h/p, w/p) for a model that
        folds p x p patches into channels; ``"normalised"``: vaeflow's unit-variance latent (C, h, w).
        """
        return self._latent(name, self.checked_stream(name), convention)

    def _latent(self, name: str, data: bytes, convention: str) -> np.ndarray:
        if convention not in LATENT_CONVENTIONS:
            raise ValueError(f"unknown latent convention {convention!r}; choose one of {LATENT_CONVENTIONS}")
        latent = self._decoded([name], [data])[0]
        own = self.convention
        if convention == "normalised" or own is None:
            return latent
        return own.to_model(latent[None])[0]

    def read_latents(self, names: list[str], convention: str = "model") -> list[np.ndarray]:
        """The dequantized latents of ``names`` in ``convention`` (as ``read_latent``): their streams
        fetched as by ``read_streams`` and decoded together where they share a shape."""
        if convention not in LATENT_CONVENTIONS:
            raise ValueError(f"unknown latent convention {convention!r}; choose one of {LATENT_CONVENTIONS}")
        latents = self._decoded(names, self.read_streams(names))
        own = self.convention
        if convention == "normalised" or own is None:
            return latents
        return [own.to_model(latent[None])[0] for latent in latents]

    def _decoded(self, names: list[str], streams: list[bytes]) -> list[np.ndarray]:
        """``decompress_latents``, a damaged stream's error naming the store and the image."""
        try:
            return decompress_latents(streams)
        except CorruptStreamError:
            for name, data in zip(names, streams, strict=True):
                try:
                    decompress_latent(data)
                except CorruptStreamError as exc:
                    raise CorruptStreamError(f"{self.path}: the stream of {name!r} is damaged: {exc}") from exc
            raise

    def info(self, name: str) -> dict[str, Any]:
        row = self._row(name)
        return {"path": name, "notes": self._notes[row], **info(self.read_stream(name))}

    def iter_batches(
        self, batch_size: int = 16, kind: str = "latent", convention: str = "model"
    ) -> Iterator[tuple[list[str], Any]]:
        """Yield (names, values) in index order; values are stacked when their shapes agree.

        Latents come in ``convention``, as from ``read_latent``.
        """
        if kind not in READABLE:
            raise ValueError(f"unknown kind {kind!r}; choose one of {READABLE}")
        if convention not in LATENT_CONVENTIONS:
            raise ValueError(f"unknown latent convention {convention!r}; choose one of {LATENT_CONVENTIONS}")
        names = self.names
        for start in range(0, len(names), batch_size):
            chunk = names[start : start + batch_size]
            values: list[Any]
            if kind == "latent":
                values = self.read_latents(chunk, convention)  # decoded together where shapes agree
            else:
                streams = self.read_streams(chunk)
                values = streams if kind == "stream" else [decompress(s, runtime=self.runtime) for s in streams]
            if kind != "stream" and len({np.shape(v) for v in values}) == 1:
                yield chunk, np.stack(values)
            else:
                yield chunk, values

    def summary(self) -> dict[str, Any]:
        ok = self._status == STATUS_OK
        pixels = self.shapes[:, 0].astype(np.float64) * self.shapes[:, 1]
        stored = int(self._offsets[-1])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # figures from an untrusted index
            mean_bpp = float(self._bpp[ok].mean()) if ok.any() else float("nan")
            overall_bpp = float(8.0 * stored / pixels[ok].sum()) if ok.any() else float("nan")
        return {
            "path": str(self.path),
            "images": int(ok.sum()),
            "failed": int((~ok).sum()),
            "skipped": len(self.skipped),
            "bytes": stored,
            "mean_bpp": mean_bpp,
            "overall_bpp": overall_bpp,
            "pixels": int(pixels[ok].sum()),
            META.settings: self.meta.get(META.settings),  # as the store's meta names them
            META.vaeflow_version: self.meta.get(META.vaeflow_version),
            **self._verification(),
        }

    def _verification(self) -> dict[str, Any]:
        """Under a PSNR-drop limit: how many drops were measured, the largest, and the predictions' error."""
        drops = DropSummary.from_dict(self.meta.get(META.verification))
        if drops is None:
            return {}
        return {META.verification: {**drops.to_dict(), "error_mean": drops.error_mean, "summary": str(drops)}}

    def _repr_html_(self) -> str:
        s = self.summary()
        model = (s[META.settings] or {}).get("model")
        rows = [("images", s["images"]), ("failed", s["failed"]), ("other files skipped", s["skipped"]),
                ("bytes", f"{s['bytes']:,}"), ("mean bpp", f"{s['mean_bpp']:.3f}"),
                ("model", model.get("name") if isinstance(model, dict) else model),
                ("written by", f"vaeflow {s[META.vaeflow_version]}")]  # fmt: skip
        entries = ((n, f"{w}x{h}", b, f"{bpp:.4f}") for n, (h, w), b, bpp in self.entries())
        listing = html_list_table(["name", "size", "bytes", "bpp"], entries)
        return html_table(f"vaeflow store: {self.path}", rows) + listing


def _nodes(meta: dict[str, Any], path: Path | str) -> dict[str, str]:
    """Where the meta says this generation's index, offsets and skipped list are (a store on object storage),
    refused unless it is where its generation's are (``generation_nodes``)."""
    nodes = meta.get(META.nodes)
    if nodes is None:
        return {}
    generation = meta.get(META.generation)
    if not isinstance(generation, int) or isinstance(generation, bool) or nodes != generation_nodes(generation):
        raise VaeflowError(f"{path} has a damaged index: its nodes {nodes!r} are not generation {generation!r}'s")
    return dict(nodes)


def _earlier_generation(meta: dict[str, Any]) -> bool:
    """Whether an unfinished store has a finished generation under it (an ``--add`` is running)."""
    generation, rows = meta.get(META.generation), meta.get(META.rows)
    return isinstance(generation, int) and generation >= 1 and isinstance(rows, int) and rows > 0


def _checked_offsets(offsets: np.ndarray, limit: int, what: str, path: Path | str) -> np.ndarray:
    """Offsets (N+1) from the file as int64, refused unless they start at 0, never run backwards
    and stay within ``limit``; compared as unsigned, so no value can wrap around."""
    values = np.asarray(offsets)
    if values.dtype.kind not in "ui" or values.ndim != 1 or not values.size:
        raise VaeflowError(f"{path} has a damaged index: {what} are not a list of integers")
    if values.dtype.kind == "i" and (values < 0).any():
        raise VaeflowError(f"{path} has a damaged index: {what} are negative")
    unsigned = values.astype(np.uint64)
    if unsigned[0] != 0 or (unsigned[1:] < unsigned[:-1]).any() or int(unsigned[-1]) > limit:
        raise VaeflowError(f"{path} has a damaged index: {what} do not start at 0, run backwards or pass the data")
    return unsigned.astype(np.int64)


def _text_column(group: zarr.Group, name: str, rows: int, path: Path | str) -> list[str]:
    """The first ``rows`` texts of a column, its offsets checked before they are used."""
    data = array(group, text_bytes(name))
    offsets = _checked_offsets(read(group, text_offsets(name))[: rows + 1], data.shape[0], f"{name} offsets", path)
    raw = np.asarray(data[: int(offsets[-1])]).tobytes() if offsets[-1] else b""
    try:
        return [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets.tolist())]
    except UnicodeDecodeError as exc:
        raise VaeflowError(f"{path} has a damaged index: a {name} is not UTF-8") from exc


def check_stream_shape(path: Path | str, name: str, data: bytes, shape: np.ndarray) -> None:
    """Refuse a stream whose header gives another image size than the index."""
    header, _ = stream_format.unpack(data)
    if (header.height, header.width) != (int(shape[0]), int(shape[1])):
        raise VaeflowError(
            f"{path} has a damaged index: {name!r} is {int(shape[1])}x{int(shape[0])} in the index but its stream "
            f"says {header.width}x{header.height}"
        )


def _recorded_model(settings: Any) -> ModelRef | None:
    """The model the store's settings record; None for stores that name it only (v1 settings)."""
    model = settings.get("model") if isinstance(settings, dict) else None
    return ModelRef.from_dict(model) if isinstance(model, dict) else None


def open_store(
    location: StoreLocation, runtime: RuntimeOptions | None = None, storage_options: dict[str, Any] | None = None
) -> StoreReader:
    """Open a finished vaeflow store for reading: a local path, an fsspec URL (``s3://``, ``gs://``, ``memory://``,
    ``file://``, ``http(s)://``; ``storage_options`` go to its file system) or a zarr store object."""
    return StoreReader(location, runtime, storage_options)
