"""Approximate nearest-item search over a coreset memory: an inverted file (IVF) on the CPU or GPU.

The memory's items are split into ``lists`` cells by k-means; each patch searches only the items of
the ``probe`` cells whose centroids are nearest to it, so a frame visits about ``probe / lists`` of
the items. The result can only overestimate a patch's score (a nearer item may sit in a cell not
searched); docs/method.md section 7 measures by how much and what it does to the metrics.

The index follows the memory it serves: rows appended since the last search are assigned to their
nearest centroid; after a merge (rows dropped and reordered) every item is re-assigned, and the
centroids are refined by a few k-means steps every ``refit_every`` merges.
"""

from __future__ import annotations

import math

import torch

from lemo_edge.errors import InputError
from lemo_edge.scoring import Nearest, nearest_memory


class InvertedIndex:
    """Inverted lists over the first ``n`` rows of a memory bank.

    Args:
        lists: number of cells (k-means centroids).
        probe: cells searched per patch.
        min_items: below this many items the index is not built and searches are exact.
        refit_every: merges between two k-means refinements of the centroids.
        seed: seed of the k-means initialisation.
    """

    def __init__(self, lists: int, probe: int, min_items: int = 0, refit_every: int = 16, seed: int = 0) -> None:
        if lists < 1 or not 1 <= probe <= lists:
            raise InputError(f"ivf: expected lists >= 1 and 1 <= probe <= lists, got lists={lists} probe={probe}")
        self.lists = lists
        self.probe = probe
        self.min_items = max(min_items, 32 * lists)
        self.refit_every = refit_every
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget everything (the items were replaced, e.g. by loading a state)."""
        self.centroids: torch.Tensor | None = None
        self.assign = torch.zeros(0, dtype=torch.int64)
        self.merges = 0
        self._stale = True
        self._layout: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def note_merge(self) -> None:
        """The memory dropped and reordered rows: re-assign everything at the next search."""
        self._stale = True
        self.merges += 1

    def search(self, z: torch.Tensor, items: torch.Tensor, k: int) -> Nearest:
        """Approximate :func:`lemo_edge.scoring.nearest_memory` of ``z (N, D)`` against ``items (n, D)``."""
        if items.shape[0] < self.min_items:
            return nearest_memory(z, items, k)
        self._sync(items)
        order, sorted_items, sorted_sq, offsets, counts = self._layout_for(items)
        assert self.centroids is not None  # set by _sync
        z = z.float()
        cells = torch.addmm((self.centroids * self.centroids).sum(1), z, self.centroids.T, alpha=-2.0)
        probes = cells.topk(self.probe, dim=1, largest=False).indices
        n = z.shape[0]
        best = torch.full((n, self.probe * k), math.inf, device=z.device)
        best_index = torch.zeros((n, self.probe * k), dtype=torch.int64, device=z.device)
        for cell in range(self.lists):
            size = int(counts[cell])
            if size == 0:
                continue
            rows, slot = torch.nonzero(probes == cell, as_tuple=True)
            if rows.numel() == 0:
                continue
            start = int(offsets[cell])
            cell_items = slice(start, start + size)
            block = torch.addmm(sorted_sq[cell_items], z[rows], sorted_items[cell_items].T, alpha=-2.0)
            take = min(k, size)
            values, index = block.topk(take, dim=1, largest=False) if take > 1 else block.min(dim=1, keepdim=True)
            cols = slot[:, None] * k + torch.arange(take, device=z.device)[None, :]
            best[rows[:, None], cols] = values
            best_index[rows[:, None], cols] = index + start
        values, pick = best.topk(k, dim=1, largest=False)
        root = (values + (z * z).sum(1, keepdim=True)).clamp_min_(0.0).sqrt_()
        nearest = order[best_index.gather(1, pick[:, :1])[:, 0]]
        return Nearest(root.mean(1), nearest, root[:, 0] if k > 1 else None)

    # -- upkeep -------------------------------------------------------------------------------

    def _sync(self, items: torch.Tensor) -> None:
        n = items.shape[0]
        if self.centroids is None:
            self.centroids = self._kmeans(items, self._initial(items), steps=10)
            self._stale = True
        elif self._stale and self.merges >= self.refit_every:
            self.centroids = self._kmeans(items, self.centroids, steps=3)
            self.merges = 0
        if self._stale or self.assign.shape[0] > n:
            self.assign = self._nearest_cell(items)
        elif self.assign.shape[0] < n:  # rows appended since the last search
            self.assign = torch.cat([self.assign, self._nearest_cell(items[self.assign.shape[0] :])])
        else:
            return
        self._stale = False
        self._layout = None

    def _layout_for(
        self, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items sorted by cell (one contiguous block per cell), their squared norms, offsets, counts."""
        if self._layout is None:
            order = torch.argsort(self.assign)
            sorted_items = items[order].contiguous()
            counts = torch.bincount(self.assign, minlength=self.lists)
            offsets = torch.cumsum(counts, 0) - counts
            self._layout = (order, sorted_items, (sorted_items * sorted_items).sum(1), offsets.cpu(), counts.cpu())
        return self._layout

    def _initial(self, items: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return items[torch.randperm(items.shape[0], generator=generator)[: self.lists].to(items.device)].clone()

    def _nearest_cell(self, rows: torch.Tensor) -> torch.Tensor:
        assert self.centroids is not None
        return nearest_memory(rows, self.centroids, 1).index

    def _kmeans(self, items: torch.Tensor, centroids: torch.Tensor, steps: int) -> torch.Tensor:
        """Lloyd steps from ``centroids``; an emptied cell keeps its centroid."""
        for _ in range(steps):
            assign = nearest_memory(items, centroids, 1).index
            sums = torch.zeros_like(centroids).index_add_(0, assign, items.float())
            counts = torch.bincount(assign, minlength=centroids.shape[0]).to(items.dtype)[:, None]
            centroids = torch.where(counts > 0, sums / counts.clamp_min(1.0), centroids)
        return centroids
