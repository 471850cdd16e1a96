"""The exact latent of an image in the model's own convention, and back (see ``vaeflow.models.convention``).

``encode_latent`` and ``decode_latent`` run the registered model's encoder or decoder without
quantizing; ``to_model_convention`` and ``from_model_convention`` map vaeflow's normalised
latent (what the codec quantizes, what ``decompress_latent`` returns) to the model's own and
back. For a model without a convention of its own the two are the same.
"""

from __future__ import annotations

import numpy as np

from vaeflow.foundations.imageio import as_rgb
from vaeflow.models.convention import LatentConvention
from vaeflow.models.onnx_vae import RuntimeOptions, check_ref, load_model
from vaeflow.models.registry import ModelEntry, ModelRef, Registry, padded_shape

ModelLike = str | ModelEntry | ModelRef


def convention_of(model: ModelLike) -> LatentConvention | None:
    """The model's convention: from a reference that carries one, else from the registry.

    A reference without one (such as a stream header's) is looked up by name and must name
    the registry's model of that name (the same fingerprint).
    """
    if isinstance(model, ModelEntry):
        return model.latent_convention()
    if isinstance(model, ModelRef) and model.convention is not None:
        return model.convention
    entry = Registry.load().resolve(model.name if isinstance(model, ModelRef) else model)
    if isinstance(model, ModelRef):
        check_ref(model, entry.ref())
    return entry.latent_convention()


def to_model_convention(latents: np.ndarray, model: ModelLike = "default") -> np.ndarray:
    """vaeflow's normalised latents (N, C, h, w) -> the model's own convention (float32)."""
    convention = convention_of(model)
    return convention.to_model(latents) if convention is not None else np.asarray(latents, np.float32)


def from_model_convention(latents: np.ndarray, model: ModelLike = "default") -> np.ndarray:
    """The model's own convention -> vaeflow's normalised latents (N, C, h, w), float32."""
    convention = convention_of(model)
    return convention.from_model(latents) if convention is not None else np.asarray(latents, np.float32)


def latent_unit_of(convention: LatentConvention | None) -> int:
    """Latent samples an image is padded to a multiple of: the patch a model folds into channels, else 1."""
    return convention.patch if convention is not None else 1


def pad_images(images: np.ndarray, unit: int) -> np.ndarray:
    """Images (N, H, W, 3) edge-padded to a multiple of ``unit`` pixels (``padded_shape``)."""
    _, height, width, _ = images.shape
    padded = padded_shape(height, width, unit)
    if padded == (height, width):
        return images
    return np.pad(images, ((0, 0), (0, padded[0] - height), (0, padded[1] - width), (0, 0)), mode="edge")


def encode_latent(image: np.ndarray, *, model: str = "default", runtime: RuntimeOptions | None = None) -> np.ndarray:
    """The exact (unquantized) latent of an HxWx3 uint8 image (or a batch NxHxWx3), in the model's convention.

    Images are edge-padded to a multiple of the model's downsampling (times its patch size),
    as the codec does; one image gives (C, h, w), a batch (N, C, h, w).
    """
    batch = isinstance(image, np.ndarray) and image.ndim == 4
    images = image if batch else as_rgb(image)[None]
    if images.dtype != np.uint8 or images.shape[-1] != 3:
        raise ValueError(f"encode_latent takes uint8 (H, W, 3) or (N, H, W, 3), got {images.dtype} {images.shape}")
    vae = load_model(model, runtime)
    convention = vae.entry.latent_convention()
    normalised = vae.encode(pad_images(images, vae.downsample * latent_unit_of(convention)))
    latents = convention.to_model(normalised) if convention is not None else normalised
    return latents if batch else latents[0]


def decode_latent(
    latent: np.ndarray,
    *,
    model: str = "default",
    size: tuple[int, int] | None = None,
    as_float: bool = False,
    runtime: RuntimeOptions | None = None,
) -> np.ndarray:
    """A latent (C, h, w) or batch (N, C, h, w) in the model's convention -> HxWx3 (or NxHxWx3) image.

    uint8 by default; ``as_float`` gives float32 in 0..255, clipped but not rounded.
    ``size`` (H, W) crops the decoded image, e.g. to an image's size before padding.
    """
    latents = np.asarray(latent)
    batch = latents.ndim == 4
    if not batch:
        latents = latents[None]
    if latents.ndim != 4:
        raise ValueError(f"decode_latent takes a latent (C, h, w) or (N, C, h, w), got shape {np.shape(latent)}")
    vae = load_model(model, runtime)
    convention = vae.entry.latent_convention()
    if convention is not None and latents.shape[1] != convention.model_channels:
        raise ValueError(
            f"model {vae.name!r} takes latents of {convention.model_channels} channels (its own), got {latents.shape}"
        )
    normalised = convention.from_model(latents) if convention is not None else latents
    images = vae.decode_float(normalised, size) if as_float else vae.decode(normalised, size)
    return images if batch else images[0]
