"""Image quality and rate metrics on HxWx3 uint8 images (scikit-image where it has them).

- ``psnr`` over all RGB samples, peak 255;
- ``ssim``: scikit-image's SSIM on the luma-free RGB image (Gaussian window, sigma 1.5,
  as in Wang et al. 2004), averaged over channels;
- ``ms_ssim``: 5-scale MS-SSIM (Wang, Simoncelli, Bovik 2003) with the standard weights,
  Gaussian-window SSIM per scale, 2x2 average pooling between scales, on RGB averaged
  over channels; images smaller than 161 pixels on a side use fewer scales, reweighted.
"""

from __future__ import annotations

import math

import numpy as np

# scikit-image's metrics and scipy.ndimage are imported where they are used: importing them takes about a
# second (scipy.stats), which every command and every DataLoader worker would otherwise pay at start.

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
_RADIUS = 5  # an 11-tap Gaussian window; statistics are kept where it fits ("valid")


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")


def mse(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import mean_squared_error  # imported when used: slow to import

    _check_pair(a, b)
    return float(mean_squared_error(a.astype(np.float64), b.astype(np.float64)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio  # imported when used: slow to import

    _check_pair(a, b)
    if np.array_equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=255))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity  # imported when used: slow to import

    _check_pair(a, b)
    return float(
        structural_similarity(
            a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )


def _ssim_terms(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term at one scale (11-tap Gaussian, sigma 1.5)."""
    from scipy.ndimage import gaussian_filter  # imported when used: slow to import

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=(1.5, 1.5, 0), truncate=3.5, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + _C2) / (var_a + var_b + _C2)
    luminance = (2 * mu_a * mu_b + _C1) / (mu_a**2 + mu_b**2 + _C1)
    valid = np.s_[_RADIUS:-_RADIUS, _RADIUS:-_RADIUS] if min(a.shape[:2]) > 2 * _RADIUS else np.s_[:, :]
    return float((luminance * cs)[valid].mean()), float(cs[valid].mean())


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    _check_pair(a, b)
    x, y = a.astype(np.float64), b.astype(np.float64)
    scales = max(1, min(5, 1 + int(math.log2(max(1, min(a.shape[:2]) / 11)))))
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    value = 1.0
    for level in range(scales):
        s, cs = _ssim_terms(x, y)
        if level == scales - 1:
            value *= max(s, 0.0) ** weights[level]
        else:
            value *= max(cs, 0.0) ** weights[level]
            h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
            x = x[:h:2, :w:2] / 4 + x[1:h:2, :w:2] / 4 + x[:h:2, 1:w:2] / 4 + x[1:h:2, 1:w:2] / 4
            y = y[:h:2, :w:2] / 4 + y[1:h:2, :w:2] / 4 + y[:h:2, 1:w:2] / 4 + y[1:h:2, 1:w:2] / 4
    return float(value)


def bpp(n_bytes: int, shape: tuple[int, ...]) -> float:
    """Bits per pixel of ``n_bytes`` for an image of ``shape`` (H, W, ...)."""
    return 8.0 * n_bytes / (shape[0] * shape[1])
