"""Running a registered VAE through ONNX Runtime: shapes, padding, tiling, sessions, fidelity."""

import itertools
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import vaeflow
from vaeflow.foundations import metrics
from vaeflow.foundations.errors import ModelError
from vaeflow.foundations.imageio import read_rgb
from vaeflow.models import RuntimeOptions
from vaeflow.models.onnx_vae import OnnxVAE
from vaeflow.models.tiling import tile_layout


def test_encode_decode_shapes_and_stride_padding(photo: np.ndarray) -> None:
    model = vaeflow.load_model("default")
    image = photo[:37, :50]
    latent = model.encode(image[None])
    assert latent.shape == (1, 12, 5, 7) and latent.dtype == np.float32
    assert model.decode(latent).shape == (1, 40, 56, 3)
    assert model.decode(latent, (37, 50)).shape == (1, 37, 50, 3)
    with pytest.raises(ValueError, match="uint8 images of shape"):
        model.encode(image.astype(np.float32)[None])
    with pytest.raises(ValueError, match=r"latents of shape \(N, 12, h, w\)"):
        model.decode(np.zeros((1, 3, 2, 2), np.float32))


def test_reconstruction_of_the_default_model(kodak_paths: list[Path]) -> None:
    model = vaeflow.load_model("default")
    images = [read_rgb(p) for p in kodak_paths]
    psnrs = [metrics.psnr(im, model.decode(model.encode(im[None]))[0]) for im in images]
    assert len(images) == 12 and np.mean(psnrs) >= 26.0  # the floor set for the shipped model, on all of Kodak


def test_normalised_latents_have_unit_scale(photos: list[np.ndarray]) -> None:
    model = vaeflow.load_model("default")
    std = np.mean([model.encode(im[None]).std(axis=(0, 2, 3)) for im in photos], axis=0)
    assert ((std > 0.25) & (std < 4)).all(), std


@pytest.mark.parametrize(("length", "tile", "overlap", "unit"), [(104, 40, 8, 8), (97, 40, 8, 1), (6000, 2048, 128, 8)])
def test_tiles_cover_with_overlap(length: int, tile: int, overlap: int, unit: int) -> None:
    starts, size = tile_layout(length, tile, overlap, unit)
    assert (size <= tile and size % unit == 0) or size == length
    assert starts[0] == 0 and starts[-1] + size >= length
    assert all(s % unit == 0 for s in starts)
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(starts))


def test_tiled_coding_matches_whole_image_closely(photos: list[np.ndarray]) -> None:
    image = photos[1]
    whole = vaeflow.load_model("default")
    tiled = OnnxVAE(whole.entry, RuntimeOptions(tile=256, overlap=64))
    a = whole.decode(whole.encode(image[None]))[0]
    b = tiled.decode(tiled.encode(image[None]))[0]
    assert metrics.psnr(image, b) > metrics.psnr(image, a) - 0.3
    assert metrics.psnr(a, b) > 33


def test_sessions_are_pinned_and_providers_checked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vaeflow"):
        model = vaeflow.load_model("default", RuntimeOptions(threads=1, providers=("auto",)))
        options = model.encoder.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else "CPU"
    assert expected in model.encoder.provider and f"on {model.encoder.provider}" in caplog.text
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ModelError, match=r"not available; available: \["):
            vaeflow.load_model("default", RuntimeOptions(providers=("CUDAExecutionProvider",))).encode(
                np.zeros((1, 8, 8, 3), np.uint8)
            )
