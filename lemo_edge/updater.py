"""Online learning: predict first, then (gated) learn from the same frame's features.

The update reuses the frame's backbone features and the nearest-item search that scoring already
did; it never re-runs the backbone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from lemo_edge.config import ModelConfig
from lemo_edge.loss import compactness_loss, contrastive_loss, pairwise_distances
from lemo_edge.memory import CoresetMemory, LearnedMemory, frame_budget
from lemo_edge.model import LemoModel, Scores
from lemo_edge.threshold import OnlineThreshold

log = logging.getLogger(__name__)


REASON_NOT_FINITE = "not finite"
REASON_FORCED = "forced"
REASON_GATE_OFF = "gate off"
REASON_WARMUP = "warm-up"
REASON_ABOVE = "above threshold"
REASON_BELOW = "below threshold"


class Observation(NamedTuple):
    """What :meth:`OnlineUpdater.observe` did with one image.

    Attributes:
        learned: whether the model was updated.
        reason: why (one of the ``REASON_*`` strings of this module).
        inserted: patches that became memory items.
    """

    learned: bool
    reason: str
    inserted: int


@dataclass
class UpdateStats:
    """Counters of the online learning so far."""

    seen: int = 0
    updates: int = 0
    rejected: int = 0
    inserted: int = 0
    reseeded: int = 0
    refreshed: int = 0
    last_loss: float = math.nan


class OnlineUpdater:
    """Gated online learning of a :class:`LemoModel`, one image at a time.

    Args:
        model: the model to update in place.
        threshold: the online threshold (a new one from the config if ``None``).
    """

    def __init__(self, model: LemoModel, threshold: OnlineThreshold | None = None) -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.threshold = threshold or OnlineThreshold(k=self.config.threshold_k)
        self._stats = UpdateStats()
        self._last_loss: torch.Tensor | None = None
        params = []
        if self.config.adapter:
            params.append({"params": list(model.adapter.parameters()), "lr": self.config.lr_adapter})
        if isinstance(model.memory, LearnedMemory):
            params.append({"params": [model.memory.weight], "lr": self.config.lr_memory, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(params) if params else None
        self._margin: float | None = None

    @property
    def stats(self) -> UpdateStats:
        """Counters of the online learning so far (reading them reads the last loss from the device)."""
        if self._last_loss is not None:
            self._stats.last_loss = float(self._last_loss)
            self._last_loss = None
        return self._stats

    @stats.setter
    def stats(self, value: UpdateStats) -> None:
        self._stats, self._last_loss = value, None

    def decide(self, image_score: float, finite: bool = True, force: bool = False) -> tuple[bool, str]:
        """The gate: learn from an image with this score? Returns ``(accept, reason)``.

        A frame with a non-finite feature or score is never learned. Otherwise every frame is learned
        during the warm-up, with gating off, or when ``force``; after that exactly the frames the
        threshold judges normal (:meth:`OnlineThreshold.is_anomalous` is false): the gate and the
        decision are one comparison, so they agree at the threshold too.
        """
        if not finite:
            return False, REASON_NOT_FINITE
        if force:
            return True, REASON_FORCED
        if not self.config.gate:
            return True, REASON_GATE_OFF
        if self._stats.seen < self.config.warmup:
            return True, REASON_WARMUP
        if self.threshold.is_anomalous(image_score):
            return False, REASON_ABOVE
        return True, REASON_BELOW

    def observe(
        self,
        features: torch.Tensor,
        scores: Scores,
        image_score: float,
        force: bool = False,
        finite: bool = True,
        tag: int = -1,
    ) -> Observation:
        """Decide on one already scored image and learn from it if accepted.

        Args:
            features: ``(1, D, h, w) float32`` backbone features of the image (``(T, D, h, w)``: its tiles).
            scores: what :meth:`LemoModel.score` returned for them.
            image_score: the image's score (max of its smoothed map).
            force: learn regardless of the gate (offline training); never a non-finite frame.
            finite: whether the image's embeddings and patch scores are all finite.
            tag: the image's provenance for the memory's contamination bookkeeping (-1: none).

        Returns:
            The :class:`Observation`; a refused frame leaves threshold, normalisation and memory unchanged.
        """
        accept, reason = self.decide(image_score, finite, force)
        self._stats.seen += 1
        if not accept:
            self._stats.rejected += 1
            return Observation(False, reason, 0)
        norm = self.model.position_norm
        covered = self.model.memory.items.shape[0] > 0  # else every raw score is inf (an empty memory)
        if covered and math.isfinite(image_score) and (norm is None or norm.ready):
            self.threshold.update(image_score)
        if norm is not None and covered:
            norm.update(scores.raw.reshape(norm.mean.shape))  # (h, w), or (T, h, w): a frame's tiles
        inserted = self.learn(features, scores, tag)
        self._stats.updates += 1
        return Observation(True, reason, inserted)

    def learn(self, features: torch.Tensor, scores: Scores, tag: int = -1) -> int:
        """One online update from a single image's features (a batch of 1, or of the frame's ``T`` tiles: their
        patches are one image's); returns the patches that became memory items (inserted, pending or re-seeded).
        ``tag``: the image's provenance (see :meth:`CoresetMemory.insert`)."""
        memory = self.model.memory
        z = scores.embeddings.detach().reshape(-1, scores.embeddings.shape[-1])  # the frame's tiles together
        nearest, index = scores.nearest.nearest_distance, scores.nearest.index
        keep = None  # letterbox: the content patches' positions (padding is never learned); one nonzero
        patches = z.shape[0]
        if scores.valid is not None:
            keep = scores.valid[0].flatten().nonzero().flatten()
            z, nearest, index = z.index_select(0, keep), nearest.index_select(0, keep), index.index_select(0, keep)
        if isinstance(memory, CoresetMemory):
            norm = self.model.position_norm
            surprise = scores.patch.reshape(-1) if norm is not None and norm.ready else None
            budget = frame_budget(memory.insert_per_image, scores.embeddings.shape[0], memory.capacity)
            if keep is None:
                inserted = memory.insert(z, nearest, index, tag, surprise, budget=budget)
            else:
                surprise = None if surprise is None else surprise.index_select(0, keep)
                inserted = memory.insert(z, nearest, index, tag, surprise, keep, patches, budget=budget)
            self._stats.inserted += inserted
            if self.optimizer is not None:
                self._gradient_steps(features, keep)
            return inserted
        assert isinstance(memory, LearnedMemory)
        self._gradient_steps(features, keep)
        memory.mark_used(index)
        reseeded = 0
        if self.config.reseed_after > 0:
            reseeded = memory.reseed(z, nearest, self.config.reseed_after)
            self._stats.reseeded += reseeded
        if self.config.refresh_every > 0 and memory.steps % self.config.refresh_every == 0:
            self._stats.refreshed += memory.refresh(z, self.config.refresh_min_patches)
        return reseeded

    def _gradient_steps(self, features: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """``cfg.steps_per_image`` optimiser steps on one image's features ``(1, D, h, w)``; ``keep``:
        ``(n,) int64`` positions of the patches it learns from (``None``: all)."""
        assert self.optimizer is not None
        cfg = self.config
        for _ in range(cfg.steps_per_image):
            emb = self.model.embed(features).flatten(0, 1)  # (B * h * w, D'): the frame's tiles together
            if keep is not None:
                emb = emb.index_select(0, keep)
            items = self.model.memory.items
            if items.shape[0] == 0:
                return
            dist = pairwise_distances(emb, items)
            if self._margin is None and cfg.margin is not None:
                self._margin = cfg.margin * float(emb.detach().norm(dim=1).median())
            loss = cfg.compactness * compactness_loss(dist)
            if isinstance(self.model.memory, LearnedMemory):
                loss = loss + contrastive_loss(dist, cfg.q, cfg.tau, self._margin, cfg.loss_sign)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._last_loss = loss.detach()  # read when the stats are (no host sync per step)
