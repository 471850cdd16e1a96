"""The shape an image is encoded at, and aspect-ratio buckets for training data.

**Batch shapes.** A CNN encoder's output near an image's border depends on the padding it
sees, so an image is always encoded padded (edge pixels) to its *batch shape*, a function of
its own size alone: images of nearby sizes share one, so a dataset job can batch them through
the VAE, and an image's bytes never depend on which batch it fell into (or on whether it was
coded alone by ``compress``). Each side is first rounded up to a multiple of the model's
downsampling ``s`` (that much padding is needed anyway), then to the next value of a grid in
which consecutive sides differ by at most 6%: every multiple of ``s`` up to ``GRID_FINE``
samples, above it a geometric grid that also holds every multiple of 64. So at most
``1.06^2 - 1`` (12.4%) extra pixels are coded beyond the stride's own padding. The latent is
cropped back to the image's own ``ceil(h/s) x ceil(w/s)`` before anything else.

**Aspect-ratio buckets** (``--buckets 1024``): sizes of about ``1024 x 1024`` pixels in area,
sides multiples of 64, aspect ratios from 1:4 to 4:1. An image is resized (Lanczos) to cover
the bucket of the nearest aspect ratio and centre-cropped to it; its original size and crop
offsets are recorded (the SDXL micro-conditioning inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from vaeflow.errors import PipelineError

SIDE_RATIO = 1.06  # the largest step between consecutive batch sides
GRID_FINE = 128  # below this many samples every multiple of the stride is a batch side
BUCKET_UNIT = 64
MAX_ASPECT = 4.0


@lru_cache(maxsize=8)
def _grid(stride: int, limit: int) -> tuple[int, ...]:
    sides = list(range(stride, min(GRID_FINE, limit) + stride, stride))
    while sides[-1] < limit:
        step = max(stride, math.floor(sides[-1] * SIDE_RATIO / stride) * stride - sides[-1])
        nxt = sides[-1] + step
        aligned = (sides[-1] // BUCKET_UNIT + 1) * BUCKET_UNIT  # keep every multiple of 64 a batch side
        sides.append(min(nxt, aligned) if aligned % stride == 0 else nxt)
    return tuple(sides)


def batch_side(length: int, stride: int) -> int:
    """The side an image side of ``length`` pixels is encoded at."""
    need = -(-length // stride) * stride
    grid = _grid(stride, max(need, GRID_FINE) * 2)
    return next(side for side in grid if side >= need)


def batch_shape(height: int, width: int, stride: int) -> tuple[int, int]:
    return batch_side(height, stride), batch_side(width, stride)


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
