"""Online decision threshold learned from the scores of accepted (normal-judged) images only.

threshold = mean + k * std of the accepted image scores, with exponentially decaying statistics
(window ``window`` images) so that it follows the scores down as the memory covers the normal
appearance better. Before ``min_count`` accepted scores it is ``inf`` (everything is normal).
No labels are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class OnlineThreshold:
    """Running mean/variance (exponentially weighted after ``window`` samples) of accepted scores."""

    k: float = 3.0
    window: int = 64
    min_count: int = 8
    count: int = 0
    mean: float = 0.0
    var: float = 0.0

    def update(self, score: float) -> None:
        """Add one accepted image score."""
        if not math.isfinite(score):
            return
        self.count += 1
        alpha = max(1.0 / self.count, 1.0 / self.window)
        delta = score - self.mean
        self.mean += alpha * delta
        self.var = (1.0 - alpha) * (self.var + alpha * delta * delta)

    @property
    def value(self) -> float:
        """Current threshold (``inf`` until ``min_count`` scores were seen)."""
        if self.count < self.min_count:
            return math.inf
        return self.mean + self.k * math.sqrt(max(self.var, 0.0))

    def is_anomalous(self, score: float) -> bool:
        """Decision for one image score."""
        return score > self.value

    def state_dict(self) -> dict[str, float]:
        """Plain numbers, for saving."""
        return {
            "k": self.k,
            "window": self.window,
            "min_count": self.min_count,
            "count": self.count,
            "mean": self.mean,
            "var": self.var,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, float]) -> OnlineThreshold:
        """Inverse of :meth:`state_dict`."""
        return cls(
            k=float(state["k"]),
            window=int(state["window"]),
            min_count=int(state["min_count"]),
            count=int(state["count"]),
            mean=float(state["mean"]),
            var=float(state["var"]),
        )
