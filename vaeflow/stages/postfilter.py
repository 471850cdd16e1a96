"""Optional post-filter on the reconstruction: a Gaussian blur of ``sigma`` pixels (0 = off).

Forward is the identity (the filter acts only after decoding); the stream records sigma.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages.base import Stage
from vaeflow.stages.spec import StageSpec

SIGMA_UNIT = 1 / 16
MAX_SIGMA = 255 * SIGMA_UNIT


@dataclass(frozen=True)
class PostFilter(Stage):
    stage_name: ClassVar[str] = "postfilter"
    input_kind: ClassVar[str] = "image"
    output_kind: ClassVar[str] = "image"

    sigma: float = 0.0

    @classmethod
    def absent(cls) -> PostFilter:
        return PostFilter(0.0)  # a pass-through

    def __post_init__(self) -> None:
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, int | float):
            raise PipelineError(f"post-filter sigma must be a number, got {self.sigma!r}")
        if not 0.0 <= self.sigma <= MAX_SIGMA or round(self.sigma / SIGMA_UNIT) * SIGMA_UNIT != self.sigma:
            raise PipelineError(f"post-filter sigma must be a multiple of 1/16 in 0..{MAX_SIGMA}, got {self.sigma!r}")

    def forward(self, images: np.ndarray, spec: StageSpec | None = None) -> np.ndarray:
        return images

    def inverse(self, images: np.ndarray, spec: StageSpec | None = None) -> np.ndarray:
        if self.sigma == 0:
            return images
        out = np.empty_like(images)
        for i, image in enumerate(images):
            from skimage.filters import gaussian  # imported here: half a second at every start otherwise

            blurred = gaussian(image.astype(np.float32), sigma=self.sigma, channel_axis=-1, preserve_range=True)
            out[i] = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
        return out
