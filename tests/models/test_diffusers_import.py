"""Bring your own VAE: diffusers VAE folders imported to ONNX, latents in the model's own convention.

Every model here is one of diffusers' own classes with a tiny config and random weights,
written with ``save_pretrained`` (the real folder format; nothing is downloaded).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vaeflow
from tests.helpers import image_folder, sync_job
from vaeflow.cli.main import main
from vaeflow.foundations import metrics
from vaeflow.foundations.errors import ModelError
from vaeflow.models import ModelRef, RuntimeOptions
from vaeflow.models.registry import ModelEntry, Registry

SMALL_KL = {
    "block_out_channels": (8, 16, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
# name: (diffusers class, config): the conventions of SD 1.x/2.x, SD3 and FLUX.1 (no quant convs),
# a per-channel latents_mean/latents_std config, FLUX.2 (batch norm over 2x2 patches) and a tiny autoencoder
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "sd": ("AutoencoderKL", {**SMALL_KL, "latent_channels": 4, "scaling_factor": 0.18215}),
    "sd3": (
        "AutoencoderKL",
        {
            **SMALL_KL,
            "latent_channels": 16,
            "scaling_factor": 1.5305,
            "shift_factor": 0.0609,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
    ),
    "mean-std": (
        "AutoencoderKL",
        {
            **SMALL_KL,
            "latent_channels": 4,
            "scaling_factor": 0.5,
            "latents_mean": (0.1, -0.2, 0.05, 0.3),
            "latents_std": (0.8, 1.3, 0.9, 1.1),
        },
    ),
    "flux2": ("AutoencoderKLFlux2", {**SMALL_KL, "latent_channels": 32}),
    "tiny": (
        "AutoencoderTiny",
        {
            "encoder_block_out_channels": (8, 8, 8, 8),
            "decoder_block_out_channels": (8, 8, 8, 8),
            "num_encoder_blocks": (1, 1, 1, 1),
            "num_decoder_blocks": (1, 1, 1, 1),
            "latent_channels": 16,
            "scaling_factor": 1.5305,
            "shift_factor": 0.0609,
        },
    ),
}


def build(class_name: str, config: dict[str, Any], seed: int = 0) -> Any:
    diffusers = pytest.importorskip("diffusers", reason="needs the diffusers extra")
    import torch

    torch.manual_seed(seed)
    vae = getattr(diffusers, class_name)(**config).eval()
    if class_name == "AutoencoderKLFlux2":  # batch-norm statistics as a trained FLUX.2 VAE has them
        vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape) * 0.3)
        vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape) * 2 + 0.2)
    return vae


def crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width])


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return crop(data.coffee(), 64, 64)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, Any]]]:
    """Every model of MODELS saved with save_pretrained and imported (``sd`` through the CLI): name -> (folder, vae)."""
    pytest.importorskip("diffusers", reason="needs the diffusers extra")
    from PIL import Image
    from skimage import data

    from vaeflow.convert.diffusers_vae import import_diffusers

    root = tmp_path_factory.mktemp("diffusers")
    photos = root / "photos"  # calibration photos: never the test image (coffee)
    photos.mkdir()
    for name in ("astronaut", "chelsea", "rocket"):
        Image.fromarray(crop(getattr(data, name)(), 96, 96)).save(photos / f"{name}.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAEFLOW_HOME", str(root / "home"))
        patch.delenv("VAEFLOW_CONFIG", raising=False)
        out = {}
        for name, (class_name, config) in MODELS.items():
            vae = build(class_name, config)
            vae.save_pretrained(root / name)
            if name == "sd":
                args = ["models", "import", "--kind", "diffusers", str(root / name), "--name", name]
                assert main([*args, "--data", str(photos)]) == 0
            else:
                import_diffusers(root / name, name, data=photos, limit=2)
            out[name] = (root / name, vae)
        yield out


def flux2_patchify(latents: Any) -> Any:
    """Flux2Pipeline._patchify_latents (that pipeline needs transformers, so its code is repeated here)."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return latents.reshape(b, c * 4, h // 2, w // 2)


def flux2_unpatchify(latents: Any) -> Any:
    """Flux2Pipeline._unpatchify_latents."""
    b, c, h, w = latents.shape
    latents = latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return latents.reshape(b, c // 4, h * 2, w * 2)


def diffusers_latent(vae: Any, image: np.ndarray) -> np.ndarray:
    """diffusers' own encode, posterior mode, and its pipelines' latent convention."""
    import torch

    x = torch.from_numpy(image.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    with torch.no_grad():
        out = vae.encode(x)
        z = out.latents if hasattr(out, "latents") else out.latent_dist.mode()
        config = vae.config
        if type(vae).__name__ == "AutoencoderKLFlux2":  # as Flux2Pipeline._encode_vae_image
            z = flux2_patchify(z)
            std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + config.batch_norm_eps)
            return ((z - vae.bn.running_mean.view(1, -1, 1, 1)) / std).numpy()  # type: ignore[no-any-return]
        if getattr(config, "latents_mean", None) is not None:  # as StableDiffusionXLImg2ImgPipeline
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1)
            return ((z - mean) * config.scaling_factor / std).numpy()  # type: ignore[no-any-return]
        return ((z - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor).numpy()  # type: ignore[no-any-return]


def diffusers_image(vae: Any, latent: np.ndarray) -> np.ndarray:
    """diffusers' own decode of a latent in the pipeline convention, as its image processor gives it (0..255)."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    z, config = torch.from_numpy(latent), vae.config
    with torch.no_grad():
        if type(vae).__name__ == "AutoencoderKLFlux2":
            std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + config.batch_norm_eps)
            z = flux2_unpatchify(z * std + vae.bn.running_mean.view(1, -1, 1, 1))
        elif getattr(config, "latents_mean", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1)
            z = z * std / config.scaling_factor + mean
        else:
            z = z / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
        sample = vae.decode(z).sample
    return VaeImageProcessor().postprocess(sample, output_type="np") * 255.0  # type: ignore[no-any-return]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", list(MODELS))
def test_latents_match_diffusers_in_the_models_own_convention(
    imported: dict[str, tuple[Path, Any]], photo: np.ndarray, name: str
) -> None:
    _, vae = imported[name]
    latent = vaeflow.encode_latent(photo, model=name)
    expected = diffusers_latent(vae, photo[None])[0]
    assert latent.shape == expected.shape and latent.dtype == np.float32
    assert relative_error(latent, expected) <= 1e-4
    image = vaeflow.decode_latent(expected, model=name, as_float=True)
    assert image.shape == (64, 64, 3)
    assert relative_error(image, diffusers_image(vae, expected[None])[0]) <= 1e-4
    rounded = vaeflow.decode_latent(expected, model=name)
    assert rounded.dtype == np.uint8 and np.abs(rounded - image).max() <= 0.5 + 1e-3


def test_batches_and_odd_sizes_are_padded_like_the_codec(imported: dict[str, tuple[Path, Any]]) -> None:
    from skimage import data

    images = np.stack([crop(data.coffee(), 40, 72), crop(data.astronaut(), 40, 72)])
    for name, unit in (("sd", 8), ("flux2", 16)):
        latents = vaeflow.encode_latent(images, model=name)
        channels = 4 if name == "sd" else 128
        assert latents.shape == (2, channels, -(-40 // unit), -(-72 // unit))
        padded = np.pad(images, ((0, 0), (0, -40 % unit), (0, -72 % unit), (0, 0)), mode="edge")
        assert relative_error(latents, diffusers_latent(imported[name][1], padded)) <= 1e-4
        decoded = vaeflow.decode_latent(latents, model=name, size=(40, 72))
        assert decoded.shape == (2, 40, 72, 3)


def test_the_registry_records_the_convention_and_scale(
    imported: dict[str, tuple[Path, Any]], photo: np.ndarray
) -> None:
    registry = Registry.load()
    flux2, sd3, tiny = (registry.resolve(n) for n in ("flux2", "sd3", "tiny"))
    assert (flux2.convention, flux2.convention_patch, len(flux2.convention_shift)) == ("shift_scale", 2, 128)
    assert (sd3.convention_shift, sd3.convention_scale) == ((0.0609,), (1.5305,))
    assert (tiny.latent_channels, tiny.downsample, tiny.input_range) == (16, 8, (-1.0, 1.0))
    assert set(sd3.calibration) == {"hadamard-cdf97-3", "identity-cdf97-3"}
    assert "(z - 0.0609) * 1.5305" in sd3.description
    # the measured unit-variance scale: normalised latents of photos have mean ~0 and std ~1 per channel
    from skimage import data

    normalised = vaeflow.load_model("sd3").encode(crop(data.astronaut(), 96, 96)[None])
    assert np.abs(normalised.mean(axis=(0, 2, 3))).max() < 1.0
    assert 0.3 < normalised.std(axis=(0, 2, 3)).mean() < 3.0
    # the helpers map the normalised latent to the model's convention and back
    model_latent = vaeflow.to_model_convention(normalised, "sd3")
    assert np.allclose(vaeflow.from_model_convention(model_latent, "sd3"), normalised, atol=1e-5)
    flux_latent = vaeflow.load_model("flux2").encode(photo[None])
    back = vaeflow.from_model_convention(vaeflow.to_model_convention(flux_latent, "flux2"), "flux2")
    assert np.allclose(back, flux_latent, atol=1e-4)
    # a resolved model carries its convention, as a store's settings record it; the default model's record is unchanged
    ref = registry.resolve("flux2").ref()
    assert ref.convention == flux2.latent_convention() and ref.convention.model_channels == 128
    assert ModelRef.from_dict(json.loads(json.dumps(ref.to_dict()))).convention == ref.convention
    assert "convention" not in registry.resolve("default").ref().to_dict()


@pytest.mark.parametrize("name", ["sd", "sd3", "flux2", "tiny"])
def test_a_compressed_image_decodes_through_the_imported_model(
    imported: dict[str, tuple[Path, Any]], photo: np.ndarray, name: str
) -> None:
    model = vaeflow.load_model(name)
    preset = "default" if model.latent_channels == 4 else "wide-latent"
    stream = vaeflow.compress(photo, model=name, pipeline=preset, quality=70)
    assert vaeflow.info(stream)["model"] == name and vaeflow.info(stream)["fingerprint"] == model.fingerprint
    decoded = vaeflow.decompress(stream)
    assert decoded.shape == photo.shape
    latent = vaeflow.decompress_latent(stream)
    assert np.array_equal(decoded, model.decode(latent[None], photo.shape[:2])[0])
    via_convention = vaeflow.decode_latent(vaeflow.to_model_convention(latent[None], name)[0], model=name)
    assert np.abs(via_convention.astype(int) - decoded).max() <= 1
    exact = vaeflow.decode_latent(vaeflow.encode_latent(photo, model=name), model=name)
    assert metrics.psnr(exact, decoded) > 25.0  # the quantized latent decodes close to the exact one


@pytest.mark.parametrize("name", ["sd", "flux2"])
def test_the_latent_store_preset_holds_its_bounds(
    imported: dict[str, tuple[Path, Any]], photo: np.ndarray, name: str
) -> None:
    model = vaeflow.load_model(name)
    stream = vaeflow.compress(photo, model=name, pipeline="latent-store")
    target = vaeflow.info(stream)["target"]
    assert target["kind"] == "latent" and target["value"] == 0.5 and target["achieved"] <= 0.5
    exact = model.encode(photo[None])
    assert np.abs(vaeflow.decompress_latent(stream) - exact[0]).max() <= 0.5 + 1e-6
    drop = metrics.psnr(photo, model.decode(exact)[0]) - metrics.psnr(photo, vaeflow.decompress(stream))
    assert drop <= 0.1 + 1e-9


@pytest.mark.parametrize("name", ["sd", "flux2"])
def test_a_store_gives_latents_in_the_models_own_convention(
    imported: dict[str, tuple[Path, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from skimage import data

    images = [crop(data.coffee(), 64, 96), crop(data.chelsea(), 64, 96)]
    store = tmp_path / "s.zarr"
    sync_job(image_folder(tmp_path, images, 64, 96), store, model=name, pipeline="latent-store",
             options=vaeflow.JobOptions(progress=False))  # fmt: skip
    reader = vaeflow.open_store(store)
    convention = Registry.load().resolve(name).latent_convention()
    assert convention is not None and reader.convention == convention
    # the latent-store bound (0.5 in the normalised latent) becomes 0.5 * gains[k] in the model's channel k
    bound = 0.5 * convention.gains().reshape(-1, 1, 1)
    model = vaeflow.load_model(name)
    for i, image in enumerate(images):
        exact = vaeflow.encode_latent(image, model=name)
        latent = reader.read_latent(f"{i}.png")
        assert latent.shape == exact.shape and latent.dtype == np.float32
        assert (np.abs(latent - exact) <= bound * (1 + 1e-5) + 1e-6).all()
        normalised = reader.read_latent(f"{i}.png", convention="normalised")
        assert np.array_equal(normalised, vaeflow.decompress_latent(reader.read_stream(f"{i}.png")))
        assert np.abs(normalised - model.encode(image[None])[0]).max() <= 0.5 + 1e-6
        assert np.allclose(vaeflow.to_model_convention(normalised[None], name)[0], latent, rtol=1e-6, atol=1e-6)
    names, batch = next(reader.iter_batches(batch_size=2))
    assert names == ["0.png", "1.png"] and np.array_equal(batch, np.stack([reader.read_latent(n) for n in names]))
    _, normalised_batch = next(reader.iter_batches(batch_size=2, convention="normalised"))
    assert normalised_batch.shape[1] == model.latent_channels
    with pytest.raises(ValueError, match=r"unknown latent convention 'unit'; choose one of \('model', 'normalised'\)"):
        reader.read_latent("0.png", convention="unit")
    # the store's own record is enough: a registry without the model gives the same latents
    monkeypatch.setenv("VAEFLOW_HOME", str(tmp_path / "empty-home"))
    assert np.array_equal(vaeflow.open_store(store).read_latent("0.png"), reader.read_latent("0.png"))
    # and the PyTorch loader gives them in the model's convention too (patched channels for FLUX.2)
    torch = pytest.importorskip("torch")
    from vaeflow.torch import LatentDataset

    dataset = LatentDataset(store, dtype=torch.float32)
    assert tuple(dataset[0]["latent"].shape) == reader.read_latent("0.png").shape
    assert np.array_equal(dataset[0]["latent"].numpy(), reader.read_latent("0.png"))
    assert tuple(LatentDataset(store, convention="normalised")[0]["latent"].shape) == normalised.shape


@pytest.mark.parametrize("name", ["sd", "tiny"])
def test_large_images_run_tiled(imported: dict[str, tuple[Path, Any]], name: str) -> None:
    """With 64-pixel tiles, a 160x224 image runs as 3x5 tiles: each corner region comes from its tile alone."""
    from skimage import data

    image, tiles = crop(data.astronaut(), 160, 224), RuntimeOptions(tile=64, overlap=16)
    whole = vaeflow.encode_latent(image, model=name)
    tiled = vaeflow.encode_latent(image, model=name, runtime=tiles)
    assert tiled.shape == whole.shape and not np.array_equal(tiled, whole)
    first_tile = vaeflow.encode_latent(image[:64, :64], model=name)
    assert np.allclose(tiled[:, :6, :5], first_tile[:, :6, :5], rtol=1e-4, atol=1e-5)  # before the blend ramps
    pixels = vaeflow.decode_latent(whole, model=name, runtime=tiles, as_float=True)
    assert pixels.shape == (160, 224, 3)
    first_tile = vaeflow.decode_latent(whole[:, :8, :8], model=name, as_float=True)
    assert np.allclose(pixels[:48, :40], first_tile[:48, :40], atol=1e-3)
    if name == "tiny":  # a model without global normalisation or attention: tiles agree with the whole image
        assert relative_error(tiled, whole) < 0.05
        assert relative_error(pixels, vaeflow.decode_latent(whole, model=name, as_float=True)) < 0.05


def test_fp16_export_stays_close_to_fp32(
    imported: dict[str, tuple[Path, Any]], photo: np.ndarray, vaeflow_home: Path
) -> None:
    from vaeflow.convert.diffusers_vae import import_diffusers

    folder, _ = imported["sd3"]
    import_diffusers(folder, "sd3-fp16", fp16=True, calibrate=False)
    half = vaeflow.encode_latent(photo, model="sd3-fp16")
    entry = Registry.load().resolve("sd3-fp16")
    assert "float16" in entry.description
    full = imported["sd3"][1]
    assert relative_error(half, diffusers_latent(full, photo[None])[0]) < 2e-2


# --- bad input: each a ModelError that says what is wrong and what was expected ---------------------


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "vae"
    shutil.copytree(folder, target)
    return target


def _import(folder: Path) -> None:
    from vaeflow.convert.diffusers_vae import import_diffusers

    import_diffusers(folder, "bad", calibrate=False)


def test_folders_that_are_not_diffusers_vaes(tmp_path: Path, vaeflow_home: Path) -> None:
    pytest.importorskip("diffusers", reason="needs the diffusers extra")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelError, match=r"file.txt is not a folder; expected a diffusers VAE folder with config"):
        _import(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"not a diffusers VAE folder: no config.json \(expected config.json and"):
        _import(tmp_path / "empty")
    pipeline = tmp_path / "pipeline"
    (pipeline / "vae").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (pipeline / "vae" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"looks like a whole pipeline: give its VAE folder, .*pipeline/vae"):
        _import(pipeline)
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config.json is not a readable JSON file"):
        _import(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text('{"latent_channels": 4}')
    with pytest.raises(ModelError, match=r"not a diffusers model config: it has no _class_name"):
        _import(tmp_path / "empty")


def test_an_unknown_class_names_the_supported_ones(tmp_path: Path, vaeflow_home: Path) -> None:
    pytest.importorskip("diffusers", reason="needs the diffusers extra")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ModelError, match=r"describes a 'UNet2DConditionModel'.*supported: AutoencoderKL, Autoenc"):
        _import(tmp_path)


def test_missing_damaged_and_mismatched_weights(
    imported: dict[str, tuple[Path, Any]], tmp_path: Path, vaeflow_home: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(imported["sd"][0], tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    weights.unlink()
    with pytest.raises(ModelError, match=r"has no weights: expected diffusion_pytorch_model.safetensors"):
        _import(folder)
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match=r"cannot read the weights .*diffusion_pytorch_model.safetensors"):
        _import(folder)
    save_file({k: v for k, v in state.items() if k != "decoder.conv_out.bias"}, str(weights))
    with pytest.raises(ModelError, match=r"do not fit the AutoencoderKL of .*: 1 missing \(e.g. decoder.conv_out.bias"):
        _import(folder)
    wider = build("AutoencoderKL", {**MODELS["sd"][1], "block_out_channels": (8, 16, 16, 32)})
    save_file({k: v.contiguous() for k, v in wider.state_dict().items()}, str(weights))
    with pytest.raises(ModelError, match=r"of other shapes \(.* is \[32, .*\], expected \[16, .*; expected the"):
        _import(folder)


def test_config_latent_channels_must_agree_with_the_weights(
    imported: dict[str, tuple[Path, Any]], tmp_path: Path, vaeflow_home: Path
) -> None:
    folder = _copy(imported["sd3"][0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "latent_channels": 4}))
    with pytest.raises(ModelError, match=r"says latent_channels=4, but the weights .* are for 16 latent channels"):
        _import(folder)
    mean_std = _copy(imported["mean-std"][0], tmp_path / "b")
    config = json.loads((mean_std / "config.json").read_text())
    (mean_std / "config.json").write_text(json.dumps({**config, "latents_std": [1.0, 1.0]}))
    with pytest.raises(ModelError, match=r"latents_mean and latents_std need 4 values each .*got 4 and 2"):
        _import(mean_std)


def test_model_names_must_be_registry_names(imported: dict[str, tuple[Path, Any]], vaeflow_home: Path) -> None:
    from vaeflow.convert.diffusers_vae import import_diffusers

    for bad in ("", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ModelError, match=r"model name must be 1..64 bytes without path separators"):
            import_diffusers(imported["sd"][0], bad, calibrate=False)


def test_the_cli_wants_a_folder_for_diffusers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "import", "--kind", "diffusers", "--name", "x"]) != 0
    assert "--kind diffusers takes one VAE folder DIR" in capsys.readouterr().err
    assert main(["models", "import", "--kind", "tae", str(tmp_path), "--name", "x"]) != 0
    assert "--kind tae takes --encoder and --decoder" in capsys.readouterr().err


# --- GPU inference: the CUDA path says what to install where onnxruntime-gpu is absent ----------------


def test_cuda_provider_needs_onnxruntime_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    from vaeflow.cli.main import build_parser
    from vaeflow.cli.options import runtime_from

    args = build_parser().parse_args(["compress", str(tmp_path), "--provider", "cuda"])
    assert runtime_from(args).providers == ("cuda",)
    with pytest.raises(ModelError, match=r"provider 'cuda:x' is not cuda or cuda:N"):
        vaeflow.load_model("default", RuntimeOptions(providers=("cuda:x",))).encoder  # noqa: B018
    if "CUDAExecutionProvider" in ort.get_available_providers():
        model = vaeflow.load_model("default", RuntimeOptions(providers=("cuda",)))
        assert model.encoder.provider == "CUDAExecutionProvider" and model.encoder.cuda_device == 0
        return
    with pytest.raises(ModelError, match=r"\['CUDAExecutionProvider'\] are not available.*install 'vaeflow\[gpu\]'"):
        vaeflow.load_model("default", RuntimeOptions(providers=("cuda",))).encode(np.zeros((1, 8, 8, 3), np.uint8))
    image = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    assert main(["compress", str(image), str(tmp_path / "one.vfl"), "--provider", "cuda"]) != 0
    assert "onnxruntime-gpu" in capsys.readouterr().err


def test_convention_fields_round_trip_and_are_checked(tmp_path: Path) -> None:
    import tomllib

    from vaeflow.models.registry import register

    entry = ModelEntry(
        "conv",
        tmp_path / "e.onnx",
        tmp_path / "d.onnx",
        2,
        8,
        convention="shift_scale",
        convention_patch=2,
        convention_shift=tuple(range(8)),
        convention_scale=(0.5,),
    )
    path = register(entry, tmp_path / "models.toml")
    text = path.read_text()
    assert "convention_patch = 2" in text
    again = ModelEntry.from_toml("conv", tomllib.loads(text)["models"]["conv"], tmp_path)
    assert again == entry
    with pytest.raises(ModelError, match=r"convention_shift needs 1 or 8 values, got 3"):
        ModelEntry("c", entry.encoder, entry.decoder, 2, 8, convention="shift_scale", convention_patch=2,
                   convention_shift=(1.0, 2.0, 3.0)).validate()  # fmt: skip
    with pytest.raises(ModelError, match=r"unknown convention 'ldm'; known: none, shift_scale"):
        ModelEntry("c", entry.encoder, entry.decoder, 2, 8, convention="ldm").validate()
    plain = register(ModelEntry("plain", entry.encoder, entry.decoder, 4, 8), tmp_path / "plain.toml").read_text()
    assert "convention" not in plain  # entries without a convention of their own are written as before
    latents = np.random.default_rng(0).normal(size=(1, 2, 4, 6))
    patched = vaeflow.to_model_convention(latents, again)
    assert patched.shape == (1, 8, 2, 3)
    assert np.allclose(patched[0, 1], (latents[0, 0, ::2, 1::2] - 1) * 0.5)
    assert np.allclose(vaeflow.from_model_convention(patched, again), latents, atol=1e-6)


def test_models_without_a_convention_give_the_normalised_latent() -> None:
    from skimage import data

    image = crop(data.coffee(), 64, 96)
    latent = vaeflow.encode_latent(image)
    assert np.array_equal(latent, vaeflow.load_model("default").encode(image[None])[0])
    assert vaeflow.decode_latent(latent).shape == (64, 96, 3)
