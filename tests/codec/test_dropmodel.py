"""The drop model (predicting an image's PSNR drop without decoding), margins learned from verified
images, and the summary a store keeps of how its drops were kept."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaeflow.codec.dropmodel import FEATURE_SAMPLES, FEATURES, DropModel, drop_db, fit, image_features, relative_error
from vaeflow.codec.ratecontrol import PREDICT_SPREADS, DropSummary, learned_margin
from vaeflow.foundations.errors import ModelError


def test_the_fit_recovers_a_known_correction_and_its_spread() -> None:
    rng = np.random.default_rng(1)
    n = 200
    features = rng.normal(0, 1, (n, len(FEATURES)))
    reference = np.exp(rng.normal(4, 0.8, n))
    truth_measured = np.array([-0.5, 0.2, -0.1, 0.3, 0.05, 0.4])  # intercept, features, log reference
    noise = rng.normal(0, 0.1, n)
    log_kc = truth_measured[0] + features @ truth_measured[1:-1] + truth_measured[-1] * np.log(reference) + noise
    model = fit(list(features), list(reference), list(log_kc - np.log(reference)))
    np.testing.assert_allclose(model.measured, truth_measured, atol=0.03)
    assert model.measured_sigma == pytest.approx(0.1, rel=0.15) and model.samples == n
    # without the reference, the features explain less of it: a wider spread
    assert model.predicted_sigma > model.measured_sigma
    assert model.log_factor(np.full(len(FEATURES), 99.0), None) == model.log_factor(
        np.asarray(model.high), None
    )  # clamped to the calibration's range
    image = features[0]
    expected = truth_measured[0] + image @ truth_measured[1:-1] + (truth_measured[-1] - 1) * math.log(reference[0])
    assert model.log_factor(image, float(reference[0])) == pytest.approx(expected, abs=0.05)


def test_few_samples_give_a_constant_correction() -> None:
    rng = np.random.default_rng(2)
    n = FEATURE_SAMPLES - 1
    ratios = list(rng.normal(-1.0, 0.2, n))
    model = fit(list(rng.normal(0, 1, (n, len(FEATURES)))), list(np.exp(rng.normal(4, 1, n))), ratios)
    assert model.predicted[1:] == (0.0,) * len(FEATURES) and model.measured[-1] == 1.0
    assert model.log_factor(np.ones(len(FEATURES)), 50.0) == pytest.approx(np.mean(ratios))
    assert model.log_factor(np.ones(len(FEATURES)), None) == pytest.approx(np.mean(ratios))
    with pytest.raises(ValueError, match="at least 4 calibration samples"):
        fit([np.zeros(len(FEATURES))] * 3, [1.0] * 3, [0.0] * 3)


def test_a_drop_model_round_trips_and_damage_is_refused() -> None:
    model = DropModel(
        (0.1, 0.2, 0.3, 0.4, 0.5, 0.6), 0.11, (0.1, 0.2, 0.3, 0.4, 0.5), 0.22, 60, (-1.0,) * 4, (1.0,) * 4
    )
    assert DropModel.from_dict(model.to_dict()) == model
    with pytest.raises(ModelError, match="not this vaeflow's"):
        DropModel.from_dict({**model.to_dict(), "features": ["gradient"]})
    with pytest.raises(ModelError, match="damaged drop model"):
        DropModel.from_dict({k: v for k, v in model.to_dict().items() if k != "samples"})
    with pytest.raises(ModelError, match="finite weights"):
        DropModel((0.1,) * 6, math.nan, (0.1,) * 5, 0.2, 60, (0.0,) * 4, (1.0,) * 4)


def test_image_features_are_finite_for_any_image() -> None:
    for image in (np.zeros((1, 1, 3), np.uint8), np.full((7, 5, 3), 9, np.uint8), np.arange(96 * 64 * 3)):
        pixels = np.asarray(image, np.uint8).reshape(image.shape if image.ndim == 3 else (96, 64, 3))
        found = image_features(pixels, np.zeros((4, 2, 2), np.float32))
        assert found.shape == (len(FEATURES),) and np.isfinite(found).all()


def test_a_learned_margin_shrinks_toward_what_the_sample_shows_in_any_order() -> None:
    model = DropModel((0.0,) * 6, 0.1, (0.0,) * 5, 0.3, 60, (0.0,) * 4, (1.0,) * 4)
    assert learned_margin(model, []) == pytest.approx(math.exp(-PREDICT_SPREADS * 0.3))
    exact = [(0.05 + 0.001 * i, 0.05 + 0.001 * i) for i in range(40)]  # predictions that were right
    assert learned_margin(model, exact) > 0.8
    low = [(p, 2 * p) for p, _ in exact]  # predictions half the measured drop: aim lower
    assert learned_margin(model, low) < 0.55 * learned_margin(model, exact)  # about half, the prior aside
    assert learned_margin(model, low) == learned_margin(model, list(reversed(low)))


def test_a_drop_summary_counts_merges_and_reads_back() -> None:
    first = DropSummary.of(0.1, [(0.05, 0.04), (0.06, None), (0.08, 0.1)], 0.7)
    assert (first.verified, first.predicted, first.max_drop) == (2, 1, 0.1)
    assert first.error_mean == pytest.approx((0.25 + 0.2) / 2) and first.error_max == pytest.approx(0.25)
    both = first.merged(DropSummary.of(0.1, [(0.02, None)], 0.5))
    assert (both.verified, both.predicted, both.margin) == (2, 2, 0.5)
    assert DropSummary.from_dict(both.to_dict()) == both and DropSummary.from_dict({"limit": 0.1}) is None
    assert "2 of 4 images decoded" in str(both)
    assert drop_db(relative_error(0.1)) == pytest.approx(0.1)
