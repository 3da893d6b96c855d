"""LeMO's training objective as pure functions.

The paper's contrastive loss pulls each patch embedding toward its ``q`` nearest memory items
and pushes it from the others (InfoNCE with temperature ``tau``). As printed, it uses the
distance itself as the similarity, which *raises* the distance to the positives when minimised;
``sign="paper"`` keeps that form for comparison, ``sign="fixed"`` (the default) uses the negative
distance. See docs/method.md for the measured effect of both, and of the compactness term.
"""

from __future__ import annotations

import torch

from lemo_edge.scoring import squared_distances


def pairwise_distances(z: torch.Tensor, memory: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable Euclidean distances ``(N, D), (K, D) -> (N, K) float32``."""
    return (squared_distances(z, memory) + eps).sqrt()


def contrastive_loss(
    distances: torch.Tensor, q: int = 1, tau: float = 1.0, margin: float | None = None, sign: str = "fixed"
) -> torch.Tensor:
    """InfoNCE over memory items: the ``q`` nearest items are positives, the others negatives.

    Args:
        distances: ``(N, K) float32`` patch-to-item distances.
        q: number of positive (nearest) items per patch.
        tau: temperature.
        margin: negatives farther than this are clipped to it (they stop being pushed away);
            ``None`` disables clipping.
        sign: ``"fixed"``: similarity = -distance (pulls positives in);
            ``"paper"``: similarity = +distance, the formula as printed.

    Returns:
        Scalar loss.
    """
    if sign not in ("fixed", "paper"):
        raise ValueError(f"sign: expected 'fixed' or 'paper', got {sign!r}")
    q = min(q, distances.shape[1])
    order = distances.topk(q, dim=1, largest=False).indices
    d = distances.clamp_max(margin) if margin is not None else distances
    sim = -d / tau if sign == "fixed" else d / tau
    positive = sim.gather(1, order)
    return (torch.logsumexp(sim, dim=1) - torch.logsumexp(positive, dim=1)).mean()


def compactness_loss(distances: torch.Tensor, radius: float = 0.0) -> torch.Tensor:
    """Mean clipped distance of each patch to its nearest item: ``mean(max(d_min - radius, 0))`` (as in CFA)."""
    return (distances.min(dim=1).values - radius).clamp_min(0.0).mean()
