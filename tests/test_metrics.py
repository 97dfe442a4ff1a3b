"""Unit tests of trainer.metrics: ECE, temperature scaling, the ISIC metrics."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.conftest import require

if importlib.util.find_spec("sklearn") is None:  # the training extra; CI installs it (.[dev])
    require(False, "scikit-learn not installed (pip install -e '.[train,cpu]')")
from trainer.metrics import (  # noqa: E402
    calibrated_probabilities,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
)

CODES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def test_ece_is_zero_when_confidence_matches_accuracy():
    # 10 predictions at confidence 0.8, 8 correct -> perfectly calibrated bin
    probs = np.full((10, 2), 0.2)
    probs[:, 0] = 0.8
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(y, probs) == pytest.approx(0.0, abs=1e-12)
    # all wrong at 0.8 confidence -> ECE 0.8
    assert expected_calibration_error(np.ones(10, int), probs) == pytest.approx(0.8)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    n, k, true_t = 4000, 7, 3.0
    y = rng.integers(0, k, n)
    true_logits = rng.normal(0, 1, (n, k))
    true_logits[np.arange(n), y] += 1.5
    # sample labels from the true (calibrated) distribution, then make the model overconfident
    p = calibrated_probabilities(true_logits, 1.0)
    y = np.array([rng.choice(k, p=row) for row in p])
    t = fit_temperature(true_logits * true_t, y)
    assert t == pytest.approx(true_t, rel=0.1)
    before = expected_calibration_error(y, calibrated_probabilities(true_logits * true_t, 1.0))
    after = expected_calibration_error(y, calibrated_probabilities(true_logits * true_t, t))
    assert after < before / 2


def test_classification_metrics_on_known_confusion():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 5, 5, 4])
    pred = np.array([0, 1, 2, 3, 5, 5, 6, 5, 5, 4])  # one melanoma missed as nv
    probs = np.full((10, 7), 0.01)
    probs[np.arange(10), pred] = 0.94
    m = classification_metrics(y, probs, CODES)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["per_class"]["mel"]["recall"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx((6 + 0.5) / 7)
    assert m["melanoma_sensitivity"] == pytest.approx(0.5)
    assert m["melanoma_specificity"] == pytest.approx(1.0)
    assert m["confusion_matrix"][4][5] == 1
