"""Rate control: each image's step searched for a rate, a PSNR or a latent error bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vaeflow
from vaeflow.cli.main import main
from vaeflow.foundations import metrics
from vaeflow.foundations.errors import PipelineError

from ..helpers import image_folder


@pytest.mark.parametrize("target", [0.15, 0.3])
def test_rate_control_hits_bpp(photos: list[np.ndarray], target: float) -> None:
    for image in photos[:2]:
        data = vaeflow.compress(image, target_bpp=target)
        meta = vaeflow.info(data)
        assert abs(meta["bpp"] - target) <= 0.02 * target
        assert meta["target"]["kind"] == "bpp" and meta["target"]["achieved"] == pytest.approx(meta["bpp"], rel=1e-6)


def test_rate_control_applies_to_every_image_of_a_folder(photos: list[np.ndarray], tmp_path: Path) -> None:
    src = image_folder(tmp_path, photos[:2], 128, 192)
    store = tmp_path / "s.zarr"
    assert main(["compress", str(src), str(store), "--scheduler", "sync", "--no-progress", "--target-bpp", "0.3"]) == 0
    reader = vaeflow.open_store(store)
    for i, image in enumerate(photos[:2]):
        data = reader.read_stream(f"{i}.png")
        assert abs(vaeflow.info(data)["bpp"] - 0.3) <= 0.02 * 0.3
        assert data == vaeflow.compress(image[:128, :192], target_bpp=0.3)


def test_rate_control_hits_psnr(photos: list[np.ndarray]) -> None:
    model = vaeflow.load_model("default")
    for image in photos[:2]:
        ceiling = metrics.psnr(image, model.decode(model.encode(image[None]))[0])
        target = round(ceiling - 1.5, 1)
        data = vaeflow.compress(image, target_psnr=target)
        achieved = metrics.psnr(image, vaeflow.decompress(data))
        assert abs(achieved - target) <= 0.1
        assert vaeflow.info(data)["target"]["achieved"] == pytest.approx(achieved, abs=1e-4)


def test_unreachable_targets_say_so(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="out of reach"):
        vaeflow.compress(photo, target_psnr=60)
    with pytest.raises(PipelineError, match="a quality or a rate target, not both"):
        vaeflow.compress(photo, quality=50, target_bpp=0.1)
    with pytest.raises(PipelineError, match="one of bpp, psnr or max_latent_error"):
        vaeflow.compress(photo, target_bpp=0.1, target_psnr=30)
