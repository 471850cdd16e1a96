"""Latents in a model's own convention, and how they map to vaeflow's normalised latent.

vaeflow quantizes the normalised latent ``n = (raw - latent_shift) * latent_scale`` of the
encoder's raw output, about unit variance per channel (the registry's ``latent_shift`` and
``latent_scale``). A diffusion model trains on its VAE's own convention instead; a registry
entry with ``convention = "shift_scale"`` records it as

    model = (patchify(raw, convention_patch) - convention_shift) * convention_scale

with ``patchify`` folding each ``p x p`` block of latent samples into channels (``p = 1``:
none; FLUX.2 uses 2) and shift and scale one value or one per (patched) channel. So an
error ``e`` in channel ``c`` of the normalised latent is ``e * gain[k]`` in channel ``k`` of
the model's, ``gain[k] = convention_scale[k] / latent_scale[k // p**2]`` (``gains()``).
Models without a convention of their own (``"none"``, such as ``default``) use the
normalised latent as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaeflow.foundations.errors import ModelError

CONVENTIONS = ("none", "shift_scale")


def patchify(latents: np.ndarray, patch: int) -> np.ndarray:
    """(N, C, h, w) -> (N, C*p*p, h/p, w/p): channel c*p*p + dy*p + dx holds sample (p*y + dy, p*x + dx)."""
    if patch == 1:
        return latents
    n, c, h, w = latents.shape
    if h % patch or w % patch:
        raise ValueError(f"latent height and width must be multiples of the patch size {patch}, got {h}x{w}")
    blocks = latents.reshape(n, c, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 5, 2, 4)
    return blocks.reshape(n, c * patch * patch, h // patch, w // patch)


def unpatchify(latents: np.ndarray, patch: int) -> np.ndarray:
    """The inverse of ``patchify``."""
    if patch == 1:
        return latents
    n, c, h, w = latents.shape
    if c % (patch * patch):
        raise ValueError(f"{c} channels do not unfold into {patch}x{patch} patches")
    blocks = latents.reshape(n, c // (patch * patch), patch, patch, h, w).transpose(0, 1, 4, 2, 5, 3)
    return blocks.reshape(n, c // (patch * patch), h * patch, w * patch)


def _column(values: tuple[float, ...]) -> np.ndarray:
    return np.asarray(values, np.float64).reshape(1, -1, 1, 1)


def _floats(data: dict[str, Any], key: str) -> tuple[float, ...]:
    value = data[key]
    return tuple(float(v) for v in (value if isinstance(value, list | tuple) else [value]))


@dataclass(frozen=True)
class LatentConvention:
    """The map between vaeflow's normalised latent and a model's own, as a registry entry records it.

    ``shift`` and ``scale``: the model's convention (1 or ``channels * patch**2`` values);
    ``latent_shift`` and ``latent_scale``: vaeflow's normalisation (1 or ``channels`` values).
    """

    channels: int
    patch: int
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    latent_shift: tuple[float, ...]
    latent_scale: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels < 1 or self.patch < 1:
            raise ModelError(
                f"latent convention: channels and patch must be positive, got {self.channels}, {self.patch}"
            )
        for key, count in (("shift", self.model_channels), ("scale", self.model_channels),
                           ("latent_shift", self.channels), ("latent_scale", self.channels)):  # fmt: skip
            if len(getattr(self, key)) not in (1, count):
                raise ModelError(f"latent convention: {key} needs 1 or {count} values, got {len(getattr(self, key))}")
        values = (*self.shift, *self.scale, *self.latent_shift, *self.latent_scale)
        if not np.isfinite(values).all() or any(v == 0 for v in (*self.scale, *self.latent_scale)):
            raise ModelError("latent convention: shifts and scales must be finite, scales non-zero")

    @property
    def model_channels(self) -> int:
        """Channels of the model's own latent: ``channels * patch**2``."""
        return self.channels * self.patch**2

    def to_model(self, latents: np.ndarray) -> np.ndarray:
        """Normalised latents (N, C, h, w) -> the model's own (N, C*p*p, h/p, w/p), float32."""
        raw = np.asarray(latents, np.float64) / _column(self.latent_scale) + _column(self.latent_shift)
        patched = patchify(raw, self.patch)
        return ((patched - _column(self.shift)) * _column(self.scale)).astype(np.float32)

    def from_model(self, latents: np.ndarray) -> np.ndarray:
        """The model's own latents (N, C*p*p, h/p, w/p) -> normalised (N, C, h, w), float32."""
        latents = np.asarray(latents)
        if latents.ndim != 4 or latents.shape[1] != self.model_channels:
            raise ValueError(
                f"the model's own latents have shape (N, {self.model_channels}, h, w), got {latents.shape}"
            )
        patched = latents.astype(np.float64) / _column(self.scale) + _column(self.shift)
        raw = unpatchify(patched, self.patch)
        return ((raw - _column(self.latent_shift)) * _column(self.latent_scale)).astype(np.float32)

    def gains(self) -> np.ndarray:
        """(C*p*p,) factors: an error ``e`` in the normalised latent is ``e * gains()[k]`` in the model's channel k."""
        k = np.arange(self.model_channels)
        scale = np.broadcast_to(np.abs(np.asarray(self.scale, np.float64)), (self.model_channels,))
        latent_scale = np.broadcast_to(np.abs(np.asarray(self.latent_scale, np.float64)), (self.channels,))
        return scale / latent_scale[k // self.patch**2]  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "patch": self.patch,
            "shift": list(self.shift),
            "scale": list(self.scale),
            "latent_shift": list(self.latent_shift),
            "latent_scale": list(self.latent_scale),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentConvention:
        keys = ("shift", "scale", "latent_shift", "latent_scale")
        return cls(int(data["channels"]), int(data["patch"]), *(_floats(data, k) for k in keys))
