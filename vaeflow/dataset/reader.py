"""Reading a store back: any image, latent or stream on its own, or all of them in batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vaeflow.codec.api import decompress, decompress_latent, info
from vaeflow.dataset import store as store_io
from vaeflow.dataset.location import StoreLocation, describe, open_root
from vaeflow.dataset.spans import SpanReader
from vaeflow.dataset.store import STATUS_FAILED, STATUS_OK, STORE_FORMAT, array, read, read_text_column, subgroup
from vaeflow.errors import VaeflowError
from vaeflow.models import RuntimeOptions

KINDS = ("image", "latent", "stream")
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
    """A vaeflow store opened for reading; the index is loaded, the streams read on demand."""

    meta: dict[str, Any]

    def __init__(
        self, path: StoreLocation, runtime: RuntimeOptions | None = None, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.location, self.storage_options = path, storage_options  # what reopens it (in a DataLoader worker)
        self.path = describe(path)  # a local Path, a URL or the zarr store object's name
        self._root = open_root(path, storage_options)
        meta = self._root.attrs.get("vaeflow")
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise VaeflowError(f"{self.path} is not a vaeflow store (no vaeflow attributes)")
        if meta.get("version") not in range(1, store_io.STORE_VERSION + 1):
            raise VaeflowError(
                f"{self.path} is store format {meta.get('version')!r}; this vaeflow reads formats 1 to "
                f"{store_io.STORE_VERSION} (a newer vaeflow may read it)"
            )
        if meta.get("complete") is not True:
            raise VaeflowError(
                f"{self.path} is not a finished vaeflow store: a job is writing it or was interrupted "
                "(run the same command again to finish it)"
            )
        self.meta = meta
        self.runtime = runtime
        with damage(self.path, "index"):
            index = subgroup(self._root, "index")
            self._check_sizes(index)
            self._paths = read_text_column(index, "path")
            self._notes = read_text_column(index, "note")
            self._status = read(index, "status")
            self.shapes = read(index, "shape")
            self._bpp = read(index, "bpp")
            self._offsets = read(self._root, "streams/offsets").astype(np.int64)
            self._data = array(self._root, "streams/data")
            self._spans = SpanReader(self._data)
        self._rows = {p: i for i, p in enumerate(self._paths)}
        self._check_index()

    def _check_sizes(self, index: zarr.Group) -> None:
        """Array shapes come from the file too: check them against the row count before reading."""
        rows = self.meta.get("rows")
        if not isinstance(rows, int) or not 0 <= rows <= MAX_ROWS:
            raise VaeflowError(f"{self.path} has a damaged index: row count {rows!r}")
        expected = {"status": (rows,), "shape": (rows, 2), "bpp": (rows,), "nbytes": (rows,),
                    "path_offsets": (rows + 1,), "note_offsets": (rows + 1,)}  # fmt: skip
        for name, shape in expected.items():
            if array(index, name).shape != shape:
                raise VaeflowError(f"{self.path} has a damaged index: {name} is not {shape}")
        for name in ("path_bytes", "note_bytes"):
            if array(index, name).shape[0] > MAX_TEXT_BYTES_PER_ROW * max(rows, 1):
                raise VaeflowError(f"{self.path} has a damaged index: {name} is too long for {rows} rows")
        if array(self._root, "streams/offsets").shape != (rows + 1,):
            raise VaeflowError(f"{self.path} has a damaged index: stream offsets are not {(rows + 1,)}")

    def _check_index(self) -> None:
        """Index values come from the file: check them before any of them is used."""
        n = len(self._paths)
        problems = []
        if len(self._notes) != n or self._status.shape != (n,) or self.shapes.shape != (n, 2):
            problems.append("columns of different lengths")
        if self._offsets.shape != (n + 1,) or (n >= 0 and self._offsets.size and self._offsets[0] != 0):
            problems.append("stream offsets do not match the index")
        elif (np.diff(self._offsets) < 0).any() or self._offsets[-1] > self._data.shape[0]:
            problems.append("stream offsets run backwards or past the data")
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
            group = subgroup(self._root, "skipped")
            return list(zip(read_text_column(group, "path"), read_text_column(group, "reason"), strict=True))

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
        start, end = self.stream_range(name)
        with damage(self.path, f"stream data of {name!r}"):
            return self._spans.read([(start, end)])[0]

    def read_streams(self, names: list[str]) -> list[bytes]:
        """Several streams with one read of each run of neighbours (neighbours in the index are
        neighbours in the data, so a batch in index order is one range read); runs are read concurrently."""
        rows = [self._row(n) for n in names]
        with damage(self.path, "stream data"):
            return self._spans.read([(int(self._offsets[r]), int(self._offsets[r + 1])) for r in rows])

    def entries(self) -> Iterator[tuple[str, tuple[int, int], int, float]]:
        """(name, (height, width), bytes, bpp) of each stored image, from the index alone."""
        for row, (path, status) in enumerate(zip(self._paths, self._status, strict=True)):
            if status == STATUS_OK:
                size = (int(self.shapes[row, 0]), int(self.shapes[row, 1]))
                yield path, size, int(self._offsets[row + 1] - self._offsets[row]), float(self._bpp[row])

    def read_image(self, name: str) -> np.ndarray:
        return decompress(self.read_stream(name), runtime=self.runtime)

    def read_latent(self, name: str) -> np.ndarray:
        """The dequantized latent (C, h, w), decoded from the stream without the VAE."""
        return decompress_latent(self.read_stream(name))

    def read_latents(self, names: list[str]) -> list[np.ndarray]:
        """The dequantized latents of ``names``, their streams fetched as by ``read_streams``."""
        return [decompress_latent(data) for data in self.read_streams(names)]

    def info(self, name: str) -> dict[str, Any]:
        row = self._row(name)
        return {"path": name, "notes": self._notes[row], **info(self.read_stream(name))}

    def iter_batches(self, batch_size: int = 16, kind: str = "latent") -> Iterator[tuple[list[str], Any]]:
        """Yield (names, values) in index order; values are stacked when their shapes agree."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
        decode: Any = {
            "image": lambda data: decompress(data, runtime=self.runtime),
            "latent": decompress_latent,
            "stream": lambda data: data,
        }[kind]
        names = self.names
        for start in range(0, len(names), batch_size):
            chunk = names[start : start + batch_size]
            values: list[Any] = [decode(data) for data in self.read_streams(chunk)]
            if kind != "stream" and len({v.shape for v in values}) == 1:
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
            "settings": self.meta.get("settings"),
            "vaeflow_version": self.meta.get("vaeflow_version"),
        }


def open_store(
    path: StoreLocation, runtime: RuntimeOptions | None = None, storage_options: dict[str, Any] | None = None
) -> StoreReader:
    """Open a finished vaeflow store for reading: a local path, an fsspec URL (``s3://``, ``gs://``, ``memory://``,
    ``file://``, ``http(s)://``; ``storage_options`` go to its file system) or a zarr store object."""
    return StoreReader(path, runtime, storage_options)
