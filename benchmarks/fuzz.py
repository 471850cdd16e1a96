"""Fuzzing ``decompress`` and ``open_store`` with mutated inputs.

The mutations flip, insert, delete and truncate bytes, and splice inputs together. Half of
the mutated streams get their CRC32s recomputed, so that the damage reaches the header
parser and the entropy decoder instead of stopping at the checksums. Each input must end in
vaeflow's own errors (``CorruptStreamError``, ``ModelError``, or for stores ``VaeflowError``)
or decode; anything else is a crash, and an input running over the time limit is a hang.
The same targets serve the atheris harnesses in ``tests/fuzz``.
"""

from __future__ import annotations

import random
import shutil
import signal
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import vaeflow
from vaeflow.foundations.binary import ByteReader
from vaeflow.foundations.errors import VaeflowError

TIME_LIMIT = 10  # seconds per input


class Hang(Exception):
    pass


@dataclass
class FuzzReport:
    target: str
    executions: int = 0
    rejected: int = 0
    accepted: int = 0
    crashes: list[tuple[bytes, str]] = field(default_factory=list)
    hangs: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.target}: {self.executions:,} executions in {self.seconds:.0f} s "
            f"({self.executions / max(self.seconds, 1e-9):,.0f}/s); {self.rejected:,} rejected with vaeflow's errors, "
            f"{self.accepted:,} decoded, {len(self.crashes)} crashes, {self.hangs} hangs"
        )


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


def seed_streams() -> list[bytes]:
    """Small real streams of every pipeline from a synthetic but natural-looking image, and the golden
    streams of every format (those of every coder that ever wrote one)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:56]
    base = 128 + 60 * np.sin(xx / 6.0)[..., None] * np.cos(yy / 9.0)[..., None] + rng.normal(0, 12, (40, 56, 3))
    image = np.clip(base, 0, 255).astype(np.uint8)
    streams = [vaeflow.compress(image[:h, :w], pipeline=p) for p in ("default", "plain", "latent-store")
               for h, w in ((40, 56), (9, 17), (1, 1))]  # fmt: skip
    streams.append(vaeflow.compress(image, pipeline="plain", quality=95))
    streams += [path.read_bytes() for path in sorted(GOLDEN.glob("v*/*.vfl"))]
    return streams


def recompute_crcs(data: bytearray) -> bytearray:
    """Fix both CRC32s of a (mutated) stream whose lengths still parse; else leave it."""
    try:
        reader = ByteReader(bytes(data))
        reader.take(5)
        body = reader.varint(1024)
        reader.take(body)
        end = reader.pos
        data[end : end + 4] = zlib.crc32(bytes(data[:end])).to_bytes(4, "little")
        payload = data[end + 4 : -4]
        data[-4:] = zlib.crc32(bytes(payload)).to_bytes(4, "little")
    except VaeflowError:
        pass
    return data


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        kind = rng.randrange(6)
        i = rng.randrange(len(out)) if out else 0
        if kind == 0 and out:
            out[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[i] = rng.randrange(256)
        elif kind == 2:
            out[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
        elif kind == 3 and out:
            del out[i : i + rng.randrange(1, 5)]
        elif kind == 4:
            del out[i:]
        else:
            other = rng.choice(others)
            j = rng.randrange(len(other))
            out[i:] = other[j:]
    return bytes(recompute_crcs(out) if rng.random() < 0.5 else out)


def run_target(
    target: Callable[[bytes], object],
    inputs: Iterator[bytes],
    report: FuzzReport,
    allowed: tuple[type[BaseException], ...],
) -> FuzzReport:
    start = time.perf_counter()
    for data in inputs:
        report.executions += 1
        try:
            with time_limit(TIME_LIMIT):
                target(data)
            report.accepted += 1
        except allowed:
            report.rejected += 1
        except Hang:
            report.hangs += 1
            report.crashes.append((data, "hang"))
        except Exception as exc:  # anything else is a finding
            report.crashes.append((data, f"{type(exc).__name__}: {exc}"))
    report.seconds = time.perf_counter() - start
    return report


def decompress_target(data: bytes) -> None:
    vaeflow.decompress(data)


def fuzz_decompress(executions: int, seed: int = 0) -> FuzzReport:
    rng = random.Random(seed)
    seeds = seed_streams()
    inputs = (mutate(rng, rng.choice(seeds), seeds) for _ in range(executions))
    return run_target(
        decompress_target, inputs, FuzzReport("decompress"), (vaeflow.CorruptStreamError, vaeflow.ModelError)
    )


def store_target(folder: Path) -> None:
    """Everything a reader does with a store: open, list, read, decode a latent, verify."""
    from vaeflow.dataset.verify import verify_store

    store = vaeflow.open_store(folder)
    _ = (store.names, store.failures, store.skipped, store.summary())
    for name in store.names[:2]:
        store.read_latent(name)
    verify_store(folder)


def build_seed_store(root: Path) -> Path:
    from PIL import Image

    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i, shape in enumerate(((24, 32), (24, 32), (17, 9))):
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(src / f"{i}.png")
    (src / "bad.png").write_bytes(b"not an image")
    store = root / "seed.zarr"
    vaeflow.compress_dataset(src, store, scheduler="sync", options=vaeflow.JobOptions(progress=False))
    return store


def fuzz_store(executions: int, seed: int = 0) -> FuzzReport:
    """Mutate the files of a small store (index chunks, metadata, stream data) and read it."""
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        seed_store = build_seed_store(base)
        files = {p.relative_to(seed_store): p.read_bytes() for p in sorted(seed_store.rglob("*")) if p.is_file()}
        names = sorted(files)
        work = base / "work.zarr"

        shutil.copytree(seed_store, work)

        def inputs() -> Iterator[bytes]:
            for _ in range(executions):
                victims = {rng.choice(names) for _ in range(rng.choice((1, 1, 2, 3)))}
                for victim in victims:
                    (work / victim).write_bytes(mutate(rng, files[victim] or b"\0", list(files.values())))
                yield str(work).encode()
                for victim in victims:  # restore what this input changed
                    (work / victim).write_bytes(files[victim])

        report = FuzzReport("open_store")
        return run_target(lambda d: store_target(Path(d.decode())), inputs(), report, (VaeflowError,))
    finally:
        shutil.rmtree(base, ignore_errors=True)
