"""vaeflow: compress image datasets through a learned latent codec, as a Dask dataflow into zarr."""

from importlib.metadata import PackageNotFoundError, version

from vaeflow.api import compress, compress_batch, decompress, decompress_latent, info
from vaeflow.dataset.job import JobOptions, JobReport, compress_dataset
from vaeflow.dataset.reader import StoreReader, open_store
from vaeflow.errors import CorruptStreamError, ModelError, PipelineError, VaeflowError
from vaeflow.models import RuntimeOptions, load_model
from vaeflow.pipeline import Codec, Pipeline
from vaeflow.presets import load_pipeline
from vaeflow.stages.channel import ChannelTransform, Hadamard
from vaeflow.stages.entropy import ANS
from vaeflow.stages.postfilter import PostFilter
from vaeflow.stages.quantize import Quantize
from vaeflow.stages.vae import VAE
from vaeflow.stages.wavelet import Wavelet

try:
    __version__ = version("vaeflow")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "ANS",
    "VAE",
    "ChannelTransform",
    "Codec",
    "CorruptStreamError",
    "Hadamard",
    "JobOptions",
    "JobReport",
    "ModelError",
    "Pipeline",
    "PipelineError",
    "PostFilter",
    "Quantize",
    "RuntimeOptions",
    "StoreReader",
    "VaeflowError",
    "Wavelet",
    "__version__",
    "compress",
    "compress_batch",
    "compress_dataset",
    "decompress",
    "decompress_latent",
    "info",
    "load_model",
    "load_pipeline",
    "open_store",
]
