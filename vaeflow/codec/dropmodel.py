"""Predicting the PSNR an image loses to quantization, from the model's calibration and the image.

The band gains (``vaeflow.codec.calibrate``) turn a quantizer's error in each channel and subband
into the squared error it adds to the decoded image, *on average over the calibration crops*:
``base = sum(gain[c, b] * error[c, b]^2) / (3 * pixels)``. A decoder's sensitivity depends on the
image, though (the default model's by a factor of 2, TAEF2's by 6), and the quantized decode's
error is not independent of the exact decode's. So the relative error added,

    rho = mse(image, decode(quantized)) / mse(image, decode(exact)) - 1,   drop = 10 log10(1 + rho),

is predicted as ``log rho = log(base / reference) + theta . [1, features]``, where the features
are cheap measures of the image's detail and of its latent (``image_features``), fitted by
least squares on the calibration photos (``fit``), with the spread of its residuals:

- **measured**: ``reference`` is the exact latent's decoded MSE, measured by decoding it (what
  a verified image has), and ``log reference`` is one more feature;
- **predicted**: ``reference`` is 1 and the features predict it as well: no decode at all.

Features are clamped to the range the calibration saw, so that an image unlike every calibration
photo (a flat one, a one-pixel one) is predicted as the nearest of them. A margin of ``z``
residual spreads below the limit keeps the share of images over it near the normal tail beyond ``z``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaeflow.foundations.errors import ModelError

FEATURES = ("gradient", "gradient_energy", "block_variance", "latent_energy")
RIDGE = 1e-3  # a touch of ridge regularisation: the fit has a few dozen photos
MIN_SAMPLES = 4
FEATURE_SAMPLES = 24  # below this many samples, only a constant correction is fitted


def image_features(image: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """log of ``FEATURES`` of an image (H, W, 3 uint8) and its normalised latent (C, h, w): of the
    green channel at half resolution (every other row and column: a few milliseconds a megapixel),
    the mean absolute and mean squared gradient and the variance within 4x4 blocks; the latent's
    mean square."""
    green = image[::2, ::2, 1].astype(np.float32)
    rows, cols = np.diff(green, axis=0), np.diff(green, axis=1)
    gradient = float(np.abs(rows).mean() + np.abs(cols).mean()) if rows.size and cols.size else 0.0
    energy = float(np.square(rows).mean() + np.square(cols).mean()) if rows.size and cols.size else 0.0
    h, w = green.shape[0] // 4 * 4, green.shape[1] // 4 * 4
    blocks = green[:h, :w].reshape(h // 4, 4, w // 4, 4)
    variance = float(blocks.var(axis=(1, 3)).mean()) if h and w else 0.0
    latent_energy = float(np.square(latent, dtype=np.float64).mean())
    return np.log(np.maximum([gradient, energy, variance, latent_energy], 1e-6))


@dataclass(frozen=True)
class DropModel:
    """A model's fitted correction of its band gains, per calibration key (see the module docstring)."""

    measured: tuple[float, ...]  # intercept, one weight per feature, then the weight of log reference MSE
    measured_sigma: float  # the residuals' standard deviation (natural log of rho)
    predicted: tuple[float, ...]  # intercept, one weight per feature
    predicted_sigma: float
    samples: int
    low: tuple[float, ...]  # each feature's smallest value in the calibration
    high: tuple[float, ...]  # ... and largest

    def __post_init__(self) -> None:
        n = len(FEATURES)
        values = (*self.measured, *self.predicted, self.measured_sigma, self.predicted_sigma, *self.low, *self.high)
        shapes = (len(self.measured), len(self.predicted), len(self.low), len(self.high))
        if shapes != (n + 2, n + 1, n, n) or not all(map(math.isfinite, values)):
            raise ModelError(
                f"a drop model holds {n + 2} measured and {n + 1} predicted finite weights and {n} feature ranges, "
                f"got {shapes}; run `vaeflow models calibrate` again"
            )
        if self.measured_sigma < 0 or self.predicted_sigma < 0 or self.samples < 1:
            raise ModelError("a drop model's spreads must be non-negative and its sample count positive")

    def log_factor(self, features: np.ndarray, reference_mse: float | None) -> float:
        """log(rho / base): the correction with the exact decode's MSE measured, or predicted (None)."""
        features = np.clip(features, self.low, self.high)
        if reference_mse is None:
            return float(self.predicted[0] + np.dot(self.predicted[1:], features))
        log_reference = math.log(max(reference_mse, 1e-6))
        weights = self.measured
        return float(weights[0] + np.dot(weights[1:-1], features) + weights[-1] * log_reference) - log_reference

    def sigma(self, measured: bool) -> float:
        return self.measured_sigma if measured else self.predicted_sigma

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "measured": [round(float(v), 6) for v in self.measured],
            "measured_sigma": round(float(self.measured_sigma), 6),
            "predicted": [round(float(v), 6) for v in self.predicted],
            "predicted_sigma": round(float(self.predicted_sigma), 6),
            "samples": self.samples,
            "low": [round(float(v), 6) for v in self.low],
            "high": [round(float(v), 6) for v in self.high],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DropModel:
        try:
            if list(data["features"]) != list(FEATURES):
                raise ModelError(f"drop model features {data['features']} are not this vaeflow's {list(FEATURES)}")
            return cls(
                tuple(float(v) for v in data["measured"]),
                float(data["measured_sigma"]),
                tuple(float(v) for v in data["predicted"]),
                float(data["predicted_sigma"]),
                int(data["samples"]),
                tuple(float(v) for v in data["low"]),
                tuple(float(v) for v in data["high"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"damaged drop model {data!r}: {exc}; run `vaeflow models calibrate` again") from exc


def relative_error(drop_db: float) -> float:
    """rho of a PSNR drop in dB."""
    return 10.0 ** (drop_db / 10.0) - 1.0


def drop_db(rho: float) -> float:
    """The PSNR drop in dB of a relative error rho."""
    return 10.0 * math.log10(1.0 + max(rho, 0.0))


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge-regularised least squares (the intercept unpenalised): weights, residual spread."""
    penalty = RIDGE * len(y) * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    weights = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    residual = y - x @ weights
    return weights, float(np.sqrt(np.mean(residual**2) * len(y) / max(1, len(y) - x.shape[1])))


def fit(features: Sequence[np.ndarray], reference_mse: Sequence[float], log_ratio: Sequence[float]) -> DropModel:
    """The drop model from calibration samples: each image's features, its exact decode's MSE, and
    ``log(rho / base)`` measured at one step. Below ``FEATURE_SAMPLES`` samples, a constant
    correction alone (the same for every image), with its spread."""
    n = len(log_ratio)
    if n < MIN_SAMPLES:
        raise ValueError(f"a drop model needs at least {MIN_SAMPLES} calibration samples, got {n}")
    f = np.asarray(features, np.float64).reshape(n, len(FEATURES))
    log_reference = np.log(np.maximum(np.asarray(reference_mse, np.float64), 1e-6))
    y = np.asarray(log_ratio, np.float64)
    ones = np.ones((n, 1))
    low, high = tuple(float(v) for v in f.min(axis=0)), tuple(float(v) for v in f.max(axis=0))
    if n < FEATURE_SAMPLES:
        weights, predicted_sigma = _least_squares(ones, y)
        constant, zeros = float(weights[0]), (0.0,) * len(FEATURES)
        return DropModel((constant, *zeros, 1.0), predicted_sigma, (constant, *zeros), predicted_sigma, n, low, high)
    measured, measured_sigma = _least_squares(np.hstack([ones, f, log_reference[:, None]]), y + log_reference)
    predicted, predicted_sigma = _least_squares(np.hstack([ones, f]), y)
    weights_m, weights_p = tuple(float(v) for v in measured), tuple(float(v) for v in predicted)
    return DropModel(weights_m, measured_sigma, weights_p, predicted_sigma, n, low, high)
