"""How much of a stream's defects a memory learned, at the patch level, from the defect masks.

A *defect patch* is a grid cell with at least half of its pixels in the mask. Memory rows carry the tag
``frame tag * P + patch`` of the patch they came from (:meth:`lemo_edge.memory.CoresetMemory.insert`), so a
row can be traced back to a defect patch. Used by the mixed protocol (``lemo-edge eval``) and by the loop's
summary when the source carries masks (``synthetic://``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lemo_edge.memory import CoresetMemory


def defect_patches(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Which patches are defect patches: cells with at least half of their pixels in the mask.

    Args:
        masks: ``(N, H, W) uint8`` pixel masks (0/1), H and W multiples of the grid.
        grid: ``(h, w)`` patch grid.

    Returns:
        ``(N, h * w) bool``, patches in row-major order (the model's embedding order).
    """
    n, height, width = masks.shape
    h, w = grid
    cells = (masks > 0).reshape(n, h, height // h, w, width // w).astype(np.float32).mean(axis=(2, 4))
    return (cells >= 0.5).reshape(n, h * w)


class ContaminationCounter:
    """Counts, frame by frame, what a stream with known labels and masks taught a coreset memory.

    Args:
        patches: patches per frame (P, the model's ``h * w``); tags are ``frame tag * P + patch``.
    """

    def __init__(self, patches: int) -> None:
        self.patches = patches
        self.defect_tags: set[int] = set()
        self.learned_tags: set[int] = set()
        self.accepted = {0: 0, 1: 0}
        self.seen = {0: 0, 1: 0}

    def observe(self, tag: int, label: int | None, defect: np.ndarray | None, learned: bool) -> None:
        """Record one frame: its ``label`` (None: unknown), its ``defect (P,) bool`` patches (None: no mask)
        and whether the model learned from it."""
        if label is not None:
            key = 1 if label else 0
            self.seen[key] += 1
            self.accepted[key] += int(learned)
        if defect is not None and defect.any():
            self.defect_tags.update((tag * self.patches + np.flatnonzero(defect)).tolist())

    def admit(self, tags: torch.Tensor) -> None:
        """Record the row tags a memory confirmed (:meth:`CoresetMemory.pop_admitted`)."""
        if tags.numel():
            self.learned_tags.update(tags.tolist())

    def _share(self, tags: torch.Tensor) -> float | None:
        known = [t for t in tags.tolist() if t >= 0]
        return sum(t in self.defect_tags for t in known) / len(known) if known else None

    def result(self, memory: CoresetMemory | None) -> dict[str, Any]:
        """``defect_accept_rate`` / ``normal_accept_rate`` (share of the defect / normal frames the model learned
        from), ``defect_patches`` (streamed defect patches), ``defect_patch_learned`` (share of them that became
        confirmed memory items), ``memory_defect_share`` and ``pending_defect_share`` (share of the final
        confirmed / pending rows tagged in this stream that came from defect patches); ``None`` without a
        denominator or without a coreset memory."""
        total = len(self.defect_tags)
        out: dict[str, Any] = {
            "defect_accept_rate": self.accepted[1] / self.seen[1] if self.seen[1] else None,
            "normal_accept_rate": self.accepted[0] / self.seen[0] if self.seen[0] else None,
            "defect_patches": total,
            "defect_patch_learned": len(self.defect_tags & self.learned_tags) / total if total else None,
            "memory_defect_share": None,
            "pending_defect_share": None,
        }
        if memory is not None:
            out["memory_defect_share"] = self._share(memory.tags[: memory.size])
            out["pending_defect_share"] = self._share(memory.tags[memory.size : memory.size + memory.pending])
        return out
