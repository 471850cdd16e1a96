"""Reliability: no image lost or overwritten when the cluster dies, with hostile folders, or on decompress.

Each test is one of the failures an independent test of the dataset jobs reproduced."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import vaeflow
from benchmarks.cluster import ProcessCluster as Cluster
from vaeflow import JobOptions, open_store
from vaeflow.cli.main import main
from vaeflow.dataset import store as store_io
from vaeflow.dataset.decompress import plan_targets
from vaeflow.dataset.scan import scan
from vaeflow.foundations.errors import VaeflowError
from vaeflow.foundations.imageio import DEFAULT_MAX_PIXELS, read_header

from ..helpers import sync_job, tree_bytes

VAEFLOW = [sys.executable, "-m", "vaeflow"]


def _images(folder: Path, photos: list[np.ndarray], count: int, size: tuple[int, int] = (64, 96)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = photos[i % len(photos)]
        top, left = (i * 13) % 100, (i * 29) % 150
        Image.fromarray(image[top : top + size[0], left : left + size[1]]).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture()
def cluster_root(tmp_path: Path) -> Path:
    root = tmp_path / "cluster"
    root.mkdir()
    return root


@pytest.mark.slow
def test_losing_the_scheduler_stops_the_job_and_the_same_command_resumes_byte_identically(
    tmp_path: Path, cluster_root: Path, photos: list[np.ndarray]
) -> None:
    """Items 1 and 2: SIGKILL of the scheduler mid-job; relative paths; workers in another directory."""
    client_dir = tmp_path / "client"
    _images(client_dir / "src", photos, 12)
    reference = tmp_path / "reference.zarr"
    sync_job(client_dir / "src", reference, options=JobOptions(batch_size=1, progress=False))
    cluster = Cluster(cluster_root)
    try:

        def command(address: str) -> list[str]:
            return [
                *VAEFLOW,
                "compress",
                "src",
                "out.zarr",
                "--scheduler",
                address,
                "--batch-size",
                "1",
                "--no-progress",
            ]

        job = subprocess.Popen(
            command(cluster.address), cwd=client_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        done = client_dir / "out.zarr" / "_work" / "done"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (done.exists() and len(list(done.glob("*.json"))) >= 2):
            time.sleep(0.05)
        cluster.kill_scheduler()
        _, err = job.communicate(timeout=180)
        assert job.returncode == 1 and "lost the Dask cluster" in err and "run the same command" in err, err
        assert err.count("\n") <= 2, err  # one line, no traceback
        with pytest.raises(VaeflowError, match="not a finished"):
            open_store(client_dir / "out.zarr")  # no image was branded as failed; nothing was assembled
    finally:
        cluster.close()
    cluster = Cluster(cluster_root)
    try:
        again = subprocess.run(command(cluster.address), cwd=client_dir, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "0 failed" in again.stdout and "resumed" in again.stdout
        assert tree_bytes(client_dir / "out.zarr") == tree_bytes(reference)
        assert not (cluster_root / "workers-cwd" / "out.zarr").exists()
        out = subprocess.run([*VAEFLOW, "decompress", "out.zarr", "pngs", "--scheduler", cluster.address],
                             cwd=client_dir, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert sorted(p.name for p in (client_dir / "pngs").iterdir()) == sorted(open_store(reference).names)
        assert not (cluster_root / "workers-cwd" / "pngs").exists()
    finally:
        cluster.close()


def _private_mount_prefix(hidden: Path) -> list[str] | None:
    """A command prefix that runs its command in a mount namespace where ``hidden`` is an empty folder."""
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'mount -t tmpfs none "{hidden}" && exec "$@"',
            "sh"]  # fmt: skip


@pytest.mark.slow
def test_workers_that_do_not_see_the_files_are_refused_before_anything_runs(
    tmp_path: Path, cluster_root: Path, photos: list[np.ndarray]
) -> None:
    hidden = tmp_path / "data"
    src = _images(hidden / "src", photos, 2)
    prefix = _private_mount_prefix(hidden)
    if prefix is None:
        pytest.skip("cannot make a private mount namespace here (unshare -m)")
    cluster = Cluster(cluster_root, workers=1, prefix=prefix)
    try:
        out = subprocess.run([*VAEFLOW, "compress", str(src), str(hidden / "out.zarr"), "--scheduler", cluster.address],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        cluster.close()
    assert out.returncode == 1
    assert "do not see this job's files at the same paths" in out.stderr and "shared" in out.stderr, out.stderr
    assert not list((hidden / "out.zarr").glob(".vaeflow-probe-*"))


def test_decompress_never_writes_two_images_to_one_file(tmp_path: Path, photos: list[np.ndarray]) -> None:
    """Item 3: a.jpg and a.png.jpg, then a.png added; and a name too long for the file system."""
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photos[0][:32, :48]).save(src / "a.jpg", quality=95)
    Image.fromarray(photos[1][:32, :48]).save(src / "a.png.jpg", quality=95)
    long_name = "L" * 246 + ".png"  # 250 bytes: with ".png" in place of ".png", fine; as "x.png.png", too long
    Image.fromarray(photos[2][:32, :48]).save(src / long_name)
    store = tmp_path / "s.zarr"
    sync_job(src, store, options=JobOptions(progress=False))
    Image.fromarray(photos[3][:32, :48]).save(src / "a.png")
    sync_job(src, store, options=JobOptions(progress=False, add=True))
    names = open_store(store).names
    planned, refused = plan_targets(names)
    targets = dict(planned)
    assert refused == []
    assert len(set(targets.values())) == len(names) == 4
    assert targets["a.jpg"] == "a.png" and targets["a.png.jpg"] == "a.png.png" and targets["a.png"] == "a~2.png"
    out = subprocess.run([*VAEFLOW, "decompress", str(store), str(tmp_path / "out")], capture_output=True, text=True)
    assert out.returncode == 0 and "4 PNG files" in out.stdout, out.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 4
    reader = open_store(store)
    for name, target in targets.items():
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / target)), reader.read_image(name))
    over = dict(plan_targets(["x" * 300 + ".jpg", "d" * 300 + "/y.jpg"])[0])
    assert all(len(part.encode()) <= 255 for t in over.values() for part in t.split("/"))
    again = subprocess.run([*VAEFLOW, "decompress", str(store), str(tmp_path / "out")], capture_output=True, text=True)
    assert again.returncode == 1 and "exists; pass --overwrite" in again.stderr


def test_decompress_names_a_damaged_stream_writes_the_others_and_exits_3(
    tmp_path: Path, photos: list[np.ndarray]
) -> None:
    src = _images(tmp_path / "src", photos, 3)
    store = tmp_path / "s.zarr"
    sync_job(src, store, options=JobOptions(progress=False))
    reader = open_store(store)
    begin, end = reader.stream_range("01.png")
    data = zarr.open_array(store / "streams" / "data", mode="r+")
    data[begin + (end - begin) // 2] = (int(data[begin + (end - begin) // 2]) + 1) % 256
    out = subprocess.run([*VAEFLOW, "decompress", str(store), str(tmp_path / "out")], capture_output=True, text=True)
    assert out.returncode == 3 and "damaged stream '01.png'" in out.stderr and "2 PNG files" in out.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00.png", "02.png"]


def test_hostile_entries_never_block_or_stop_the_scan(tmp_path: Path, photos: list[np.ndarray]) -> None:
    """Item 4: a symlink loop, a FIFO and a socket named like images, a link to a folder."""
    src = _images(tmp_path / "src", photos, 1)
    os.symlink(src / "loop.png", src / "loop.png")
    os.mkfifo(src / "fifo.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(src / "sock.png"))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", src / "linked")
    start = time.monotonic()
    found = scan(src, DEFAULT_MAX_PIXELS)
    server.close()
    assert time.monotonic() - start < 10
    assert [im.path for im in found.images] == ["00.png"]
    reasons = dict(found.skipped)
    assert reasons["loop.png"] == "symbolic link loop"
    assert reasons["fifo.png"] == "not a regular file (a FIFO)"
    assert reasons["sock.png"] == "not a regular file (a socket)"
    assert reasons["linked"] == "symbolic link to a folder (not followed)"


def test_exif_rotated_jpegs_and_gifs_are_coded_in_dataset_jobs(tmp_path: Path, photos: list[np.ndarray]) -> None:
    """Items 5 and 7."""
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees
    Image.fromarray(photos[0][:48, :80]).save(src / "rotated.jpg", exif=exif.tobytes(), quality=95)
    frames = [Image.fromarray(photos[1][:40, :56]), Image.fromarray(photos[2][:40, :56])]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    assert read_header(src / "rotated.jpg") == (80, 48)
    store = tmp_path / "s.zarr"
    report = sync_job(src, store, options=JobOptions(progress=False))
    assert report.failed == 0 and report.stored == 2
    reader = open_store(store)
    assert reader.read_image("rotated.jpg").shape == (80, 48, 3)
    assert "EXIF orientation 6 applied" in reader.info("rotated.jpg")["notes"]
    assert "first of 2 frames" in reader.info("anim.gif")["notes"]
    single = tmp_path / "one.vfl"
    assert main(["compress", str(src / "rotated.jpg"), str(single)]) == 0
    assert reader.read_stream("rotated.jpg") == single.read_bytes()


def test_retry_failed_codes_the_failed_images_again(tmp_path: Path, photos: list[np.ndarray]) -> None:
    """Item 6: an image recorded as failed (here a file that was broken then) is coded by --retry-failed."""
    src = _images(tmp_path / "src", photos, 3)
    good = (src / "01.png").read_bytes()
    (src / "01.png").write_bytes(good[: len(good) // 2])
    store = tmp_path / "s.zarr"
    assert sync_job(src, store, options=JobOptions(progress=False)).failed == 1
    (src / "01.png").write_bytes(good)
    (src / "new.png").write_bytes(good)  # not an --add: new files stay out
    report = sync_job(src, store, retry_failed=True, options=JobOptions(progress=False))
    assert (report.failed, report.stored) == (0, 3)
    reader = open_store(store)
    assert sorted(reader.names) == ["00.png", "01.png", "02.png"] and not reader.failures
    assert reader.read_stream("01.png") == vaeflow.compress(np.asarray(Image.open(src / "01.png")))
    assert main(["compress", str(src), str(store), "--scheduler", "sync", "--no-progress", "--retry-failed",
                 "--add"]) == 0  # fmt: skip
    assert open_store(store).names[-1] == "new.png"


def test_a_stopped_run_does_not_count_against_the_batch(tmp_path: Path, photos: list[np.ndarray], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Item 6: Ctrl-C while a batch runs is not a death of that batch's images."""
    import vaeflow.dataset.tasks as tasks

    src = _images(tmp_path / "src", photos, 2)
    store = tmp_path / "s.zarr"
    original, calls = tasks.load_image, []

    def interrupted(path: str, max_pixels: int) -> object:
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return original(path, max_pixels)

    monkeypatch.setattr(tasks, "load_image", interrupted)
    for _ in range(4):  # far more stops than a poison input is allowed
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            sync_job(src, store, options=JobOptions(progress=False, batch_size=2))
    monkeypatch.undo()
    attempts = store / "_work" / "attempts"
    assert all(int(p.read_text()) == 0 for p in attempts.iterdir())
    assert sync_job(src, store, options=JobOptions(progress=False, batch_size=2)).failed == 0


def test_readers_read_the_previous_generation_during_an_add(
    tmp_path: Path, photos: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 8, before and after the new index is swapped in."""
    src = _images(tmp_path / "src", photos, 3)
    store = tmp_path / "s.zarr"
    sync_job(src, store, options=JobOptions(progress=False))
    before = open_store(store).names
    _images(tmp_path / "src2", photos, 5)
    shutil.copy(tmp_path / "src2" / "04.png", src / "04.png")
    from vaeflow.dataset import job

    swap = store_io._swap_index
    for crash in ("while coding", "after the swap"):
        if crash == "while coding":
            monkeypatch.setattr(job, "assemble", lambda *a: (_ for _ in ()).throw(OSError(28, "No space")))
        else:
            monkeypatch.undo()

            def swap_then_crash(path: Path) -> None:
                swap(path)
                raise OSError(28, "No space")

            monkeypatch.setattr(store_io, "_swap_index", swap_then_crash)
        with pytest.raises(VaeflowError, match="No space"):
            sync_job(src, store, options=JobOptions(progress=False, add=True))
        reader = open_store(store)
        assert not reader.complete and reader.names == before
        np.testing.assert_array_equal(
            reader.read_latent("00.png"), vaeflow.decompress_latent(reader.read_stream("00.png"))
        )
    monkeypatch.undo()
    sync_job(src, store, options=JobOptions(progress=False, add=True))
    assert open_store(store).names == [*before, "04.png"]


def _set_index(store: Path, name: str, values: np.ndarray) -> None:
    group = zarr.open_group(store, mode="a")
    store_io._write_array(group.require_group("index") if name != "offsets" else group["streams"],
                          name, values)  # fmt: skip
    store_io.consolidate(store)


@pytest.mark.parametrize(
    ("column", "damage", "message"),
    [
        ("offsets", lambda v: np.concatenate([v[:1], np.array([2**63 + 5], np.uint64), v[2:]]), "pass the data"),
        ("path_offsets", lambda v: v[::-1].copy(), "path offsets"),
        ("note_offsets", lambda v: v + np.uint64(1), "note offsets"),
    ],
)
def test_damaged_offsets_are_refused_without_overflow(
    tmp_path: Path, photos: list[np.ndarray], column: str, damage: object, message: str
) -> None:
    """Item 9."""
    src = _images(tmp_path / "src", photos, 3)
    store = tmp_path / "s.zarr"
    sync_job(src, store, options=JobOptions(progress=False))
    root = zarr.open_group(store, mode="r")
    values = np.asarray((root["streams/offsets"] if column == "offsets" else root[f"index/{column}"])[:])
    _set_index(store, column, damage(values))  # type: ignore[operator]
    with pytest.raises(VaeflowError, match=message):
        open_store(store)


def test_an_index_shape_that_disagrees_with_its_stream_is_named(tmp_path: Path, photos: list[np.ndarray]) -> None:
    src = _images(tmp_path / "src", photos, 2)
    store = tmp_path / "s.zarr"
    sync_job(src, store, options=JobOptions(progress=False))
    shapes = np.asarray(zarr.open_group(store, mode="r")["index/shape"][:])
    shapes[1] = (40, 40)
    _set_index(store, "shape", shapes)
    reader = open_store(store)
    with pytest.raises(VaeflowError, match=r"'01.png' is 40x40 in the index but its stream says 96x64"):
        reader.read_image("01.png")
    report = vaeflow.dataset.verify.verify_store(store)  # type: ignore[attr-defined]
    assert [name for name, _ in report.damaged] == ["01.png"]


def test_images_over_the_default_pixel_limit_are_refused_with_the_way_round(tmp_path: Path) -> None:
    """Item 10: the default limit (100 MP) keeps peak memory bounded; a larger file says how to raise it."""
    big = tmp_path / "big.png"
    Image.new("1", (12000, 12000)).save(big)
    assert DEFAULT_MAX_PIXELS == 100_000_000
    from vaeflow.foundations.errors import ImageReadError

    with pytest.raises(ImageReadError, match="over the limit"):
        read_header(big)
