"""Dataset jobs on real images of mixed sizes with corrupt files among them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaeflow
from vaeflow import JobOptions, compress_dataset, open_store
from vaeflow.foundations.errors import VaeflowError
from vaeflow.stages.quantize import scaled_step

from ..helpers import kill_after_batches, sync_job, tree_bytes

SIZES = [(64, 96), (64, 96), (70, 100), (72, 99), (130, 90), (33, 41)]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """Real image crops of mixed sizes and modes, plus corrupt and unrelated files."""
    root = tmp_path_factory.mktemp("src")
    (root / "nested" / "deeper").mkdir(parents=True)
    for i, (h, w) in enumerate(SIZES):
        crop = photos[i % len(photos)][10 * i : 10 * i + h, 20 * i : 20 * i + w]
        folder = root if i % 2 else root / "nested"
        Image.fromarray(crop).save(folder / f"img{i}.png")
    Image.fromarray(photos[0][:48, :64]).save(root / "nested" / "deeper" / "photo.jpg", quality=90)
    Image.fromarray(photos[1][:40, :40, 0]).save(root / "grey.png")
    rgba = np.dstack([photos[2][:40, :56], np.full((40, 56), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.fromarray(photos[3][:32, :48, 0].astype(np.uint16) * 257).save(root / "deep16.png")
    good = (root / "img1.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image at all")
    (root / "README.txt").write_text("a text file that is not an image")
    return root


GOOD = {"nested/img0.png", "img1.png", "nested/img2.png", "img3.png", "nested/img4.png", "img5.png",
        "nested/deeper/photo.jpg", "grey.png", "alpha.png", "deep16.png"}  # fmt: skip
BAD = {"truncated.png", "empty.jpg", "text.png"}


@pytest.fixture(scope="module")
def sync_store(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("sync") / "out.zarr"
    report = sync_job(source, store, options=JobOptions(batch_size=2, progress=False))
    assert (report.stored, report.failed, report.skipped) == (len(GOOD), len(BAD), 1)
    return store


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc,
        Client(lc) as client,
    ):
        yield client


def test_every_good_image_is_stored_as_compress_would(sync_store: Path, source: Path) -> None:
    store = open_store(sync_store)
    assert set(store.names) == GOOD
    for name in store.names:
        image = vaeflow.foundations.imageio.read_rgb(source / name)
        direct = vaeflow.compress(image)
        assert store.read_stream(name) == direct, name
        np.testing.assert_array_equal(store.read_image(name), vaeflow.decompress(direct))


def test_corrupt_files_are_listed_with_reasons(sync_store: Path) -> None:
    store = open_store(sync_store)
    failures = {f.path: f.reason for f in store.failures}
    assert set(failures) == BAD
    assert "truncated" in failures["truncated.png"]
    assert all(failures.values())
    assert store.skipped == [("README.txt", ".txt sidecar without an image of the name README")]


def test_conversions_are_noted(sync_store: Path) -> None:
    store = open_store(sync_store)
    assert "alpha composited" in store.info("alpha.png")["notes"]
    assert "scaled to 8 bits" in store.info("deep16.png")["notes"]


def test_store_is_readable_with_zarr_alone(sync_store: Path) -> None:
    import zarr

    root = zarr.open_consolidated(sync_store, mode="r")
    offsets = root["streams/offsets"][:]
    paths = bytes(root["index/path_bytes"][:]).decode()
    assert offsets[-1] == root["streams/data"].shape[0]
    first = bytes(root["streams/data"][int(offsets[0]) : int(offsets[1])])
    assert first[:4] == b"VAEF"
    assert "img1.png" in paths
    assert root.attrs["vaeflow"]["complete"] is True
    assert not (sync_store / "_work").exists()


def test_latents_and_batches(sync_store: Path) -> None:
    store = open_store(sync_store)
    latent = store.read_latent("img1.png")
    assert latent.shape == (12, 8, 12) and latent.dtype == np.float32
    seen = []
    for names, values in store.iter_batches(batch_size=4, kind="latent"):
        seen += names
        assert len(values) == len(names)
        for name, value in zip(names, values, strict=True):
            np.testing.assert_array_equal(value, store.read_latent(name))
    assert seen == store.names
    for names, streams in store.iter_batches(batch_size=3, kind="stream"):
        assert streams == [store.read_stream(n) for n in names]
    assert [(n, size, nbytes) for n, size, nbytes, _ in store.entries()] == [
        (n, tuple(store.info(n)["shape"]), len(store.read_stream(n))) for n in store.names
    ]


MODES = pytest.mark.parametrize("fused", [True, False], ids=["fused", "a task per stage"])


@MODES
def test_distributed_run_is_byte_identical_to_sync(  # type: ignore[no-untyped-def]
    source: Path, sync_store: Path, tmp_path: Path, cluster, fused: bool
) -> None:
    store = tmp_path / "dist.zarr"
    options = JobOptions(batch_size=2, progress=False, fuse_stages=fused)
    report = compress_dataset(source, store, client=cluster, options=options)
    assert report.stored == len(GOOD)
    assert tree_bytes(store) == tree_bytes(sync_store)


@MODES
def test_killing_a_worker_mid_job_loses_nothing(source: Path, sync_store: Path, tmp_path: Path, fused: bool) -> None:
    from distributed import Client, LocalCluster

    store = tmp_path / "killed.zarr"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc,
        Client(lc) as client,
    ):
        pids = list(client.run(os.getpid).values())
        result: dict[str, object] = {}
        thread = threading.Thread(
            target=lambda: result.update(report=compress_dataset(
                source, store, client=client, options=JobOptions(batch_size=1, progress=False, fuse_stages=fused))),
        )  # fmt: skip
        thread.start()
        done = store / "_work" / "done"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (done.exists() and any(done.iterdir())):
            time.sleep(0.02)
        os.kill(pids[0], signal.SIGKILL)
        thread.join(120)
    report = result["report"]
    assert report.stored == len(GOOD)  # type: ignore[attr-defined]
    assert tree_bytes(store) == tree_bytes(sync_store)


def test_dashboard_status_page_while_a_job_runs(source: Path, tmp_path: Path, cluster) -> None:  # type: ignore[no-untyped-def]
    pages: list[int] = []
    thread = threading.Thread(
        target=compress_dataset,
        args=(source, tmp_path / "dash.zarr"),
        kwargs={"client": cluster, "options": JobOptions(batch_size=1, progress=False)},
    )
    thread.start()
    while thread.is_alive():
        with urllib.request.urlopen(cluster.dashboard_link, timeout=10) as response:
            pages.append(response.status)
            assert b"dask" in response.read().lower()
        break
    thread.join(60)
    assert pages == [200]


def _run_cli(source: Path, store: Path, fused: bool = True) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "vaeflow", "compress", str(source), str(store), "--scheduler", "sync",
            "--batch-size", "1", "--no-progress", "--fuse-stages" if fused else "--no-fuse-stages"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@MODES
def test_kill_then_resume_gives_a_byte_identical_store(
    source: Path, sync_store: Path, tmp_path: Path, fused: bool
) -> None:
    store = tmp_path / "resumed.zarr"
    kill_after_batches(_run_cli(source, store, fused), store)
    assert not open_store_ok(store)
    proc = _run_cli(source, store, not fused)  # resumed the other way: the same batches
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err.decode()  # some images failed (the corrupt ones): documented exit code 3
    assert b"resumed" in out
    assert tree_bytes(store) == tree_bytes(sync_store)


def open_store_ok(store: Path) -> bool:
    try:
        open_store(store)
        return True
    except VaeflowError:
        return False


def test_changed_settings_are_refused_unless_overwrite(source: Path, sync_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "copy.zarr"
    shutil.copytree(sync_store, store)
    scale = vaeflow.resolve_codec(None, 90).quality_scale
    assert scale is not None
    steps = [re.escape(f"{scaled_step(q, scale):.12g}"[:6]) for q in (90, 20)]
    asked = rf"quantize\.step: {steps[0]}\d* -> {steps[1]}\d* \(quality 90 -> 20 on the model's scale\)"
    with pytest.raises(VaeflowError, match=asked):
        sync_job(source, store, quality=20, options=JobOptions(progress=False))
    report = sync_job(source, store, quality=20, options=JobOptions(overwrite=True, progress=False))
    assert report.stored == len(GOOD)
    assert open_store(store).info("img1.png")["quality"] == 20


def test_add_appends_new_files(source: Path, tmp_path: Path, photos: list[np.ndarray]) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(source, src)
    store = tmp_path / "grow.zarr"
    opts = JobOptions(progress=False)
    sync_job(src, store, options=opts)
    Image.fromarray(photos[0][:50, :60]).save(src / "later.png")
    report = sync_job(src, store, options=JobOptions(progress=False, add=True))
    reader = open_store(store)
    assert reader.names[-1] == "later.png" and len(reader.names) == len(GOOD) + 1
    assert reader.read_stream("later.png") == vaeflow.compress(photos[0][:50, :60])
    assert report.stored == len(GOOD) + 1
    assert report.bytes_out == len(reader.read_stream("later.png"))  # the summary's figures are this run's
    assert report.bytes_in == (src / "later.png").stat().st_size


@pytest.mark.parametrize("crash", ["before the index swap", "between its renames"])
def test_an_interrupted_add_resumes_without_losing_earlier_rows(
    crash: str, source: Path, tmp_path: Path, photos: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from vaeflow.dataset import store as store_io

    src = tmp_path / "src"
    shutil.copytree(source, src)
    first, clean = tmp_path / "first.zarr", tmp_path / "clean.zarr"
    sync_job(src, first, options=JobOptions(progress=False))
    shutil.copytree(first, clean)
    Image.fromarray(photos[0][:50, :60]).save(src / "later.png")
    add = JobOptions(progress=False, add=True)
    sync_job(src, clean, options=add)

    swap = store_io._swap_index

    def crashing_swap(store: Path) -> None:
        if crash == "between its renames":
            (store / "index").rename(store / store_io.OLD_INDEX)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_io, "_swap_index", crashing_swap)
    with pytest.raises(VaeflowError, match="No space left"):
        sync_job(src, first, options=add)
    monkeypatch.setattr(store_io, "_swap_index", swap)
    sync_job(src, first, options=add)  # the same command again
    assert tree_bytes(first) == tree_bytes(clean)
    assert open_store(first).names[-1] == "later.png"


def test_no_resume_never_throws_away_finished_images(
    source: Path, tmp_path: Path, photos: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from vaeflow.dataset import store as store_io

    src = tmp_path / "src"
    shutil.copytree(source, src)
    store = tmp_path / "s.zarr"
    sync_job(src, store, options=JobOptions(progress=False))
    Image.fromarray(photos[0][:50, :60]).save(src / "later.png")
    add = JobOptions(progress=False, add=True)
    monkeypatch.setattr(store_io, "_swap_index", lambda store: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(VaeflowError):
        sync_job(src, store, options=add)
    monkeypatch.undo()
    for options, resume in ((add, False), (JobOptions(progress=False), False)):
        with pytest.raises(VaeflowError, match=r"earlier runs|finished store"):
            sync_job(src, store, options=options, resume=resume)
    assert store_io.previous_index(store, len(GOOD) + 2).paths  # the finished rows are still there
    sync_job(src, store, options=add)
    assert open_store(store).names[-1] == "later.png"


def test_a_store_from_before_a_new_setting_can_still_be_extended(source: Path, tmp_path: Path) -> None:
    import shutil

    import zarr

    src = tmp_path / "src"
    shutil.copytree(source, src)
    store = tmp_path / "s.zarr"
    sync_job(src, store, options=JobOptions(progress=False))
    root = zarr.open_group(store, mode="a")
    meta = dict(root.attrs["vaeflow"])
    del meta["settings"]["codec"]["quantize"]["step"]  # as written before an unused option existed
    root.attrs["vaeflow"] = meta
    (src / "later.png").write_bytes((src / "img1.png").read_bytes())
    report = sync_job(src, store, options=JobOptions(progress=False, add=True))
    assert report.stored == len(GOOD) + 1


def test_a_store_is_readable_once_it_says_it_is_complete(
    source: Path, sync_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaeflow.dataset import job

    store = tmp_path / "s.zarr"
    monkeypatch.setattr(job, "finish", lambda store, keep: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(VaeflowError):
        sync_job(source, store, options=JobOptions(progress=False))
    assert open_store(store).names == open_store(sync_store).names  # complete, consolidated, work store left
    monkeypatch.undo()
    sync_job(source, store, options=JobOptions(progress=False))
    assert tree_bytes(store) == tree_bytes(sync_store)


def test_dry_run_never_empties_a_store(source: Path, sync_store: Path, tmp_path: Path) -> None:
    import shutil

    from vaeflow.dataset.job import plan_job

    store = tmp_path / "copy.zarr"
    shutil.copytree(sync_store, store)
    before = tree_bytes(store)
    options = JobOptions(overwrite=True, progress=False)
    plan = plan_job(source, store, vaeflow.resolve_codec(None, 20), "default", options, resume=False)
    assert plan.policy.action == "replace" and "replace the store" in str(plan)
    assert len(plan.items) >= len(GOOD) and tree_bytes(store) == before  # planned afresh, nothing removed


@MODES
def test_keep_intermediates_keeps_each_stage(source: Path, tmp_path: Path, fused: bool) -> None:
    import zarr

    store = tmp_path / "kept.zarr"
    sync_job(source, store, options=JobOptions(keep_intermediates=True, progress=False, fuse_stages=fused))
    work = zarr.open_group(store / "_work", mode="r")
    latent = work["g0/vae"][0]
    rgb = work["g0/load"][0]
    assert rgb.dtype == np.uint8 and latent.dtype == np.float32 and np.abs(latent).sum() > 0
    assert set(work["g0"].keys()) == {"load", "vae", "channel", "wavelet", "quantize"}  # each stage's output rows


def test_dry_run_prints_the_plan(source: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vaeflow", "compress", str(source), str(tmp_path / "x.zarr"), "--dry-run"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "images: 11 to code, 2 unreadable, 1 other files skipped" in out.stdout
    assert not (tmp_path / "x.zarr").exists()


def test_decompress_writes_pngs_and_refuses_escaping_names(sync_store: Path, tmp_path: Path) -> None:
    from vaeflow.dataset.decompress import decompress_store, target_name

    written = decompress_store(sync_store, tmp_path / "out").written
    assert "nested/deeper/photo.png" in written and len(written) == len(GOOD)
    decoded = np.asarray(Image.open(tmp_path / "out" / "img1.png"))
    np.testing.assert_array_equal(decoded, open_store(sync_store).read_image("img1.png"))
    for bad in ("../evil.png", "/etc/passwd", "a/../../b.png", ""):
        with pytest.raises(VaeflowError, match="refusing"):
            target_name(bad)
    (tmp_path / "trap").mkdir()
    os.symlink("/tmp", tmp_path / "trap" / "nested")
    report = decompress_store(sync_store, tmp_path / "trap", names=["nested/img0.png"])
    assert not report.written and [n for n, _ in report.skipped] == ["nested/img0.png"]
    assert "symbolic link" in report.skipped[0][1] and not Path("/tmp/img0.png").exists()


def test_batch_streams_read_back_from_either_work_store_layout(tmp_path: Path) -> None:
    import zarr

    from vaeflow.dataset.work import WorkStore

    work = WorkStore(tmp_path / "s.zarr")
    work.write_streams("g0-b0", [b"first", b"", b"third"])
    work.write_streams("g0-b0", [b"first", b"", b"third"])  # writing twice is harmless
    assert work.read_stream("g0-b0", 0, 10) == b"firstthird"
    assert [work.read_stream("g0-b0", *span) for span in ((0, 5), (5, 0), (5, 5))] == [b"first", b"", b"third"]
    work.write_streams("g0-b1", [])
    assert work.read_stream("g0-b1", 0, 0) == b""
    old = np.frombuffer(b"older layout", np.uint8)  # a job interrupted before the streams were plain files
    zarr.create_array(work.root / "streams" / "g1-b0", shape=old.shape, chunks=old.shape, dtype="uint8")[:] = old
    assert work.read_stream("g1-b0", 0, 12) == b"older layout"
    assert work.read_stream("g1-b0", 6, 6) == b"layout"


def test_compress_dataset_takes_and_documents_every_field_of_its_options() -> None:
    """Each field of JobOptions and ClusterOptions is a keyword of compress_dataset, named in its docstring."""
    from dataclasses import fields

    from vaeflow.dataset.job import with_fields

    for field in (*fields(vaeflow.JobOptions), *fields(vaeflow.ClusterOptions)):
        assert f"``{field.name}``" in (compress_dataset.__doc__ or ""), field.name
    given = {"retry_failed": True, "workers": 2, "scheduler": None, "batch_size": None}
    options, cluster = with_fields(JobOptions(batch_size=3), vaeflow.ClusterOptions(scheduler="sync"), given)
    assert (options.batch_size, options.retry_failed, cluster.scheduler, cluster.workers) == (3, True, "sync", 2)
    with pytest.raises(TypeError, match=r"'batch_sizes'.*JobOptions"):
        compress_dataset("src", "out.zarr", batch_sizes=4)
