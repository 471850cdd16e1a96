"""How a dataset job runs: what it does with its store and images, and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaeflow.foundations.imageio import DEFAULT_MAX_PIXELS
from vaeflow.models import RuntimeOptions


@dataclass(frozen=True)
class SourceOptions:
    """How to read the source: its format (None: found from its files) and, for parquet, the columns."""

    format: str | None = None  # "folder", "webdataset" or "parquet"
    image_column: str | None = None  # default: the first of image, jpg, png, webp, img
    caption_column: str | None = None  # default: caption, else text
    storage_options: dict[str, Any] | None = None  # for a source at a URL: its fsspec options
    pattern: str | None = None  # only the files matching this glob, relative to the source (``split_glob``)


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
    source: SourceOptions = field(default_factory=SourceOptions)


@dataclass(frozen=True)
class ClusterOptions:
    """Where a job runs: a new local cluster (default), ``"sync"`` in-process, or a scheduler's address."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    performance_report: str | None = None  # Dask's HTML performance report of the run
