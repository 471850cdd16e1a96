"""Aspect-ratio buckets for training data (and where the shape an image is encoded at is decided).

**Padded shapes** (``vaeflow.models.padded_shape``). An image is encoded at its own size,
edge-padded only to a multiple of the model's downsampling (times its latent patch, for a model
that folds patches into channels): exactly as ``vaeflow.encode_latent`` pads it, so the latent
a stream holds is the model's own latent of the image. A CNN encoder's output near the border
depends on the padding it sees (and, with normalisation layers, everywhere), so images share a
VAE run only with others of the same padded shape: batching never changes a value.

**Aspect-ratio buckets** (``--buckets 1024``): sizes of about ``1024 x 1024`` pixels in area,
sides multiples of 64, aspect ratios from 1:4 to 4:1. An image is resized (Lanczos) to cover
the bucket of the nearest aspect ratio and centre-cropped to it; its original size and crop
offsets are recorded (the SDXL micro-conditioning inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from vaeflow.foundations.errors import PipelineError

BUCKET_UNIT = 64
MAX_ASPECT = 4.0


@dataclass(frozen=True)
class Bucket:
    height: int
    width: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


@lru_cache(maxsize=16)
def buckets(side: int) -> tuple[Bucket, ...]:
    """The buckets of about ``side x side`` pixels: sides multiples of 64, aspect 1:4 to 4:1."""
    if side < BUCKET_UNIT or side % BUCKET_UNIT:
        raise PipelineError(f"bucket size must be a multiple of {BUCKET_UNIT} of at least {BUCKET_UNIT}, got {side}")
    area = side * side
    out = set()
    for width in range(BUCKET_UNIT, int(side * 2) + BUCKET_UNIT, BUCKET_UNIT):
        height = area // width // BUCKET_UNIT * BUCKET_UNIT
        if height >= BUCKET_UNIT and max(width / height, height / width) <= MAX_ASPECT:
            out.add(Bucket(height, width))
            out.add(Bucket(width, height))
    return tuple(sorted(out, key=lambda b: (b.aspect, b.height)))


@dataclass(frozen=True)
class Fit:
    """How an image of ``source`` size is brought to its bucket: resized, then centre-cropped."""

    source: tuple[int, int]  # (height, width) of the image as read
    resized: tuple[int, int]  # after resizing to cover the bucket
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    target: tuple[int, int]  # the bucket (height, width)


def fit_bucket(height: int, width: int, side: int) -> Fit:
    """The bucket of the nearest aspect ratio (in log scale), and the resize and crop that reach it."""
    aspect = math.log(width / height)
    bucket = min(buckets(side), key=lambda b: (abs(math.log(b.aspect) - aspect), b.height))
    scale = max(bucket.height / height, bucket.width / width)
    resized = (max(bucket.height, round(height * scale)), max(bucket.width, round(width * scale)))
    top, left = (resized[0] - bucket.height) // 2, (resized[1] - bucket.width) // 2
    return Fit((height, width), resized, (top, left), (bucket.height, bucket.width))
