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
from typing import Any

import torch
from torch import nn

from lemo_edge.errors import InputError, describe
from lemo_edge.ivf import InvertedIndex
from lemo_edge.scoring import Nearest, Scorer, nearest_memory, squared_distances


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

    Buffers: ``bank (K, D) float32``, ``count () int64`` (valid rows), ``radius () float32``. The count and
    the radius are mirrored as Python numbers (:attr:`size`, :attr:`coverage_radius`), so the hot path never
    reads them back from the device; the buffers are written alongside for saving.
    """

    bank: torch.Tensor
    count: torch.Tensor
    radius: torch.Tensor

    def __init__(
        self,
        capacity: int,
        dim: int,
        insert_per_image: int = 64,
        slack: float = 0.01,
        index: InvertedIndex | None = None,
    ) -> None:
        super().__init__()
        self.index = index  # approximate search (lemo_edge.ivf); None: exact
        self.scorer: Scorer | None = None
        self.capacity = capacity
        self.insert_per_image = insert_per_image
        self.slack = slack
        self.register_buffer("bank", torch.zeros(capacity, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("radius", torch.zeros(()))
        self.size = 0
        self.coverage_radius = 0.0
        # nearest other item of each of the first n items, kept from the last merge (not saved)
        self._nn: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def items(self) -> torch.Tensor:
        """``(n, D) float32``: the valid items (n <= K)."""
        return self.bank[: self.size]

    def _set_size(self, n: int) -> None:
        self.size = n
        self.count.fill_(n)

    @torch.no_grad()
    def replace_items(self, items: torch.Tensor) -> None:
        """Make ``items (n, D)`` (n <= K) the memory's items, e.g. to remove some; the radius stays."""
        if items.ndim != 2 or items.shape[1] != self.bank.shape[1] or items.shape[0] > self.capacity:
            raise InputError(f"items: expected (n <= {self.capacity}, {self.bank.shape[1]}), got {describe(items)}")
        self.bank[: items.shape[0]] = items
        self._set_size(items.shape[0])
        self._forget_derived()

    def _forget_derived(self) -> None:
        """Drop what was computed from the old items (nearest-other cache, index)."""
        self._nn = None
        if self.index is not None:
            self.index.reset()

    @torch.no_grad()
    def search(self, z: torch.Tensor, k: int) -> Nearest:
        """Nearest items of ``z (N, D)``: through :attr:`scorer` when one is set, else the inverted index
        when there is one, else the exact reference."""
        if self.scorer is not None:
            return self.scorer(z, self.items)
        if self.index is None:
            return nearest_memory(z, self.items, k)
        return self.index.search(z, self.items, k)

    @torch.no_grad()
    def insert(self, z: torch.Tensor, nearest: torch.Tensor) -> int:
        """Insert an image's least-covered patches; returns how many were inserted.

        Farthest-first over the patches farther than the coverage radius: a fixed number of steps on the
        device and one read of the chosen distances at the end (no per-patch host reads).

        Args:
            z: ``(P, D) float32`` embeddings of one image's patches, on the memory's device.
            nearest: ``(P,) float32`` distance of each patch to its nearest item (``inf`` when
                the memory is empty); scoring computed it already, so it is not recomputed.
        """
        if z.ndim != 2 or nearest.shape != z.shape[:1]:
            raise InputError(f"insert: expected z (P, D) and nearest (P,), got {describe(z)} and {describe(nearest)}")
        chosen = farthest_first(z, nearest if self.size else None, self.insert_per_image, self.coverage_radius)
        if chosen.numel() == 0:
            return 0
        new = z[chosen].float()
        count = self.size
        if count + new.shape[0] <= self.capacity:
            self.bank[count : count + new.shape[0]] = new
            self._set_size(count + new.shape[0])
        else:
            items = self._grow_radius_and_merge(torch.cat([self.items, new]))
            self.bank[: items.shape[0]] = items
            self._set_size(items.shape[0])
            if self.index is not None:
                self.index.note_merge()
        return int(chosen.numel())

    def _grow_radius_and_merge(self, items: torch.Tensor) -> torch.Tensor:
        """Drop the most redundant items until ``(1 - slack) * K`` remain; raise the radius.

        Pairs (an item and its nearest other item) are taken by increasing distance; of each pair the
        newer item is dropped. A round takes the ``need`` closest pairs at once and skips a pair one of
        whose members an earlier pair of the round drops (so no item is dropped twice and every dropped
        item keeps a partner); further rounds, with the nearest others of orphaned items recomputed,
        follow until ``(1 - slack) * K`` items remain. The radius becomes the largest distance of a pair
        merged so far (it never shrinks), so later insertions only add patches farther than that from
        every item. Vectorised: a few host reads per round, none per pair.
        """
        target = int(self.capacity * (1.0 - self.slack))
        device = items.device
        radius = torch.tensor(self.coverage_radius, device=device)
        nn_dist, nn_index = self._nearest_others(items)
        n = items.shape[0]
        while n > target:
            need = n - target
            order = torch.argsort(nn_dist)[:need]
            first, second = order, nn_index[order]
            drop = torch.maximum(first, second)
            position = torch.arange(order.shape[0], device=device)
            first_drop = torch.full((n,), need, dtype=torch.int64, device=device)
            first_drop.scatter_reduce_(0, drop, position, reduce="amin")
            take = (first_drop[first] >= position) & (first_drop[second] >= position)
            dropped = torch.zeros(n, dtype=torch.bool, device=device)
            dropped[drop[take]] = True
            radius = torch.maximum(radius, nn_dist[order[take]].max())
            kept = ~dropped
            new_index = torch.cumsum(kept, 0) - 1
            orphans = dropped[nn_index][kept]  # kept items whose nearest other was dropped
            items, nn_dist, nn_index = items[kept], nn_dist[kept], new_index[nn_index[kept]]
            n = items.shape[0]
            rows = torch.nonzero(orphans).flatten()
            if rows.numel():
                nn_dist[rows], nn_index[rows] = nearest_other(items, rows)
        self._nn = (nn_dist, nn_index)
        self.coverage_radius = float(radius)
        self.radius.fill_(self.coverage_radius)
        return items

    def _nearest_others(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`nearest_other` of ``items`` (the current items followed by new ones), reusing the
        result kept from the previous merge for the rows it covers: only the new rows' distances
        to all items are computed (a merge costs about (new + orphaned) x K instead of K x K)."""
        if self._nn is None or not 2 <= self._nn[0].shape[0] <= min(self.size, items.shape[0]):
            return nearest_other(items)
        cached = self._nn[0].shape[0]
        nn_dist, nn_index = self._nn[0].clone(), self._nn[1].clone()
        n = items.shape[0]
        if n == cached:
            return nn_dist, nn_index
        # one block of squared distances, new items x all items, serves both directions: its rows
        # give the new items' nearest others, its columns over the old items whether a new item is
        # nearer to an old one than the old one's nearest so far
        d2 = squared_distances(items[cached:], items)
        rows = torch.arange(n - cached, device=items.device)
        d2[rows, rows + cached] = math.inf
        new_best = d2.min(dim=1)
        to_new = d2[:, :cached].min(dim=0)
        to_new_dist = to_new.values.sqrt()
        closer = to_new_dist < nn_dist
        nn_dist = torch.where(closer, to_new_dist, nn_dist)
        nn_index = torch.where(closer, to_new.indices + cached, nn_index)
        return torch.cat([nn_dist, new_best.values.sqrt()]), torch.cat([nn_index, new_best.indices])

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._forget_derived()  # the loaded items are not the ones they were computed for
        super()._load_from_state_dict(*args, **kwargs)
        self.size = int(self.count)  # one read at load time; the mirrors follow the loaded buffers
        self.coverage_radius = float(self.radius)


def farthest_first(z: torch.Tensor, nearest: torch.Tensor | None, steps: int, radius: float) -> torch.Tensor:
    """Indices of up to ``steps`` patches chosen farthest-first among those farther than ``radius``.

    Each step takes the patch farthest from the memory and from the patches chosen before it (into an
    empty memory, the first is the patch farthest from the image's mean patch: one right answer, the same
    on every device); it stops (in effect) at the first patch not farther than ``radius``. Only patches
    already farther than the radius can ever be chosen (a patch's distance only shrinks as others are
    chosen), so the search runs on those candidates; the steps run on the device and their distances are
    read once at the end.

    Args:
        z: ``(P, D) float`` patch embeddings.
        nearest: ``(P,) float32`` distance of each patch to its nearest item; ``None``: the memory is empty.
        steps: most patches chosen.
        radius: coverage radius; a patch is chosen only while its distance exceeds it.

    Returns:
        ``(m,) int64`` indices into ``z``, m <= steps, in the order chosen.
    """
    if nearest is None:
        candidates = torch.arange(z.shape[0], device=z.device)
    else:
        candidates = torch.nonzero(nearest.float() > radius).flatten()
    count = min(steps, int(candidates.numel()))
    if count == 0:
        return candidates[:0]
    cz = z[candidates].float()
    picks = torch.empty(count, dtype=torch.int64, device=z.device)
    picked = torch.empty(count, dtype=torch.float32, device=z.device)
    if nearest is None:  # an empty memory: the first patch is the one farthest from the image's mean patch
        first = (cz - cz.mean(0)).norm(dim=1).argmax().view(1)
        picks[0], picked[0] = first[0], math.inf
        dist, start = (cz - cz.index_select(0, first)).norm(dim=1), 1
    else:
        dist, start = nearest.float()[candidates], 0
    for step in range(start, count):
        best = dist.max(dim=0)
        picks[step] = best.indices
        picked[step] = best.values
        dist = torch.minimum(dist, (cz - cz.index_select(0, best.indices.view(1))).norm(dim=1))
    # the chosen distances never increase: the valid picks are a prefix
    valid = int((picked > radius).sum())
    return candidates[picks[:valid]]


def nearest_other(
    items: torch.Tensor, rows: torch.Tensor | None = None, block: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each item (or each of ``rows``), the distance to and index of its nearest other item.

    Args:
        items: ``(n, D) float32``, n >= 2.
        rows: ``(m,) int64`` indices of the items to answer for (``items``' device); ``None``: all.

    Returns:
        ``(m,) float32`` distances and ``(m,) int64`` indices into ``items``, on ``items``' device.
    """
    device = items.device
    rows = torch.arange(items.shape[0], device=device) if rows is None else rows
    dists, index = [], []
    for start in range(0, rows.shape[0], block):
        chunk = rows[start : start + block]
        d2 = squared_distances(items[chunk], items)
        d2[torch.arange(chunk.shape[0], device=device), chunk] = math.inf
        best = d2.min(dim=1)
        dists.append(best.values.sqrt())
        index.append(best.indices)
    if not dists:
        return torch.zeros(0, device=device), torch.zeros(0, dtype=torch.int64, device=device)
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
        self.scorer: Scorer | None = None
        self.steps = 0  # Python mirror of ``step``

    @property
    def items(self) -> torch.Tensor:
        """``(K, D) float32``: all items (the learned memory is always full)."""
        return self.weight

    @torch.no_grad()
    def search(self, z: torch.Tensor, k: int) -> Nearest:
        """Nearest items of ``z (N, D)``: through :attr:`scorer` when one is set, else the exact reference."""
        if self.scorer is not None:
            return self.scorer(z, self.items.detach())
        return nearest_memory(z, self.items.detach(), k)

    @torch.no_grad()
    def mark_used(self, index: torch.Tensor) -> None:
        """Record the nearest-item indices ``(P,) int64`` of the current image and advance a step."""
        self.last_used[index] = self.step
        self.step += 1
        self.steps += 1

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.steps = int(self.step)

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
        count = min(int(stale.numel()), z.shape[0])
        if count == 0:
            return 0
        dist = nearest.float().clone()
        chosen = torch.empty(count, dtype=torch.int64, device=z.device)
        for step in range(count):
            i = dist.argmax().view(1)
            chosen[step] = i[0]
            dist = torch.minimum(dist, (z - z.index_select(0, i)).norm(dim=1))
            dist.index_fill_(0, i, -1.0)
        stale = stale[:count]
        self.weight[stale] = z[chosen]
        self.last_used[stale] = self.step
        return count

    @torch.no_grad()
    def refresh(self, z: torch.Tensor, min_patches: int) -> int:
        """The paper's refresh: reassign patches, dissolve items with fewer than ``min_patches``
        patches, and split the most populated item by 2-means for each dissolved one.

        Args:
            z: ``(P, D) float32`` recent patch embeddings.

        Returns:
            Number of items dissolved (and re-created by splitting).
        """
        index = nearest_memory(z, self.weight.detach(), 1).index
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
