"""Metrics against sklearn (random data with ties) and hand-computed cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from lemo_edge import metrics
from lemo_edge.errors import InputError


def _tied_scores(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    return np.round(rng.normal(size=n) + y, 1), y  # rounding leaves many ties, also across classes


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 7, 500, 5000):
        s, y = _tied_scores(rng, n)
        y[:2] = [0, 1]
        expected = roc_auc_score(y, s)
        assert metrics.auroc(s, y) == pytest.approx(expected, abs=1e-12)
        assert metrics.image_auroc(s, y.astype(bool)) == pytest.approx(expected, abs=1e-12)
    constant = np.zeros(10)
    labels = np.r_[np.zeros(5), np.ones(5)]
    assert metrics.auroc(constant, labels) == 0.5 == roc_auc_score(labels, constant)


def test_roc_curve_matches_sklearn_without_dropped_points():
    rng = np.random.default_rng(1)
    s, y = _tied_scores(rng, 300)
    fpr, tpr, thresholds = metrics.roc_curve(s, y)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.isinf(thresholds[0]) and np.array_equal(thresholds[1:], sk_thresholds[1:])


def test_pixel_auroc_matches_sklearn_on_flattened_maps():
    rng = np.random.default_rng(2)
    masks = (rng.random((3, 16, 16)) > 0.8).astype(np.uint8)
    maps = np.round(rng.random((3, 16, 16)) + masks, 2).astype(np.float32)  # float32, with ties
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert metrics.pixel_auroc(maps.astype(np.float64), masks.astype(bool)) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_chunks_large_positive_sets(monkeypatch):
    rng = np.random.default_rng(3)
    masks = (rng.random((2, 32, 32)) > 0.5).astype(np.uint8)
    maps = np.round(rng.random((2, 32, 32)) + 0.3 * masks, 2)
    monkeypatch.setattr(metrics, "_CHUNK", 100)  # many chunks; the answer must not change
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_f1_max_matches_sklearn_and_a_hand_computed_case():
    rng = np.random.default_rng(4)
    for ties in (False, True):
        y = rng.integers(0, 2, 300)
        s = rng.normal(size=300) + y
        s = np.round(s, 1) if ties else s
        p, r, _ = precision_recall_curve(y, s)
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)
        assert metrics.f1_max(s, y) == pytest.approx(f1.max(), abs=1e-12)
    # thresholds 0.9: P=1 R=1/2 F1=2/3; 0.8: 1/2; 0.7: P=2/3 R=1 F1=0.8; 0.6: 2/3
    assert metrics.f1_max([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.8)
    assert metrics.f1_max([0.1, 0.9, 0.8, 0.2], [0, 1, 1, 0]) == 1.0


def test_rates_at_threshold_use_strictly_above():
    out = metrics.rates_at_threshold([0.1, 0.6, 0.7, 0.2], [0, 0, 1, 1], threshold=0.5)
    assert out == {"false_alarm_rate": 0.5, "detection_rate": 0.5}
    out = metrics.rates_at_threshold([0.5, 0.4, 0.5, 0.9], [0, 0, 1, 1], threshold=0.5)
    assert out == {"false_alarm_rate": 0.0, "detection_rate": 0.5}


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two images of 1 x 4 pixels, two defect regions: R1 = {0.9, 0.5} in image A, R2 = {0.8} in image B."""
    maps = np.array([[[0.9, 0.5, 0.7, 0.1]], [[0.2, 0.3, 0.4, 0.8]]], np.float32)
    masks = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 1]]], np.uint8)
    return maps, masks


def test_aupro_hand_computed():
    maps, masks = _hand_case()
    # Normal pixels 0.7 0.1 0.2 0.3 0.4 (5). Thresholds going down, (FPR, PRO = mean over regions):
    # 0.9: (0, 1/4); 0.8: (0, 3/4); 0.7: (1/5, 3/4); 0.5: (1/5, 1); 0.4: (2/5, 1).
    # Area up to FPR 0.3 = 0.2 * 3/4 + 0.1 * 1 = 0.25 -> 0.25 / 0.3; up to 0.2: 0.15 / 0.2.
    assert metrics.aupro(maps, masks) == pytest.approx(0.25 / 0.3, abs=1e-12)
    assert metrics.aupro(maps, masks, fpr_limit=0.2) == pytest.approx(0.75, abs=1e-12)
    assert metrics.aupro(maps, masks, fpr_limit=1.0) == pytest.approx((0.15 + 0.8) / 1.0, abs=1e-12)
    # regions are counted per connected component, not per pixel: a perfect map gives 1
    assert metrics.aupro(masks.astype(np.float32), masks) == pytest.approx(1.0, abs=1e-12)


def test_aupro_regions_count_equally():
    # two regions, one fully detected and one never: PRO = 0.5 at every FPR
    masks = np.zeros((1, 6, 6), np.uint8)
    masks[0, 0, 0] = 1
    masks[0, 4:, 4:] = 1  # a 4-pixel region weighs as much as the 1-pixel one
    maps = np.random.default_rng(0).random((1, 6, 6)).astype(np.float32)
    maps[0, 0, 0] = 10.0
    maps[0, 4:, 4:] = -10.0
    assert metrics.aupro(maps, masks) == pytest.approx(0.5, abs=1e-12)


def _reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Slow reference as the MVTec AD evaluation code: every distinct threshold, trapezoid, interpolation."""
    regions = []
    for m, g in zip(maps, masks, strict=True):
        count, labels = cv2.connectedComponents(g.astype(np.uint8), connectivity=8)
        regions += [m[labels == r] for r in range(1, count)]
    normal = maps[masks == 0]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        points.append(((normal >= t).mean(), np.mean([(r >= t).mean() for r in regions])))
    x, y = np.array(points).T
    keep = x <= fpr_limit
    end = int(keep.sum())
    xs, ys = list(x[:end]), list(y[:end])
    if end < x.size:
        xs.append(fpr_limit)
        ys.append(y[end - 1] + (y[end] - y[end - 1]) * (fpr_limit - x[end - 1]) / (x[end] - x[end - 1]))
    xs_a, ys_a = np.array(xs), np.array(ys)
    return float(np.sum(np.diff(xs_a) * (ys_a[1:] + ys_a[:-1]) / 2) / fpr_limit)


def _blobs(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n - 1):  # the last image is normal
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.integers(0, size, 2)
            cv2.circle(masks[i], (int(x), int(y)), int(rng.integers(1, size // 5)), 1, -1)
    maps = rng.normal(size=masks.shape) + 1.5 * masks * rng.random((n, 1, 1))
    return maps.astype(np.float32), masks


def test_aupro_matches_reference_exactly_with_few_distinct_scores():
    rng = np.random.default_rng(5)
    maps, masks = _blobs(rng, 4, 24)
    maps = np.round(maps, 1)  # ties, few distinct values: the exact curve is used
    for limit in (0.05, 0.3, 1.0):
        assert metrics.aupro(maps, masks, fpr_limit=limit) == pytest.approx(
            _reference_aupro(maps, masks, limit), abs=1e-9
        )


def test_aupro_with_quantile_thresholds_is_close_to_the_exact_curve():
    rng = np.random.default_rng(6)
    maps, masks = _blobs(rng, 5, 40)
    exact = _reference_aupro(maps, masks, 0.3)
    assert metrics.aupro(maps, masks, steps=1000) == pytest.approx(exact, abs=2e-3)
    assert metrics.aupro(maps, masks, steps=200) == pytest.approx(exact, abs=5e-3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.auroc([1, 2, 3], [0, 1]), "auroc: expected scores and labels of the same size, got 3 and 2"),
        (lambda: metrics.roc_curve([1, 2], [0, 1, 1]), "roc_curve: expected scores and labels of the same size"),
        (
            lambda: metrics.image_auroc([1, 2], [1, 1]),
            r"expected both normal \(0\) and anomalous \(1\) labels, got only 1",
        ),
        (lambda: metrics.f1_max([1.0, 2.0], [0, 0]), r"f1_max: expected both .* got only 0 \(n=2\)"),
        (lambda: metrics.auroc([], []), "auroc: expected both .* got nothing"),
        (lambda: metrics.auroc([1, 2, 3], [0, 1, 2]), r"auroc: expected labels in \{0, 1\}, got values \[2\]"),
        (lambda: metrics.auroc([1, 2], [0.0, 0.5]), r"expected labels in \{0, 1\}, got values \[0.5\]"),
        (lambda: metrics.auroc(np.zeros((2, 2)), [0, 1]), r"auroc: expected \(N,\) scores, got \(2, 2\) float64"),
        (lambda: metrics.auroc([np.inf, 1.0], [0, 1]), "expected finite scores, got 1 non-finite"),
        (lambda: metrics.rates_at_threshold([0.1], [1], 0.5), "rates_at_threshold: expected both"),
        (lambda: metrics.pixel_auroc(np.zeros((1, 2, 2)), np.zeros((1, 3, 3))), "expected maps and masks of one shape"),
        (
            lambda: metrics.pixel_auroc(np.zeros((4, 4)), np.eye(4)),
            r"expected \(N, H, W\) maps and masks, got \(4, 4\)",
        ),
        (lambda: metrics.pixel_auroc(np.zeros((1, 2, 2)), np.zeros((1, 2, 2))), "both defect .* got only 0"),
        (lambda: metrics.pixel_auroc(np.zeros((1, 2, 2)), np.full((1, 2, 2), 255)), r"masks in \{0, 1\}, got values"),
        (lambda: metrics.aupro(np.full((1, 1, 2), np.nan), [[[0, 1]]]), "aupro: expected finite scores, got 2"),
        (lambda: metrics.aupro(*_hand_case(), fpr_limit=0.0), "aupro: expected 0 < fpr_limit <= 1, got 0.0"),
        (lambda: metrics.aupro(*_hand_case(), steps=1), "aupro: expected an integer steps >= 2, got 1"),
    ],
)
def test_errors_say_what_was_wrong(call, message):
    with pytest.raises(InputError, match=message):
        call()
