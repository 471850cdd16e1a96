"""The entropy coders behind the ``Entropy`` stage, each a module implementing ``EntropyCoder``,
and the rANS helpers they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from vaeflow.stages.wavelet import Subband

Payload = bytes | memoryview
Shape = tuple[int, int, int]


class EntropyCoder(Protocol):
    """What every coder module provides; symbols are one image's (C, h, w) int32."""

    def encode(self, symbols: np.ndarray, bands: tuple[Subband, ...]) -> bytes: ...

    def decode(self, payload: Payload, shape: Shape, bands: tuple[Subband, ...]) -> np.ndarray: ...

    def decode_many(self, payloads: Sequence[Payload], shape: Shape, bands: tuple[Subband, ...]) -> np.ndarray: ...

    def information_bits(self, symbols: np.ndarray, bands: tuple[Subband, ...]) -> float: ...

    def side_info_bytes(self, payload: Payload, channels: int, bands: tuple[Subband, ...]) -> int: ...


def decode_each(
    decode: Callable[[Payload, Shape, tuple[Subband, ...]], np.ndarray],
    payloads: Sequence[Payload],
    shape: Shape,
    bands: tuple[Subband, ...],
) -> np.ndarray:
    """``decode_many`` for a coder that decodes one payload at a time: (N, C, h, w) int32."""
    if not payloads:
        return np.zeros((0, *shape), np.int32)
    return np.stack([decode(p, shape, bands) for p in payloads])
