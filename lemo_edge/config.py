"""Frozen, JSON-serialisable configuration of a LeMO model and its online learning."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from lemo_edge.errors import InputError

METHODS = ("coreset", "lemo")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model: features, memory, loss, scoring and online learning.

    Attributes:
        backbone: timm name of the frozen backbone.
        size: input side in pixels (a multiple of 32); images are resized to ``size x size``.
        method: ``"coreset"``: memory items are inserted from the stream where coverage is worst
            and merged when K is reached (streaming k-center); ``"lemo"``: the paper's learned
            memory (orthogonal-noise init, contrastive loss), with the additions in docs/method.md.
        memory_size: K, the number of memory items; the memory never grows past it.
        embed_dim: D' of the adapter's output; 0 means "same as the backbone's D".
        score_k: number of nearest items averaged into a patch score.
        sigma: Gaussian smoothing of the anomaly map, in input pixels.
        position_norm: normalise patch scores per position by running statistics of accepted
            images' scores (see model.PositionNorm).
        position_window: window (images) of those running statistics.
        insert_per_image: (coreset) at most this many items inserted per image.
        merge_slack: (coreset) when K is exceeded, merge down to ``(1 - merge_slack) * K`` items:
            small values merge a little on most images instead of much every few images (same
            accuracy, a far lower p99 of the update; docs/method.md section 7).
        ivf_lists: (coreset) split the memory into this many k-means cells and let each patch search
            only ``ivf_probe`` of them (approximate, faster; lemo_edge.ivf); 0: exact search.
        ivf_probe: cells searched per patch when ``ivf_lists`` > 0.
        adapter: learn the adapter (1x1 CoordConv) online; otherwise it stays at identity.
        steps_per_image: optimiser steps per incoming image (lemo, or coreset with ``adapter``).
        lr_memory: learning rate of the memory items (lemo).
        lr_adapter: learning rate of the adapter.
        tau: InfoNCE temperature.
        q: positives per patch in the contrastive loss.
        margin: negatives farther than ``margin`` (in units of the features' median norm) are clipped.
        loss_sign: ``"fixed"`` or ``"paper"`` (see lemo_edge.loss).
        compactness: weight of the compactness term (lemo).
        reseed_after: (lemo) items no patch chose in this many images are re-seeded from the
            current image's least-covered patches; 0 disables.
        refresh_every: (lemo) run the paper's memory refresh every N images; 0 disables.
        refresh_min_patches: items with fewer assigned patches at a refresh are dissolved.
        gate: after ``warmup`` images, only images scoring below the threshold update the model.
        warmup: images learned unconditionally at the start of a stream.
        threshold_k: online threshold = mean + k * std of accepted image scores.
        seed: seed of the memory initialisation.
    """

    backbone: str = "tf_efficientnet_lite0"
    size: int = 256
    method: str = "coreset"
    memory_size: int = 8192
    embed_dim: int = 0
    score_k: int = 3
    sigma: float = 4.0
    position_norm: bool = True
    position_window: int = 64
    insert_per_image: int = 64
    merge_slack: float = 0.01
    ivf_lists: int = 0
    ivf_probe: int = 8
    adapter: bool = False
    steps_per_image: int = 1
    lr_memory: float = 1e-2
    lr_adapter: float = 1e-4
    tau: float = 1.0
    q: int = 1
    margin: float | None = None
    loss_sign: str = "fixed"
    compactness: float = 1.0
    reseed_after: int = 8
    refresh_every: int = 0
    refresh_min_patches: int = 2
    gate: bool = True
    warmup: int = 16
    threshold_k: float = 5.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method: expected one of {list(METHODS)}, got {self.method!r}")
        if self.size <= 0 or self.size % 32:
            raise InputError(f"size: expected a positive multiple of 32, got {self.size}")
        if not 1 <= self.memory_size <= 65536:
            raise InputError(f"memory_size: expected 1..65536, got {self.memory_size}")
        if not 0.0 < self.merge_slack < 1.0:
            raise InputError(f"merge_slack: expected a fraction in (0, 1), got {self.merge_slack}")
        if self.ivf_lists < 0 or (self.ivf_lists and not 1 <= self.ivf_probe <= self.ivf_lists):
            raise InputError(
                "ivf: expected ivf_lists >= 0 and 1 <= ivf_probe <= ivf_lists, "
                f"got {self.ivf_lists} and {self.ivf_probe}"
            )
        if self.score_k < 1:
            raise InputError(f"score_k: expected >= 1, got {self.score_k}")
        if self.loss_sign not in ("fixed", "paper"):
            raise InputError(f"loss_sign: expected 'fixed' or 'paper', got {self.loss_sign!r}")

    def replace(self, **changes: Any) -> ModelConfig:
        """Return a copy with ``changes`` applied (validated); unknown names raise InputError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"config: unknown fields {unknown}; valid: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`, keys sorted."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise InputError."""
        return cls().replace(**data)


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; otherwise an InputError whose message starts with ``what``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{what}: expected a JSON object, got invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data
