"""Bounded memories of normal patch embeddings, learned from the stream.

Two memories share one interface (``items``: the ``(n, D)`` valid rows used for scoring):

* :class:`CoresetMemory` (default): a streaming k-center coreset. Each image inserts its
  least-covered patches (farthest-first) while they lie farther than the coverage radius ``r``
  from every item; when K is exceeded, ``r`` grows and items closer than ``r`` to an older item
  are merged away (the doubling algorithm of Charikar et al., 1997). The memory never exceeds K.
* :class:`LearnedMemory` (the paper's): K free parameters initialised with orthogonal random
  noise, optimised by the contrastive loss, with re-seeding of unused items and the paper's
  refresh (reassign, dissolve, split by 2-means).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lemo_edge.errors import InputError, describe


def orthogonal_noise(k: int, d: int, scale: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(k, d) float32`` rows of orthonormal noise times ``scale`` (QR of a Gaussian matrix).

    When ``k > d`` only ``d`` rows can be mutually orthogonal: rows come in blocks of ``d``
    orthonormal rows, each block from its own Gaussian matrix.
    """
    blocks = []
    for start in range(0, k, d):
        rows = min(d, k - start)
        gaussian = torch.randn(d, rows, generator=generator)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r))  # unique Q: positive diagonal of R
        blocks.append(q.T)
    return torch.cat(blocks) * scale


class CoresetMemory(nn.Module):
    """Streaming k-center memory of at most K items.

    Buffers: ``bank (K, D) float32``, ``count () int64`` (valid rows), ``radius () float32``.
    """

    bank: torch.Tensor
    count: torch.Tensor
    radius: torch.Tensor

    def __init__(self, capacity: int, dim: int, insert_per_image: int = 64, slack: float = 0.1) -> None:
        super().__init__()
        self.capacity = capacity
        self.insert_per_image = insert_per_image
        self.slack = slack
        self.register_buffer("bank", torch.zeros(capacity, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("radius", torch.zeros(()))

    @property
    def items(self) -> torch.Tensor:
        """``(n, D) float32``: the valid items (n <= K)."""
        return self.bank[: int(self.count)]

    @torch.no_grad()
    def insert(self, z: torch.Tensor, nearest: torch.Tensor) -> int:
        """Insert an image's least-covered patches; returns how many were inserted.

        Args:
            z: ``(P, D) float32`` embeddings of one image's patches.
            nearest: ``(P,) float32`` distance of each patch to its nearest item (``inf`` when
                the memory is empty); scoring computed it already, so it is not recomputed.
        """
        if z.ndim != 2 or nearest.shape != z.shape[:1]:
            raise InputError(f"insert: expected z (P, D) and nearest (P,), got {describe(z)} and {describe(nearest)}")
        dist = nearest.float().clone() if int(self.count) else torch.full_like(nearest, math.inf, dtype=torch.float32)
        radius = float(self.radius)
        chosen = []
        for _ in range(min(self.insert_per_image, z.shape[0])):
            i = int(dist.argmax())
            if dist[i] <= radius:
                break
            chosen.append(i)
            dist = torch.minimum(dist, (z - z[i]).norm(dim=1))
        if not chosen:
            return 0
        items = torch.cat([self.items, z[chosen].float()])
        if items.shape[0] > self.capacity:
            items = self._grow_radius_and_merge(items)
        self.bank[: items.shape[0]] = items
        self.count.fill_(items.shape[0])
        return len(chosen)

    def _grow_radius_and_merge(self, items: torch.Tensor) -> torch.Tensor:
        """Drop the most redundant items until ``(1 - slack) * K`` remain; raise the radius.

        Pairs are visited by increasing distance between an item and its nearest other item;
        of each pair whose two members are both still kept, the newer one is dropped. The radius
        becomes the largest distance of a pair merged so far (it never shrinks), so later
        insertions only add patches farther than that from every item.
        """
        target = int(self.capacity * (1.0 - self.slack))
        radius = float(self.radius)
        while items.shape[0] > target:
            nn_dist, nn_index = nearest_other(items)
            dropped = torch.zeros(items.shape[0], dtype=torch.bool)
            need = items.shape[0] - target
            for i in torch.argsort(nn_dist).tolist():
                j = int(nn_index[i])
                if dropped[i] or dropped[j]:
                    continue
                dropped[max(i, j)] = True
                radius = max(radius, float(nn_dist[i]))
                need -= 1
                if need == 0:
                    break
            items = items[~dropped]
        self.radius.fill_(radius)
        return items


def nearest_other(items: torch.Tensor, block: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """For each item, the distance to and index of its nearest other item.

    Args:
        items: ``(n, D) float32``, n >= 2.

    Returns:
        ``(n,) float32`` distances and ``(n,) int64`` indices.
    """
    dists, index = [], []
    for start in range(0, items.shape[0], block):
        d = torch.cdist(items[start : start + block], items)
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = math.inf
        best = d.min(dim=1)
        dists.append(best.values)
        index.append(best.indices)
    return torch.cat(dists), torch.cat(index)


class LearnedMemory(nn.Module):
    """The paper's memory: K learnable items, orthogonal-noise init, no data needed.

    Parameters: ``items (K, D) float32``. Buffers: ``last_used (K,) int64`` (image step at which
    each item was last some patch's nearest), ``step () int64``.
    """

    last_used: torch.Tensor
    step: torch.Tensor

    def __init__(self, capacity: int, dim: int, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.capacity = capacity
        self.weight = nn.Parameter(orthogonal_noise(capacity, dim, scale, generator))
        self.register_buffer("last_used", torch.full((capacity,), -1, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    @property
    def items(self) -> torch.Tensor:
        """``(K, D) float32``: all items (the learned memory is always full)."""
        return self.weight

    @torch.no_grad()
    def mark_used(self, index: torch.Tensor) -> None:
        """Record the nearest-item indices ``(P,) int64`` of the current image and advance a step."""
        self.last_used[index.unique()] = self.step
        self.step += 1

    @torch.no_grad()
    def reseed(self, z: torch.Tensor, nearest: torch.Tensor, after: int) -> int:
        """Move items unused for ``after`` images onto the least-covered patches (farthest-first).

        Args:
            z: ``(P, D) float32`` current image's embeddings.
            nearest: ``(P,) float32`` their nearest-item distances.
            after: age (in images) from which an item counts as unused.

        Returns:
            Number of items re-seeded.
        """
        stale = torch.nonzero(self.step - self.last_used > after).flatten()
        if stale.numel() == 0:
            return 0
        dist = nearest.float().clone()
        chosen = []
        for _ in range(min(stale.numel(), z.shape[0])):
            i = int(dist.argmax())
            chosen.append(i)
            dist = torch.minimum(dist, (z - z[i]).norm(dim=1))
            dist[i] = -1.0
        stale = stale[: len(chosen)]
        self.weight[stale] = z[chosen]
        self.last_used[stale] = self.step
        return len(chosen)

    @torch.no_grad()
    def refresh(self, z: torch.Tensor, min_patches: int) -> int:
        """The paper's refresh: reassign patches, dissolve items with fewer than ``min_patches``
        patches, and split the most populated item by 2-means for each dissolved one.

        Args:
            z: ``(P, D) float32`` recent patch embeddings.

        Returns:
            Number of items dissolved (and re-created by splitting).
        """
        index = torch.cdist(z, self.weight).argmin(1)
        counts = torch.bincount(index, minlength=self.capacity)
        weak = torch.nonzero(counts < min_patches).flatten()
        for item in weak.tolist():
            largest = int(counts.argmax())
            members = z[index == largest]
            if members.shape[0] < 2:
                break
            a, b = two_means(members)
            self.weight[largest], self.weight[item] = a, b
            counts[largest] = counts[item] = members.shape[0] // 2
        return int(weak.numel())


def two_means(x: torch.Tensor, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(n, D)`` points in two by k-means; returns the two centroids ``(D,)``."""
    centre = x.mean(0)
    far = x[(x - centre).norm(dim=1).argmax()]
    a, b = far, 2 * centre - far
    for _ in range(iters):
        to_a = (x - a).norm(dim=1) <= (x - b).norm(dim=1)
        if to_a.all() or not to_a.any():
            break
        a, b = x[to_a].mean(0), x[~to_a].mean(0)
    return a, b
