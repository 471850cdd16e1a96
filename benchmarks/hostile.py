"""The hostile and careless inputs of ``vaeflow bench chaos``, each through the real command line: what happened.

Each attack runs ``vaeflow`` in a subprocess (with a timeout) and says what it did: the exit code, whether it
crashed (``internal error`` or a traceback), hung (the timeout), gave a wrong latent or caption without an error,
or wrote outside its destination. The counts of those four are the figures; every one should be 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

import vaeflow
from vaeflow.dataset import store as store_io

TIMEOUT_S = 300


@dataclass
class Outcome:
    attack: str
    happened: str  # what the user saw
    crashed: bool = False
    hung: bool = False
    silent_wrong: bool = False  # a wrong latent, caption or size given without an error
    wrote_outside: bool = False


def vaeflow_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vaeflow", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # fmt: skip


def _crashed(done: subprocess.CompletedProcess[str]) -> bool:
    return "internal error" in done.stderr or "Traceback" in done.stderr


def _peak_kib(code: str, *args: str) -> int:
    """Peak RSS (KiB) of a fresh Python process running ``code``."""
    script = code + "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return int(done.stdout.split()[-1])


def _photo(images: list[np.ndarray], i: int, h: int = 64, w: int = 96) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(images[i % len(images)][:h, :w]))


def name_not_utf8(tmp: Path, images: list[np.ndarray]) -> Outcome:
    src = tmp / "src"
    src.mkdir()
    _photo(images, 0).save(src / "good.png")
    _photo(images, 1).save(os.fsdecode(bytes(src) + b"/bad\xff.png"))
    done = vaeflow_cli("compress", str(src), str(tmp / "s.zarr"), "--scheduler", "sync", "--no-progress")
    reader = vaeflow.open_store(tmp / "s.zarr") if done.returncode in (0, 3) else None
    failed = [f.path for f in reader.failures] if reader else []
    return Outcome("a file name that is not UTF-8", f"exit {done.returncode}; stored {reader.names if reader else []},"
                   f" failed rows {failed}", crashed=_crashed(done))  # fmt: skip


def deep_sidecar(tmp: Path, images: list[np.ndarray]) -> Outcome:
    src = tmp / "src"
    src.mkdir()
    _photo(images, 0).save(src / "a.png")
    (src / "a.json").write_text("[" * 1000 + "]" * 1000)
    done = vaeflow_cli("compress", str(src), str(tmp / "s.zarr"), "--scheduler", "sync", "--no-progress")
    listing = vaeflow_cli("ls", str(tmp / "s.zarr"), "--json")
    note = vaeflow.open_store(tmp / "s.zarr").info("a.png")["notes"] if done.returncode == 0 else ""
    return Outcome("a .json sidecar 1,000 deep", f"compress exit {done.returncode}, ls --json exit "
                   f"{listing.returncode}; note: {note}", crashed=_crashed(done) or _crashed(listing))  # fmt: skip


def huge_sidecar(tmp: Path, images: list[np.ndarray]) -> Outcome:
    src = tmp / "src"
    src.mkdir()
    _photo(images, 0).save(src / "a.png")
    with (src / "a.txt").open("wb") as fh:
        fh.truncate(1 << 30)  # 1 GB, sparse
    code = "import contextlib, io, sys\nfrom vaeflow.cli.main import main\n"
    code += "with contextlib.redirect_stdout(io.StringIO()): main(['compress', sys.argv[1], sys.argv[2], '--dry-run'])"
    peak = _peak_kib(code, str(src), str(tmp / "s.zarr"))
    return Outcome("a 1 GB sparse caption sidecar, --dry-run", f"peak memory {peak / 1024:.0f} MB")


def hostile_bucket(tmp: Path, images: list[np.ndarray]) -> Outcome:
    normal, hostile = tmp / "normal", tmp / "hostile"
    for folder in (normal, hostile):
        folder.mkdir()
        _photo(images, 0).save(folder / "a.png")
    Image.fromarray(np.tile(images[0][:1, :100], (1, 40, 1))).save(hostile / "line.png")  # 1x4000
    Image.fromarray(np.ascontiguousarray(images[0][:1, :100])).save(hostile / "short.png")  # 1x100
    code = (
        "import sys, vaeflow\nr = vaeflow.compress_dataset(sys.argv[1], sys.argv[2], scheduler='sync', "
        "options=vaeflow.JobOptions(buckets=1024, progress=False))\nprint(r.stored, r.failed)"
    )
    base = _peak_kib(code, str(normal), str(tmp / "n.zarr"))
    peak = _peak_kib(code, str(hostile), str(tmp / "h.zarr"))
    reasons = [f.reason for f in vaeflow.open_store(tmp / "h.zarr").failures]
    return Outcome("--buckets 1024 on 1x4000 and 1x100 PNGs", f"peak {peak / base:.2f}x a normal image's job; "
                   f"failed rows: {reasons}")  # fmt: skip


def decompress_tree(tmp: Path, images: list[np.ndarray]) -> Outcome:
    src = tmp / "src"
    (src / "x.png").mkdir(parents=True)
    _photo(images, 0).save(src / "x.jpg")
    _photo(images, 1).save(src / "x.png" / "y.png")
    _photo(images, 2).save(src / "back\\slash.png")
    vaeflow_cli("compress", str(src), str(tmp / "s.zarr"), "--scheduler", "sync", "--no-progress")
    out = tmp / "out"
    out.mkdir()
    outside = tmp / "outside.png"
    outside.write_bytes(b"untouched")
    os.link(outside, out / "x.jpg.png")  # a hard link in DST to a file outside it
    done = vaeflow_cli("decompress", str(tmp / "s.zarr"), str(out), "--scheduler", "sync", "--overwrite", "--quiet")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.is_file())
    return Outcome("decompress: x.jpg beside x.png/y.png, a backslash name, a hard link out of DST, --overwrite",
                   f"exit {done.returncode}; written {written}; {done.stderr.strip().count(chr(10)) + 1} skipped "
                   "with the reason", crashed=_crashed(done),
                   wrote_outside=outside.read_bytes() != b"untouched")  # fmt: skip


def _captioned_store(tmp: Path, images: list[np.ndarray]) -> Path:
    src = tmp / "src"
    src.mkdir()
    for i, word in enumerate(("bird", "fish")):
        _photo(images, i).save(src / f"{word}.png")
        (src / f"{word}.txt").write_text(word)
    vaeflow_cli("compress", str(src), str(tmp / "s.zarr"), "--scheduler", "sync", "--no-progress")
    return tmp / "s.zarr"


def swap_streams(store: Path) -> None:
    """The first two streams' bytes trade places, the offsets with them: each row points at the other's stream."""
    data: Any = zarr.open_array(store / "streams" / "data", mode="a")
    offsets = np.asarray(zarr.open_array(store / "streams" / "offsets", mode="r")[:])
    first, second = bytes(data[offsets[0] : offsets[1]]), bytes(data[offsets[1] : offsets[2]])
    data[offsets[0] : offsets[2]] = np.frombuffer(second + first, np.uint8)
    root: Any = zarr.open_group(store, mode="a")
    store_io._write_array(root["streams"], "offsets",
                          np.array([0, len(second), len(first) + len(second)], np.uint64))  # fmt: skip
    store_io.consolidate(store)


def edit_index(column: str, edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    """Damage that rewrites an index column with ``edit`` of its values."""

    def damage(store: Path) -> None:
        group: Any = zarr.open_group(store, mode="a")["index"]
        store_io._write_array(group, column, edit(np.asarray(group[column][:]).copy()))
        store_io.consolidate(store)

    return damage


def flip_caption(values: np.ndarray) -> np.ndarray:
    """The caption bytes with "bird" made "bhrd" (the same length)."""
    text = bytearray(values.tobytes())
    text[text.index(b"bird") + 1] = ord("h")
    return np.frombuffer(bytes(text), np.uint8)


def first_size(values: np.ndarray) -> np.ndarray:
    """The first row's pair made (9999, 7)."""
    values[0] = (9999, 7)
    return values


def first_shape(values: np.ndarray) -> np.ndarray:
    """The first row's shape made 40x40."""
    return np.array([(40, 40), *values[1:]], values.dtype)


ROW_DAMAGE = {
    "two streams swapped in the shard": swap_streams,
    "a caption byte flipped in the index": edit_index("caption_bytes", flip_caption),
    "an original size edited in the index": edit_index("original_size", first_size),
    "a shape edited in the index": edit_index("shape", first_shape),
}


def row_damage(tmp: Path, images: list[np.ndarray], kind: str) -> Outcome:
    from vaeflow.torch import LatentDataset

    store = _captioned_store(tmp, images)
    expected = vaeflow.open_store(store).read_latent("bird.png")
    ROW_DAMAGE[kind](store)
    verify = vaeflow_cli("verify", str(store))
    try:
        dataset = LatentDataset(store)
        item = dataset.__getitems__([dataset.names.index("bird.png")])[0]
        wrong = not np.array_equal(item["latent"].float().numpy(), expected.astype(np.float16).astype(np.float32))
        wrong = wrong or item["caption"] != "bird" or item["original_size"].tolist() != [64, 96]
        loader = "the loader gave the item" + (" WRONG" if wrong else "")
    except vaeflow.VaeflowError as exc:
        wrong, loader = False, f"the loader refused it: {str(exc)[:90]}..."
    return Outcome(kind, f"verify exit {verify.returncode}; {loader}", crashed=_crashed(verify), silent_wrong=wrong)


def changed_source(tmp: Path, images: list[np.ndarray]) -> Outcome:
    src = tmp / "src"
    src.mkdir()
    _photo(images, 0).save(src / "a.png")
    vaeflow_cli("compress", str(src), str(tmp / "s.zarr"), "--scheduler", "sync", "--no-progress")
    _photo(images, 1).save(src / "a.png")
    _photo(images, 2).save(src / "b.png")
    done = vaeflow_cli("compress", str(src), str(tmp / "s.zarr"), "--add", "--scheduler", "sync", "--json")
    changed = json.loads(done.stdout)["changed"] if done.returncode == 0 else None
    return Outcome("--add after a source image was replaced", f"exit {done.returncode}; changed: {changed}",
                   crashed=_crashed(done))  # fmt: skip


def missing_bucket(tmp: Path, images: list[np.ndarray]) -> Outcome:
    from benchmarks.store_reads import moto_bucket

    src = tmp / "src"
    src.mkdir()
    _photo(images, 0).save(src / "a.png")
    server, options = moto_bucket("exists")
    try:
        flags = [f"--storage-option={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in options.items()]
        done = vaeflow_cli("compress", str(src), "s3://no-such-bucket/p.zarr", "--dry-run", *flags)
    finally:
        server.stop()
    return Outcome("--dry-run to a bucket that does not exist", f"exit {done.returncode}: {done.stderr.strip()[:110]}",
                   crashed=_crashed(done))  # fmt: skip


def s3_add(tmp: Path, images: list[np.ndarray]) -> Outcome:
    """Readers open the store on S3 after every object an --add uploads; then an --add killed after 8 uploads."""
    from benchmarks.store_reads import moto_bucket
    from vaeflow.dataset import upload

    src = tmp / "src"
    src.mkdir()
    for i in range(4):
        _photo(images, i).save(src / f"{i}.png")
    server, options = moto_bucket("adds")
    put, url, opened, failed = upload._put, "s3://adds/p.zarr", [0], [0]
    os.environ["VAEFLOW_HOME"] = str(tmp / "home")

    def put_then_read(fs: Any, local: Any, remote: str) -> None:
        put(fs, local, remote)
        opened[0] += 1
        try:
            reader = vaeflow.open_store(url, storage_options=options)
            reader.read_latents(reader.names)
        except vaeflow.VaeflowError:
            failed[0] += 1

    def killed(fs: Any, local: Any, remote: str) -> None:
        opened[0] += 1
        if opened[0] > 8:
            raise ConnectionError("killed after 8 uploads")
        put(fs, local, remote)

    job = {"scheduler": "sync", "storage_options": options}
    try:
        vaeflow.compress_dataset(src, url, options=vaeflow.JobOptions(progress=False), **job)  # type: ignore[arg-type]
        add = vaeflow.JobOptions(progress=False, add=True)
        _photo(images, 4).save(src / "4.png")
        upload._put = put_then_read
        vaeflow.compress_dataset(src, url, options=add, **job)  # type: ignore[arg-type]
        reads = opened[0]
        _photo(images, 5).save(src / "5.png")
        upload._put, opened[0] = killed, 0
        with contextlib.suppress(vaeflow.VaeflowError):  # the upload, killed
            vaeflow.compress_dataset(src, url, options=add, **job)  # type: ignore[arg-type]
        after_kill = len(vaeflow.open_store(url, storage_options=options).names)
    finally:
        upload._put = put
        os.environ.pop("VAEFLOW_HOME", None)
        server.stop()
    return Outcome("--add to a store on S3, readers opening it after every uploaded object, then killed after 8",
                   f"{failed[0]} of {reads} readers failed; after the kill the store opens with {after_kill} images "
                   "(the previous generation)", crashed=failed[0] > 0)  # fmt: skip


def run(images: list[np.ndarray]) -> list[dict[str, Any]]:
    attacks: list[tuple[str, Callable[[Path], Outcome]]] = [
        ("name", lambda t: name_not_utf8(t, images)),
        ("deep", lambda t: deep_sidecar(t, images)),
        ("huge", lambda t: huge_sidecar(t, images)),
        ("bucket", lambda t: hostile_bucket(t, images)),
        ("tree", lambda t: decompress_tree(t, images)),
        *[(kind, lambda t, k=kind: row_damage(t, images, k)) for kind in ROW_DAMAGE],  # type: ignore[misc]
        ("changed", lambda t: changed_source(t, images)),
        ("bucket-missing", lambda t: missing_bucket(t, images)),
        ("s3-add", lambda t: s3_add(t, images)),
    ]
    outcomes = []
    for name, attack in attacks:
        tmp = Path(tempfile.mkdtemp(prefix="vaeflow-hostile-"))
        try:
            outcomes.append(attack(tmp))
        except subprocess.TimeoutExpired:
            outcomes.append(Outcome(name, f"no answer in {TIMEOUT_S} s", hung=True))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [asdict(o) for o in outcomes]


def report(outcomes: list[dict[str, Any]]) -> str:
    lines = [f"hostile inputs ({len(outcomes)} attacks through the command line):"]
    lines += [f"  {o['attack']}: {o['happened']}" for o in outcomes]
    totals = {k: sum(bool(o[k]) for o in outcomes) for k in ("crashed", "hung", "silent_wrong", "wrote_outside")}
    lines.append(f"  crashed jobs {totals['crashed']}, hangs {totals['hung']}, silent wrong latents or captions "
                 f"{totals['silent_wrong']}, writes outside DST {totals['wrote_outside']}")  # fmt: skip
    return "\n".join(lines)
