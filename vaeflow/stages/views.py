"""Each stage of a complete pipeline by name: ``codec.quantize``, ``header.wavelet``, ... (``Codec`` and
``StreamHeader`` hold one)."""

from __future__ import annotations

from vaeflow.stages.base import Pipeline
from vaeflow.stages.channel import ChannelTransform
from vaeflow.stages.entropy import Entropy
from vaeflow.stages.postfilter import PostFilter
from vaeflow.stages.quantize import Quantize
from vaeflow.stages.vae import VAE
from vaeflow.stages.wavelet import Wavelet


class StageViews:
    """Properties for a class whose ``pipeline`` holds every stage."""

    pipeline: Pipeline

    @property
    def postfilter(self) -> PostFilter:
        return self.pipeline.by_name["postfilter"]  # type: ignore[return-value]

    @property
    def vae(self) -> VAE:
        return self.pipeline.by_name["vae"]  # type: ignore[return-value]

    @property
    def channel(self) -> ChannelTransform:
        return self.pipeline.by_name["channel"]  # type: ignore[return-value]

    @property
    def wavelet(self) -> Wavelet:
        return self.pipeline.by_name["wavelet"]  # type: ignore[return-value]

    @property
    def quantize(self) -> Quantize:
        return self.pipeline.by_name["quantize"]  # type: ignore[return-value]

    @property
    def entropy(self) -> Entropy:
        return self.pipeline.by_name["entropy"]  # type: ignore[return-value]
