import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages import RateTarget, quantize, wavelet
from vaeflow.stages.quantize import Quantize, quality_to_step, step_to_quality
from vaeflow.stages.wavelet import Wavelet


def _steps(shape: tuple[int, ...], step: float, levels: int = 3) -> tuple[np.ndarray, tuple]:
    bands = wavelet.subbands(shape[-2], shape[-1], levels)
    gains = wavelet.synthesis_gains("cdf97", levels)
    return quantize.band_steps(bands, gains, step, np.ones((shape[1], 1))), bands


def test_quality_mapping_is_documented_and_monotonic() -> None:
    assert quality_to_step(1) == 5.0
    assert quality_to_step(22) == pytest.approx(1.25)
    steps = [quality_to_step(q) for q in range(1, 101)]
    assert all(a > b for a, b in itertools.pairwise(steps))
    assert step_to_quality(quality_to_step(37)) == pytest.approx(37)
    assert Quantize(step=0.3).base_step == 0.3 and Quantize().quality == 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quality": 0},
        {"quality": 101},
        {"quality": 50.5},
        {"quality": 50, "step": 0.3},
        {"step": -1.0, "quality": None},
        {"rounding": 0.7},
        {"quality": None, "step": True},
        {"quality": True},
        {"allocation": "water"},
        {"rdo": 1},
    ],
)
def test_bad_parameters_name_the_range(kwargs: dict) -> None:
    with pytest.raises(PipelineError):
        Quantize(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"bpp": 0.2, "psnr": 30.0},
        {"max_psnr_drop": 0.1},  # only beside a latent error bound
        {"max_latent_error": 0.5, "max_psnr_drop": -1.0},
        {"max_latent_error": "0.5"},
        {"bpp": float("nan")},
    ],
)
def test_bad_rate_targets_are_refused(kwargs: dict) -> None:
    with pytest.raises(PipelineError):
        RateTarget(**kwargs)


def test_rate_targets_name_their_kind() -> None:
    assert (RateTarget(bpp=0.2).kind, RateTarget(bpp=0.2).value) == ("bpp", 0.2)
    latent = RateTarget(max_latent_error=0.5, max_psnr_drop=0.1)
    assert latent.kind == "latent" and latent.searches_with_image and not RateTarget(bpp=1).searches_with_image
    assert RateTarget.from_dict(latent.to_dict()) == latent


@settings(max_examples=50, deadline=None)
@given(step=st.floats(0.01, 10), rounding=st.sampled_from([0.2, 0.375, 0.5]), seed=st.integers(0, 2**31))
def test_error_is_bounded_by_one_step(step: float, rounding: float, seed: int) -> None:
    x = (np.random.default_rng(seed).laplace(0, 1.0, (2, 4, 16, 24))).astype(np.float32)
    steps, bands = _steps(x.shape, step)
    q = quantize.quantize(x, steps, bands, rounding)
    y = quantize.dequantize(q, steps, bands, rounding)
    per_coeff_step = np.zeros_like(x)
    for j, b in enumerate(bands):
        per_coeff_step[:, :, b.rows, b.cols] = steps[:, j][None, :, None, None]
    assert (np.abs(y - x) <= per_coeff_step * 1.0001).all()
    assert q.dtype == np.int32


def test_deadzone_widens_the_zero_bin() -> None:
    """A detail coefficient of 0.55 steps rounds to 1 plainly, but to 0 with rounding 0.375."""
    x = np.zeros((1, 1, 16, 16), np.float32)
    steps, bands = _steps(x.shape, 1.0, levels=1)
    hh = next(j for j, b in enumerate(bands) if b.name == "HH1")
    x[0, 0, 8:, 8:] = 0.55 * steps[0, hh]
    assert quantize.quantize(x, steps, bands, 0.375).max() == 0
    assert quantize.quantize(x, steps, bands, 0.5).max() == 1


def test_centroid_reconstruction_beats_midpoint(real_latents: np.ndarray) -> None:
    coeffs = Wavelet("cdf97", 3).forward(real_latents)
    steps, bands = _steps(coeffs.shape, 0.8)
    q = quantize.quantize(coeffs, steps, bands, 0.375)
    centroid = quantize.dequantize(q, steps, bands, 0.375)
    midpoint = np.zeros_like(coeffs)
    for j, b in enumerate(bands):
        s = steps[:, j][None, :, None, None]
        r = quantize.band_rounding(b, 0.375)
        qb = q[:, :, b.rows, b.cols]
        midpoint[:, :, b.rows, b.cols] = np.sign(qb) * np.where(qb != 0, np.abs(qb) - r + 0.5, 0) * s
    err_centroid = ((centroid - coeffs) ** 2).mean()
    err_midpoint = ((midpoint - coeffs) ** 2).mean()
    assert err_centroid < 0.97 * err_midpoint


def test_steps_follow_the_allocation_table() -> None:
    """Decoder allocation: a band whose weight is 4 units (one octave) higher gets a step sqrt(2) finer."""
    wavelet_ = Wavelet("cdf97", 1)
    bands = wavelet_.bands((1, 2, 16, 16))
    table = ((0, 0, 0, 0), (4, 0, 0, 0))
    steps = Quantize(step=1.0, allocation="decoder").steps(bands, 2, wavelet_, table)
    assert steps[1, 0] == pytest.approx(steps[0, 0] / np.sqrt(2))
    assert steps[1, 1] == pytest.approx(steps[0, 1])
    with pytest.raises(PipelineError, match="allocation table"):
        Quantize(allocation="decoder").steps(bands, 2, wavelet_, None)


def test_non_finite_coefficients_are_refused() -> None:
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    steps, bands = _steps(x.shape, 1.0, levels=1)
    with pytest.raises(ValueError, match="NaN"):
        quantize.quantize(x, steps, bands, 0.375)


def reference_dequantize(symbols: np.ndarray, steps: np.ndarray, bands: tuple, rounding: float) -> np.ndarray:
    """The loop over images, channels and bands that decoded (and wrote) every format-1 stream."""
    out = np.zeros(symbols.shape, np.float32)
    for n in range(symbols.shape[0]):
        for c in range(symbols.shape[1]):
            for j, band in enumerate(bands):
                step = steps[c, j]
                if not np.isfinite(step):
                    continue
                q = symbols[n, c, band.rows, band.cols]
                mag = np.abs(q).astype(np.float64)
                band_round = quantize.band_rounding(band, rounding)
                nonzero = mag[mag > 0]
                offset = 0.5
                if band_round != 0.5 and nonzero.size:
                    m = float(nonzero.mean()) - 1.0
                    if m <= 50.0:
                        m = max(m, 1e-4)
                        offset = 1.0 / math.log1p(1.0 / m) - m
                value = np.where(mag > 0, (mag - band_round + offset) * step, 0.0)
                out[n, c, band.rows, band.cols] = np.sign(q) * value
    return out


@settings(max_examples=60, deadline=None)
@given(
    symbols=hnp.arrays(
        np.int32,
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),
        elements=st.one_of(st.integers(-3, 3), st.integers(-(2**31), 2**31 - 1)),
    ),
    levels=st.integers(0, 3),
    base=st.floats(1e-3, 10.0),
    rounding=st.sampled_from([0.375, 0.5, 0.25]),
)
def test_the_vectorized_dequantizer_is_bit_identical_to_the_loop_that_wrote_format_1(
    symbols: np.ndarray, levels: int, base: float, rounding: float
) -> None:
    bands = wavelet.subbands(symbols.shape[2], symbols.shape[3], levels)
    weights = np.ones((symbols.shape[1], len(bands)))
    weights[0, -1] = 0.0  # a dropped band: infinite step
    steps = quantize.band_steps(bands, {b.name: 1.0 + b.level for b in bands}, base, weights)
    reference = reference_dequantize(symbols, steps, bands, rounding)
    fast = quantize.dequantize(symbols, steps, bands, rounding)
    np.testing.assert_array_equal(fast.view(np.int32), reference.view(np.int32))


def test_the_vectorized_dequantizer_matches_the_loop_on_real_symbols(photos: list) -> None:
    from vaeflow.codec.api import resolve_codec

    for quality in (30, 50, 70):
        codec = resolve_codec(None, quality, "default")
        for image in photos[:3]:
            batch = codec.run(image[None], until="quantize")
            bands = codec.bands(batch.shape)
            steps = codec.steps(batch.shape)
            reference = reference_dequantize(batch, steps, bands, codec.quantize.rounding)
            fast = quantize.dequantize(batch, steps, bands, codec.quantize.rounding)
            assert np.array_equal(fast.view(np.int32), reference.view(np.int32))
