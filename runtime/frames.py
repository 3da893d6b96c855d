"""Per-frame records passed from sources through the inspection loop to the sinks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

STAGES: tuple[str, ...] = ("preprocess", "backbone", "score", "map", "update", "sinks", "total")
"""Keys of :attr:`FrameResult.latency_ms` written by the inspection loop (milliseconds)."""


@dataclass(eq=False)
class Frame:
    """One captured frame.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB, host memory, C-contiguous.
        index: position of the frame in its source (0, 1, 2, ... over the frames delivered by the capture thread;
            skipped frames get no index, dropped frames leave gaps).
        timestamp: wall-clock capture time, seconds since the epoch (``time.time()``).
        label: ground-truth label (0 normal, 1 anomalous) when the source knows it (synthetic, datasets), else None.
        mask: ``(H, W) uint8`` ground-truth defect mask (non-zero = defect) when known, else None.
        name: file name or sample name when the source has one, else ``""``.
        resized: ``(h, w, 3) uint8`` the image already resized to the model's input by the source (in its capture
            thread, when it was opened with a ``size``), else None. ``image`` and ``mask`` stay as captured: the
            sinks draw on them and events give boxes in their pixels.
    """

    image: np.ndarray
    index: int
    timestamp: float
    label: int | None = None
    mask: np.ndarray | None = None
    name: str = ""
    resized: np.ndarray | None = None


@dataclass(eq=False)
class FrameResult:
    """What the inspection loop decided for one frame.

    Attributes:
        score: image anomaly score (larger = more anomalous).
        anomaly_map: ``(H, W) float32`` per-pixel anomaly scores at the frame's size, or None when not computed.
        is_anomaly: decision, ``score > threshold``.
        threshold: decision threshold in use for this frame.
        updated: whether the model learned from the frame (online update).
        latency_ms: per-stage latency in milliseconds, e.g. ``{"backbone": 3.1, "total": 5.0}``.
        reason: why the frame was learned from or not (``warm-up``, ``below threshold``, ``above threshold``,
            ``frozen``, ``not finite``, ``gate off``), or ``""`` when unknown.
        finite: whether the score and map were finite.
        failing_sinks: sinks failing when the result was handed on, ``[{"sink", "error", "since", "failures"}]``
            (``since``: Unix time of the streak's first failure); empty when all is well.
        boxes: one ``[x, y, w, h, peak_score]`` per connected region of the map above the threshold, in the
            frame's pixels, highest peak first (``lemo_edge.tiling.region_boxes``); empty for a normal frame.
    """

    score: float
    anomaly_map: np.ndarray | None
    is_anomaly: bool
    threshold: float
    updated: bool
    latency_ms: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    finite: bool = True
    failing_sinks: list[dict[str, Any]] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)

    @property
    def learned(self) -> bool:
        """Alias of :attr:`updated`."""
        return self.updated
