"""What a run did: :class:`RunSummary` (printed by ``lemo-edge run``, written by ``--summary-json``)."""

from __future__ import annotations

import dataclasses
import math
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lemo_edge import metrics
from lemo_edge.utils import json_safe

from .frames import STAGES


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        frames: frames processed (skipped ones excluded).
        seconds: wall time of the run.
        fps: ``frames / seconds``.
        dropped: frames a live source discarded because the loop fell behind.
        skipped: frames skipped, by kind (the source's kinds and ``preprocess:<error>``).
        reconnects: reopen attempts of a live source.
        anomalies: frames judged anomalous.
        updates: online updates in this run.
        total_updates: updates of the model since it was created (loaded ones included).
        resumed_updates: updates in the state loaded at start, or None for a new model.
        threshold: the decision threshold at the end (``inf`` before it is learned).
        latency_ms: ``{stage: {"p50": ms, "p95": ms}}`` over the last ``latency_window`` frames.
        labelled: frames that carried a ground-truth label.
        prequential_auroc: image AUROC of the scores each labelled frame had before the model learned from it,
            or None without both labels among the labelled frames.
        prequential_auroc_after_warmup: the same over frames after the warm-up.
        nonfinite: frames whose score or map was not finite (judged normal, never learned from).
        sink_failures: failed writes by sink name (only sinks that failed at least once).
        saves: state saves in this run.
        state: path of the state file, or None without a state folder.
        stopped: why the run ended (``end of input``, ``frames limit``, ``signal SIGTERM``, ``quit``, ...).
        backend: the feature backend and why it was chosen.
        scorer: the nearest-memory scorer and why it was chosen.
        contamination: when the frames carried defect masks (``synthetic://``), what the memory learned of
            the defects: ``defect_accept_rate``, ``normal_accept_rate``, ``defect_patch_learned``,
            ``memory_defect_share``, ``pending_defect_share`` (:mod:`lemo_edge.contamination`); else None.
    """

    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    dropped: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    anomalies: int = 0
    updates: int = 0
    total_updates: int = 0
    resumed_updates: int | None = None
    threshold: float = math.inf
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    labelled: int = 0
    prequential_auroc: float | None = None
    prequential_auroc_after_warmup: float | None = None
    nonfinite: int = 0
    sink_failures: dict[str, int] = field(default_factory=dict)
    saves: int = 0
    state: str | None = None
    stopped: str = ""
    backend: str = ""
    scorer: str = ""
    contamination: dict[str, Any] | None = None

    @property
    def skipped_total(self) -> int:
        """Frames skipped, all kinds together."""
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become None)."""
        out = dataclasses.asdict(self)
        out["threshold"] = json_safe(float(self.threshold))
        out["skipped_total"] = self.skipped_total
        return out

    def format(self) -> str:
        """Human-readable summary, a few lines."""

        def p50(stage: str) -> str:
            value = self.latency_ms.get(stage, {}).get("p50")
            return "-" if value is None else f"{value:.1f}"

        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
        lines = [
            f"frames {self.frames} in {self.seconds:.1f} s ({self.fps:.2f} fps); dropped {self.dropped}; "
            f"skipped {self.skipped_total}" + (f" ({skipped})" if skipped else "") + f"; stopped: {self.stopped}",
            f"anomalies {self.anomalies}; updates {self.updates} (model total {self.total_updates}); "
            f"threshold {self.threshold:.4g}"
            + (f"; reconnects {self.reconnects}" if self.reconnects else "")
            + (f"; not finite {self.nonfinite}" if self.nonfinite else ""),
            "latency p50 ms: " + ", ".join(f"{stage} {p50(stage)}" for stage in STAGES),
        ]
        if self.sink_failures:
            failures = ", ".join(f"{name} {count}" for name, count in sorted(self.sink_failures.items()))
            lines.append(f"sink failures: {failures}")
        if self.prequential_auroc is not None:
            after = self.prequential_auroc_after_warmup
            lines.append(
                f"prequential image AUROC {self.prequential_auroc:.4f} on {self.labelled} labelled frames"
                + (f" (after warm-up {after:.4f})" if after is not None else "")
            )
        elif self.labelled:
            lines.append(f"prequential image AUROC: n/a ({self.labelled} labelled frames, one class only)")
        if self.contamination is not None:
            c = self.contamination
            lines.append(
                f"learned from {percent(c['defect_accept_rate'])} of the defect frames and "
                f"{percent(c['normal_accept_rate'])} of the normal ones; defect patches learned "
                f"{percent(c['defect_patch_learned'])}; memory from defect patches {percent(c['memory_defect_share'])}"
            )
        if self.state is not None:
            resumed = (
                f"; resumed from {self.resumed_updates} updates" if self.resumed_updates is not None else "; new model"
            )
            lines.append(f"state {self.state} ({self.saves} saves{resumed})")
        if self.backend or self.scorer:
            lines.append(f"backend {self.backend}; scorer {self.scorer}")
        return "\n".join(lines)


def percent(value: float | None) -> str:
    """``12.3%``, or ``n/a`` for None."""
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def prequential_auroc(scores: array, labels: array, mask: np.ndarray | None = None) -> float | None:
    """Image AUROC of the finite scores (``mask`` selects frames), or None without both labels among them.

    Args:
        scores: ``array("d")`` of image scores, one per labelled frame.
        labels: ``array("b")`` of labels (0 normal, 1 anomalous), same length.
        mask: ``(N,) bool`` frames to include, or None for all.
    """
    s = np.frombuffer(scores, dtype=np.float64) if len(scores) else np.zeros(0)
    y = np.frombuffer(labels, dtype=np.int8) if len(labels) else np.zeros(0, np.int8)
    keep = np.isfinite(s) if mask is None else np.isfinite(s) & mask
    s, y = s[keep], y[keep]
    if s.size == 0 or y.all() or not y.any():
        return None
    return metrics.image_auroc(s, y)
