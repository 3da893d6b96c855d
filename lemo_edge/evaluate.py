"""Evaluation protocols on a dataset: online (the paper's), mixed (total online) and offline.

The backbone is frozen, so each image's features are computed once per run: test features are
cached (float16) and every checkpoint re-scores them with the current adapter and memory.
Baselines are scored on the same features by the same reference scorer.

With tiles (``tiling``, :mod:`lemo_edge.tiling`) each image is encoded as its tiles ``(T, D, h, w)``, the stream
steps the :class:`~lemo_edge.inspector.Inspector` with them (one decision per image), maps are the stitched
maps of the region of interest at full resolution, and masks are cropped to it; the baselines, which score
one square input per image, are not run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lemo_edge import metrics
from lemo_edge.baselines import GreedyBank, ReservoirBank, patchcore_bank, patchcore_scores
from lemo_edge.config import ModelConfig, size_hw
from lemo_edge.contamination import ContaminationCounter, defect_patches
from lemo_edge.datasets import DatasetSplits, resize_sample
from lemo_edge.errors import InputError
from lemo_edge.inspector import Inspector
from lemo_edge.letterbox import Letterbox, letterbox_image, valid_cells
from lemo_edge.memory import CoresetMemory
from lemo_edge.model import LemoModel
from lemo_edge.samples import Sample
from lemo_edge.scoring import anomaly_map, image_scores, mask_padding, nearest_memory
from lemo_edge.tiling import Tiler, TileSpec
from lemo_edge.updater import OnlineUpdater

log = logging.getLogger(__name__)

PROTOCOLS = ("online", "mixed", "offline")
BASELINES = ("patchcore", "greedy", "reservoir")

# A backend: (B, 3, H, W) uint8 -> (B, D, h, w) float32.
Extract = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Encoded:
    """Backbone features of a list of images, computed once.

    Attributes:
        features: ``(N, D, h, w) float16`` cpu; with tiles ``(N, T, D, h, w)`` (each image's tiles).
        labels: ``(N,) int64`` 0 normal, 1 defect.
        masks: ``(N, H, W) uint8`` pixel masks (zeros for normal images), at the model's input; with tiles
            ``(N, roi_h, roi_w)``.
        names: image names.
        images: ``{index: (H, W, 3) uint8}`` kept for the report grid (with tiles: the ROI).
        valid: ``(h, w) bool`` content cells of letterboxed images (``None``: not letterboxed).
        content_hw: ``(h, w)`` pixels of content at the top-left of every letterboxed image (the rest is
            padding); maps and masks are cropped to it for the metrics. ``None``: not letterboxed.
        cells: with tiles, ``(N, T * h * w) bool`` defect patches of the tiles (:func:`defect_patches`); else None.
    """

    features: torch.Tensor
    labels: np.ndarray
    masks: np.ndarray
    names: list[str]
    images: dict[int, np.ndarray] = field(default_factory=dict)
    valid: torch.Tensor | None = None
    content_hw: tuple[int, int] | None = None
    cells: np.ndarray | None = None

    def content(self, maps: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` maps (or masks) cropped to the letterbox content (unchanged without letterbox)."""
        if self.content_hw is None:
            return maps
        return maps[:, : self.content_hw[0], : self.content_hw[1]]

    def frame(self, index: int) -> torch.Tensor:
        """Image ``index``'s features as the Inspector takes them: ``(1, D, h, w)`` or ``(T, D, h, w)`` float16."""
        rows = self.features[index]
        return rows[None] if rows.ndim == 3 else rows


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(1, 3, H, W) uint8`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


def _letterboxed(sample: Sample, size: tuple[int, int]) -> tuple[Sample, Letterbox]:
    image, box = letterbox_image(sample.image, size)
    mask = None if sample.mask is None else letterbox_image(sample.mask, size)[0]
    return dataclasses.replace(sample, image=image, mask=mask), box


def encode(
    items: Sequence[Any],
    extract: Extract,
    size: int | tuple[int, int],
    desc: str,
    keep: Sequence[int] = (),
    letterbox: bool = False,
    tiler: Callable[[tuple[int, int]], Tiler] | None = None,
) -> Encoded:
    """Load, resize (or letterbox, or cut into tiles) and encode ``items`` (objects with ``.load() -> Sample``).

    Args:
        items: the images.
        extract: the feature backend.
        size: ``(H, W)`` of the model's input (an int: a square).
        desc: progress bar label.
        keep: indices whose resized images are kept (report grid).
        letterbox: keep the aspect ratio (lemo_edge.letterbox) instead of resizing to ``H x W``.
        tiler: with tiles, gives the :class:`~lemo_edge.tiling.Tiler` of an image size ``(H, W)``; each image is
            then cut into its tiles (no resize) and its mask cropped to the region of interest.

    Raises:
        InputError: with ``letterbox``, images of different shapes (their content would differ).
    """
    hw = size_hw(size)
    feats, labels, masks, names, images, cells = [], [], [], [], {}, []
    keep_set = set(keep)
    first: Letterbox | None = None
    for i, item in enumerate(tqdm(items, desc=desc, unit="img", leave=False, disable=None)):
        sample = item.load()
        if tiler is not None:
            cutter = tiler(sample.image.shape[:2])
            x, y, w, h = cutter.layout.roi
            full = sample.mask if sample.mask is not None else np.zeros(sample.image.shape[:2], np.uint8)
            with torch.no_grad():
                tiles = extract(cutter.cut(sample.image)).to("cpu", torch.float16)
            feats.append(tiles)
            cells.append(defect_patches(cutter.cut_mask(full), (tiles.shape[2], tiles.shape[3])).reshape(-1))
            mask, image = full[y : y + h, x : x + w], sample.image[y : y + h, x : x + w]
        else:
            if letterbox:
                sample, box = _letterboxed(sample, hw)
                first = first or box
                if box.content_hw != first.content_hw:
                    raise InputError(
                        f"letterbox: expected images of one shape, got {first.frame_hw} and {box.frame_hw} "
                        f"({sample.name})"
                    )
            else:
                sample = resize_sample(sample, hw)
            with torch.no_grad():
                feats.append(extract(image_tensor(sample.image))[0].to("cpu", torch.float16))
            mask = sample.mask if sample.mask is not None else np.zeros(hw, np.uint8)
            image = sample.image
        labels.append(sample.label)
        masks.append(mask)
        names.append(sample.name)
        if i in keep_set:
            images[i] = image
    features = torch.stack(feats)
    valid = None if first is None else valid_cells(first, (features.shape[2], features.shape[3]))
    content = None if first is None else first.content_hw
    return Encoded(
        features,
        np.asarray(labels, np.int64),
        np.stack(masks).astype(np.uint8),
        names,
        images,
        valid,
        content,
        np.stack(cells) if cells else None,
    )


def score_model(
    inspector: Inspector, features: torch.Tensor, batch: int = 16, valid: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Maps ``(N, H, W) float32`` and image scores ``(N,) float32`` of cached features ``(N, D, h, w)``;
    ``valid``: ``(h, w) bool`` content cells of letterboxed images (``None``: all). With tiles ``(N, T, D, h, w)``:
    the stitched maps ``(N, roi_h, roi_w)``, one image at a time."""
    maps, scores = [], []
    tiled = features.ndim == 5
    batch = 1 if tiled else batch
    for start in range(0, features.shape[0], batch):
        rows = features[start : start + batch].flatten(0, 1) if tiled else features[start : start + batch]
        m, s = inspector.score(rows.to(inspector.device, torch.float32), valid)
        maps.append(m.cpu().numpy())
        scores.append(s.cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def score_bank(
    bank: torch.Tensor,
    features: torch.Tensor,
    size: tuple[int, int],
    sigma: float,
    k: int = 1,
    batch: int = 16,
    valid: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps and image scores of cached features against a plain memory bank ``(n, D)``; ``valid``: ``(h, w) bool``
    content cells of letterboxed images (padded cells take the image's lowest content score), or None."""
    maps, scores = [], []
    for start in range(0, features.shape[0], batch):
        f = features[start : start + batch].float()
        b, d, h, w = f.shape
        z = f.flatten(2).transpose(1, 2).reshape(-1, d)
        patch = nearest_memory(z, bank, min(k, bank.shape[0])).score.view(b, h, w)
        if valid is not None:
            patch = mask_padding(patch, valid.expand(b, h, w))
        m = anomaly_map(patch, size, sigma)
        maps.append(m.numpy())
        scores.append(image_scores(m).numpy())
    return np.concatenate(maps), np.concatenate(scores)


def score_patchcore(
    bank: torch.Tensor,
    features: torch.Tensor,
    size: tuple[int, int],
    sigma: float,
    batch: int = 16,
    valid: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps and image scores of cached features ``(N, D, h, w)`` as PatchCore scores them
    (:func:`lemo_edge.baselines.patchcore_scores`; ``valid`` as there)."""
    maps, scores = [], []
    for start in range(0, features.shape[0], batch):
        m, s = patchcore_scores(bank, features[start : start + batch].float(), size, sigma, valid=valid)
        maps.append(m.numpy())
        scores.append(s.numpy())
    return np.concatenate(maps), np.concatenate(scores)


def compute_metrics(
    maps: np.ndarray, scores: np.ndarray, test: Encoded, threshold: float | None = None, full: bool = True
) -> dict[str, Any]:
    """Image/pixel AUROC (and AUPRO, F1-max, rates at the threshold when ``full``).

    With ``full=False`` (few-shot checkpoints) the pixel AUROC is computed on maps and masks
    subsampled by 4 in each direction, which is 16 times cheaper and within about 0.002 of the
    full-resolution value on Magnetic Tile.

    The pixel metrics (``pixel_auroc``, ``aupro``) are None (not available) when the masks hold no
    defect pixel: a dataset with image-level labels only (its unknown masks are encoded as zeros).

    Args:
        maps: ``(N, S, S) float32`` anomaly maps.
        scores: ``(N,) float32`` image scores.
        test: the encoded test images (``labels (N,)``, ``masks (N, S, S) uint8``).
        threshold: decision threshold for the rates (None or non-finite: no rates).
        full: all metrics at full resolution (False: image and subsampled pixel AUROC only).

    Returns:
        ``{"image_auroc", "pixel_auroc"}`` (+ ``"aupro"``, ``"f1_max"`` and the rates when ``full``); the
        pixel metrics are floats or None.
    """
    step = 1 if full else 4
    maps, all_masks = test.content(maps), test.content(test.masks)  # letterbox: the content only
    masks = all_masks[:, ::step, ::step]
    pixels = bool(masks.any())
    out: dict[str, Any] = {
        "image_auroc": metrics.image_auroc(scores, test.labels),
        "pixel_auroc": metrics.pixel_auroc(maps[:, ::step, ::step], masks) if pixels else None,
    }
    if full:
        out["aupro"] = metrics.aupro(maps, all_masks) if pixels else None
        out["f1_max"] = metrics.f1_max(scores, test.labels)
        if threshold is not None and math.isfinite(threshold):
            out.update(metrics.rates_at_threshold(scores, test.labels, threshold))
    return out


# Few-shot checkpoints (all but the last) are scored on this seeded fraction of the test images.
FEWSHOT_FRACTION = 0.25


def subset(test: Encoded, fraction: float, seed: int) -> Encoded:
    """A seeded, class-stratified fraction of ``test`` (at least 2 images of each class)."""
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in (0, 1):
        idx = np.flatnonzero(test.labels == label)
        keep.extend(rng.choice(idx, size=min(idx.size, max(2, round(fraction * idx.size))), replace=False))
    rows = np.sort(np.asarray(keep, dtype=np.int64))
    return Encoded(
        test.features[torch.from_numpy(rows)],
        test.labels[rows],
        test.masks[rows],
        [test.names[i] for i in rows],
        valid=test.valid,
        content_hw=test.content_hw,
        cells=test.cells[rows] if test.cells is not None else None,
    )


def checkpoints_for(n: int) -> list[int]:
    """1, 2, 4, 8, ... and ``n``."""
    points, p = [], 1
    while p < n:
        points.append(p)
        p *= 2
    return points + [n]


@dataclass
class Stream:
    """What a protocol streamed: per-image scores before learning, labels, and decisions."""

    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    accepted: list[bool] = field(default_factory=list)


class Evaluator:
    """Runs one protocol for one model config on one dataset.

    Args:
        config: model configuration.
        data: the dataset's splits.
        extract: the feature backend (uint8 images -> features).
        spec: the backbone's feature spec.
        seed: seed of the stream order.
        baselines: baselines to run beside the model.
        fewshot: score the few-shot checkpoints of the online protocol.
        cache: encoded features shared between evaluators of one dataset.
        defect_fraction: (mixed) share of defects in the stream; ``None``: all even-position defects.
        tiling: cut images into tiles / inspect a region of interest (:class:`~lemo_edge.tiling.TileSpec`); the
            layout is fixed by the first image's size; the baselines are then not run.
    """

    def __init__(
        self,
        config: ModelConfig,
        data: DatasetSplits,
        extract: Extract,
        spec: Any,
        seed: int = 0,
        baselines: Sequence[str] = BASELINES,
        fewshot: bool = True,
        cache: dict[tuple[Any, ...], Encoded] | None = None,
        defect_fraction: float | None = None,
        tiling: TileSpec | None = None,
    ) -> None:
        unknown = sorted(set(baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"baselines: unknown {unknown}; valid: {list(BASELINES)}")
        self.config = config
        self.data = data
        self.extract = extract
        self.spec = spec
        self.seed = seed
        self.baselines = tuple(baselines)
        self.fewshot = fewshot
        if defect_fraction is not None and not 0.0 <= defect_fraction <= 0.5:
            raise InputError(f"defect_fraction: expected a number in [0, 0.5], got {defect_fraction}")
        self.defect_fraction = defect_fraction
        self.cache = cache if cache is not None else {}
        self.timings: dict[str, float] = {}
        self.tiling = tiling if tiling is not None and tiling.active else None
        if self.tiling is not None and config.letterbox:
            raise InputError("tile: expected either tiles or letterbox (a tile is the model's input), got both")
        self.tiler: Tiler | None = None
        if self.tiling is not None and self.baselines:
            log.warning("baselines %s: not run with tiles or a region of interest", list(self.baselines))
            self.baselines = ()

    def _tiler(self, frame_hw: tuple[int, int]) -> Tiler:
        """The tiler of the first image's size; images of another size are refused by it (InputError)."""
        if self.tiler is None:
            assert self.tiling is not None
            self.tiler = Tiler(self.tiling.layout(frame_hw), self.config.input_hw)
        return self.tiler

    def _inspector(self, updater: OnlineUpdater) -> Inspector:
        return Inspector(updater, tiler=self.tiler)

    def _encoded(self, split: str, items: list[Any], size: tuple[int, int], keep: Sequence[int] = ()) -> Encoded:
        """Encode ``items`` once per (split, size, letterbox, backbone, tiling); later runs reuse ``self.cache``."""
        letterbox = self.config.letterbox
        key = (self.data.name, split, size, letterbox, self.config.backbone, self.tiling)
        if key not in self.cache:
            tiler = self._tiler if self.tiling is not None else None
            self.cache[key] = encode(
                items, self.extract, size, f"encode {split}", keep=keep, letterbox=letterbox, tiler=tiler
            )
        return self.cache[key]

    def _order(self, n: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=generator).tolist()

    def _grid_indices(self, test: Sequence[Any]) -> list[int]:
        labels = [getattr(item, "label", 0) for item in test]
        defects = [i for i, y in enumerate(labels) if y == 1]
        goods = [i for i, y in enumerate(labels) if y == 0]
        pick = defects[:: max(1, len(defects) // 4)][:4] + goods[:2]
        return sorted(pick)

    def run(self, protocol: str) -> dict[str, Any]:
        """Run ``protocol`` and return the JSON-ready result."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {list(PROTOCOLS)}, got {protocol!r}")
        t0 = time.perf_counter()
        if protocol == "mixed":
            result = self._mixed()
        else:
            result = self._online(
                epochs=1 if protocol == "online" else int(self.config.extra.get("epochs", 3)),
                gated=protocol == "online",
            )
        result.update(
            protocol=protocol,
            seed=self.seed,
            config=self.config.to_dict(),
            memory_size=self.config.memory_size,
            dataset=self.data.name,
        )
        self.timings["total_s"] = time.perf_counter() - t0
        result["timings"] = dict(self.timings)
        return result

    # -- protocols ---------------------------------------------------------------------------

    def _online(self, epochs: int, gated: bool) -> dict[str, Any]:
        size = self.config.input_hw
        test_items = list(self.data.test_good) + list(self.data.test_defect)
        grid = self._grid_indices(test_items)
        t = time.perf_counter()
        test = self._encoded("test", test_items, size, keep=grid)
        self.timings["encode_test_s"] = time.perf_counter() - t
        model = LemoModel(self.config, self.spec)
        updater = OnlineUpdater(model)
        inspector = self._inspector(updater)
        order = self._order(len(self.data.train_good))
        checkpoints = set(checkpoints_for(len(order))) if self.fewshot and epochs == 1 else {len(order)}
        fewshot_test = subset(test, FEWSHOT_FRACTION, self.seed)
        curve: list[dict[str, Any]] = []
        t = time.perf_counter()
        train = self._encoded("train", list(self.data.train_good), size)
        self.timings["encode_train_s"] = time.perf_counter() - t
        t = time.perf_counter()
        learn_s = 0.0
        for epoch in range(epochs):
            for step, idx in enumerate(
                tqdm(order, desc=f"stream (epoch {epoch + 1})", unit="img", leave=False, disable=None), 1
            ):
                feats = train.frame(idx).float()
                t_learn = time.perf_counter()
                inspector.step(feats, force=not gated, valid=train.valid)
                learn_s += time.perf_counter() - t_learn
                if epoch == 0 and step in checkpoints and step != len(order):
                    maps, s = score_model(inspector, fewshot_test.features, valid=test.valid)
                    point = compute_metrics(maps, s, fewshot_test, full=False)
                    point["images"] = step
                    curve.append(point)
                    log.info("after %d images: %s", step, point)
        self.timings["stream_s"] = time.perf_counter() - t
        self.timings["learn_per_image_ms"] = 1000.0 * learn_s / max(1, epochs * len(order))
        maps, s = score_model(inspector, test.features, valid=test.valid)
        headline = compute_metrics(maps, s, test, threshold=updater.threshold.value)
        log.info("after all %d images: %s", len(order), headline)
        curve.append(
            {"images": len(order), "image_auroc": headline["image_auroc"], "pixel_auroc": headline["pixel_auroc"]}
        )
        result: dict[str, Any] = dict(headline)
        result.update(
            method=self.config.method,
            items_used=int(model.memory.items.shape[0]),
            threshold=updater.threshold.value,
            updates=updater.stats.updates,
            fewshot=curve,
            roc={"lemo": _roc(s, test.labels)},
        )
        result["_grid"] = _grid(test, maps, grid)
        if self.baselines:
            result["baselines"] = self._baselines(train.features[torch.tensor(order)], train.valid, test, result)
        if self.tiler is not None:
            result["tiles"] = self.tiler.layout.to_dict() | {"count": self.tiler.count}
        return result

    def mixed_stream(self) -> tuple[Encoded, Encoded, list[int]]:
        """The mixed protocol's stream and held-out set, encoded once (cached).

        The streamed defects are a seeded subset of the even-position defects, as many as make
        ``defect_fraction`` of the stream (all of them when it is ``None``); the held-out set is the same
        for every fraction: the normal test images and the odd-position defects.

        Returns:
            The stream (normal training images, then the streamed defects), the held-out set, and the
            stream order (indices into the stream).
        """
        size = self.config.input_hw
        defects = list(self.data.test_defect)
        even, held_defects = defects[0::2], defects[1::2]
        held = list(self.data.test_good) + held_defects
        test = self._encoded("held-out", held, size, keep=self._grid_indices(held))
        train = self._encoded("train", list(self.data.train_good), size)
        streamed = self._encoded("even-defects", even, size) if even else None
        n_train, fraction = len(self.data.train_good), self.defect_fraction
        count = len(even) if fraction is None else round(fraction * n_train / (1.0 - fraction))
        if count > len(even):
            log.warning(
                "defect_fraction %.3f needs %d streamed defects; the dataset has %d: streaming all of them (%.3f)",
                fraction,
                count,
                len(even),
                len(even) / (n_train + len(even)),
            )
            count = len(even)
        generator = torch.Generator().manual_seed(self.seed)
        pick = torch.sort(torch.randperm(len(even), generator=generator)[:count]).values
        if streamed is not None and count:
            stream = Encoded(
                torch.cat([train.features, streamed.features[pick]]),
                np.concatenate([train.labels, streamed.labels[pick.numpy()]]),
                np.concatenate([train.masks, streamed.masks[pick.numpy()]]),
                train.names + [streamed.names[i] for i in pick.tolist()],
                valid=train.valid,
                content_hw=train.content_hw,
                cells=(
                    np.concatenate([train.cells, streamed.cells[pick.numpy()]])
                    if train.cells is not None and streamed.cells is not None
                    else None
                ),
            )
        else:
            stream = train
        return stream, test, self._order(stream.features.shape[0])

    def _mixed(self) -> dict[str, Any]:
        stream_data, test, order = self.mixed_stream()
        grid = self._grid_indices_of(test)
        model = LemoModel(self.config, self.spec)
        updater = OnlineUpdater(model)
        inspector = self._inspector(updater)
        oracle = bool(self.config.extra.get("oracle", False))  # learns exactly the normal images (labels)
        stream = Stream()
        pixel_maps = np.zeros((len(order), *stream_data.masks.shape[1:]), np.float16)
        cells = stream_data.cells
        defect_cells = cells if cells is not None else defect_patches(stream_data.masks, model.grid)
        counter = ContaminationCounter(defect_cells.shape[1])
        t = time.perf_counter()
        for position, idx in enumerate(tqdm(order, desc="mixed stream", unit="img", leave=False, disable=None)):
            feats = stream_data.frame(idx).float()
            label = int(stream_data.labels[idx])
            if oracle:
                outcome = inspector.assess(feats, stream_data.valid)
                if label == 0:
                    outcome = inspector.commit(outcome, force=True, tag=idx)
            else:
                outcome = inspector.step(feats, tag=idx, valid=stream_data.valid)
            counter.observe(idx, label, defect_cells[idx], outcome.learned)
            if isinstance(model.memory, CoresetMemory):
                counter.admit(model.memory.pop_admitted())
            stream.scores.append(outcome.score)
            stream.labels.append(label)
            stream.accepted.append(outcome.learned)
            pixel_maps[position] = outcome.map.cpu().numpy()
        self.timings["stream_s"] = time.perf_counter() - t
        maps, test_scores = score_model(inspector, test.features, valid=test.valid)
        result: dict[str, Any] = compute_metrics(maps, test_scores, test, threshold=updater.threshold.value)
        labels = np.asarray(stream.labels)
        masks = stream_data.content(stream_data.masks[np.asarray(order)])
        pixel_maps = stream_data.content(pixel_maps)
        result.update(
            method=self.config.method,
            items_used=int(model.memory.items.shape[0]),
            threshold=updater.threshold.value,
            stream_length=len(order),
            stream_defects=int(labels.sum()),
            stream_defect_fraction=float(labels.mean()),
            defect_fraction=self.defect_fraction,
            prequential_image_auroc=metrics.image_auroc(np.asarray(stream.scores), labels) if labels.any() else None,
            prequential_pixel_auroc=(
                metrics.pixel_auroc(pixel_maps[:, ::4, ::4].astype(np.float32), masks[:, ::4, ::4])
                if masks.any()
                else None  # no defect pixel in the stream (clean, or image-level labels only)
            ),
            roc={"lemo": _roc(test_scores, test.labels)},
        )
        result.update(counter.result(model.memory if isinstance(model.memory, CoresetMemory) else None))
        if self.tiler is not None:
            result["tiles"] = self.tiler.layout.to_dict() | {"count": self.tiler.count}
        result["_grid"] = _grid(test, maps, grid)
        return result

    def _grid_indices_of(self, test: Encoded) -> list[int]:
        return sorted(test.images)

    # -- baselines ---------------------------------------------------------------------------

    def _baselines(
        self, train: torch.Tensor, train_valid: torch.Tensor | None, test: Encoded, result: dict[str, Any]
    ) -> dict[str, Any]:
        """Run the baselines on the training features ``(N, D, h, w) float16`` in stream order.

        Letterboxed (``train_valid`` and ``test.valid``: content cells), they learn the content cells only and
        score as the model does: a padded cell never holds a map's maximum."""
        size, sigma, k = self.config.input_hw, self.config.sigma, self.config.memory_size
        dim = train.shape[1]
        patches = train.flatten(2).transpose(1, 2)  # (N, P, D) float16, in stream order
        if train_valid is not None:
            patches = patches[:, train_valid.flatten().cpu()]  # the padding is not part of the surface
        out: dict[str, Any] = {}
        for name in self.baselines:
            t = time.perf_counter()
            if name == "patchcore":
                size_pc = int(self.config.extra.get("patchcore_size", 10_000))
                bank = patchcore_bank(patches.reshape(-1, dim), size_pc, seed=self.seed)
                note = (
                    f"offline, k-center coreset of {size_pc} from a 100k random subsample of all training patches; "
                    "scored as PatchCore (nearest item, 9-neighbour re-weighted image score)"
                )
            elif name == "reservoir":
                res = ReservoirBank(k, dim, seed=self.seed)
                for z in patches:
                    res.add(z.float())
                bank, note = res.items, f"online, uniform reservoir of {k} patches"
            else:
                greedy = GreedyBank(k, dim, seed=self.seed)
                for z in patches:
                    zf = z.float()
                    nearest = (
                        nearest_memory(zf, greedy.items).score
                        if greedy.items.shape[0]
                        else torch.full((zf.shape[0],), math.inf)
                    )
                    greedy.add(zf, nearest)
                bank, note = greedy.items, f"online, greedy bank of {k} (add above running p95, merge closest)"
            valid = None if test.valid is None else test.valid.cpu()
            if name == "patchcore":
                maps, s = score_patchcore(bank, test.features, size, sigma, valid=valid)
            else:
                maps, s = score_bank(bank, test.features, size, sigma, valid=valid)
            entry = compute_metrics(maps, s, test)
            entry.update(items=int(bank.shape[0]), note=note, seconds=time.perf_counter() - t)
            result["roc"][name] = _roc(s, test.labels)
            out[name] = entry
            log.info("baseline %s: %s", name, entry)
        return out


def _roc(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    step = max(1, len(fpr) // 200)
    return {
        "fpr": fpr[::step].tolist() + [1.0],
        "tpr": tpr[::step].tolist() + [1.0],
        "auc": metrics.auroc(scores, labels),
    }


def _grid(test: Encoded, maps: np.ndarray, indices: Sequence[int]) -> dict[str, Any]:
    images: list[np.ndarray] = list(test.content(np.stack([test.images[i] for i in indices]))) if indices else []
    return {
        "images": images,
        "maps": list(test.content(maps[list(indices)])),
        "masks": [test.content(test.masks[i : i + 1])[0] if test.labels[i] else None for i in indices],
        "titles": [f"{Path(test.names[i]).name} ({'defect' if test.labels[i] else 'good'})" for i in indices],
    }
