"""The pure-torch LeMO model: adapter + bounded memory + scoring. Training glue is in updater.py."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from lemo_edge.backbone import FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError, StateError, describe
from lemo_edge.knn import create_memory_index
from lemo_edge.memory import CoresetMemory, LearnedMemory
from lemo_edge.scoring import Nearest, Scorer, anomaly_map, image_scores, mask_padding
from lemo_edge.tiling import TileLayout


class CoordAdapter(nn.Module):
    """1x1 convolution over the features plus two coordinate channels (CoordConv).

    Initialised as the identity on the feature channels and zero on the coordinates, so an
    untrained adapter passes features through unchanged.
    ``forward``: ``(B, D, h, w) float32`` -> ``(B, D', h, w) float32``.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim + 2, out_dim, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            eye = torch.eye(out_dim, in_dim)
            self.conv.weight[:, :in_dim, 0, 0] = eye
            assert self.conv.bias is not None  # created with bias=True above
            self.conv.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        ys = torch.linspace(-1.0, 1.0, h, device=features.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device).view(1, 1, 1, w).expand(b, 1, h, w)
        return self.conv(torch.cat([features, ys, xs], dim=1))


class PositionNorm(nn.Module):
    """Per-position running mean and variance of accepted patch scores; normalises maps to z-scores.

    Normal appearance varies by position (tile edges, illumination falloff): a raw distance that is
    ordinary at the border can be extreme in the centre. Statistics are learned online from the
    scores each accepted image had *before* it was learned (no labels), with exponentially
    decaying weights (window ``window`` images). Until ``min_count`` images were seen the raw
    scores pass through. Buffers: ``mean (h, w)``, ``var (h, w)`` float32, ``count () int64``; with tiles the
    grid is ``(T, h, w)`` (one statistic per tile and cell) and a frame's batch of ``T`` maps is normalised.
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, grid: tuple[int, ...], window: int = 64, min_count: int = 8, eps: float = 1e-6) -> None:
        super().__init__()
        self.window = window
        self.min_count = min_count
        self.eps = eps
        self.register_buffer("mean", torch.zeros(grid))
        self.register_buffer("var", torch.zeros(grid))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.seen = 0  # Python mirror of ``count``

    @property
    def ready(self) -> bool:
        """Whether maps are normalised yet."""
        return self.seen >= self.min_count

    @torch.no_grad()
    def update(self, patch: torch.Tensor) -> None:
        """Add one image's raw patch scores ``(h, w)`` (tiles: ``(T, h, w)``) float32; the caller passes finite
        scores only (:class:`~lemo_edge.inspector.Inspector` never learns from a frame that has a non-finite one)."""
        self.seen += 1
        self.count.fill_(self.seen)
        alpha = max(1.0 / self.seen, 1.0 / self.window)
        delta = patch - self.mean
        self.mean += alpha * delta
        self.var.copy_((1.0 - alpha) * (self.var + alpha * delta * delta))

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.seen = int(self.count)

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` raw scores -> z-scores (or unchanged before ``min_count``)."""
        if not self.ready:
            return patch
        return (patch - self.mean) / (self.var + self.eps).sqrt()


class Scores(NamedTuple):
    """Scores of a batch.

    Attributes:
        embeddings: ``(B, h*w, D') float32`` adapter outputs (reused by the online update).
        nearest: :class:`Nearest` over the flattened ``B*h*w`` patches (raw distances).
        raw: ``(B, h, w) float32`` raw patch scores (distances).
        patch: ``(B, h, w) float32`` patch scores after position normalisation; padded cells (``valid``
            false) hold their image's lowest score of a valid cell, so they never raise a map or its maximum.
        valid: ``(B, h, w) bool`` cells of the frame's content (the others are letterbox padding: neither
            scored nor learned), or ``None``: every cell.
    """

    embeddings: torch.Tensor
    nearest: Nearest
    raw: torch.Tensor
    patch: torch.Tensor
    valid: torch.Tensor | None = None


class LemoModel(nn.Module):
    """Adapter + memory for features of one backbone at one input size.

    Args:
        config: the model's configuration.
        spec: the backbone's feature spec (D and stride must match the features fed in).
        layout: the tiles a frame is cut into (:mod:`lemo_edge.tiling`; a frame is then a batch of
            ``layout.count`` inputs and the position normalisation is kept per tile and cell); ``None``: one
            input per frame.
    """

    def __init__(self, config: ModelConfig, spec: FeatureSpec, layout: TileLayout | None = None) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.layout = layout
        height, width = config.input_hw
        self.grid = (height // spec.stride, width // spec.stride)
        dim = config.embed_dim or spec.dim
        self.adapter = CoordAdapter(spec.dim, dim)
        self.adapter.requires_grad_(config.adapter)
        self._identity_checked: tuple[int, int, int] | None = None
        self._identity = False
        self.memory: CoresetMemory | LearnedMemory
        if config.method == "coreset":
            index = create_memory_index(config.knn, seed=config.seed) if config.knn != "exact" else None
            self.memory = CoresetMemory(
                config.memory_size,
                dim,
                config.insert_per_image,
                config.merge_slack,
                index,
                admission=config.admission,
                pending_capacity=config.pending_rows,
                confirm=config.confirm_images,
                ttl=config.pending_ttl,
                admit_z=config.admit_z,
                pending_searched=config.pending_searched,
            )
        else:
            scale = float(config.extra.get("init_scale", 1.0))
            self.memory = LearnedMemory(config.memory_size, dim, scale=scale, seed=config.seed)
        self.position_norm = PositionNorm(self._norm_grid(), config.position_window) if config.position_norm else None

    def _norm_grid(self) -> tuple[int, ...]:
        """``(h, w)``, or ``(T, h, w)`` with a layout of ``T > 1`` tiles (statistics per tile and cell)."""
        tiles = self.layout.count if self.layout is not None else 1
        return (tiles, *self.grid) if tiles > 1 else self.grid

    def use_layout(self, layout: TileLayout | None, fresh: bool) -> None:
        """Score frames cut into ``layout``'s tiles from now on (a new position normalisation when it changes).

        Args:
            layout: the tiles, or ``None`` for one input per frame.
            fresh: nothing was learned yet; otherwise the layout must be the one the model learned with.

        Raises:
            StateError: the model learned with another layout.
        """
        if layout == self.layout:
            return
        if not fresh:
            was = self.layout.describe() if self.layout is not None else "no tiles and no roi"
            now = layout.describe() if layout is not None else "no tiles and no roi"
            raise StateError(f"tile layout: expected {was} (the model learned with it), got {now}")
        self.layout = layout
        if self.position_norm is not None:
            device = self.position_norm.mean.device
            self.position_norm = PositionNorm(self._norm_grid(), self.config.position_window).to(device)

    def check_features(self, features: torch.Tensor) -> None:
        """Raise InputError unless ``features`` is ``(B, D, h, w)`` float for this model."""
        expected = (self.spec.dim, *self.grid)
        if features.ndim != 4 or tuple(features.shape[1:]) != expected or not features.is_floating_point():
            raise InputError(f"features: expected (B, {', '.join(map(str, expected))}) float, got {describe(features)}")

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w) float`` -> ``(B, h*w, D') float32`` patch embeddings.

        An adapter that is not trained (``config.adapter`` false) and still the identity it starts as is skipped:
        its 1x1 convolution would return the features unchanged, at the cost of a convolution and a copy a frame.
        """
        out = features.float() if self._adapter_is_identity() else self.adapter(features.float())
        return out.flatten(2).transpose(1, 2)

    def _adapter_is_identity(self) -> bool:
        """Whether the adapter is an untrained identity (checked again whenever its weights change)."""
        if self.config.adapter:
            return False
        conv = self.adapter.conv
        assert conv.bias is not None  # CoordAdapter creates it
        version = (conv.weight._version, conv.bias._version, conv.weight.data_ptr())
        if self._identity_checked != version:
            d = self.spec.dim
            weight = conv.weight[:, :, 0, 0]
            self._identity = (
                weight.shape == (d, d + 2)
                and bool(torch.equal(weight[:, :d], torch.eye(d, device=weight.device)))
                and not bool(weight[:, d:].any())
                and not bool(conv.bias.any())
            )
            self._identity_checked = version
        return self._identity

    def use_scorer(self, scorer: Scorer | None) -> None:
        """Search the memory with ``scorer`` (e.g. the CUDA kernel) instead of the torch reference.

        Args:
            scorer: ``(z (N, D), items (K, D)) -> Nearest`` computing what :func:`nearest_memory` computes
                for ``config.score_k`` nearest items (its ``k`` attribute, when it has one, must equal it);
                ``None``: back to the memory's own search.

        Raises:
            InputError: the scorer averages another number of nearest items than the model.
        """
        k = getattr(scorer, "k", self.config.score_k)
        if scorer is not None and k != self.config.score_k:
            raise InputError(f"scorer: expected one averaging score_k={self.config.score_k} nearest items, got k={k}")
        self.memory.scorer = scorer

    def score(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> Scores:
        """Patch scores of a batch of backbone features.

        Args:
            features: ``(B, D, h, w) float`` backbone features, on the model's device.
            valid: ``(h, w)`` or ``(B, h, w) bool`` cells of the frames' content (letterbox;
                :func:`lemo_edge.letterbox.valid_cells`), at least one per frame, or ``None``: every cell.

        Returns:
            :class:`Scores`; every memory answers through its ``search`` (the reference, an index or the
            scorer set by :meth:`use_scorer`).
        """
        emb = self.embed(features)
        b, p, d = emb.shape
        items = self.memory.items
        if items.shape[0] == 0:
            inf = torch.full((b * p,), float("inf"), device=emb.device)
            nearest = Nearest(inf, torch.zeros(b * p, dtype=torch.int64, device=emb.device))
        else:
            with torch.no_grad():
                k = min(self.config.score_k, items.shape[0])
                nearest = self.memory.search(emb.detach().reshape(b * p, d), k)
        raw = nearest.score.view(b, *self.grid)
        patch = self.position_norm(raw) if self.position_norm is not None else raw
        if valid is not None:
            valid = self._check_valid(valid, b, emb.device)
            patch = mask_padding(patch, valid)
        return Scores(emb, nearest, raw, patch, valid)

    def _check_valid(self, valid: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        """``valid`` as ``(B, h, w) bool`` on ``device``; its shape and dtype are checked (metadata only: no host
        synchronisation), that each frame has a content cell is the caller's (``valid_cells`` guarantees it)."""
        if valid.dtype != torch.bool or tuple(valid.shape[-2:]) != self.grid or valid.ndim not in (2, 3):
            raise InputError(f"valid: expected ({batch}, {self.grid[0]}, {self.grid[1]}) bool, got {describe(valid)}")
        return valid.to(device).expand(batch, *self.grid)

    def maps(self, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``(B, H, W) float32`` (``config.input_hw``) and image scores ``(B,) float32``."""
        size = self.config.input_hw
        # an empty memory scores inf: its maps are 0; NaN stays NaN (the Inspector reports such frames)
        maps = anomaly_map(patch.nan_to_num(nan=math.nan, posinf=0.0), size, self.config.sigma)
        return maps, image_scores(maps)
