"""VAE models: the registry of named models and their ONNX Runtime execution."""

from vaeflow.models.convention import LatentConvention
from vaeflow.models.latents import (
    decode_latent,
    encode_latent,
    from_model_convention,
    latent_unit_of,
    pad_images,
    to_model_convention,
)
from vaeflow.models.onnx_vae import OnnxVAE, RuntimeOptions, load_model
from vaeflow.models.registry import ModelEntry, ModelRef, Registry, padded_shape

__all__ = [
    "LatentConvention",
    "ModelEntry",
    "ModelRef",
    "OnnxVAE",
    "Registry",
    "RuntimeOptions",
    "decode_latent",
    "encode_latent",
    "from_model_convention",
    "latent_unit_of",
    "load_model",
    "pad_images",
    "padded_shape",
    "to_model_convention",
]
