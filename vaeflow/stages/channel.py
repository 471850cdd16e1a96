"""Channel transform: an orthonormal Hadamard across latent channels, or identity."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages.base import Stage
from vaeflow.stages.spec import StageSpec

TRANSFORMS = ("hadamard", "identity")  # what a stream may hold
AUTO = "auto"  # in a pipeline: the transform the model is calibrated for, chosen when the codec is resolved


@dataclass(frozen=True)
class ChannelTransform(Stage):
    stage_name: ClassVar[str] = "channel"
    input_kind: ClassVar[str] = "latent"
    output_kind: ClassVar[str] = "latent"

    transform: str = "hadamard"

    @classmethod
    def absent(cls) -> ChannelTransform:
        return ChannelTransform("identity")  # a pass-through

    def __post_init__(self) -> None:
        if self.transform not in (*TRANSFORMS, AUTO):
            raise PipelineError(f"unknown channel transform {self.transform!r}; choose one of {(*TRANSFORMS, AUTO)}")

    def check(self, channels: int) -> None:
        """Refuse a channel count this transform cannot take (Hadamard: powers of two), and ``auto``,
        which a resolved codec never holds."""
        if self.transform == AUTO:
            raise PipelineError("channel transform 'auto' is chosen when the codec is resolved")
        if self.transform == "hadamard":
            hadamard_matrix(channels)

    def forward(self, latents: np.ndarray, spec: StageSpec | None = None) -> np.ndarray:
        _check(latents)
        if self.transform == "identity":
            return latents.astype(np.float32, copy=True)
        h = hadamard_matrix(latents.shape[1])
        return np.einsum("oc,nchw->nohw", h, latents.astype(np.float64)).astype(np.float32)

    def inverse(self, mixed: np.ndarray, spec: StageSpec | None = None) -> np.ndarray:
        _check(mixed)
        if self.transform == "identity":
            return mixed.astype(np.float32, copy=True)
        h = hadamard_matrix(mixed.shape[1])
        return np.einsum("co,nchw->nohw", h, mixed.astype(np.float64)).astype(np.float32)


@lru_cache(maxsize=16)
def hadamard_matrix(channels: int) -> np.ndarray:
    """Orthonormal Sylvester-Hadamard matrix in sequency order (rows sorted by sign changes).

    For 4 channels this is ``[[1,1,1,1],[1,1,-1,-1],[1,-1,-1,1],[1,-1,1,-1]] / 2``.
    """
    if channels < 1 or channels & (channels - 1):
        raise PipelineError(
            f"a Hadamard transform needs a power-of-two channel count, got {channels}; "
            "use the identity channel transform (e.g. the wide-latent preset)"
        )
    h = np.ones((1, 1))
    while h.shape[0] < channels:
        h = np.block([[h, h], [h, -h]])
    sign_changes = (np.diff(np.sign(h), axis=1) != 0).sum(axis=1)
    h = h[np.argsort(sign_changes, kind="stable")] / np.sqrt(channels)
    h.setflags(write=False)
    return h


def _check(latents: np.ndarray) -> None:
    if latents.ndim != 4:
        raise ValueError(f"expected latents of shape (N, C, h, w), got shape {latents.shape}")


def Hadamard() -> ChannelTransform:
    """The orthonormal Hadamard channel transform."""
    return ChannelTransform("hadamard")
