"""vaeflow: compress image datasets through a learned latent codec, as a Dask dataflow into zarr."""

from vaeflow.codec.api import compress, compress_batch, decompress, decompress_latent, info, resolve_codec
from vaeflow.codec.codec import Codec
from vaeflow.codec.presets import load_pipeline
from vaeflow.dataset.job import ClusterOptions, JobOptions, JobReport, compress_dataset
from vaeflow.dataset.reader import StoreReader, open_store
from vaeflow.foundations import metrics
from vaeflow.foundations.errors import CorruptStreamError, ImageReadError, ModelError, PipelineError, VaeflowError
from vaeflow.foundations.imageio import read_rgb as read_image
from vaeflow.foundations.resources import vaeflow_version
from vaeflow.foundations.samples import SAMPLES, sample_image, write_samples
from vaeflow.models import (
    LatentConvention,
    ModelRef,
    RuntimeOptions,
    decode_latent,
    encode_latent,
    from_model_convention,
    load_model,
    to_model_convention,
)
from vaeflow.reports import evaluate
from vaeflow.stages import (
    VAE,
    ChannelTransform,
    Entropy,
    Hadamard,
    Pipeline,
    PostFilter,
    Quantize,
    RateTarget,
    Wavelet,
)

__version__ = vaeflow_version()

__all__ = [
    "SAMPLES",
    "VAE",
    "ChannelTransform",
    "ClusterOptions",
    "Codec",
    "CorruptStreamError",
    "Entropy",
    "Hadamard",
    "ImageReadError",
    "JobOptions",
    "JobReport",
    "LatentConvention",
    "ModelError",
    "ModelRef",
    "Pipeline",
    "PipelineError",
    "PostFilter",
    "Quantize",
    "RateTarget",
    "RuntimeOptions",
    "StoreReader",
    "VaeflowError",
    "Wavelet",
    "__version__",
    "compress",
    "compress_batch",
    "compress_dataset",
    "decode_latent",
    "decompress",
    "decompress_latent",
    "encode_latent",
    "evaluate",
    "from_model_convention",
    "info",
    "load_model",
    "load_pipeline",
    "metrics",
    "open_store",
    "read_image",
    "resolve_codec",
    "sample_image",
    "to_model_convention",
    "write_samples",
]
