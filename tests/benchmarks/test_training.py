"""``vaeflow bench training`` end to end on small real photos: every variant prepared from the same images in
the same order, a few training steps, the JSON schema, determinism for a seed whatever the number of jobs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

import torch

import vaeflow
from benchmarks import denoiser, training
from benchmarks.denoiser import alphas_cumprod, sigma_of
from vaeflow.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> tuple[Path, Path]:
    """Three training photos and two held-apart ones (two parts of a fourth), small (latents of 16 x 20 and
    12 x 16)."""
    train, held = tmp_path_factory.mktemp("train"), tmp_path_factory.mktemp("eval")
    for i, image in enumerate(photos[:3]):
        Image.fromarray(image[:128, :160]).save(train / f"{i}.png")
    for i, left in enumerate((0, 200)):
        Image.fromarray(photos[3][100:196, left : left + 128]).save(held / f"{i}.png")
    return train, held


def bench(folders: tuple[Path, Path], work: Path, out: Path, *options: str) -> dict[str, Any]:
    train, held = folders
    argv = ["bench", "training", "--train", str(train), "--eval", str(held), "--work", str(work), "--json", str(out)]
    assert main([*argv, "--steps", "3", *options]) == 0
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def first(folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("work")
    return bench(folders, work, work / "first.json", "--seeds", "1", "--jobs", "1", "--plot", str(work / "p.png")), work


def test_the_json_holds_every_variant_per_seed_and_level(first: tuple[dict[str, Any], Path]) -> None:
    result, work = first
    jsonschema.validate(result, json.loads(training.SCHEMA.read_text()))
    assert list(result["variants"]) == list(training.VARIANTS)
    levels = result["noise_levels"]
    assert len(levels) >= 8 and levels == sorted(levels) and levels[-1] == 999
    assert alphas_cumprod()[levels[0]] > 0.99 and alphas_cumprod()[levels[-1]] < 0.01  # nearly clean to pure noise
    assert result["sigmas"] == [sigma_of(t) for t in levels]
    for entry in result["variants"].values():
        assert np.array(entry["loss"]).shape == (1, len(levels)) and np.isfinite(entry["loss"]).all()
    assert result["settings"]["steps"] == 3 and result["images"] == {"train": 3, "eval": 2}
    assert (work / "p.png").read_bytes().startswith(b"\x89PNG")


def test_every_variant_reads_the_same_images_in_the_same_order(
    first: tuple[dict[str, Any], Path], folders: tuple[Path, Path]
) -> None:
    _, work = first
    prepared = json.loads((work / "prepared.json").read_text())
    assert prepared["train"]["names"] == ["0.png", "1.png", "2.png"]
    for role, folder in zip(("train", "eval"), folders, strict=True):
        exact = dict(np.load(work / f"{role}-exact.npz"))
        images = [vaeflow.read_image(folder / name) for name in prepared[role]["names"]]
        for i, image in enumerate(images):  # the exact latents are the model's own, in the names' order
            np.testing.assert_array_equal(exact[str(i)], vaeflow.encode_latent(image))
        for variant in training.VARIANTS:
            latents = dict(np.load(work / f"{role}-{variant}.npz"))
            assert sorted(latents, key=int) == sorted(exact, key=int)
            for key, latent in latents.items():  # each one most like its own image's exact latent
                likeness = {k: np.corrcoef(latent.ravel(), z.ravel())[0, 1] if z.shape == latent.shape else -1
                            for k, z in exact.items()}  # fmt: skip
                assert max(likeness, key=likeness.__getitem__) == key, (role, variant, key, likeness)


def test_the_variants_hold_what_they_say(first: tuple[dict[str, Any], Path], folders: tuple[Path, Path]) -> None:
    result, work = first
    exact = dict(np.load(work / "train-exact.npz"))

    def error(variant: str) -> float:
        latents = dict(np.load(work / f"train-{variant}.npz"))
        return max(float(np.abs(latents[k] - z).max()) for k, z in exact.items())

    assert 0 < error("fp16") <= max(float(np.abs(z).max()) for z in exact.values()) * 2**-11
    assert error("int8") > error("fp16")
    store = vaeflow.open_store(work / "train-latent-store.zarr")
    names = json.loads((work / "prepared.json").read_text())["train"]["names"]
    read = dict(np.load(work / "train-latent-store.npz"))
    for name in store.names:  # the store's latents as a reader gives them, its streams within their limit
        np.testing.assert_array_equal(read[str(names.index(name))], store.read_latent(name))
        assert store.info(name)["target"]["psnr_drop"] <= store.info(name)["target"]["max_psnr_drop"]
    assert error("latent-store") < error("default") < error("quality-30")
    assert 0.05 < min(result["int8_drops"]) <= max(result["int8_drops"]) <= 0.1  # the largest step within 0.1 dB
    sizes = {v: e["bytes_per_image"] for v, e in result["variants"].items()}
    assert sizes["quality-30"] < sizes["default"] < sizes["latent-store"] < sizes["fp16"]


def test_a_seed_gives_the_same_figures_whatever_the_jobs(
    first: tuple[dict[str, Any], Path], folders: tuple[Path, Path]
) -> None:
    result, work = first
    again = bench(folders, work, work / "again.json", "--seeds", "2", "--jobs", "2")  # the latents reused
    for variant, entry in result["variants"].items():
        assert again["variants"][variant]["loss"][0] == entry["loss"][0]
        assert again["variants"][variant]["own_loss"][0] == entry["own_loss"][0]
        assert again["variants"][variant]["loss"][1] != entry["loss"][0]  # another seed, another model


def synthetic(exact: list[list[float]], **variants: list[list[float]]) -> dict[str, Any]:
    entries = {"exact": exact} | {name.replace("_", "-"): loss for name, loss in variants.items()}
    return {"variants": {name: {"loss": loss, "own_loss": loss} for name, loss in entries.items()}}


def test_same_means_within_exacts_seed_spread_or_one_percent_of_its_loss() -> None:
    exact = [[1.0, 0.10], [1.2, 0.10], [1.4, 0.10]]  # spread (sd over seeds) 0.2 and 0
    fig = training.figures(synthetic(exact, within=[[1.1, 0.1009]] * 3, out=[[1.7, 0.1011]] * 3,
                                     better=[[1.0, 0.08]] * 3))  # fmt: skip
    assert fig["exact"]["spread"] == pytest.approx([0.2, 0.0])
    assert fig["within"]["same"] == [True, True]  # -0.1 within 0.2; +0.9% within 1%
    assert fig["out"]["same"] == [False, False] and fig["out"]["worse"] == [True, True]
    assert fig["better"]["same"] == [True, False] and fig["better"]["worse"] == [False, False]
    assert fig["out"]["relative"] == pytest.approx([0.5 / 1.2, 0.011])
    paired = synthetic(exact, shifted=[[1.3, 0.1], [1.3, 0.1], [1.9, 0.1]])
    assert training.figures(paired)["shifted"]["paired_spread"][0] == pytest.approx(np.std([0.3, 0.1, 0.5], ddof=1))


def test_the_report_says_when_the_control_cannot_see_damage(first: tuple[dict[str, Any], Path]) -> None:
    result = json.loads(json.dumps(first[0]))
    for name in training.VARIANTS:
        result["variants"][name]["loss"] = result["variants"]["exact"]["loss"]
    text = training.report(result)
    assert "this run could not see damage" in text and "one seed: no seed spread" in text
    result["variants"][training.CONTROL]["loss"] = [[2 * x for x in result["variants"]["exact"]["loss"][0]]]
    text = training.report(result)
    assert "could not see damage" not in text
    assert f"worse at {training.LOW_NOISE} of the {training.LOW_NOISE} low-noise levels" in text


def test_every_variant_gets_the_same_crops_flips_timesteps_and_noise(tmp_path: Path) -> None:
    """Latents holding their own coordinates: two variants' runs draw the same crops, in the same order."""
    grid = np.stack(np.meshgrid(np.arange(20.0), np.arange(30.0), indexing="ij"))  # (2, 20, 30): row, column
    latents = {"0": grid.astype(np.float32), "1": grid[:, :18, :24].astype(np.float32) + 100}  # two images
    training._save(tmp_path / "a.npz", list(latents.values()))
    training._save(tmp_path / "b.npz", [z + 0.5 for z in latents.values()])
    run = denoiser.Run("a", 7, tmp_path / "a.npz", tmp_path / "a.npz", tmp_path / "a.npz", (0.0,), (1.0,),
                       200, 4, 8, 8, 1e-3, (1,), 1)  # fmt: skip
    first = torch.stack(list(denoiser._batches(denoiser._load(run.train, run), run)))
    other = replace(run, variant="b", train=tmp_path / "b.npz")
    second = torch.stack(list(denoiser._batches(denoiser._load(other.train, other), other)))
    torch.testing.assert_close(second, first + 0.5)
    rows, columns = first[:, :, 0] % 100, first[:, :, 1] % 100  # (steps, batch, 8, 8)
    assert rows[..., 0, 0].min() == 0 and rows[..., 0, 0].max() in (12, 10)  # every top from 0 to h - crop
    flipped = columns[..., 0, 0] > columns[..., 0, -1]
    assert 0.3 < flipped.float().mean() < 0.7
    third = denoiser._batches(denoiser._load(run.train, run), replace(run, seed=8))
    assert not torch.equal(next(iter(third)), first[0])


def test_a_work_folder_of_other_images_is_refused(
    folders: tuple[Path, Path], first: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    train, held = folders
    (tmp_path / "prepared.json").write_text(json.dumps({"key": {"model": "other"}}))
    with pytest.raises(vaeflow.VaeflowError, match="holds latents of other folders or another model"):
        training.prepare(train, held, "default", tmp_path, print)
    work = first[1]
    assert training.prepare(train, held, "default", work, print)["train"]["names"] == ["0.png", "1.png", "2.png"]
    (held / "more").mkdir()  # an image in a subfolder, which the job would code too
    (held / "0.png").replace(held / "more" / "0.png")
    try:
        with pytest.raises(vaeflow.VaeflowError, match="holds latents of other folders or another model"):
            training.prepare(train, held, "default", work, print)
    finally:
        (held / "more" / "0.png").replace(held / "0.png")
        (held / "more").rmdir()


def test_bad_options_are_usage_errors(folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    train, held = folders
    with pytest.raises(SystemExit) as stopped:
        main(["bench", "training", "--train", str(train), "--eval", str(held), "--steps", "0"])
    assert stopped.value.code == 2 and "--steps: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["bench", "--bogus", "training", "--train", str(train)])
    assert stopped.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # -q keeps the command's notes, not its usage error
        main(["-q", "bench", "training", "--train", str(train), "--eval", str(held), "--seeds", "x"])
    assert stopped.value.code == 2 and "argument --seeds: must be an integer, got 'x'" in capsys.readouterr().err
