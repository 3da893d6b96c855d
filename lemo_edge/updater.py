"""Online learning: predict first, then (gated) learn from the same frame's features.

The update reuses the frame's backbone features and the nearest-item search that scoring already
did; it never re-runs the backbone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from lemo_edge.config import ModelConfig
from lemo_edge.loss import compactness_loss, contrastive_loss, pairwise_distances
from lemo_edge.memory import CoresetMemory, LearnedMemory
from lemo_edge.model import LemoModel, Scores
from lemo_edge.threshold import OnlineThreshold

log = logging.getLogger(__name__)


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
        self.stats = UpdateStats()
        params = []
        if self.config.adapter:
            params.append({"params": list(model.adapter.parameters()), "lr": self.config.lr_adapter})
        if isinstance(model.memory, LearnedMemory):
            params.append({"params": [model.memory.weight], "lr": self.config.lr_memory, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(params) if params else None
        self._margin: float | None = None

    def accepts(self, image_score: float) -> bool:
        """Gate: learn from this image? Always during the warm-up or with gating off."""
        if not self.config.gate or self.stats.seen < self.config.warmup:
            return True
        return image_score <= self.threshold.value

    def observe(self, features: torch.Tensor, scores: Scores, image_score: float, force: bool = False) -> bool:
        """Decide on one already scored image and learn from it if accepted.

        Args:
            features: ``(1, D, h, w) float32`` backbone features of the image.
            scores: what :meth:`LemoModel.score` returned for them.
            image_score: the image's score (max of its smoothed map).
            force: learn regardless of the gate (offline training).

        Returns:
            Whether the model was updated.
        """
        accept = force or self.accepts(image_score)
        self.stats.seen += 1
        if not accept:
            self.stats.rejected += 1
            return False
        norm = self.model.position_norm
        if bool(torch.isfinite(scores.raw).all()) and (norm is None or norm.ready):
            self.threshold.update(image_score)
        if norm is not None:
            norm.update(scores.raw[0])
        self.learn(features, scores)
        self.stats.updates += 1
        return True

    def learn(self, features: torch.Tensor, scores: Scores) -> None:
        """One online update from a single image's features (batch of 1)."""
        memory = self.model.memory
        z = scores.embeddings[0].detach()
        if isinstance(memory, CoresetMemory):
            self.stats.inserted += memory.insert(z, scores.nearest.nearest_distance)
            if self.optimizer is not None:
                self._gradient_steps(features)
            return
        assert isinstance(memory, LearnedMemory)
        self._gradient_steps(features)
        memory.mark_used(scores.nearest.index)
        if self.config.reseed_after > 0:
            self.stats.reseeded += memory.reseed(z, scores.nearest.nearest_distance, self.config.reseed_after)
        if self.config.refresh_every > 0 and int(memory.step) % self.config.refresh_every == 0:
            self.stats.refreshed += memory.refresh(z, self.config.refresh_min_patches)

    def _gradient_steps(self, features: torch.Tensor) -> None:
        assert self.optimizer is not None
        cfg = self.config
        for _ in range(cfg.steps_per_image):
            emb = self.model.embed(features)[0]
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
            self.stats.last_loss = float(loss.detach())
