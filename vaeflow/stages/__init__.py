"""The codec stages, each a frozen dataclass owning its forward, inverse, validation and serialization."""

from vaeflow.stages.base import STAGE_ORDER, Pipeline, Stage
from vaeflow.stages.channel import ChannelTransform, Hadamard
from vaeflow.stages.entropy import Entropy
from vaeflow.stages.postfilter import PostFilter
from vaeflow.stages.quantize import Quantize
from vaeflow.stages.spec import StageSpec
from vaeflow.stages.target import RateTarget, TargetRecord
from vaeflow.stages.vae import VAE
from vaeflow.stages.wavelet import Subband, Wavelet

__all__ = [
    "STAGE_ORDER",
    "VAE",
    "ChannelTransform",
    "Entropy",
    "Hadamard",
    "Pipeline",
    "PostFilter",
    "Quantize",
    "RateTarget",
    "Stage",
    "StageSpec",
    "Subband",
    "TargetRecord",
    "Wavelet",
]
