"""Exceptions raised by vaeflow. Each is a ``ValueError`` so that callers can catch bad input broadly."""


class VaeflowError(ValueError):
    """Base class of vaeflow's errors."""


class CorruptStreamError(VaeflowError):
    """A bitstream that is truncated, damaged, of an unknown version, or not a vaeflow stream."""


class ModelError(VaeflowError):
    """An unknown model name, a missing or corrupt model file, or a model that does not match a stream."""


class PipelineError(VaeflowError):
    """A pipeline whose stages do not fit together, or an unknown preset or parameter."""


class ImageReadError(VaeflowError):
    """An image file that cannot be read or converted; the message says why."""


class StoreWriteError(VaeflowError):
    """A store could not be written (disk full, permissions); the finished batches are kept."""


class ClusterLostError(VaeflowError):
    """The Dask cluster went away during a job (scheduler gone, client closed); finished batches are kept."""
