"""Padded shapes (an image's own, to the model's stride: its latent is the model's own) and aspect-ratio buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vaeflow
from vaeflow.codec.shapes import buckets, fit_bucket
from vaeflow.foundations.errors import PipelineError
from vaeflow.models import padded_shape


@pytest.mark.parametrize("unit", [8, 16])
def test_padded_shapes_pad_only_to_the_stride(unit: int) -> None:
    for h in range(1, 400, 7):
        for w in (1, 9, 100, 333):
            ph, pw = padded_shape(h, w, unit)
            assert ph % unit == 0 and pw % unit == 0 and h <= ph < h + unit and w <= pw < w + unit


@pytest.mark.parametrize("size", [(201, 299), (64, 64), (37, 53), (1, 1)])
def test_a_stored_latent_is_the_models_own_alone_or_in_a_batch_of_its_shape(
    photos: list[np.ndarray], size: tuple[int, int]
) -> None:
    """Every value: the codec encodes an image exactly as ``encode_latent`` does, batched or not."""
    codec = vaeflow.resolve_codec()
    h, w = size
    image, other = photos[0][:h, :w], photos[1][5 : 5 + h, 7 : 7 + w]
    exact = vaeflow.encode_latent(image)
    np.testing.assert_array_equal(codec.encode_latents(image[None])[0], exact)
    np.testing.assert_array_equal(codec.encode_latents(np.stack([other, image]))[1], exact)
    assert exact.shape == codec.latent_shape(h, w)


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
