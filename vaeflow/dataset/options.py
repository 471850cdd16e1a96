"""How a dataset job runs: what it does with its store and images, and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from vaeflow.foundations.imageio import DEFAULT_MAX_PIXELS
from vaeflow.models import RuntimeOptions


@dataclass(frozen=True)
class JobOptions:
    """What a job does with its store and its images (what it produces is set by the codec)."""

    batch_size: int = 8
    buckets: int | None = None  # resize and crop to aspect-ratio buckets of about this side (vaeflow.codec.shapes)
    fuse_stages: bool = True  # a batch's stages in one task, in memory; False: a task per stage through the work store
    overwrite: bool = False
    add: bool = False
    retry_failed: bool = False  # code again the images a finished store records as failed
    keep_intermediates: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)


@dataclass(frozen=True)
class ClusterOptions:
    """Where a job runs: a new local cluster (default), ``"sync"`` in-process, or a scheduler's address."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    performance_report: str | None = None  # Dask's HTML performance report of the run
