"""Anomaly detection metrics in numpy: AUROC (image and pixel), AUPRO, F1-max, rates at a threshold.

All functions take higher scores as more anomalous and labels/masks with 1 = anomalous.
"""

from __future__ import annotations

import numpy as np

from lemo_edge.errors import InputError


def _check(scores: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise InputError(f"{what}: expected scores and labels of the same size, got {s.size} and {y.size}")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise InputError(f"{what}: expected both normal (0) and anomalous (1) labels, got only {int(y[0])}")
    if not np.isfinite(s).all():
        raise InputError(f"{what}: expected finite scores, got {int((~np.isfinite(s)).sum())} non-finite")
    return s, y


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, one point per distinct score (decreasing), from (0, 0)."""
    s, y = _check(scores, labels, "roc_curve")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half, as sklearn's ``roc_auc_score``)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image-level AUROC of ``(N,)`` scores against ``(N,)`` labels."""
    return auroc(scores, labels)


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level AUROC of ``(N, H, W)`` maps against ``(N, H, W)`` binary masks."""
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks)
    if maps.shape != masks.shape:
        raise InputError(f"pixel_auroc: expected maps and masks of one shape, got {maps.shape} and {masks.shape}")
    return auroc(maps.ravel(), masks.ravel() > 0)


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over all thresholds."""
    s, y = _check(scores, labels, "f1_max")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[distinct]
    predicted = distinct + 1
    precision = tp / predicted
    recall = tp / y.sum()
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return float(f1.max())


def rates_at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """False-alarm rate (normal scored above) and detection rate (anomalous scored above)."""
    s, y = _check(scores, labels, "rates_at_threshold")
    flagged = s > threshold
    return {"false_alarm_rate": float(flagged[~y].mean()), "detection_rate": float(flagged[y].mean())}


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, steps: int = 300) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised by it (MVTec AD).

    Each connected defect region counts equally: PRO at a threshold is the mean, over regions, of
    the fraction of the region's pixels above it; the curve is PRO against the false-positive rate
    over normal pixels. ``steps`` thresholds are taken at quantiles of the normal pixels' scores.

    Args:
        maps: ``(N, H, W) float`` anomaly maps.
        masks: ``(N, H, W)`` binary masks.
    """
    import cv2

    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks) > 0
    if maps.shape != masks.shape:
        raise InputError(f"aupro: expected maps and masks of one shape, got {maps.shape} and {masks.shape}")
    if not masks.any() or masks.all():
        raise InputError("aupro: expected both defect and normal pixels in the masks")
    normal = np.sort(maps[~masks])
    # thresholds from high to low at quantiles of the normal pixels (FPR 0 .. fpr_limit), then -inf
    fprs = np.linspace(0.0, fpr_limit, steps)
    idx = np.clip(np.ceil((1.0 - fprs) * normal.size).astype(np.int64) - 1, 0, normal.size - 1)
    thresholds = np.r_[np.inf, normal[idx], -np.inf]
    fpr = 1.0 - np.searchsorted(normal, thresholds, side="right") / normal.size
    pro = np.zeros(thresholds.size)
    regions = 0
    for m, mask in zip(maps, masks, strict=True):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for region in range(1, count):
            values = np.sort(m[labels == region])
            above = values.size - np.searchsorted(values, thresholds, side="right")
            pro += above / values.size
            regions += 1
    pro /= regions
    order = np.lexsort((pro, fpr))
    fpr, pro = fpr[order], pro[order]
    inside = fpr <= fpr_limit
    j = int(np.argmax(~inside)) if (~inside).any() else fpr.size
    x, y = fpr[:j], pro[:j]
    if j < fpr.size and x.size:
        t = (fpr_limit - x[-1]) / max(fpr[j] - x[-1], 1e-12)
        x, y = np.r_[x, fpr_limit], np.r_[y, y[-1] + t * (pro[j] - y[-1])]
    return float(np.trapezoid(y, x) / fpr_limit)
