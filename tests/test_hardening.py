"""Hostile images, streams and stores; faults; concurrent writers; poison inputs; verify."""

from __future__ import annotations

import base64
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import vaeflow
from vaeflow import JobOptions, compress_dataset, open_store
from vaeflow.bench.fuzz import build_seed_store, recompute_crcs, store_target
from vaeflow.dataset.job import StoreWriteError
from vaeflow.dataset.lock import LOCK_NAME, StoreLock, StoreLockedError
from vaeflow.errors import CorruptStreamError, ModelError, VaeflowError
from vaeflow.imageio import ImageReadError, load_image

from .helpers import tree_bytes

CORPUS = Path(__file__).parent / "fuzz" / "corpus"
SYNC = JobOptions(scheduler="sync", progress=False)


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.fixture()
def photo(kodak: list[np.ndarray]) -> Image.Image:
    return Image.fromarray(kodak[0][:48, :80])


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = _save(Image.new("1", (12000, 12000)), tmp_path / "bomb.png")
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(path, max_pixels=50_000_000)


def test_lying_extension_and_garbage(tmp_path: Path, photo: Image.Image) -> None:
    liar = tmp_path / "really-a-png.jpg"
    photo.save(liar, format="PNG")
    assert load_image(liar).pixels.shape == (48, 80, 3)
    (tmp_path / "garbage.png").write_bytes(os.urandom(3000))
    with pytest.raises(ImageReadError, match=r"not a readable image|cannot decode"):
        load_image(tmp_path / "garbage.png")


def test_multi_frame_images_use_the_first_frame(tmp_path: Path, photo: Image.Image) -> None:
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    for name in ("anim.webp", "pages.tiff", "anim.png"):
        path = tmp_path / name
        frames[0].save(path, save_all=True, append_images=frames[1:])
        loaded = load_image(path)
        assert "first of 2 frames" in loaded.notes, name
        assert np.abs(loaded.pixels.astype(int) - np.asarray(photo).astype(int)).mean() < 4


@pytest.mark.parametrize(
    ("mode", "note"),
    [("CMYK", "converted to RGB"), ("P", "converted to RGB"), ("LA", "alpha composited"), ("I;16", "scaled to 8 bits"),
     ("L", None)],
)  # fmt: skip
def test_modes_are_converted_with_notes(tmp_path: Path, photo: Image.Image, mode: str, note: str | None) -> None:
    image = photo.convert("L").convert("I;16") if mode == "I;16" else photo.convert(mode)
    path = _save(image, tmp_path / ("x.tiff" if mode == "CMYK" else "x.png"))
    loaded = load_image(path)
    assert loaded.pixels.shape == (48, 80, 3) and loaded.pixels.dtype == np.uint8
    assert (note is None and not loaded.notes) or any(note in n for n in loaded.notes)


def _png16(path: Path, pixels: np.ndarray) -> Path:
    """A 48-bit RGB PNG (Pillow reads these but cannot write them)."""
    import struct
    import zlib

    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def test_16_bit_rgb_keeps_its_high_bytes_with_a_note(tmp_path: Path, photo: Image.Image) -> None:
    deep = np.asarray(photo).astype(np.uint16) * 257 + 100
    loaded = load_image(_png16(tmp_path / "deep.png", deep))
    assert "16-bit RGB scaled to 8 bits" in loaded.notes
    np.testing.assert_array_equal(loaded.pixels, (deep >> 8).astype(np.uint8))


def test_formats_outside_the_list_are_refused_whatever_their_extension(tmp_path: Path, photo: Image.Image) -> None:
    disguised = tmp_path / "icon.png"
    photo.resize((32, 32)).save(disguised, format="ICO")
    with pytest.raises(ImageReadError, match="not a readable image"):
        load_image(disguised)
    eps = tmp_path / "page.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageReadError, match="not a readable image"):
        load_image(eps)


def test_palette_transparency_and_icc_and_exif_orientation(tmp_path: Path, photo: Image.Image) -> None:
    palette = photo.convert("P")
    palette.info["transparency"] = 0
    assert any("alpha composited" in n for n in load_image(_save(palette, tmp_path / "p.png")).notes)
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert "ICC profile ignored" in " ".join(load_image(_save(photo, tmp_path / "icc.png", icc_profile=profile)).notes)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(_save(photo, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95))
    assert loaded.pixels.shape == (80, 48, 3)
    assert "EXIF orientation 6 applied" in loaded.notes


def test_hostile_files_in_a_job_become_rows(tmp_path: Path, photo: Image.Image) -> None:
    src = tmp_path / "src"
    src.mkdir()
    photo.save(src / "good.png")
    _save(Image.new("1", (12000, 12000)), src / "bomb.png")
    photo.save(src / "liar.jpg", format="PNG")
    (src / "zero.png").write_bytes(b"")
    report = compress_dataset(
        src, tmp_path / "s.zarr", options=JobOptions(scheduler="sync", progress=False, max_pixels=50_000_000)
    )
    store = open_store(tmp_path / "s.zarr")
    assert set(store.names) == {"good.png", "liar.jpg"} and report.failed == 2
    reasons = {f.path: f.reason for f in store.failures}
    assert "over the limit" in reasons["bomb.png"] and reasons["zero.png"]


def _corpus_stream(data: bytes) -> bytes:
    body = bytearray(data[1:])
    return bytes(recompute_crcs(body) if data[0] & 1 else body)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("stream-*.bin")), ids=lambda p: p.name)
def test_stream_regression_corpus(path: Path) -> None:
    with pytest.raises((CorruptStreamError, ModelError)):
        vaeflow.decompress(_corpus_stream(path.read_bytes()))


def test_store_regression_corpus(tmp_path: Path) -> None:
    seed = build_seed_store(tmp_path)
    cases = sorted(CORPUS.glob("store-*.json"))
    assert cases
    for case in cases:
        entry = json.loads(case.read_text())
        target = seed / entry["file"]
        original = target.read_bytes()
        target.write_bytes(base64.b64decode(entry["data"]))
        try:
            store_target(seed)
        except VaeflowError:
            pass
        finally:
            target.write_bytes(original)


def test_hostile_names_in_an_index_are_refused(tmp_path: Path, photo: Image.Image) -> None:
    from vaeflow.dataset import store as store_io
    from vaeflow.dataset.decompress import decompress_store

    src = tmp_path / "src"
    src.mkdir()
    photo.save(src / "a.png")
    store = tmp_path / "s.zarr"
    compress_dataset(src, store, options=SYNC)
    stream = open_store(store).read_stream("a.png")
    for name in ("../evil.png", "/tmp/evil.png", "a/../../evil.png"):
        row = store_io.Row(name, (48, 80), True, "", stream)
        store_io.write_index(store, [row], len(stream), [])
        store_io.consolidate(store)
        with pytest.raises(VaeflowError, match="refusing"):
            decompress_store(store, tmp_path / "out")
        assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize(
    ("code", "where"),
    [(errno.ENOSPC, "work store"), (errno.EACCES, "work store"), (errno.ENOSPC, "final index")],
)
def test_a_full_disk_or_a_permission_error_stops_the_job_resumably(
    code: int, where: str, kodak_paths: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaeflow.dataset import store as store_io
    from vaeflow.dataset import work

    src = tmp_path / "src"
    src.mkdir()
    for p in kodak_paths[:4]:
        Image.open(p).crop((0, 0, 96, 64)).save(src / p.name)
    clean = tmp_path / "clean.zarr"
    compress_dataset(src, clean, options=JobOptions(scheduler="sync", progress=False, batch_size=1))
    fault = OSError(code, os.strerror(code))
    if where == "work store":
        original, calls = work.WorkStore.write_streams, []

        def failing(self: work.WorkStore, key: str, streams: list[bytes]) -> None:
            calls.append(key)
            if len(calls) == 3:
                raise fault
            original(self, key, streams)

        monkeypatch.setattr(work.WorkStore, "write_streams", failing)
    else:
        monkeypatch.setattr(store_io, "_swap_index", lambda store: (_ for _ in ()).throw(fault))
    store = tmp_path / "s.zarr"
    with pytest.raises(StoreWriteError, match=rf"{os.strerror(code)}.*run the same command again to resume"):
        compress_dataset(src, store, options=JobOptions(scheduler="sync", progress=False, batch_size=1))
    assert not (store / LOCK_NAME).exists()
    monkeypatch.undo()
    report = compress_dataset(src, store, options=JobOptions(scheduler="sync", progress=False, batch_size=1))
    assert report.resumed_batches == (2 if where == "work store" else 4)
    assert tree_bytes(store) == tree_bytes(clean)


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path: Path, photo: Image.Image) -> None:
    src = tmp_path / "src"
    src.mkdir()
    photo.save(src / "a.png")
    store = tmp_path / "s.zarr"
    with StoreLock(store), pytest.raises(StoreLockedError, match="being written by process"):
        compress_dataset(src, store, options=SYNC)
    (store / LOCK_NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 7, "heartbeat": 0}))
    assert compress_dataset(src, store, options=SYNC).stored == 1
    assert not (store / LOCK_NAME).exists()


def _contend(store: Path, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        with StoreLock(store):
            results.append("won")
            deadline = time.monotonic() + 60
            while len(results) < 4 and time.monotonic() < deadline:  # hold it until every other racer has tried
                time.sleep(0.01)
    except StoreLockedError:
        results.append("refused")


def test_of_jobs_racing_for_a_stale_lock_exactly_one_gets_it(tmp_path: Path) -> None:
    import multiprocessing

    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}))
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager:
        barrier, results = manager.Barrier(4), manager.list()
        racers = [spawn.Process(target=_contend, args=(store, barrier, results)) for _ in range(4)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(90)
        assert sorted(results) == ["refused", "refused", "refused", "won"]
        assert [r.exitcode for r in racers] == [0, 0, 0, 0]
    assert not (store / LOCK_NAME).exists() and not list(store.glob(f"{LOCK_NAME}.*"))


def test_a_lock_with_a_live_owner_elsewhere_is_kept_and_a_damaged_one_taken(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    store.mkdir()
    lock = store / LOCK_NAME
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(StoreLockedError, match="elsewhere"):
        StoreLock(store).acquire()
    lock.write_text('{"pid": "x", "heartbeat": []}')
    with StoreLock(store):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text("")  # an empty lock is someone's being written, until it is old
    with pytest.raises(StoreLockedError):
        StoreLock(store).acquire()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    with StoreLock(store):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


class _Crash(BaseException):
    """Stands for the process dying: nothing in vaeflow catches it."""


def test_an_image_that_keeps_killing_the_job_is_isolated_on_resume(
    tmp_path: Path, photo: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vaeflow.dataset.tasks as tasks

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        photo.save(src / f"{i}.png")
    original = tasks.load_image

    def dies_on_1(path: str, max_pixels: int) -> object:
        if str(path).endswith("1.png"):
            raise _Crash
        return original(path, max_pixels)

    monkeypatch.setattr(tasks, "load_image", dies_on_1)
    store = tmp_path / "s.zarr"
    runs = 0
    while True:  # what a user does after each crash: run the same command again
        runs += 1
        try:
            compress_dataset(src, store, options=SYNC)
            break
        except _Crash:
            assert runs < 10
    assert runs == 5  # twice as a batch, then twice alone, then it is marked and the job completes
    reader = open_store(store)
    assert reader.names == ["0.png", "2.png"]
    assert reader.failures[0].path == "1.png" and "poison input" in reader.failures[0].reason


class _PoisonPlugin:
    """Makes a worker process die whenever it loads ``poison.png`` (registered on every worker)."""

    name = "vaeflow-test-poison"

    def setup(self, worker: object) -> None:
        import vaeflow.dataset.tasks as tasks

        original = tasks.load_image

        def load(path: str, max_pixels: int) -> object:
            if str(path).endswith("poison.png"):
                os._exit(17)
            return original(path, max_pixels)

        tasks.load_image = load  # type: ignore[assignment]


def test_a_worker_dying_on_one_image_costs_only_that_image(tmp_path: Path, photo: Image.Image) -> None:
    import cloudpickle
    import dask
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.png", "poison.png", "b.png"):
        photo.save(src / name)
    plugin = type("Poison", (_PoisonPlugin, WorkerPlugin), {})()
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(plugin)
        patched = client.run(lambda: __import__("vaeflow.dataset.tasks", fromlist=["_"]).load_image.__name__)
        assert set(patched.values()) == {"load"}
        report = compress_dataset(src, tmp_path / "s.zarr", client=client, options=JobOptions(progress=False))
    store = open_store(tmp_path / "s.zarr")
    assert store.names == ["a.png", "b.png"] and report.failed == 1
    assert "poison input" in store.failures[0].reason
    assert store.read_stream("a.png") == vaeflow.compress(np.asarray(photo))


def test_verify_finds_damaged_streams(tmp_path: Path, photo: Image.Image) -> None:
    import zarr

    from vaeflow.cli.main import main
    from vaeflow.dataset.verify import verify_store

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        photo.rotate(90 * i, expand=True).save(src / f"{i}.png")
    store = tmp_path / "s.zarr"
    compress_dataset(src, store, options=SYNC)
    assert verify_store(store).ok and main(["verify", str(store)]) == 0
    reader = open_store(store)
    begin, end = reader.stream_range("1.png")
    data = zarr.open_array(store / "streams" / "data", mode="r+")
    data[begin + (end - begin) // 2] = (int(data[begin + (end - begin) // 2]) + 1) % 256
    report = verify_store(store)
    assert [name for name, _ in report.damaged] == ["1.png"] and report.checked == 3
    assert "checksum" in report.damaged[0][1]
    assert main(["verify", str(store)]) == 3
