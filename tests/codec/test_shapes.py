"""Batch shapes (bounded padding, a function of an image's own size) and aspect-ratio buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vaeflow
from vaeflow.codec.shapes import GRID_FINE, batch_shape, buckets, fit_bucket
from vaeflow.errors import PipelineError


@pytest.mark.parametrize("stride", [8, 16])
def test_batch_shapes_pad_at_most_an_eighth_beyond_the_stride(stride: int) -> None:
    worst = 0.0
    for h in range(1, 4000, 7):
        for w in (1, 9, 100, 333, 1000, 1999, 3333):
            bh, bw = batch_shape(h, w, stride)
            own = (-(-h // stride) * stride) * (-(-w // stride) * stride)
            assert bh % stride == 0 and bw % stride == 0 and bh >= h and bw >= w
            worst = max(worst, bh * bw / own)
    assert worst <= 1.125, worst


def test_batch_shapes_are_few_and_keep_multiples_of_64() -> None:
    sides = {batch_shape(h, h, 8)[0] for h in range(400, 1601)}
    assert len(sides) <= 36  # 1,201 sizes, a few dozen batch sides
    assert all(batch_shape(s, s, 8) == (s, s) for s in range(64, 4096, 64))
    assert all(batch_shape(s, s, 8) == (s, s) for s in range(8, GRID_FINE + 1, 8))


def test_an_image_codes_the_same_alone_or_padded_in_a_batch_of_its_shape(photos: list[np.ndarray]) -> None:
    codec = vaeflow.resolve_codec()
    image = photos[0][:201, :299]
    shape = codec.batch_shape(201, 299)
    padded = np.pad(image, ((0, shape[0] - 201), (0, shape[1] - 299), (0, 0)), mode="edge")
    other = np.pad(photos[1][: shape[0] - 3, : shape[1] - 5], ((0, 3), (0, 5), (0, 0)), mode="edge")
    latents = codec.encode_padded(np.stack([padded, other]))
    np.testing.assert_array_equal(codec.crop_latents(latents[:1], (201, 299)), codec.encode_latents(image[None]))


def test_buckets_follow_the_documented_list() -> None:
    found = buckets(1024)
    assert found[0].width == 512 and found[-1].height == 512
    for b in found:
        assert b.height % 64 == 0 and b.width % 64 == 0
        assert 1 / 4 <= b.aspect <= 4
        assert 0.85 * 1024**2 <= b.height * b.width <= 1024**2
    assert any((b.height, b.width) == (1024, 1024) for b in found)
    assert {(b.width, b.height) for b in found} == {(b.height, b.width) for b in found}  # portrait and landscape
    with pytest.raises(PipelineError, match="multiple of 64"):
        buckets(1000)


def test_an_image_goes_to_the_bucket_of_the_nearest_aspect_ratio_covered_then_centre_cropped() -> None:
    fit = fit_bucket(768, 1152, 1024)
    best = min(buckets(1024), key=lambda b: abs(math.log(b.aspect) - math.log(1152 / 768)))
    assert fit.target == (best.height, best.width)
    assert fit.resized[0] >= fit.target[0] and fit.resized[1] >= fit.target[1]
    assert min(fit.resized[0] - fit.target[0], fit.resized[1] - fit.target[1]) <= 1  # covers, no more
    top, left = fit.crop_top_left
    assert top == (fit.resized[0] - fit.target[0]) // 2 and left == (fit.resized[1] - fit.target[1]) // 2
