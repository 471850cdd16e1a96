"""PSNR-drop limits kept in a dataset job: every latent the model's own, the sampled images verified
first and the rest predicted with the margin they give, each policy's records, the same bytes on a
cluster, and the command line's checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster
from PIL import Image

import vaeflow
from vaeflow import JobOptions, metrics
from vaeflow.dataset.plan import sampled
from vaeflow.foundations.imageio import read_rgb

from ..helpers import run_cli, sync_job, tree_bytes

# odd sizes: not multiples of the stride, and several images of one padded shape
SIZES = [(141, 203), (137, 199), (96, 128), (75, 117), (140, 200), (61, 93), (96, 128), (133, 187)]
FRACTION = 0.4


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    src = tmp_path_factory.mktemp("verify") / "src"
    src.mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(photos[i % len(photos)][3 * i : 3 * i + h, 5 * i : 5 * i + w]).save(src / f"img{i}.png")
    return src


@pytest.fixture(scope="module")
def sampled_store(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, vaeflow.JobReport]:
    store = tmp_path_factory.mktemp("sampled") / "s.zarr"
    report = sync_job(
        folder, store, pipeline="latent-store", verify="sample", verify_fraction=FRACTION,
        options=JobOptions(progress=False, batch_size=4),
    )  # fmt: skip
    return store, report


def test_a_sampled_job_verifies_the_images_its_names_choose_and_predicts_the_rest(
    folder: Path, sampled_store: tuple[Path, vaeflow.JobReport]
) -> None:
    store, report = sampled_store
    reader = vaeflow.open_store(store)
    chosen = {name for name in reader.names if sampled(name, FRACTION)}
    assert 0 < len(chosen) < len(reader.names)
    drops = report.drops
    assert drops is not None and drops.verified == len(chosen) and drops.predicted == len(reader.names) - len(chosen)
    assert drops.margin is not None and 0 < drops.margin < 1 and 0 < drops.max_drop <= 0.1
    assert reader.summary()["verification"]["verified"] == len(chosen)
    for name in reader.names:
        image = read_rgb(folder / name)
        target = reader.info(name)["target"]
        assert target["verified"] == (name in chosen) and target["predicted_psnr_drop"] > 0
        exact = vaeflow.encode_latent(image)  # the model's own latent: every stored value within the bound
        assert np.abs(reader.read_latent(name) - exact).max() <= 0.5 + 1e-6
        drop = metrics.psnr(image, vaeflow.decode_latent(exact, size=image.shape[:2])) - metrics.psnr(
            image, reader.read_image(name)
        )
        if target["verified"]:
            assert drop <= 0.1 + 1e-3 and target["psnr_drop"] == pytest.approx(drop, abs=1e-3)
        else:
            assert target["psnr_drop"] is None and drop <= 0.15, (name, drop)


def test_the_policies_differ_in_decodes_not_in_latents_kept(folder: Path, tmp_path: Path) -> None:
    """``none`` verifies nothing, ``all`` everything; both keep every latent within its bound."""
    for verify, verified in (("none", 0), ("all", len(SIZES))):
        store = tmp_path / f"{verify}.zarr"
        report = sync_job(folder, store, pipeline="latent-store", verify=verify, options=JobOptions(progress=False))
        assert report.drops is not None and report.drops.verified == verified
        assert report.drops.verified + report.drops.predicted == len(SIZES)
        reader = vaeflow.open_store(store)
        assert all(reader.info(n)["target"]["verified"] == (verify == "all") for n in reader.names)


def test_a_sampled_job_writes_the_same_bytes_on_a_cluster(
    folder: Path, sampled_store: tuple[Path, vaeflow.JobReport], tmp_path: Path
) -> None:
    store = tmp_path / "dist.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        vaeflow.compress_dataset(
            folder, store, client=client, pipeline="latent-store", verify="sample", verify_fraction=FRACTION,
            options=JobOptions(progress=False, batch_size=4),
        )  # fmt: skip
    assert tree_bytes(store) == tree_bytes(sampled_store[0])


def test_the_command_line_takes_verify_and_refuses_what_does_not_apply(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.zarr"
    done = run_cli("compress", str(folder), str(out), "--pipeline", "latent-store", "--verify", "none",
                   "--scheduler", "sync", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = json.loads(run_cli("ls", str(out), "--json").stdout)
    assert {row["verified"] for row in listed} == {False} and all(row["predicted_psnr_drop"] > 0 for row in listed)
    assert "0 of 8 images decoded" in run_cli("info", str(out)).stdout
    for args, message in (
        (["--verify", "some"], "invalid choice: 'some'"),
        (["--verify", "sample"], "--verify applies to a PSNR-drop limit"),
        (["--pipeline", "latent-store", "--verify-fraction", "0.1"], "--verify-fraction goes with --verify sample"),
        (["--pipeline", "latent-store", "--verify", "sample", "--verify-fraction", "2"], "must be a share in (0, 1]"),
    ):
        bad = run_cli("compress", str(folder), str(tmp_path / "bad.zarr"), *args, "--scheduler", "sync")
        assert bad.returncode == 2 and message in bad.stderr.strip().splitlines()[-1], bad.stderr  # after the usage
        assert not (tmp_path / "bad.zarr").exists()
