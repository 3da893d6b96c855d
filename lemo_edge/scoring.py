"""Scoring reference: nearest-memory distances, anomaly maps and image scores (pure torch).

This is the reference that every fast scorer (the CUDA kernel in ``runtime/kernels``) must match.
It runs on CPU and CUDA alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lemo_edge.errors import InputError, describe

# Rows of z per block of the reference: a (256, K) block of distances stays in the CPU's caches
# between the matrix product that writes it and the top-k that reads it (measured in one run on a
# 2-core Zen 4, one thread, K = 8192, D = 152, top-3: 45 ms, against 55 ms for one (N, K) block;
# docs/method.md section 7).
_BLOCK_ROWS = 256

# Columns per group of the top-k selection (:func:`smallest_k`): the k smallest values of a row lie in the k
# groups with the smallest minima, so a cheap per-group minimum, a top-k over the groups and a top-k over
# their k * 128 columns replace a top-k over all K columns (same values; measured 12 -> 4 ms per 1024 x 7168
# block of distances, docs/method.md section 7).
_GROUP_COLS = 128


class Nearest(NamedTuple):
    """Per-patch result of :func:`nearest_memory`.

    Attributes:
        score: ``(N,) float32``: distance to the nearest item, or the mean over the ``k`` nearest.
        index: ``(N,) int64``: index of the nearest item (the online update reuses it).
        distance: ``(N,) float32`` distance to the nearest item when ``k > 1`` (``None``: same as
            ``score``); the coreset memory's coverage test uses it.
    """

    score: torch.Tensor
    index: torch.Tensor  # type: ignore[assignment]  # shadows tuple.index on purpose
    distance: torch.Tensor | None = None

    @property
    def nearest_distance(self) -> torch.Tensor:
        """``(N,) float32`` distance to the nearest item."""
        return self.score if self.distance is None else self.distance


Scorer = Callable[[torch.Tensor, torch.Tensor], Nearest]
"""A nearest-memory scorer: ``z (N, D)``, ``memory (K, D)`` -> :class:`Nearest`, as :func:`nearest_memory`
computes it for the scorer's own ``k`` (``lemo_edge.runtime.protocols.Scorer`` is this contract)."""


def squared_distances(z: torch.Tensor, memory: torch.Tensor, memory_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances, clamped at 0.

    Args:
        z: ``(N, D)`` float.
        memory: ``(K, D)`` float, same device.
        memory_sq: ``(K,) float32`` squared norms of ``memory``'s rows, when a caller asking for many blocks
            against the same memory computed them once (``None``: computed here).

    Returns:
        ``(N, K)`` float32.
    """
    z = z.float()
    memory = memory.float()
    if memory_sq is None:
        memory_sq = (memory * memory).sum(1)
    d2 = torch.addmm(memory_sq, z, memory.T, alpha=-2.0).add_((z * z).sum(1, keepdim=True))
    return d2.clamp_min_(0.0)


def smallest_k(values: torch.Tensor, k: int, group: int = _GROUP_COLS) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest values of each row and their columns, ascending: what ``values.topk(k, largest=False)``
    returns (the same values; among equal values another column may be named).

    The first ``g * group`` columns are split into ``g`` groups of ``group``; the ``k`` smallest values of a row
    among them lie in the ``k`` groups with the smallest minima (a group holding one of them has a minimum no
    larger than it, and fewer than ``k`` other groups can have a smaller one), so only those groups' columns and
    the ``< group`` columns after them are searched.

    Args:
        values: ``(B, K) float`` (contiguous rows).
        k: ``1 <= k <= K``.
        group: columns per group.

    Returns:
        ``(B, k)`` values (``values``' dtype) and ``(B, k) int64`` columns.
    """
    rows, cols = values.shape
    groups = cols // group
    if k == 1:
        return _smallest_1(values, group) if groups >= 8 else values.min(dim=1, keepdim=True)
    if groups <= 2 * k:  # too few groups to skip any: the plain top-k
        return values.topk(k, dim=1, largest=False)
    head = values[:, : groups * group]
    chosen = head.reshape(rows, groups, group).amin(2).topk(k, dim=1, largest=False).indices  # (B, k)
    offsets = torch.arange(group, device=values.device)
    columns = (chosen[:, :, None] * group + offsets).reshape(rows, k * group)
    if cols > groups * group:  # the last, partial group is searched for every row
        tail = torch.arange(groups * group, cols, device=values.device).expand(rows, -1)
        columns = torch.cat([columns, tail], dim=1)
    best, where = values.gather(1, columns).topk(k, dim=1, largest=False)
    return best, columns.gather(1, where)


def _smallest_1(values: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`smallest_k` for ``k = 1``: each row's minimum and the first column holding it (as ``min(dim=1)``).

    The group minima (``amin``, vectorised) name the first group holding the row's minimum; only that group's
    columns are searched with indices (a minimum with indices over whole rows ran 5.8x slower on this CPU).
    """
    cols = values.shape[1]
    full = cols // group * group
    minima = values.narrow(1, 0, full).unflatten(1, (-1, group)).amin(2)
    if cols > full:  # the last, partial group
        minima = torch.cat([minima, values.narrow(1, full, cols - full).amin(1, keepdim=True)], dim=1)
    offsets = torch.arange(group, device=values.device)
    # a partial group repeats its last column: a repeat follows the column, so the first holding the minimum stays
    columns = (minima.argmin(1, keepdim=True) * group + offsets).clamp_max_(cols - 1)
    best, where = values.gather(1, columns).min(dim=1, keepdim=True)
    return best, columns.gather(1, where)


def nearest_memory(z: torch.Tensor, memory: torch.Tensor, k: int = 1) -> Nearest:
    """Distance of each patch embedding to its nearest memory items.

    Args:
        z: ``(N, D)`` float16/float32, any device.
        memory: ``(K, D)`` float16/float32, same device.
        k: number of nearest items averaged into the score (1: the nearest distance).

    Returns:
        :class:`Nearest` with ``score (N,) float32`` and ``index (N,) int64`` on ``z``'s device.
    """
    if z.ndim != 2 or memory.ndim != 2 or z.shape[1] != memory.shape[1]:
        raise InputError(
            f"nearest_memory: expected z (N, D) and memory (K, D), got {describe(z)} and {describe(memory)}"
        )
    if not 1 <= k <= memory.shape[0]:
        raise InputError(f"nearest_memory: expected 1 <= k <= K={memory.shape[0]}, got k={k}")
    z = z.float()
    memory = memory.float()
    # ||z - m||^2 = ||z||^2 + ||m||^2 - 2 z.m; the ||z||^2 term does not change which items are
    # nearest, so the block holds ||m||^2 - 2 z.m (one fused matrix product) and ||z||^2 is added
    # to the k selected values only.
    memory_sq = (memory * memory).sum(1)
    scores, indices, nearest = [], [], []
    for start in range(0, z.shape[0], _BLOCK_ROWS):
        rows = z[start : start + _BLOCK_ROWS]
        partial = torch.addmm(memory_sq, rows, memory.T, alpha=-2.0)
        best, order = smallest_k(partial, k)
        root = (best + (rows * rows).sum(1, keepdim=True)).clamp_min_(0.0).sqrt_()
        scores.append(root.mean(1))
        if k > 1:
            nearest.append(root[:, 0])
        indices.append(order[:, 0])
    return Nearest(torch.cat(scores), torch.cat(indices), torch.cat(nearest) if nearest else None)


def gaussian_kernel1d(sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``4 * sigma`` (``(2r + 1,) float32``)."""
    radius = max(1, int(math.ceil(4.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=16)
def map_matrix(n: int, size: int, sigma: float, device: str = "cpu") -> torch.Tensor:
    """``(size, n) float32``: bilinear upsampling of ``n`` samples to ``size`` followed by the Gaussian blur.

    Row ``i`` holds the weights of the ``n`` patch scores in output pixel ``i``: the 1-D bilinear weights
    (``align_corners=False``, as :func:`torch.nn.functional.interpolate`) times the blur of
    :func:`gaussian_kernel1d` with replicate padding. Both are linear, so ``A_h @ scores @ A_w.T`` is the
    upsampled and smoothed map. Built in float64 and cached per ``(n, size, sigma, device)``.
    """
    eye = torch.eye(n, dtype=torch.float64)[None]  # (1, n, n): basis vectors as channels
    up = F.interpolate(eye, size=size, mode="linear", align_corners=False)[0]  # (n, size): upsampled basis
    if sigma > 0:
        kernel = gaussian_kernel1d(sigma).double()
        pad = kernel.numel() // 2
        padded = F.pad(up[:, None], (pad, pad), mode="replicate")
        up = F.conv1d(padded, kernel.view(1, 1, -1))[:, 0]
    return up.T.contiguous().to(device=device, dtype=torch.float32)


def anomaly_map(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """Upsample patch scores to the input size and smooth them with a Gaussian.

    Bilinear upsampling (``align_corners=False``) then a separable Gaussian of radius ``4 * sigma`` with
    replicate padding, computed as ``A_h @ scores @ A_w.T`` with the precomputed :func:`map_matrix`
    per axis: equal to interpolate-then-convolve within float32 rounding (a test: 1e-5 of the map's range),
    about 20x cheaper at 256 x 256 (``benchmarks/results/knn-stages.md``).

    Args:
        patch_scores: ``(B, h, w)`` float.
        size: ``(H, W)`` of the input image.
        sigma: Gaussian sigma in input pixels (0 disables smoothing).

    Returns:
        ``(B, H, W) float32``, same device.
    """
    if patch_scores.ndim != 3:
        raise InputError(f"anomaly_map: expected patch scores (B, h, w), got {describe(patch_scores)}")
    height, width = int(size[0]), int(size[1])
    _, h, w = patch_scores.shape
    device = str(patch_scores.device)
    rows = map_matrix(h, height, float(sigma), device)
    cols = map_matrix(w, width, float(sigma), device)
    return torch.matmul(torch.matmul(rows, patch_scores.float()), cols.T)


def mask_padding(patch: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Patch scores with every padded cell set to its image's lowest content score.

    The smoothed map is a weighted mean of patch scores, so padded cells then never raise it above what the
    content holds, and the image score (its maximum) is the content's.

    Args:
        patch: ``(B, h, w) float32``.
        valid: ``(B, h, w) bool`` content cells (at least one per image), same device.

    Returns:
        ``(B, h, w) float32``.
    """
    low = patch.masked_fill(~valid, math.inf).flatten(1).amin(1).view(-1, 1, 1)
    return torch.where(valid, patch, low)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image score = maximum of the smoothed map: ``(B, H, W)`` -> ``(B,) float32``."""
    return maps.flatten(1).amax(1)
