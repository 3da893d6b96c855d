"""What every sink shares: the :class:`Sink` protocol and the JSON event of a frame (:func:`event_record`).

Sinks (:mod:`lemo_edge.runtime.sinks`, :mod:`lemo_edge.runtime.mqtt`) import from here and never from each other.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

from lemo_edge.utils import json_safe

from .frames import Frame, FrameResult


@runtime_checkable
class Sink(Protocol):
    """Consumer of per-frame results."""

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Record one frame and its result.

        Args:
            frame: the frame, ``image (H, W, 3) uint8`` RGB.
            result: its result, ``anomaly_map (H, W) float32`` or None.
        """
        ...

    def close(self) -> None:
        """Flush and release; idempotent."""
        ...


def iso_time(timestamp: float) -> str:
    """ISO 8601 UTC time of a Unix timestamp, to the millisecond."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def event_record(frame: Frame, result: FrameResult) -> dict[str, Any]:
    """The JSON-serialisable event of one frame.

    Args:
        frame: the frame (its ``timestamp``, ``index``, ``label`` and ``name`` are used).
        result: its result.

    Returns:
        ``{"time": ISO 8601 UTC of the capture, "frame": index, "score", "decision": "anomaly" | "normal",
        "threshold", "updated", "learned" (same as updated), "reason", "finite", "failing_sinks": [...],
        "boxes": [[x, y, w, h, peak_score], ...] (anomalous regions in the frame's pixels),
        "latency_ms": {stage: ms}}``, plus ``"label"`` when the frame has one and ``"name"`` when it has one.
        Non-finite numbers become None (JSON ``null``).
    """
    record: dict[str, Any] = {
        "time": iso_time(frame.timestamp),
        "frame": int(frame.index),
        "score": json_safe(float(result.score)),
        "decision": "anomaly" if result.is_anomaly else "normal",
        "threshold": json_safe(float(result.threshold)),
        "updated": bool(result.updated),
        "learned": bool(result.updated),
        "reason": str(result.reason),
        "finite": bool(result.finite),
        "failing_sinks": [dict(failure) for failure in result.failing_sinks],
        "boxes": [[int(v) for v in box[:4]] + [json_safe(float(box[4]))] for box in result.boxes],
        "latency_ms": json_safe({k: float(v) for k, v in result.latency_ms.items()}),
    }
    if frame.label is not None:
        record["label"] = int(frame.label)
    if frame.name:
        record["name"] = frame.name
    return record
