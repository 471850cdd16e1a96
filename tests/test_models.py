import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest

import vaeflow
from vaeflow import metrics
from vaeflow.errors import ModelError
from vaeflow.models import RuntimeOptions
from vaeflow.models.onnx_vae import OnnxVAE
from vaeflow.models.registry import Registry, register
from vaeflow.models.tiling import tile_layout


def test_default_is_an_alias_of_the_shipped_model() -> None:
    registry = Registry.load()
    entry = registry.resolve("default")
    assert entry.latent_channels == 4 and entry.downsample == 8
    assert entry.encoder.is_file() and entry.decoder.is_file()
    total = entry.encoder.stat().st_size + entry.decoder.stat().st_size
    assert total <= 12_000_000
    model = vaeflow.load_model("default")
    assert (model.latent_channels, model.downsample) == (4, 8)
    assert len(model.fingerprint) == 16


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'nope'; known models: .*default"):
        vaeflow.load_model("nope")


def _copy_default(tmp_path: Path, name: str) -> Path:
    entry = Registry.load().resolve("default")
    for f in (entry.encoder, entry.decoder):
        shutil.copy(f, tmp_path / f.name)
    from dataclasses import replace

    return register(
        replace(entry, name=name, encoder=tmp_path / "encoder.onnx", decoder=tmp_path / "decoder.onnx"),
        tmp_path / "models.toml",
    )


def test_config_file_adds_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vaeflow_home: Path) -> None:
    config = _copy_default(tmp_path, "copy")
    monkeypatch.setenv("VAEFLOW_CONFIG", str(config))
    assert "copy" in Registry.load().names()
    assert vaeflow.load_model("copy").fingerprint == vaeflow.load_model("default").fingerprint


def test_missing_and_corrupt_files_name_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vaeflow_home: Path
) -> None:
    config = _copy_default(tmp_path, "broken")
    monkeypatch.setenv("VAEFLOW_CONFIG", str(config))
    (tmp_path / "encoder.onnx").write_bytes(b"this is not an onnx file")
    model = vaeflow.load_model("broken")
    with pytest.raises(ModelError, match=r"encoder\.onnx is not a loadable ONNX model"):
        model.encode(np.zeros((1, 8, 8, 3), np.uint8))
    (tmp_path / "decoder.onnx").unlink()
    with pytest.raises(ModelError, match=r"decoder\.onnx does not exist"):
        vaeflow.load_model("broken")
    monkeypatch.setenv("VAEFLOW_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ModelError, match=r"absent\.toml"):
        vaeflow.load_model("default")


def test_model_objects_pickle_by_name() -> None:
    import pickle

    model = vaeflow.load_model("default")
    assert pickle.loads(pickle.dumps(model)) is model


def test_encode_decode_shapes_and_stride_padding(kodak: list[np.ndarray]) -> None:
    model = vaeflow.load_model("default")
    image = kodak[0][:37, :50]
    latent = model.encode(image[None])
    assert latent.shape == (1, 4, 5, 7) and latent.dtype == np.float32
    assert model.decode(latent).shape == (1, 40, 56, 3)
    assert model.decode(latent, (37, 50)).shape == (1, 37, 50, 3)
    with pytest.raises(ValueError, match="uint8 images of shape"):
        model.encode(image.astype(np.float32)[None])
    with pytest.raises(ValueError, match=r"latents of shape \(N, 4, h, w\)"):
        model.decode(np.zeros((1, 3, 2, 2), np.float32))


def test_reconstruction_of_the_default_model(kodak_paths: list[Path]) -> None:
    from vaeflow.imageio import read_rgb

    model = vaeflow.load_model("default")
    images = [read_rgb(p) for p in kodak_paths]
    psnrs = [metrics.psnr(im, model.decode(model.encode(im[None]))[0]) for im in images]
    assert len(images) == 12 and np.mean(psnrs) >= 26.0  # the floor set for the shipped model, on all of Kodak


def test_normalised_latents_have_unit_scale(kodak: list[np.ndarray]) -> None:
    model = vaeflow.load_model("default")
    std = np.mean([model.encode(im[None]).std(axis=(0, 2, 3)) for im in kodak], axis=0)
    assert ((std > 0.25) & (std < 4)).all(), std


@pytest.mark.parametrize(("length", "tile", "overlap", "unit"), [(104, 40, 8, 8), (97, 40, 8, 1), (6000, 2048, 128, 8)])
def test_tiles_cover_with_overlap(length: int, tile: int, overlap: int, unit: int) -> None:
    starts, size = tile_layout(length, tile, overlap, unit)
    assert (size <= tile and size % unit == 0) or size == length
    assert starts[0] == 0 and starts[-1] + size >= length
    assert all(s % unit == 0 for s in starts)
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(starts))


def test_tiled_coding_matches_whole_image_closely(kodak: list[np.ndarray]) -> None:
    image = kodak[0]
    whole = vaeflow.load_model("default")
    tiled = OnnxVAE(whole.entry, RuntimeOptions(tile=256, overlap=64))
    a = whole.decode(whole.encode(image[None]))[0]
    b = tiled.decode(tiled.encode(image[None]))[0]
    assert metrics.psnr(image, b) > metrics.psnr(image, a) - 0.3
    assert metrics.psnr(a, b) > 33


def test_taef2_import_reconstructs_kodim01(
    vaeflow_home: Path, kodim01: np.ndarray, taef2_weights: tuple[Path, Path]
) -> None:
    from vaeflow.cli.main import main

    encoder, decoder = taef2_weights
    args = [
        "models",
        "import",
        "--kind",
        "tae",
        "--encoder",
        str(encoder),
        "--decoder",
        str(decoder),
        "--name",
        "taef2",
    ]
    assert main(args) == 0
    assert (vaeflow_home / "models" / "taef2" / "decoder.onnx").is_file()
    model = vaeflow.load_model("taef2")
    assert (model.latent_channels, model.downsample) == (32, 8)
    psnr = metrics.psnr(kodim01, model.decode(model.encode(kodim01[None]))[0])
    assert 27.0 <= psnr <= 27.4
    stream = vaeflow.compress(kodim01, model="taef2", quality=60)
    assert vaeflow.info(stream)["model"] == "taef2"
    assert metrics.psnr(kodim01, vaeflow.decompress(stream)) > 26.0


def test_add_registers_onnx_files(tmp_path: Path, vaeflow_home: Path) -> None:
    from vaeflow.cli.main import main

    entry = Registry.load().resolve("default")
    args = ["models", "add", "--encoder", str(entry.encoder), "--decoder", str(entry.decoder), "--name", "sd-like",
            "--latent-channels", "4", "--latent-scale", "0.18215", "--input-range", "-1", "1"]  # fmt: skip
    assert main(args) == 0
    added = Registry.load().resolve("sd-like")
    assert added.latent_scale == (0.18215,)
    assert main(["models", "add", "--encoder", str(tmp_path / "x.onnx"), "--decoder", str(entry.decoder),
                 "--name", "x", "--latent-channels", "4"]) == 1  # fmt: skip


@pytest.mark.parametrize(("channels", "pooled"), [(4, False), (16, False), (32, True)])
def test_tae_family_imports_from_safetensors(vaeflow_home: Path, tmp_path: Path, channels: int, pooled: bool) -> None:
    """TAESD / TAESDXL (4 channels), TAESD3 / TAEF1 (16) and TAEF2 (32, pooled middle blocks)."""
    torch = pytest.importorskip("torch", reason="importing TAE weights needs the train extra")
    safetensors = pytest.importorskip("safetensors.torch", reason="needs safetensors (train extra)")
    from vaeflow.cli.main import main
    from vaeflow.nets.tae import build_decoder, build_encoder

    torch.manual_seed(channels)
    layout_encoder = {"14.weight": torch.zeros(channels, 64, 3, 3)}
    layout_decoder = {"1.weight": torch.zeros(64, channels, 3, 3)}
    if pooled:  # the flux-2 variant's GroupNorm branch in the middle blocks
        layout_encoder.update({f"{k}.pool.0.weight": torch.zeros(1) for k in (11, 12, 13)})
        layout_decoder.update({f"{k}.pool.0.weight": torch.zeros(1) for k in (3, 4, 5)})
    paths = []
    for part, build, layout in (("encoder", build_encoder, layout_encoder), ("decoder", build_decoder, layout_decoder)):
        path = tmp_path / f"tae_{part}.safetensors"
        safetensors.save_file({k: v.contiguous() for k, v in build(layout).state_dict().items()}, str(path))
        paths.append(path)
    args = ["models", "import", "--kind", "tae", "--encoder", str(paths[0]), "--decoder", str(paths[1])]
    assert main([*args, "--name", f"tae{channels}"]) == 0
    model = vaeflow.load_model(f"tae{channels}")
    latent = model.encode(np.full((1, 40, 56, 3), 128, np.uint8))
    assert model.latent_channels == channels and latent.shape == (1, channels, 5, 7)
    assert model.decode(latent).shape == (1, 40, 56, 3)


def test_sessions_are_pinned_and_providers_checked(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import onnxruntime as ort

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
