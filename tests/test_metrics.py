import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from vaeflow.foundations import metrics


def test_psnr_known_value() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 48  # MSE = 48^2 / 48 = 48
    assert metrics.mse(a, b) == pytest.approx(48.0)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 48))
    assert metrics.psnr(a, a) == math.inf


def test_bpp() -> None:
    assert metrics.bpp(1000, (512, 768, 3)) == pytest.approx(8000 / (512 * 768))


def test_ssim_matches_scikit_image(photos: list[np.ndarray]) -> None:
    a = photos[0]
    b = np.clip(a.astype(int) + np.random.default_rng(0).integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    ours = metrics.ssim(a, b)
    reference = structural_similarity(
        a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ours == pytest.approx(reference)
    assert metrics._ssim_terms(a.astype(float), b.astype(float))[0] == pytest.approx(reference, rel=1e-6)


def test_ms_ssim_of_flat_images_is_the_luminance_term() -> None:
    """Hand-computed case: for constant images cs = 1 at every scale, so MS-SSIM = l ** w5."""
    a = np.full((256, 256, 3), 100, np.uint8)
    b = np.full((256, 256, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    luminance = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
    w5 = 0.1333 / sum(metrics.MS_SSIM_WEIGHTS)
    assert metrics.ms_ssim(a, b) == pytest.approx(luminance**w5, rel=1e-9)
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0)


def test_ms_ssim_falls_with_distortion(photos: list[np.ndarray]) -> None:
    a = photos[0]
    rng = np.random.default_rng(0)
    values = []
    for noise in (2, 8, 32):
        b = np.clip(a.astype(int) + rng.normal(0, noise, a.shape), 0, 255).astype(np.uint8)
        values.append(metrics.ms_ssim(a, b))
    assert 1 > values[0] > values[1] > values[2] > 0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3, 3), np.uint8))
