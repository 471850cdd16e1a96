"""Small helpers shared by tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m vaeflow ARGS`` in a subprocess, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "vaeflow", *args], capture_output=True, text=True, timeout=600)


def kill_after_batches(proc: subprocess.Popen[bytes], store: Path, batches: int = 3, timeout: float = 60) -> int:
    """SIGKILL ``proc``, a job writing ``store``, once it has finished ``batches`` batches (or at ``timeout``
    seconds); the number of batches finished then."""
    done = store / "_work" / "done"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (done.exists() and len(list(done.glob("*.json"))) >= batches):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(done.glob("*.json"))) if done.exists() else 0


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path: two stores are byte-identical when these are equal."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def image_folder(root: Path, images: list[np.ndarray], height: int, width: int) -> Path:
    """``root/src`` holding ``0.png``, ``1.png``, ... : the top-left height x width of each image."""
    src = root / "src"
    src.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[:height, :width]).save(src / f"{i}.png")
    return src


def sync_job(src: Path, store: Path, **kwargs: Any) -> Any:
    """A dataset job run in this process (the reference executor)."""
    from vaeflow import compress_dataset

    return compress_dataset(src, store, scheduler="sync", **kwargs)


# (height, width) of each image of the mixed store: four shapes in groups of 5, 4, 2 and 1; latents (4, h/8, w/8)
MIXED_SIZES = [(64, 64)] * 5 + [(64, 96)] * 4 + [(96, 64)] * 2 + [(80, 80)]


def mixed_store(root: Path, photos: list[np.ndarray]) -> Path:
    """``root/store.zarr``: crops of ``photos`` of MIXED_SIZES (named so that store order mixes the shapes)."""
    src = root / "src"
    src.mkdir()
    for i, (h, w) in enumerate(MIXED_SIZES):
        top, left = 13 * i, 23 * i  # within the 256 x 384 photos
        crop = photos[i % len(photos)][top : top + h, left : left + w]
        assert crop.shape[:2] == (h, w), f"the photos are too small for a {h}x{w} crop at {top},{left}"
        Image.fromarray(crop).save(src / f"{i % 3}-{i:02d}.png")
    from vaeflow import JobOptions

    report = sync_job(src, root / "store.zarr", options=JobOptions(progress=False))
    assert report.stored == len(MIXED_SIZES) and report.failed == 0
    return root / "store.zarr"


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on an S3 server on loopback, and the storage_options that reach it."""

    name: str
    options: dict[str, Any]

    @property
    def cli_options(self) -> list[str]:
        """The storage options as ``--storage-option KEY=VALUE`` flags of the command line."""
        return [f"--storage-option={k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in self.options.items()]

    def put(self, local: Path, key: str) -> str:
        """Upload the folder ``local`` as ``key``; returns its s3:// URL."""
        import s3fs

        s3fs.S3FileSystem(**self.options).put(str(local), f"{self.name}/{key}", recursive=True)
        return f"s3://{self.name}/{key}"


def damageable_symbols(data: st.DataObject, channels: int) -> np.ndarray:
    """Laplace symbols (channels, 12, 20), 1% of them 70000 (escapes, long tokens), from a drawn seed."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    symbols = np.rint(rng.laplace(0, 2.0, (channels, 12, 20))).astype(np.int32)
    symbols[rng.random(symbols.shape) < 0.01] = 70000
    return symbols


def damaged(payload: bytes, data: st.DataObject) -> tuple[bytes, str]:
    """``payload`` with a drawn bit flipped, byte overwritten, tail cut or bytes appended, and which it was."""
    out = bytearray(payload)
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "byte"]))
    at = data.draw(st.integers(0, len(out) - 1))
    if how == "flip":
        out[at] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "byte":
        out[at] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        del out[at:]
    else:
        out += bytes(data.draw(st.lists(st.integers(0, 255), min_size=1, max_size=9)))
    return bytes(out), how
