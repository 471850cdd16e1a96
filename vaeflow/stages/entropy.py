"""The entropy stage: quantized symbols <-> one payload per image, by one of the rANS coders.

- ``laplace``: one quantized-Laplace model per channel and subband (``coders.laplace``);
- ``context``: each detail coefficient's Laplace scale predicted from what the decoder
  already has, row by row (``coders.context``; stream format 1);
- ``classes``: each coefficient coded with one of 64 fixed tables, its class known before its
  pass from what earlier passes decoded, so that every class decodes in one call over arrays
  (``coders.classes``; format 2: narrow latents under ``coder = "auto"``);
- ``bands``: one of those tables per detail band, named in the stream, each band one call
  (``coders.bands``; format 3: wide latents under ``coder = "auto"``, and ``latent-store-fast``).

``auto`` in a pipeline becomes ``bands`` for latents of ``WIDE_CHANNELS`` channels or more and
``classes`` otherwise, when the codec is resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar

import numpy as np

from vaeflow.errors import PipelineError
from vaeflow.stages.base import Stage
from vaeflow.stages.coders import bands, classes, context, laplace
from vaeflow.stages.wavelet import Subband

CODERS: dict[str, ModuleType] = {"laplace": laplace, "context": context, "classes": classes, "bands": bands}
AUTO = "auto"  # in a pipeline: ``bands`` for wide latents, ``classes`` otherwise
WIDE_CHANNELS = 16


@dataclass(frozen=True)
class Entropy(Stage):
    stage_name: ClassVar[str] = "entropy"
    input_kind: ClassVar[str] = "symbols"
    output_kind: ClassVar[str] = "streams"

    coder: str = "classes"

    def __post_init__(self) -> None:
        if self.coder not in (*CODERS, AUTO):
            raise PipelineError(f"unknown entropy coder {self.coder!r}; choose one of {(*CODERS, AUTO)}")

    def fitting(self, channels: int) -> Entropy:
        """This stage with ``auto`` resolved for latents of ``channels`` channels."""
        if self.coder != AUTO:
            return self
        return Entropy("bands" if channels >= WIDE_CHANNELS else "classes")

    @property
    def module(self) -> ModuleType:
        """The coder's module; ``auto``, which a resolved codec never holds, is refused."""
        if self.coder == AUTO:
            raise PipelineError("entropy coder 'auto' is chosen when the codec is resolved (Entropy.fitting)")
        return CODERS[self.coder]

    def forward(self, symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes:
        """One image's symbols (C, h, w) int32 -> its payload."""
        if symbols.ndim != 3 or symbols.dtype != np.int32:
            raise ValueError(f"expected int32 symbols of shape (C, h, w), got {symbols.dtype} {symbols.shape}")
        return self.module.encode(symbols, bands)  # type: ignore[no-any-return]

    def inverse(
        self, payload: bytes | memoryview, shape: tuple[int, int, int], bands: tuple[Subband, ...]
    ) -> np.ndarray:
        """A payload -> int32 symbols of ``shape`` (C, h, w); damage raises CorruptStreamError."""
        return self.module.decode(payload, shape, bands)  # type: ignore[no-any-return]

    def inverse_many(
        self, payloads: list[bytes | memoryview], shape: tuple[int, int, int], bands: tuple[Subband, ...]
    ) -> np.ndarray:
        """Payloads of one shape -> (N, C, h, w) int32 symbols, in as few calls as the coder allows."""
        many = getattr(self.module, "decode_many", None)
        if many is not None:
            return many(payloads, shape, bands)  # type: ignore[no-any-return]
        return (
            np.stack([self.inverse(p, shape, bands) for p in payloads]) if payloads else np.zeros((0, *shape), np.int32)
        )

    def information_bits(self, symbols: np.ndarray, bands: tuple[Subband, ...]) -> float:
        """Ideal code length in bits of one image's symbols under the coder's own models."""
        return float(self.module.information_bits(symbols, bands))

    def side_info_bytes(self, payload: bytes | memoryview, channels: int, bands: tuple[Subband, ...]) -> int:
        """Bytes of a payload that hold models rather than ANS words."""
        return int(self.module.side_info_bytes(payload, channels, bands))
