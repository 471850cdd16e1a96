"""VAE stage: RGB images <-> normalised latents through a registered model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from vaeflow.errors import PipelineError
from vaeflow.models import OnnxVAE
from vaeflow.stages.base import Stage

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

    def forward(self, images: np.ndarray, model: OnnxVAE) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, C, ceil(H/s), ceil(W/s)) in the model's normalised scale."""
        return model.encode(images)

    def inverse(self, latents: np.ndarray, model: OnnxVAE, size: tuple[int, int]) -> np.ndarray:
        """float32 latents -> uint8 (N, H, W, 3) cropped to ``size``."""
        return model.decode(latents, size)
