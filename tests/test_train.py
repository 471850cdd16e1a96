"""Training the default model: resumable, split-invariant, exported to a loadable ONNX model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PHOTOS, need
from vaeflow.imageio import IMAGE_SUFFIXES, read_rgb

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from vaeflow.train import TrainConfig, export_model, train  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training photos, cut to 256x256 so that a few steps run in seconds."""
    folder = tmp_path_factory.mktemp("photos")
    paths = sorted(p for p in need(PHOTOS).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:2]
    for path in paths:
        Image.fromarray(read_rgb(path)[:256, :256]).save(folder / f"{path.stem}.png")
    return folder


def _config(photos: Path, workdir: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(str(photos), str(workdir), steps=6, batch=2, crop=64, threads=1, checkpoint_every=2)
    return replace(base, **changes)  # type: ignore[arg-type]


def _weights(workdir: Path) -> dict[str, np.ndarray]:
    state = torch.load(workdir / "checkpoint.pt", weights_only=True)
    return {f"{part}.{k}": v.numpy() for part in ("encoder", "decoder") for k, v in state[part].items()}


def test_a_run_split_over_calls_trains_the_same_model(photos: Path, tmp_path: Path) -> None:
    whole = _config(photos, tmp_path / "whole")
    assert train(whole)["done"]
    split = _config(photos, tmp_path / "split", minutes=0.0002)  # stops after a step or so, then resumes
    calls = 1
    while not train(split)["done"]:
        calls += 1
        assert calls < 50
    assert calls > 1
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_export_writes_a_loadable_model_and_phases_add_up(photos: Path, tmp_path: Path) -> None:
    from vaeflow.models.onnx_vae import OnnxVAE
    from vaeflow.models.registry import ModelEntry, read_registry_file

    first = _config(photos, tmp_path / "phase1", steps=4)
    train(first)
    models = tmp_path / "models"
    export_model(first.workdir, str(photos), str(models), "tiny-v1")
    second = _config(photos, tmp_path / "phase2", steps=2, init=str(models / "tiny-v1" / "weights.pt"))
    train(second)
    written = export_model(second.workdir, str(photos), str(models), "tiny-v2")
    assert torch.load(models / "tiny-v2" / "weights.pt", weights_only=True)["steps_trained"] == 6
    table = read_registry_file(written)
    assert table["aliases"]["default"] == "tiny-v2" and "6 steps" in table["models"]["tiny-v2"]["description"]
    model = OnnxVAE(ModelEntry.from_toml("tiny-v2", table["models"]["tiny-v2"], written.parent))
    image = read_rgb(next(photos.iterdir()))[:40, :56]
    latent = model.encode(image[None])
    assert latent.shape == (1, 4, 5, 7) and np.isfinite(latent).all()
    assert model.decode(latent).shape == (1, 40, 56, 3)
