"""VAE stage: RGB images <-> normalised latents through a registered model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from vaeflow.foundations.errors import PipelineError
from vaeflow.models import load_model, pad_images
from vaeflow.stages.base import Stage
from vaeflow.stages.spec import StageSpec

MAX_NAME_BYTES = 64


@dataclass(frozen=True)
class VAE(Stage):
    """The model by its registered name; a codec resolves the name once to a ``ModelRef``."""

    stage_name: ClassVar[str] = "vae"
    input_kind: ClassVar[str] = "image"
    output_kind: ClassVar[str] = "latent"

    model: str = "default"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model or len(self.model.encode()) > MAX_NAME_BYTES:
            raise PipelineError(f"model name must be 1..{MAX_NAME_BYTES} bytes, got {self.model!r}")

    def forward(self, images: np.ndarray, spec: StageSpec) -> np.ndarray:
        """Same-size uint8 images (N, H, W, 3) -> their exact latents (N, C, h, w) in the model's normalised
        scale: each edge-padded to its padded shape only, as ``vaeflow.encode_latent`` encodes it (images
        already padded stay as they are), through ``spec.model``, loaded once per process."""
        padded = pad_images(images, spec.pad_multiple)
        return load_model(spec.model, spec.runtime).encode(padded)  # type: ignore[arg-type]

    def inverse(self, latents: np.ndarray, spec: StageSpec) -> np.ndarray:
        """float32 latents -> uint8 (N, H, W, 3) cropped to ``spec.size``, through that very model."""
        return load_model(spec.model, spec.runtime).decode(latents, spec.size)  # type: ignore[arg-type]
