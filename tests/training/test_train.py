"""Training the default model: resumable, split-invariant, exported to a loadable ONNX model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vaeflow.foundations.imageio import read_rgb

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from training.train import TrainConfig, export_model, train  # noqa: E402


def _config(training_photos: Path, workdir: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(str(training_photos), str(workdir), steps=6, batch=2, crop=64, threads=1, checkpoint_every=2)
    return replace(base, **changes)  # type: ignore[arg-type]


def _weights(workdir: Path) -> dict[str, np.ndarray]:
    state = torch.load(workdir / "checkpoint.pt", weights_only=True)
    return {f"{part}.{k}": v.numpy() for part in ("encoder", "decoder") for k, v in state[part].items()}


def test_a_run_split_over_calls_trains_the_same_model(training_photos: Path, tmp_path: Path) -> None:
    whole = _config(training_photos, tmp_path / "whole")
    assert train(whole)["done"]
    split = _config(training_photos, tmp_path / "split", minutes=0.0002)  # stops after a step or so, then resumes
    calls = 1
    while not train(split)["done"]:
        calls += 1
        assert calls < 50
    assert calls > 1
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_export_writes_a_loadable_model_and_phases_add_up(training_photos: Path, tmp_path: Path) -> None:
    from vaeflow.models.onnx_vae import OnnxVAE
    from vaeflow.models.registry import ModelEntry, read_registry_file

    first = _config(training_photos, tmp_path / "phase1", steps=4)
    train(first)
    models = tmp_path / "models"
    export_model(first.workdir, str(training_photos), str(models), "tiny-v1")
    second = _config(training_photos, tmp_path / "phase2", steps=2, init=str(models / "tiny-v1" / "weights.pt"))
    train(second)
    written = export_model(second.workdir, str(training_photos), str(models), "tiny-v2")
    assert torch.load(models / "tiny-v2" / "weights.pt", weights_only=True)["steps_trained"] == 6
    table = read_registry_file(written)
    assert table["aliases"]["default"] == "tiny-v2" and "6 steps" in table["models"]["tiny-v2"]["description"]
    model = OnnxVAE(ModelEntry.from_toml("tiny-v2", table["models"]["tiny-v2"], written.parent))
    image = read_rgb(next(training_photos.iterdir()))[:40, :56]
    latent = model.encode(image[None])
    assert latent.shape == (1, 4, 5, 7) and np.isfinite(latent).all()
    assert model.decode(latent).shape == (1, 40, 56, 3)


def test_the_cli_passes_learning_rate_and_initial_weights_through(training_photos: Path, tmp_path: Path) -> None:
    import json

    from vaeflow.cli.main import main

    first = _config(training_photos, tmp_path / "phase1", steps=2)
    train(first)
    models = tmp_path / "models"
    export_model(first.workdir, str(training_photos), str(models), "tiny-v1")
    init = models / "tiny-v1" / "weights.pt"
    workdir = tmp_path / "phase2"
    args = ["train", "run", "--data", str(training_photos), "--workdir", str(workdir), "--steps", "1",
            "--threads", "1", "--lr", "1.5e-5", "--init", str(init)]  # fmt: skip
    assert main(args) == 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["lr"] == 1.5e-5 and config["init"] == str(init)
