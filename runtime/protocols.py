"""The runtime's interfaces, in one place: what every feature backend and nearest-memory scorer provides.

Implementations live in :mod:`lemo_edge.runtime.backends` and :mod:`lemo_edge.runtime.scorers`; their
registries map names to them and one parametrised contract test checks each against these protocols.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from lemo_edge.backbone import FeatureSpec
from lemo_edge.scoring import Nearest


@runtime_checkable
class FeatureBackend(Protocol):
    """Frozen backbone inference: uint8 images to patch features.

    Attributes:
        name: registry name (``torch``, ``onnxruntime``, ``tensorrt``).
        spec: the backbone's :class:`~lemo_edge.backbone.FeatureSpec` (D = ``spec.dim``, stride ``spec.stride``).
        device: where the features are returned (CPU for CPU backends).
    """

    name: str
    spec: FeatureSpec
    device: torch.device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Compute patch features.

        Args:
            images: ``(B, 3, H, W) uint8`` RGB, any device (moved to :attr:`device` when needed).

        Returns:
            ``(B, D, H / s, W / s) float32`` on :attr:`device`. GPU backends may return a buffer they
            reuse for the next call of the same shape: consume or clone it before calling again.
        """
        ...


@runtime_checkable
class Scorer(Protocol):
    """Nearest-memory scoring: the distance of each patch embedding to its nearest memory item.

    Attributes:
        name: registry name (``torch``, ``cuda``).
    """

    name: str

    def __call__(self, z: torch.Tensor, memory: torch.Tensor) -> Nearest:
        """Score patch embeddings against the memory.

        Args:
            z: ``(N, D)`` float16/float32.
            memory: ``(K, D)``, same dtype and device as ``z``.

        Returns:
            :class:`~lemo_edge.scoring.Nearest`: ``score (N,) float32`` and ``index (N,) int64`` on ``z``'s device,
            as :func:`lemo_edge.scoring.nearest_memory` computes them.
        """
        ...
