"""Baselines on the same backbone features, scored by the same nearest-memory reference.

* :func:`patchcore_bank`: PatchCore, offline: greedy k-center coreset of the training patches.
* :class:`GreedyBank`: online; adds a patch when its nearest distance is above the running 95th
  percentile, merges the closest pair when full.
* :class:`ReservoirBank`: online; a uniform reservoir sample of every patch seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lemo_edge.memory import nearest_other
from lemo_edge.scoring import gaussian_kernel1d, mask_padding, nearest_memory, squared_distances


def kcenter_greedy(x: torch.Tensor, k: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of a greedy k-center coreset (PatchCore's selection, on a random projection).

    Args:
        x: ``(n, D) float32`` points.
        k: coreset size (``<= n``).
        projection_dim: dimension of the Johnson-Lindenstrauss projection used for selection.

    Returns:
        ``(k,) int64`` indices into ``x``.
    """
    generator = torch.Generator().manual_seed(seed)
    if projection_dim and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        x = x @ proj
    k = min(k, x.shape[0])
    chosen = torch.empty(k, dtype=torch.int64)
    start = int(torch.randint(0, x.shape[0], (1,), generator=generator))
    chosen[0] = start
    sq = (x * x).sum(1)
    dist = sq - 2.0 * (x @ x[start]) + sq[start]
    for i in range(1, k):
        nxt = int(dist.argmax())
        chosen[i] = nxt
        torch.minimum(dist, sq - 2.0 * (x @ x[nxt]) + sq[nxt], out=dist)
    return chosen


def patchcore_bank(patches: torch.Tensor, size: int, subsample: int = 100_000, seed: int = 0) -> torch.Tensor:
    """PatchCore memory bank: k-center coreset of ``size`` items from a random subsample.

    Args:
        patches: ``(n, D) float`` all training patch embeddings.
        size: coreset size.
        subsample: random patches the coreset is selected from (as anomalib's peer run did).

    Returns:
        ``(size, D) float32``.
    """
    generator = torch.Generator().manual_seed(seed)
    pool = patches[torch.randperm(patches.shape[0], generator=generator)[:subsample]].float()
    return pool[kcenter_greedy(pool, size, seed=seed)]


class ReservoirBank:
    """Uniform reservoir sample (Vitter's algorithm R) of all patches streamed so far."""

    def __init__(self, capacity: int, dim: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.bank = torch.zeros(capacity, dim)
        self.seen = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def items(self) -> torch.Tensor:
        """``(n, D) float32`` valid items."""
        return self.bank[: min(self.seen, self.capacity)]

    def add(self, z: torch.Tensor) -> None:
        """Offer one image's patches ``(P, D) float32``."""
        for row in z:
            if self.seen < self.capacity:
                self.bank[self.seen] = row
            else:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=self.generator))
                if j < self.capacity:
                    self.bank[j] = row
            self.seen += 1


class GreedyBank:
    """Online greedy bank: add patches farther than the running 95th percentile of nearest
    distances; when full, merge (average) the closest pairs."""

    def __init__(self, capacity: int, dim: int, quantile: float = 0.95, per_image: int = 64, seed: int = 0) -> None:
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self.quantile = quantile
        self.per_image = per_image
        self.bank = torch.zeros(0, dim)
        self.level = math.nan
        self.images = 0

    @property
    def items(self) -> torch.Tensor:
        """``(n, D) float32`` valid items."""
        return self.bank

    def add(self, z: torch.Tensor, nearest: torch.Tensor) -> None:
        """Offer one image's patches ``(P, D)`` with their nearest distances ``(P,)``."""
        self.images += 1
        if self.bank.shape[0] == 0:
            self.bank = z[torch.randperm(z.shape[0], generator=self.generator)[: self.per_image]].clone()
            return
        level = float(torch.quantile(nearest, self.quantile))
        self.level = level if math.isnan(self.level) else self.level + (level - self.level) / min(self.images, 64)
        candidates = torch.nonzero(nearest > self.level).flatten()
        candidates = candidates[nearest[candidates].argsort(descending=True)[: self.per_image]]
        self.bank = torch.cat([self.bank, z[candidates]])
        if self.bank.shape[0] > self.capacity:
            # merge in batches down to 95% of K: the same closest-pair rule, one distance pass per batch
            target = int(self.capacity * 0.95)
            while self.bank.shape[0] > target:
                self._merge_closest(self.bank.shape[0] - target)

    def _merge_closest(self, count: int) -> None:
        dist, index = nearest_other(self.bank)
        used = torch.zeros(self.bank.shape[0], dtype=torch.bool)
        drop = []
        for i in torch.argsort(dist).tolist():
            j = int(index[i])
            if used[i] or used[j]:
                continue
            used[i] = used[j] = True
            self.bank[min(i, j)] = 0.5 * (self.bank[i] + self.bank[j])
            drop.append(max(i, j))
            if len(drop) == count:
                break
        keep = torch.ones(self.bank.shape[0], dtype=torch.bool)
        keep[drop] = False
        self.bank = self.bank[keep]


def patchcore_scores(
    bank: torch.Tensor,
    features: torch.Tensor,
    size: tuple[int, int],
    sigma: float = 4.0,
    neighbors: int = 9,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps and image scores as PatchCore computes them (Roth et al. 2022; anomalib's PatchCore).

    Patch score: distance to the nearest bank item. Map: patch scores upsampled (nearest) to the input
    size and Gaussian-smoothed (``sigma``, reflected borders). Image score: the largest patch score,
    re-weighted by ``1 - softmax`` of that patch's distances to the ``neighbors`` nearest bank items of its
    own nearest item (its own nearest first): a maximum that lies in a dense region of the bank counts less.

    Args:
        bank: ``(n, D) float32`` memory bank.
        features: ``(B, D, h, w) float`` patch features.
        size: ``(H, W)`` of the input images.
        sigma: Gaussian sigma of the map in input pixels.
        neighbors: bank items of the re-weighting (PatchCore's b = 9); 1 disables it.
        valid: ``(h, w) bool`` content cells of letterboxed images (``lemo_edge.letterbox.valid_cells``), or None:
            every cell. Padded cells take the image's lowest content score and never hold its maximum.

    Returns:
        ``(B, H, W) float32`` maps and ``(B,) float32`` image scores.
    """
    patch, score = patchcore_patch_scores(bank, features, neighbors, valid)
    return patchcore_maps(patch, size, sigma), score


def patchcore_patch_scores(
    bank: torch.Tensor, features: torch.Tensor, neighbors: int = 9, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchCore's patch scores ``(B, h, w)`` and re-weighted image scores ``(B,)`` (see :func:`patchcore_scores`)."""
    b, d, h, w = features.shape
    z = features.float().flatten(2).transpose(1, 2).reshape(-1, d)
    nearest = nearest_memory(z, bank, 1)
    patch = nearest.score.view(b, h * w)
    if valid is not None:
        patch = mask_padding(patch.view(b, h, w), valid.expand(b, h, w)).view(b, h * w)
    rows = torch.arange(b, device=z.device)
    top = patch.argmax(dim=1)
    score = patch[rows, top]
    if neighbors > 1:
        top_features = z.view(b, h * w, d)[rows, top]
        centre = bank[nearest.index.view(b, h * w)[rows, top]]
        support = squared_distances(centre, bank).topk(min(neighbors, bank.shape[0]), dim=1, largest=False).indices
        distances = (top_features[:, None, :] - bank[support]).norm(dim=2)
        score = (1.0 - torch.softmax(distances, dim=1)[:, 0]) * score
    return patch.view(b, h, w), score


def patchcore_maps(patch: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """PatchCore's maps ``(B, H, W)`` of patch scores ``(B, h, w)``: nearest upsampling, reflected Gaussian."""
    maps = F.interpolate(patch[:, None], size=size, mode="nearest")
    if sigma > 0:
        kernel = gaussian_kernel1d(sigma, maps.device)
        pad = kernel.numel() // 2
        maps = F.pad(maps, (pad, pad, pad, pad), mode="reflect")
        maps = F.conv2d(F.conv2d(maps, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return maps[:, 0]
