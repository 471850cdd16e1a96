"""VAE models: the registry of named models and their ONNX Runtime execution."""

from vaeflow.models.onnx_vae import OnnxVAE, RuntimeOptions, load_model
from vaeflow.models.registry import ModelEntry, ModelRef, Registry

__all__ = ["ModelEntry", "ModelRef", "OnnxVAE", "Registry", "RuntimeOptions", "load_model"]
