"""Anomaly detection metrics in numpy: AUROC (image and pixel), AUPRO, F1-max, rates at a threshold.

All functions take higher scores as more anomalous and labels/masks with 1 = anomalous. AUROC counts
ties as one half, exactly as sklearn's ``roc_auc_score``; it is computed as the Mann-Whitney
statistic from sorted scores, which needs no index arrays and suits the ~50 M values of pixel
metrics. Only numpy is needed at import (AUPRO imports cv2 for connected components).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lemo_edge.errors import InputError, describe

_CHUNK = 1 << 22  # positives searched per step in _auc, to bound the index arrays to ~32 MB each


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _binary(labels: Any, shape: tuple[int, ...], what: str, name: str = "labels") -> np.ndarray:
    """``labels`` as a bool array of ``shape``; only 0/1 (or bool) values are accepted."""
    y = np.asarray(labels)
    if y.shape != shape:
        raise InputError(f"{what}: expected scores and {name} of the same size, got {shape} and {y.shape}")
    if y.dtype == bool:
        return y
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise InputError(f"{what}: expected {name} in {{0, 1}}, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() > 1 or (np.issubdtype(y.dtype, np.floating) and (y % 1).any())):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise InputError(f"{what}: expected {name} in {{0, 1}}, got values {bad.tolist()}")
    return y.astype(bool)


def _both_classes(y: np.ndarray, what: str) -> None:
    if y.size == 0 or y.all() or not y.any():
        only = "nothing" if y.size == 0 else f"only {int(y.flat[0])} (n={y.size})"
        raise InputError(f"{what}: expected both normal (0) and anomalous (1) labels, got {only}")


def _finite(s: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(s)
    if bad.any():
        raise InputError(f"{what}: expected finite scores, got {int(bad.sum())} non-finite")


def _check(scores: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Image-level inputs: ``(N,) float64`` scores and ``(N,) bool`` labels with both classes."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise InputError(f"{what}: expected (N,) scores, got {describe(s)}")
    y = np.asarray(labels)
    if y.ndim == 1 and y.size != s.size:
        raise InputError(f"{what}: expected scores and labels of the same size, got {s.size} and {y.size}")
    y = _binary(y, s.shape, what)
    _both_classes(y, what)
    _finite(s, what)
    return s, y


def _check_maps(maps: Any, masks: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level inputs: ``(N, H, W) float32`` maps and ``(N, H, W) bool`` masks with both classes."""
    m = np.asarray(maps, dtype=np.float32)
    g = np.asarray(masks)
    if m.shape != g.shape:
        raise InputError(f"{what}: expected maps and masks of one shape, got {m.shape} and {g.shape}")
    if m.ndim != 3:
        raise InputError(f"{what}: expected (N, H, W) maps and masks, got {describe(m)}")
    g = _binary(g, m.shape, what, "masks")
    if not g.any() or g.all():
        raise InputError(
            f"{what}: expected both defect (1) and normal (0) pixels in the masks, got only {int(g.all())}"
        )
    _finite(m, what)
    return m, g


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive > negative) + P(equal) / 2, i.e. the area under the ROC curve with ties on the diagonal."""
    negative = np.sort(negative)
    below = 0
    ties = 0
    for start in range(0, positive.size, _CHUNK):
        chunk = positive[start : start + _CHUNK]
        left = np.searchsorted(negative, chunk, side="left")
        right = np.searchsorted(negative, chunk, side="right")
        below += int(left.sum(dtype=np.int64))
        ties += int((right - left).sum(dtype=np.int64))
    return (below + 0.5 * ties) / (float(positive.size) * float(negative.size))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with one point per distinct score, as sklearn's ``roc_curve(drop_intermediate=False)``.

    Args:
        scores: ``(N,)`` float, higher = more anomalous.
        labels: ``(N,)`` {0, 1}.

    Returns:
        ``fpr``, ``tpr`` ``(P + 1,) float64`` from (0, 0) to (1, 1), and ``thresholds`` ``(P + 1,)
        float64``, decreasing, starting at ``inf``; a sample is positive when ``score >= threshold``.

    Raises:
        InputError: shapes differ, labels are not {0, 1} or of one class, or scores are not finite.
    """
    s, y = _check(scores, labels, "roc_curve")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve; ties count one half, as sklearn's ``roc_auc_score``.

    Args:
        scores: ``(N,)`` float.
        labels: ``(N,)`` {0, 1}, both present.

    Raises:
        InputError: shapes differ, labels are not {0, 1} or of one class, or scores are not finite.
    """
    s, y = _check(scores, labels, "auroc")
    return _auc(s[y], s[~y])


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level AUROC of ``(N,)`` image scores against ``(N,)`` {0, 1} labels (see :func:`auroc`)."""
    s, y = _check(scores, labels, "image_auroc")
    return _auc(s[y], s[~y])


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC of all pixels of all images.

    Memory: one float32 copy of the normal pixels (sorted in place) and of the defect pixels; no
    index arrays over all pixels.

    Args:
        maps: ``(N, H, W)`` float anomaly maps, compared as float32.
        masks: ``(N, H, W)`` {0, 1} (or bool) ground truth; both classes present.

    Raises:
        InputError: shapes differ or are not 3-D, masks are not {0, 1} or of one class, or maps are
            not finite.
    """
    m, g = _check_maps(maps, masks, "pixel_auroc")
    return _auc(m[g], m[~g])


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3, steps: int = 1000) -> float:
    """Area under the per-region-overlap (PRO) curve up to ``fpr_limit``, divided by it (MVTec AD).

    Each connected defect region (8-connectivity, per image) counts equally: PRO at a threshold is
    the mean over regions of the fraction of the region's pixels scoring ``>=`` it; FPR is the
    fraction of normal pixels (of all images) scoring ``>=`` it. The curve starts at (0, 0), is
    integrated with the trapezoid rule and linearly interpolated at ``fpr_limit``.

    Thresholds: every distinct score when there are at most ``steps`` of them (the exact curve),
    else ``steps`` thresholds at quantiles of the normal pixels that space the FPR evenly over
    ``[0, fpr_limit]``; PRO and FPR at each threshold are exact.

    Args:
        maps: ``(N, H, W)`` float anomaly maps, compared as float32.
        masks: ``(N, H, W)`` {0, 1} (or bool); both defect and normal pixels present.
        fpr_limit: upper end of the FPR range, in (0, 1].
        steps: number of thresholds (>= 2).

    Returns:
        AUPRO in [0, 1].

    Raises:
        InputError: as :func:`pixel_auroc`, or ``fpr_limit`` / ``steps`` out of range.
    """
    import cv2

    if not 0.0 < fpr_limit <= 1.0:
        raise InputError(f"aupro: expected 0 < fpr_limit <= 1, got {fpr_limit}")
    if int(steps) != steps or steps < 2:
        raise InputError(f"aupro: expected an integer steps >= 2, got {steps!r}")
    m, g = _check_maps(maps, masks, "aupro")
    normal = np.sort(m[~g])
    defect_scores, weights = [], []
    regions = 0
    for image_map, mask in zip(m, g, strict=True):
        if not mask.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        inside = labels[mask]
        defect_scores.append(image_map[mask])
        weights.append(1.0 / stats[inside, cv2.CC_STAT_AREA].astype(np.float64))
        regions += count - 1
    scores = np.concatenate(defect_scores)
    order = np.argsort(scores, kind="stable")
    scores = scores[order]
    cumulative = np.r_[0.0, np.cumsum(np.concatenate(weights)[order])] / regions

    distinct = np.unique(np.r_[np.unique(normal), np.unique(scores)])
    if distinct.size <= steps:
        thresholds = distinct
    else:
        n = normal.size
        fprs = np.linspace(0.0, fpr_limit, steps)
        counts = np.unique(np.clip(np.ceil(fprs * n).astype(np.int64), 1, n))
        counts = np.r_[counts, min(n, int(np.ceil(fpr_limit * n)) + 1)]
        thresholds = np.unique(normal[n - counts])
    thresholds = thresholds[::-1]  # decreasing
    fpr = np.r_[0.0, (normal.size - np.searchsorted(normal, thresholds, side="left")) / normal.size]
    pro = np.r_[0.0, cumulative[-1] - cumulative[np.searchsorted(scores, thresholds, side="left")]]
    pro = np.minimum(pro, 1.0)

    end = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:end], pro[:end]
    if end < fpr.size:
        t = (fpr_limit - x[-1]) / (fpr[end] - x[-1])
        x, y = np.r_[x, fpr_limit], np.r_[y, y[-1] + t * (pro[end] - y[-1])]
    return _trapezoid(y, x) / fpr_limit


def f1_max(scores: Any, labels: Any) -> float:
    """Best F1 over all thresholds (a sample is positive when ``score >= threshold``).

    Args:
        scores: ``(N,)`` float.
        labels: ``(N,)`` {0, 1}, both present.

    Raises:
        InputError: as :func:`auroc`.
    """
    s, y = _check(scores, labels, "f1_max")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[distinct]
    predicted = distinct + 1
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted positives + actual positives)
    return float(np.max(2.0 * tp / (predicted + y.sum())))


def rates_at_threshold(scores: Any, labels: Any, threshold: float) -> dict[str, float]:
    """False-alarm and detection rates of the decision ``score > threshold`` (as ``OnlineThreshold``).

    Args:
        scores: ``(N,)`` float.
        labels: ``(N,)`` {0, 1}, both present.
        threshold: the decision threshold.

    Returns:
        ``{"false_alarm_rate": normal images flagged / normal images, "detection_rate": defect
        images flagged / defect images}``.

    Raises:
        InputError: as :func:`auroc`.
    """
    s, y = _check(scores, labels, "rates_at_threshold")
    flagged = s > threshold
    return {"false_alarm_rate": float(flagged[~y].mean()), "detection_rate": float(flagged[y].mean())}
