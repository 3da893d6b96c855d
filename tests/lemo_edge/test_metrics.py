"""Metrics against sklearn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from lemo_edge import metrics
from lemo_edge.errors import InputError


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 500)
        s = np.round(rng.normal(size=500) + y, 1)  # many ties
        assert metrics.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_pixel_auroc_flattens_maps():
    rng = np.random.default_rng(1)
    masks = (rng.random((3, 8, 8)) > 0.8).astype(np.uint8)
    maps = rng.random((3, 8, 8)) + masks
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_f1_max_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)
    assert metrics.f1_max(s, y) == pytest.approx(f1.max())
    assert metrics.f1_max([0.1, 0.9, 0.8, 0.2], [0, 1, 1, 0]) == 1.0


def test_rates_at_threshold():
    out = metrics.rates_at_threshold([0.1, 0.6, 0.7, 0.2], [0, 0, 1, 1], threshold=0.5)
    assert out == {"false_alarm_rate": 0.5, "detection_rate": 0.5}


def test_aupro_perfect_and_hand_computed():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    maps = masks.astype(np.float32)
    assert metrics.aupro(maps, masks) == pytest.approx(1.0, abs=0.01)
    # two regions, one fully detected and one never: PRO = 0.5 at every FPR
    masks = np.zeros((1, 6, 6), np.uint8)
    masks[0, 0, 0] = masks[0, 5, 5] = 1
    maps = np.random.default_rng(0).random((1, 6, 6)).astype(np.float32)  # distinct normal scores
    maps[0, 0, 0] = 10.0
    maps[0, 5, 5] = -10.0
    assert metrics.aupro(maps, masks) == pytest.approx(0.5, abs=0.02)


def test_errors_say_what_was_wrong():
    with pytest.raises(InputError, match="roc_curve: expected scores and labels of the same size, got 3 and 2"):
        metrics.auroc([1, 2, 3], [0, 1])
    with pytest.raises(InputError, match="expected both normal .* got only 1"):
        metrics.image_auroc([1, 2], [1, 1])
    with pytest.raises(InputError, match="expected maps and masks of one shape"):
        metrics.pixel_auroc(np.zeros((1, 2, 2)), np.zeros((1, 3, 3)))
    with pytest.raises(InputError, match="expected finite scores, got 1 non-finite"):
        metrics.auroc([np.inf, 1.0], [0, 1])
