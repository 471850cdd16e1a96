"""Import a VAE in diffusers' folder format (``config.json`` + ``diffusion_pytorch_model.safetensors``).

Supported classes: ``AutoencoderKL`` (SD 1.x/2.x, SDXL, SD3, FLUX.1), ``AutoencoderKLFlux2``
(FLUX.2) and ``AutoencoderTiny`` (the TAESD family). The encoder is exported with the
posterior mode (the mean of ``latent_dist``; for ``AutoencoderTiny`` its latent) as output,
the decoder with ``post_quant_conv`` folded in; both take and give NCHW with dynamic batch,
height and width, images in [-1, 1]. The import then

1. reads the model's latent convention from the config (``scaling_factor``, ``shift_factor``,
   per-channel ``latents_mean``/``latents_std``, FLUX.2's batch-norm statistics over 2x2
   patches) and records it in the registry (see ``vaeflow.models.convention``);
2. measures the per-channel mean and std of the raw latent on photos, which set the
   unit-variance scale vaeflow quantizes in;
3. registers the model, with its decoder fingerprint, and optionally calibrates the
   decoder's sensitivity per channel and subband (``vaeflow.codec.calibrate``).

The imported model then runs on ONNX Runtime alone.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vaeflow.codec.calibrate import calibrate_model, center_crop
from vaeflow.convert.onnx_export import export
from vaeflow.convert.tae import load_state
from vaeflow.foundations.errors import ModelError, VaeflowError
from vaeflow.foundations.imageio import list_images, read_rgb
from vaeflow.foundations.samples import sample_image
from vaeflow.models.onnx_vae import OnnxVAE
from vaeflow.models.registry import REGISTRY_FILE, ModelEntry, Registry, home_dir, register

log = logging.getLogger("vaeflow")

SUPPORTED = ("AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderTiny")
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
EXPECTED_FILES = "config.json and diffusion_pytorch_model.safetensors"
PROBE = 64  # pixels: the export is checked against torch on a crop this size
MAX_EXPORT_ERROR = {False: 1e-3, True: 2e-2}  # relative L2 error of ONNX against torch, fp32 / fp16
STATS_CROP = 256
CALIBRATIONS = ("hadamard", "identity")  # the default and latent-store presets, and wide-latent


@dataclass(frozen=True)
class Convention:
    """model latent = (patchify(raw, patch) - shift) * scale, shift and scale 1 or C*patch^2 values."""

    patch: int
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    formula: str


@dataclass(frozen=True)
class LoadedVAE:
    module: Any  # the diffusers model
    class_name: str
    config: dict[str, Any]
    latent_channels: int
    downsample: int
    weights: Path


# --- reading and checking a folder -------------------------------------------------------------


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to name a supported VAE class."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder; expected a diffusers VAE folder with {EXPECTED_FILES}")
    path = folder / "config.json"
    if not path.is_file():
        hint = ""
        if (folder / "model_index.json").is_file() or (folder / "vae" / "config.json").is_file():
            hint = f"; {folder} looks like a whole pipeline: give its VAE folder, {folder / 'vae'}"
        raise ModelError(f"{folder} is not a diffusers VAE folder: no config.json (expected {EXPECTED_FILES}){hint}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not a readable JSON file: {exc}") from exc
    if not isinstance(config, dict) or "_class_name" not in config:
        raise ModelError(f"{path} is not a diffusers model config: it has no _class_name (expected e.g. AutoencoderKL)")
    name = config["_class_name"]
    if name not in SUPPORTED:
        raise ModelError(f"{path} describes a {name!r}, which vaeflow cannot import; supported: {', '.join(SUPPORTED)}")
    return config


def weights_path(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    if (folder / "diffusion_pytorch_model.safetensors.index.json").is_file():
        raise ModelError(f"{folder} holds sharded weights; vaeflow imports VAEs whose weights are in one file")
    raise ModelError(f"{folder} has no weights: expected {' or '.join(WEIGHT_FILES[::2])} beside config.json")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_state(path, cast=False)


def _latent_key(class_name: str, state: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """The weight that fixes the latent channel count, and the count it implies."""
    if class_name == "AutoencoderTiny":
        key = "decoder.layers.0.weight"
        return (key, int(state[key].shape[1])) if key in state and state[key].ndim == 4 else None
    for key, count in (
        ("decoder.conv_in.weight", lambda t: int(t.shape[1])),
        ("encoder.conv_out.weight", lambda t: int(t.shape[0]) // 2),
    ):
        if key in state and state[key].ndim == 4:
            return key, count(state[key])
    return None


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging  # the diffusers extra

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _diffusers() -> Any:
    try:
        import diffusers  # the diffusers extra: only importing its VAEs needs it
    except ImportError as exc:
        raise ModelError(f"importing diffusers VAEs needs: pip install 'vaeflow[diffusers]' ({exc})") from exc
    return diffusers


def load_vae(folder: Path) -> LoadedVAE:
    """The VAE of a diffusers folder, its weights checked against its config, in float32 eval mode."""
    folder = Path(folder)
    config = read_config(folder)
    class_name = str(config["_class_name"])
    diffusers = _diffusers()
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ModelError(f"the installed diffusers {diffusers.__version__} lacks {class_name}; upgrade diffusers")
    path = weights_path(folder)
    state = read_weights(path)
    with _quiet_diffusers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        except Exception as exc:  # diffusers raises many types for bad configs
            raise ModelError(f"{folder / 'config.json'} is not a valid {class_name} config: {exc}") from exc
    config = dict(module.config)  # with diffusers' defaults for what the file leaves out
    channels = int(config["latent_channels"])
    found = _latent_key(class_name, state)
    if found is not None and found[1] != channels:
        key, count = found
        raise ModelError(
            f"{folder / 'config.json'} says latent_channels={channels}, but the weights {path.name} are for {count} "
            f"latent channels ({key} has shape {list(state[key].shape)}); use the config that came with these weights"
        )
    if hasattr(module, "_fix_state_dict_keys_on_load"):
        module._fix_state_dict_keys_on_load(state)  # old checkpoints' attention names (query, key, ...)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    mismatched = [
        f"{k} is {list(state[k].shape)}, expected {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or mismatched:
        problems = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        problems += [f"{len(mismatched)} of other shapes ({'; '.join(mismatched[:3])})"] if mismatched else []
        raise ModelError(
            f"the weights {path} do not fit the {class_name} of {folder / 'config.json'}: "
            f"{' and '.join(problems)}; expected the weights saved with this config"
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        log.warning("%s: ignoring %d weights unknown to the config (e.g. %s)", path, len(unexpected), unexpected[0])
    module.load_state_dict({k: v.float() for k, v in state.items() if k in expected}, strict=True)
    module = module.float().eval()
    blocks = config.get("encoder_block_out_channels" if class_name == "AutoencoderTiny" else "block_out_channels")
    downsample = 2 ** (len(blocks) - 1) if blocks else 8
    return LoadedVAE(module, class_name, config, channels, downsample, path)


def latent_convention(vae: LoadedVAE) -> Convention:
    """The latent a diffusion model of this VAE's family trains on, as read from the config."""
    config, channels = vae.config, vae.latent_channels
    if vae.class_name == "AutoencoderKLFlux2":
        patch = config.get("patch_size", (2, 2))
        if len(set(patch)) != 1:
            raise ModelError(f"FLUX.2 VAE with patch_size {patch}: vaeflow supports square patches only")
        bn = vae.module.bn
        eps = float(config.get("batch_norm_eps", bn.eps))
        mean = tuple(float(v) for v in bn.running_mean)
        scale = tuple(float(1.0 / math.sqrt(float(v) + eps)) for v in bn.running_var)
        formula = f"(patchify{patch[0]}(z) - bn.running_mean) / sqrt(bn.running_var + {eps:g})"
        return Convention(int(patch[0]), mean, scale, formula)
    factor = float(config.get("scaling_factor", 1.0))
    latents_mean, latents_std = config.get("latents_mean"), config.get("latents_std")
    if latents_mean is not None and latents_std is not None:
        if len(latents_mean) != channels or len(latents_std) != channels:
            raise ModelError(
                f"latents_mean and latents_std need {channels} values each (latent_channels), "
                f"got {len(latents_mean)} and {len(latents_std)}"
            )
        scale = tuple(factor / float(s) for s in latents_std)
        mean = tuple(float(m) for m in latents_mean)
        return Convention(1, mean, scale, f"(z - latents_mean) * {factor:g} / latents_std")
    shift = float(config.get("shift_factor") or 0.0)
    formula = f"(z - {shift:g}) * {factor:g}" if shift else f"z * {factor:g}"
    return Convention(1, (shift,), (factor,), formula)


# --- export ------------------------------------------------------------------------------------


class ModeEncoder(nn.Module):
    """Image in [-1, 1] -> the posterior mode (AutoencoderKL*) or the latent (AutoencoderTiny)."""

    def __init__(self, vae: LoadedVAE) -> None:
        super().__init__()
        self.vae: Any = vae.module
        self.channels, self.tiny = vae.latent_channels, vae.class_name == "AutoencoderTiny"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tiny:
            return self.vae.encoder(x)  # type: ignore[no-any-return]
        moments = self.vae.encoder(x)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        return moments[:, : self.channels]  # type: ignore[no-any-return]


class RawDecoder(nn.Module):
    """Raw latent -> image in [-1, 1] (unclipped), ``post_quant_conv`` included."""

    def __init__(self, vae: LoadedVAE) -> None:
        super().__init__()
        self.vae: Any = vae.module
        self.tiny = vae.class_name == "AutoencoderTiny"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.tiny and self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        return self.vae.decoder(z)  # type: ignore[no-any-return]


class Half(nn.Module):
    """Runs ``module`` in float16 behind float32 inputs and outputs."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).half()  # the float32 original stays for the checks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()  # type: ignore[no-any-return]


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))


def check_export(vae: LoadedVAE, encoder: Path, decoder: Path, probe: np.ndarray, fp16: bool) -> dict[str, float]:
    """Run the ONNX files and torch on ``probe`` (1, 3, H, W) in [-1, 1]: shapes and relative errors."""
    import onnxruntime as ort  # heavy: loaded only when a model runs

    with torch.no_grad():
        latent = ModeEncoder(vae)(torch.from_numpy(probe)).numpy()
        image = RawDecoder(vae)(torch.from_numpy(latent)).numpy()
    side = PROBE // vae.downsample
    if latent.shape != (1, vae.latent_channels, side, side) or image.shape != probe.shape:
        raise ModelError(
            f"{vae.class_name} maps a {PROBE}x{PROBE} image to a latent of shape {list(latent.shape[1:])} and back to "
            f"{list(image.shape[1:])}; expected [{vae.latent_channels}, {side}, {side}] and [3, {PROBE}, {PROBE}]"
        )
    errors = {}
    for name, path, x, want in (("encoder", encoder, probe, latent), ("decoder", decoder, latent, image)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        errors[name] = _relative_error(got, want)
        if not np.isfinite(got).all() or errors[name] > MAX_EXPORT_ERROR[fp16]:
            message = f"the exported {name} {path} differs from torch by {errors[name]:.2g} (relative)"
            if not fp16:
                raise ModelError(f"{message}; expected at most {MAX_EXPORT_ERROR[fp16]:g}")
            log.warning("%s in float16; a float32 import (without fp16) is exact", message)
    return errors


# --- photos and statistics ---------------------------------------------------------------------


def sample_photos() -> list[np.ndarray]:
    """scikit-image's colour sample photos: the calibration set when none is given."""
    return [sample_image(name) for name in ("astronaut", "coffee", "chelsea", "rocket")]


def _photos(data: Path | None, limit: int) -> list[np.ndarray]:
    if data is None:
        return sample_photos()[:limit]
    try:
        paths = list_images(data, limit)
    except VaeflowError as exc:
        raise ModelError(f"the latent statistics need photos (--data): {exc}") from exc
    return [read_rgb(p) for p in paths]


def raw_statistics(encoder: Path, channels: int, downsample: int, photos: list[np.ndarray]) -> tuple[Any, Any]:
    """Per-channel mean and std of the encoder's raw latent over centre crops of ``photos``."""
    probe = ModelEntry("statistics", encoder, encoder, channels, downsample, input_range=(-1.0, 1.0))
    vae = OnnxVAE(probe)
    sums, squares, count = np.zeros(channels), np.zeros(channels), 0
    for photo in photos:
        crop = center_crop(photo, STATS_CROP)
        crop = crop[: crop.shape[0] // downsample * downsample, : crop.shape[1] // downsample * downsample]
        z = vae.encode(crop[None]).astype(np.float64)
        sums += z.sum(axis=(0, 2, 3))
        squares += (z**2).sum(axis=(0, 2, 3))
        count += z.shape[0] * z.shape[2] * z.shape[3]
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    if not np.isfinite(std).all() or (std <= 1e-12).any():
        raise ModelError(f"the encoder gives constant or non-finite latent channels (std {std.min():.3g}) on photos")
    return mean, std


def _folder_license(folder: Path) -> str:
    """The ``license:`` of a model card (README.md front matter) in the folder or its parent."""
    for readme in (folder / "README.md", folder.parent / "README.md"):
        try:
            text = readme.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if text.startswith("---"):
            for line in text.split("---", 2)[1].splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "license" and value.strip():
                    return value.strip().strip("'\"")
    return "unknown"


# --- the import --------------------------------------------------------------------------------


def import_diffusers(
    folder: Path,
    name: str,
    home: Path | None = None,
    *,
    license: str | None = None,
    data: Path | None = None,
    fp16: bool = False,
    calibrate: bool = True,
    limit: int = 4,
) -> Path:
    """Convert a diffusers VAE folder to ONNX under ``home/models/name``, measure, register and calibrate it.

    ``data``: photos for the latent statistics and the calibration (default: scikit-image's
    sample photos); never the evaluation set. ``limit``: how many of them. ``fp16``: float16
    weights and arithmetic inside the graphs (for GPUs; float32 I/O). ``calibrate``: measure
    the decoder's sensitivity for the Hadamard and identity channel transforms (CDF 9/7,
    3 levels), which needs ``home`` to be the active registry home. Returns the registry file.
    """
    folder = Path(folder).resolve()
    home = Path(home) if home is not None else home_dir()
    if not name or len(name.encode()) > 64 or "/" in name or "\\" in name or name.startswith("."):
        raise ModelError(f"model name must be 1..64 bytes without path separators or a leading dot, got {name!r}")
    if calibrate and home.resolve() != home_dir().resolve():
        raise ModelError(f"calibration reads the active registry ({home_dir()}): import there or pass calibrate=False")
    photos = _photos(data, max(limit, 1))
    crop = center_crop(photos[0], PROBE)
    if crop.shape[:2] != (PROBE, PROBE):
        raise ModelError(f"photos must be at least {PROBE}x{PROBE} pixels, got {list(crop.shape[:2])}")
    probe = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32) / np.float32(127.5) - np.float32(1.0)
    vae = load_vae(folder)
    convention = latent_convention(vae)
    if fp16 and vae.config.get("force_upcast"):
        log.warning("%s sets force_upcast: diffusers runs it in float32, and in float16 it may overflow", folder)
    target, work = home / "models" / name, home / "models" / f".{name}.importing"
    shutil.rmtree(work, ignore_errors=True)
    wrap = Half if fp16 else (lambda m: m)
    export(wrap(ModeEncoder(vae)), work / "encoder.onnx", 3, "image", "latent", cast_float=not fp16)
    export(wrap(RawDecoder(vae)), work / "decoder.onnx", vae.latent_channels, "latent", "image", cast_float=not fp16)
    errors = check_export(vae, work / "encoder.onnx", work / "decoder.onnx", probe, fp16)
    mean, std = raw_statistics(work / "encoder.onnx", vae.latent_channels, vae.downsample, photos)
    shutil.rmtree(target, ignore_errors=True)  # a model of this name is replaced only once the new one checks out
    work.rename(target)
    encoder, decoder = target / "encoder.onnx", target / "decoder.onnx"
    entry = ModelEntry(
        name=name,
        encoder=encoder.resolve(),
        decoder=decoder.resolve(),
        latent_channels=vae.latent_channels,
        downsample=vae.downsample,
        input_range=(-1.0, 1.0),
        latent_scale=tuple(float(f"{1 / s:.7g}") for s in std),
        latent_shift=tuple(float(f"{m:.7g}") for m in mean),
        license=license or _folder_license(folder),
        description=(
            f"{vae.class_name} imported from {folder.name}{' in float16' if fp16 else ''}; "
            f"its own latent: {convention.formula}"
        ),
        convention="shift_scale",
        convention_patch=convention.patch,
        convention_shift=convention.shift,
        convention_scale=convention.scale,
    )
    entry.validate()
    path = register(entry, home / REGISTRY_FILE)
    log.info("registered %r (fingerprint %s), export errors %s", name, entry.fingerprint().hex(), errors)
    if calibrate:
        if Registry.load().resolve(name).decoder != entry.decoder:
            raise ModelError(f"another registry file ($VAEFLOW_CONFIG) overrides {name!r}; choose another name")
        with tempfile.TemporaryDirectory() as tmp:
            photo_dir = Path(data) if data is not None else _write_photos(photos, Path(tmp))
            for transform in CALIBRATIONS:
                calibrate_model(name, photo_dir, transform=transform, limit=limit, drop_photos=limit)
    return path


def _write_photos(photos: list[np.ndarray], folder: Path) -> Path:
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(folder / f"{i}.png")
    return folder
