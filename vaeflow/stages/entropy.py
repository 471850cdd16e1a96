"""The entropy stage: quantized symbols <-> one payload per image, by one of the rANS coders.

Every new stream, of every preset and channel count, is written by the sequential coder
(``WRITER``, format 5); the others decode the streams of the formats that used them and write
no new ones:

- ``laplace``: one quantized-Laplace model per channel and subband (``coders.laplace``);
- ``context``: each detail coefficient's Laplace scale predicted from what the decoder
  already has, row by row (``coders.context``; stream format 1);
- ``classes``: each coefficient coded with one of 64 fixed tables, its class known before its
  pass from what earlier passes decoded, so that every class decodes in one call over arrays
  (``coders.classes``; format 2: narrow latents under ``coder = "auto"`` until format 5);
- ``bands``: one of those tables per detail band, named in the stream, each band one call
  (``coders.bands``; format 3: wide latents under ``coder = "auto"``, and ``latent-store-fast``, until
  format 5);
- ``sequential``: each coefficient's table chosen from the rows above it, the previous channel and
  the parent band, decoded one after the other by one compiled loop (``coders.sequential``; format 5).

``auto`` in a pipeline becomes ``sequential`` when the codec is resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages.base import Stage
from vaeflow.stages.coders import EntropyCoder, Payload, bands, classes, context, laplace, sequential
from vaeflow.stages.spec import StageSpec
from vaeflow.stages.wavelet import Subband

# Every coder by the name a pipeline and a stream give it; a new coder is one line here.
CODERS: dict[str, EntropyCoder] = {
    "laplace": laplace,
    "context": context,
    "classes": classes,
    "bands": bands,
    "sequential": sequential,
}
AUTO = "auto"  # in a pipeline: the writer
WRITER = "sequential"  # the coder of every new stream


@dataclass(frozen=True)
class Entropy(Stage):
    stage_name: ClassVar[str] = "entropy"
    input_kind: ClassVar[str] = "symbols"
    output_kind: ClassVar[str] = "streams"

    coder: str = WRITER

    def __post_init__(self) -> None:
        if self.coder not in (*CODERS, AUTO):
            raise PipelineError(f"unknown entropy coder {self.coder!r}; choose one of {(*CODERS, AUTO)}")

    def fitting(self, channels: int) -> Entropy:
        """This stage with ``auto`` resolved for latents of ``channels`` channels (every count: the writer)."""
        if self.coder != AUTO:
            return self
        return Entropy(WRITER)

    def check_writable(self) -> None:
        """Refuse a coder that only decodes the streams of older formats."""
        if self.coder not in (WRITER, AUTO):
            raise PipelineError(
                f"the {self.coder!r} entropy coder decodes the streams that used it but writes no new ones; "
                f'new streams use the {WRITER} coder: set coder = "auto" in the [entropy] table'
            )

    @property
    def module(self) -> EntropyCoder:
        """The coder; ``auto``, which a resolved codec never holds, is refused."""
        if self.coder == AUTO:
            raise PipelineError("entropy coder 'auto' is chosen when the codec is resolved (Entropy.fitting)")
        return CODERS[self.coder]

    def forward(self, symbols: np.ndarray, spec: StageSpec) -> list[bytes]:
        """Symbols (N, C, h, w) int32 -> one payload per image."""
        self.check_writable()
        if symbols.ndim != 4 or symbols.dtype != np.int32:
            raise ValueError(f"expected int32 symbols of shape (N, C, h, w), got {symbols.dtype} {symbols.shape}")
        return [self.module.encode(image, spec.bands) for image in symbols]

    def inverse(self, payloads: Sequence[Payload], spec: StageSpec) -> np.ndarray:
        """Payloads of one latent shape -> (N, C, h, w) int32 symbols, in as few calls as the coder allows;
        damage raises CorruptStreamError."""
        return self.module.decode_many(payloads, spec.latent_shape, spec.bands)

    def information_bits(self, symbols: np.ndarray, bands: tuple[Subband, ...]) -> float:
        """Ideal code length in bits of one image's symbols (C, h, w) under the coder's own models."""
        return float(self.module.information_bits(symbols, bands))

    def side_info_bytes(self, payload: Payload, channels: int, bands: tuple[Subband, ...]) -> int:
        """Bytes of a payload that hold models rather than ANS words."""
        return int(self.module.side_info_bytes(payload, channels, bands))
