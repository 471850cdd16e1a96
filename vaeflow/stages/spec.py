"""The resolved spec every stage runs with: ``stage.forward(x, spec)`` and ``stage.inverse(x, spec)``.

A stage's own fields are what a stream records of it; a spec is what one batch of images of
one size needs besides: the model to run, the latent's shape, its subbands and the
quantizer's steps. A codec resolves it once per size (``Codec.spec``), and rate control
gives the quantize stage a spec at each step it tries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from vaeflow.models import ModelRef, RuntimeOptions

if TYPE_CHECKING:
    from vaeflow.stages.wavelet import Subband


@dataclass(frozen=True, eq=False)
class StageSpec:
    """What the stages need for images of ``size`` (H, W), whose latents are ``latent_shape`` (C, h, w)."""

    size: tuple[int, int]
    latent_shape: tuple[int, int, int]
    bands: tuple[Subband, ...] = ()  # the wavelet's subbands of the latent
    steps: np.ndarray | None = None  # the quantizer's (C, n_bands) steps, or (N, C, n_bands): each image its own
    model: ModelRef | None = None  # the VAE stage's model, loaded once per process
    runtime: RuntimeOptions | None = None
    latent_unit: int = 1  # latent samples an image is padded to a multiple of

    def with_steps(self, steps: np.ndarray) -> StageSpec:
        return replace(self, steps=steps)

    @property
    def pad_multiple(self) -> int:
        """Pixels an image is edge-padded to a multiple of before the encoder."""
        if self.model is None:
            raise ValueError("this spec has no model: the VAE stage needs one (Codec.spec)")
        return self.model.downsample * self.latent_unit

    @property
    def quantizer_steps(self) -> np.ndarray:
        if self.steps is None:
            raise ValueError("this spec has no quantizer steps (Codec.spec)")
        return self.steps


def coding_spec(latent_shape: tuple[int, int, int], bands: tuple[Subband, ...]) -> StageSpec:
    """A spec for the entropy stage alone: symbols of ``latent_shape`` in ``bands``."""
    return StageSpec((0, 0), latent_shape, bands)
