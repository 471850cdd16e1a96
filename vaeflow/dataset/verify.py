"""``vaeflow verify``: check every stream's checksums without decoding any of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaeflow.dataset.location import describe
from vaeflow.dataset.reader import check_stream_shape, open_store
from vaeflow.foundations.errors import VaeflowError

WINDOW = 64 << 20  # bytes of stream data read at a time


@dataclass
class VerifyReport:
    store: Path | str  # a local path or a URL
    checked: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damaged

    def __str__(self) -> str:
        rate = self.bytes_read / 2**30 / self.seconds if self.seconds else float("nan")
        lines = [
            f"{self.store}: {self.checked} streams checked, {len(self.damaged)} damaged; "
            f"{self.bytes_read:,} bytes in {self.seconds:.2f} s ({rate:.2f} GB/s)"
        ]
        lines += [f"  damaged: {name}: {reason}" for name, reason in self.damaged]
        return "\n".join(lines)


def verify_store(path: str | Path, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Check magic, version, lengths and both CRC32s of every stored stream, that its header
    agrees with the index on the image's size, and that the stream and its row (name, sizes,
    caption, metadata) are what the row's check was written over, reading the data array in
    large windows; the index itself is checked when the store is opened."""
    start = time.perf_counter()
    store = open_store(path, storage_options=storage_options)
    report = VerifyReport(describe(path))
    rows = [(name, *store.stream_range(name)) for name in store.names]
    shapes = dict(zip(store.paths, store.shapes, strict=True))
    rows.sort(key=lambda r: r[1])
    window_start, window = 0, b""
    for name, begin, end in rows:
        report.checked += 1
        try:
            if end > window_start + len(window):
                window_start, window = begin, b""
                window = store.read_span(begin, max(end, min(begin + WINDOW, store.data.shape[0])))
                report.bytes_read += len(window)
            stream = window[begin - window_start : end - window_start]
            check_stream_shape(store.path, name, stream, shapes[name])
            store.check_row(name, stream)
        except VaeflowError as exc:
            report.damaged.append((name, str(exc)))
    report.seconds = time.perf_counter() - start
    return report
