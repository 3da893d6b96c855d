"""Large frames: a grid of overlapping tiles over a region of interest, stitching, and anomalous regions as boxes.

A frame larger than the model input is cut into tiles of ``--tile HxW`` frame pixels that overlap by at least
``--overlap P`` pixels and cover the region of interest (``--roi x,y,w,h``, default the whole frame) exactly.
Each tile is resized to the model input when it differs from it; the tiles go through the backbone and the
memory as one batch, and their anomaly maps are stitched back into one map of the ROI at full resolution,
blended in the overlaps by a separable weight window. Without ``--tile`` the ROI is one "tile" resized to the
model input, so the same stitching maps it back to frame pixels.

Pure functions hold the math (:func:`tile_starts`, :func:`tile_grid`, :func:`blend_window`, :func:`stitch`,
:func:`region_boxes`); :class:`TileSpec` is what the user asks for, :class:`TileLayout` what it resolves to for
a frame size (saved with a model's state), and :class:`Tiler` the small stateful piece that cuts frames and
stitches maps with buffers reused per layout.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lemo_edge.errors import InputError, describe

Box = tuple[int, int, int, int]
"""``(x, y, w, h)`` in frame pixels."""


def parse_tile(text: str) -> tuple[int, int]:
    """``"HxW"`` (or ``"N"`` for a square) -> ``(h, w)`` positive ints.

    Raises:
        InputError: anything else, e.g. ``tile: expected HxW with positive integers (e.g. 256x256), got '256x'``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text or "")
    if match is None or int(match.group(1)) < 1 or (match.group(2) is not None and int(match.group(2)) < 1):
        raise InputError(f"tile: expected HxW with positive integers (e.g. 256x256), got {text!r}")
    h = int(match.group(1))
    return h, int(match.group(2)) if match.group(2) is not None else h


def parse_roi(text: str) -> Box:
    """``"x,y,w,h"`` -> ``(x, y, w, h)`` ints, ``x, y >= 0``, ``w, h >= 1``.

    Raises:
        InputError: anything else, e.g. ``roi: expected x,y,w,h with x,y >= 0 and w,h >= 1, got '1,2,3'``.
    """
    parts = (text or "").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] < 1 or values[3] < 1:
        raise InputError(f"roi: expected x,y,w,h with x,y >= 0 and w,h >= 1, got {text!r}")
    return values[0], values[1], values[2], values[3]


def check_roi(roi: Box, frame_hw: tuple[int, int]) -> None:
    """Raise InputError unless ``roi`` lies inside a frame of ``frame_hw = (H, W)``.

    The message names both, e.g. ``roi: expected a rectangle inside the 1920x1080 frame, got x=1800,y=0,w=200,h=100
    (right edge 2000 > 1920)``.
    """
    x, y, w, h = roi
    height, width = frame_hw
    problems = []
    if x < 0 or y < 0 or w < 1 or h < 1:
        problems.append("x,y >= 0 and w,h >= 1")
    if x + w > width:
        problems.append(f"right edge {x + w} > {width}")
    if y + h > height:
        problems.append(f"bottom edge {y + h} > {height}")
    if problems:
        raise InputError(
            f"roi: expected a rectangle inside the {width}x{height} frame, got x={x},y={y},w={w},h={h} "
            f"({'; '.join(problems)})"
        )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``[0, length)`` with at least ``overlap`` in common.

    The fewest tiles that do it, spread evenly: the first starts at 0, the last ends at ``length``. A tile
    longer than ``length`` is cut to it (one tile).

    Args:
        length: the side to cover (>= 1).
        tile: the tile's side (>= 1).
        overlap: the least overlap of neighbours, ``0 <= overlap < tile``.

    Returns:
        Sorted starts; every pixel of ``[0, length)`` is in a tile ``[s, s + min(tile, length))``.
    """
    if length < 1 or tile < 1 or not 0 <= overlap < tile:
        raise InputError(
            f"tile_starts: expected length, tile >= 1 and 0 <= overlap < tile, got {length}, {tile}, {overlap}"
        )
    if tile >= length:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_grid(roi: Box, tile_hw: tuple[int, int] | None, overlap: int) -> tuple[Box, ...]:
    """Tiles covering ``roi`` exactly, row-major: ``((x, y, w, h), ...)`` in frame pixels.

    Args:
        roi: ``(x, y, w, h)`` region to cover.
        tile_hw: ``(h, w)`` tile size (cut to the ROI where it is larger); ``None``: the ROI is one tile.
        overlap: least overlap of neighbouring tiles in pixels (``< min(tile_hw)``).
    """
    x0, y0, width, height = roi
    if tile_hw is None:
        return (roi,)
    th, tw = min(tile_hw[0], height), min(tile_hw[1], width)
    ys = tile_starts(height, th, min(overlap, th - 1))
    xs = tile_starts(width, tw, min(overlap, tw - 1))
    return tuple((x0 + x, y0 + y, tw, th) for y in ys for x in xs)


@functools.lru_cache(maxsize=32)
def blend_window(height: int, width: int, ramp: int, device: str = "cpu") -> torch.Tensor:
    """Separable blending weights of one tile: 1 inside, falling linearly over ``ramp`` pixels to each edge.

    Strictly positive everywhere (the edge pixel keeps ``1 / (ramp + 1)``), so a pixel that only one tile
    covers is that tile's value after normalisation, and overlaps fade from one tile into the next.

    Returns:
        ``(height, width) float32`` on ``device`` (cached: do not modify it).
    """

    def ramp1d(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        edge = torch.minimum(i + 1, n - i)
        return (edge / float(max(1, ramp) + 1)).clamp(max=1.0)

    return (ramp1d(height)[:, None] * ramp1d(width)[None, :]).to(device)


def blend_total(
    boxes: tuple[Box, ...], origin: tuple[int, int], out_hw: tuple[int, int], ramp: int, device: str = "cpu"
) -> torch.Tensor:
    """``(H, W) float32``: the sum of the tiles' :func:`blend_window` at each output pixel (> 0 where covered)."""
    total = torch.zeros(out_hw, dtype=torch.float32, device=device)
    for x, y, w, h in boxes:
        total[y - origin[1] : y - origin[1] + h, x - origin[0] : x - origin[0] + w] += blend_window(h, w, ramp, device)
    return total


def stitch(
    maps: torch.Tensor,
    boxes: tuple[Box, ...],
    origin: tuple[int, int],
    out_hw: tuple[int, int],
    ramp: int,
    total: torch.Tensor | None = None,
) -> torch.Tensor:
    """Blend per-tile maps into one map: ``sum_t w_t * m_t / sum_t w_t`` over the tiles covering each pixel.

    Args:
        maps: ``(T, S_h, S_w) float`` tile maps at the model input, any device.
        boxes: the ``T`` tiles ``(x, y, w, h)`` in frame pixels; each map is resized (bilinear) to its tile.
        origin: ``(x, y)`` of the output's top left corner in frame pixels (the ROI's).
        out_hw: ``(H, W)`` of the output (the ROI's size); the tiles must cover it.
        ramp: blending ramp in pixels (:func:`blend_window`).
        total: :func:`blend_total` of these tiles on the maps' device, when the caller keeps it (else computed).

    Returns:
        ``(H, W) float32`` on the maps' device; a constant input gives that constant.
    """
    if maps.ndim != 3 or maps.shape[0] != len(boxes):
        raise InputError(f"stitch: expected ({len(boxes)}, H, W) tile maps, got {describe(maps)}")
    device = str(maps.device)
    canvas = torch.zeros(out_hw, dtype=torch.float32, device=maps.device)
    for tile_map, (x, y, w, h) in zip(maps.float(), boxes, strict=True):
        if tile_map.shape != (h, w):
            tile_map = F.interpolate(tile_map[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        rows, cols = slice(y - origin[1], y - origin[1] + h), slice(x - origin[0], x - origin[0] + w)
        canvas[rows, cols] += blend_window(h, w, ramp, device) * tile_map
    return canvas / (total if total is not None else blend_total(boxes, origin, out_hw, ramp, device))


def region_boxes(anomaly_map: np.ndarray, threshold: float, origin: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """One box per connected region of ``anomaly_map > threshold``, with the region's peak score.

    Args:
        anomaly_map: ``(H, W) float`` map (NaN counts as below).
        threshold: decision threshold in the map's units (non-finite: no boxes).
        origin: ``(x, y)`` added to every box (the map's top left corner in frame pixels).

    Returns:
        ``[[x, y, w, h, peak], ...]`` (ints as floats but ``peak``), in frame pixels, sorted by peak, highest first.
    """
    if not isinstance(anomaly_map, np.ndarray) or anomaly_map.ndim != 2:
        raise InputError(f"anomaly_map: expected (H, W) float, got {describe(anomaly_map)}")
    if not math.isfinite(threshold):
        return []
    above = np.nan_to_num(anomaly_map, nan=-np.inf) > threshold
    if not above.any():
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above.astype(np.uint8), connectivity=8)
    boxes = []
    for label in range(1, count):
        x, y, w, h, _ = (int(v) for v in stats[label])
        peak = float(anomaly_map[y : y + h, x : x + w][labels[y : y + h, x : x + w] == label].max())
        boxes.append([x + origin[0], y + origin[1], w, h, peak])
    boxes.sort(key=lambda box: -box[4])
    return boxes


@dataclass(frozen=True)
class TileLayout:
    """The tiles of one frame size: what a model learned with (saved in its state).

    Attributes:
        frame: ``(H, W)`` of the frames.
        roi: ``(x, y, w, h)`` inspected rectangle (the whole frame without ``--roi``).
        tile: ``(h, w)`` tile size in frame pixels, or ``None``: the ROI resized whole to the model input.
        overlap: least overlap of neighbouring tiles in pixels.
        boxes: the tiles ``(x, y, w, h)``, row-major (:func:`tile_grid`).
    """

    frame: tuple[int, int]
    roi: Box
    tile: tuple[int, int] | None
    overlap: int
    boxes: tuple[Box, ...]

    @property
    def count(self) -> int:
        """Tiles per frame (T)."""
        return len(self.boxes)

    def describe(self) -> str:
        """E.g. ``tiles 256x256 overlap 32 over roi 0,0,1920,1080 of a 1920x1080 frame (45 tiles)``."""
        h, w = self.frame
        what = f"tiles {self.tile[0]}x{self.tile[1]} overlap {self.overlap}" if self.tile else "no tiles"
        return f"{what} over roi {','.join(map(str, self.roi))} of a {w}x{h} frame ({self.count} tiles)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"frame", "roi", "tile", "overlap"}`` (the boxes follow from them)."""
        return {
            "frame": list(self.frame),
            "roi": list(self.roi),
            "tile": list(self.tile) if self.tile else None,
            "overlap": self.overlap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileLayout:
        """Inverse of :meth:`to_dict`.

        Raises:
            InputError: missing or malformed fields.
        """
        try:
            frame = (int(data["frame"][0]), int(data["frame"][1]))
            x, y, w, h = (int(v) for v in data["roi"])
            tile = (int(data["tile"][0]), int(data["tile"][1])) if data["tile"] else None
            overlap = int(data["overlap"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InputError(f"tile layout: expected {{frame, roi, tile, overlap}}, got {data!r} ({err})") from None
        return TileSpec(tile, overlap, (x, y, w, h)).layout(frame)


@dataclass(frozen=True)
class TileSpec:
    """What ``--tile HxW --overlap P --roi x,y,w,h`` ask for, before the frame size is known.

    Attributes:
        tile: ``(h, w)`` tile size in frame pixels, or ``None`` (the ROI resized whole).
        overlap: least overlap of neighbouring tiles in pixels, ``0 <= overlap < min(tile)``.
        roi: ``(x, y, w, h)`` or ``None`` (the whole frame).

    Raises:
        InputError: a bad tile size, overlap or ROI, e.g. ``overlap: expected 0 <= overlap < 256 (the tile's
            smaller side), got 300``.
    """

    tile: tuple[int, int] | None = None
    overlap: int = 0
    roi: Box | None = None

    def __post_init__(self) -> None:
        if self.tile is not None and (len(self.tile) != 2 or min(self.tile) < 1):
            raise InputError(f"tile: expected (h, w) positive ints, got {self.tile!r}")
        limit = min(self.tile) if self.tile is not None else None
        if self.overlap < 0 or (limit is not None and self.overlap >= limit):
            bound = f"0 <= overlap < {limit} (the tile's smaller side)" if limit is not None else "overlap >= 0"
            raise InputError(f"overlap: expected {bound}, got {self.overlap}")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[:2]) < 0 or min(self.roi[2:]) < 1):
            raise InputError(f"roi: expected (x, y, w, h) with x,y >= 0 and w,h >= 1, got {self.roi!r}")

    @property
    def active(self) -> bool:
        """Whether anything differs from the whole frame resized to the model input."""
        return self.tile is not None or self.roi is not None

    def layout(self, frame_hw: tuple[int, int]) -> TileLayout:
        """The tiles of a frame of ``(H, W)``.

        Raises:
            InputError: the ROI does not lie inside the frame (:func:`check_roi`).
        """
        frame = (int(frame_hw[0]), int(frame_hw[1]))
        roi = self.roi if self.roi is not None else (0, 0, frame[1], frame[0])
        check_roi(roi, frame)
        return TileLayout(frame, roi, self.tile, self.overlap, tile_grid(roi, self.tile, self.overlap))


class Tiler:
    """Cuts frames into the model's input batch and stitches the tile maps back, for one layout.

    Args:
        layout: the tiles.
        input_hw: ``(h, w)`` of the model input; tiles of another size are resized to it (``cv2.INTER_AREA``).
    """

    def __init__(self, layout: TileLayout, input_hw: tuple[int, int]) -> None:
        self.layout = layout
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self._batch: torch.Tensor | None = None
        self._total: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """Tiles per frame (T)."""
        return self.layout.count

    def check(self, image: np.ndarray) -> None:
        """Raise InputError unless ``image`` is an ``(H, W, 3) uint8`` frame of the layout's size."""
        h, w = self.layout.frame
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape != (h, w, 3):
            raise InputError(f"frame: expected ({h}, {w}, 3) uint8 (the tile layout's), got {describe(image)}")

    def _crops(self, image: np.ndarray, interpolation: int) -> list[np.ndarray]:
        out = []
        ih, iw = self.input_hw
        for x, y, w, h in self.layout.boxes:
            crop = image[y : y + h, x : x + w]
            out.append(crop if (h, w) == (ih, iw) else cv2.resize(crop, (iw, ih), interpolation=interpolation))
        return out

    def cut(self, image: np.ndarray, pin: bool = False) -> torch.Tensor:
        """The tiles of a frame as one batch.

        Args:
            image: ``(H, W, 3) uint8`` RGB frame of the layout's size (see :meth:`check`).
            pin: allocate the (reused) batch in pinned memory, for a CUDA backend.

        Returns:
            ``(T, 3, h, w) uint8`` cpu at the model input, reused from frame to frame (copy it to keep it).
        """
        self.check(image)
        if self._batch is None:
            self._batch = torch.empty((self.count, 3, *self.input_hw), dtype=torch.uint8, pin_memory=pin)
        for i, crop in enumerate(self._crops(image, cv2.INTER_AREA)):
            self._batch[i].copy_(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1))
        return self._batch

    def cut_mask(self, mask: np.ndarray) -> np.ndarray:
        """``(H, W) uint8`` frame mask -> ``(T, h, w) uint8`` tile masks at the model input (nearest)."""
        return np.stack(self._crops(mask, cv2.INTER_NEAREST))

    def stitch(self, maps: torch.Tensor) -> torch.Tensor:
        """``(T, h, w) float`` tile maps at the model input -> ``(roi_h, roi_w) float32`` ROI map (:func:`stitch`)."""
        x, y, w, h = self.layout.roi
        if self._total is None or self._total.device != maps.device:
            self._total = blend_total(self.layout.boxes, (x, y), (h, w), self.layout.overlap, str(maps.device))
        return stitch(maps, self.layout.boxes, (x, y), (h, w), self.layout.overlap, self._total)

    def frame_map(self, roi_map: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``(roi_h, roi_w)`` ROI map -> ``(H, W) float32`` map of the whole frame (``fill`` outside the ROI)."""
        x, y, w, h = self.layout.roi
        if (x, y, w, h) == (0, 0, self.layout.frame[1], self.layout.frame[0]):
            return roi_map.astype(np.float32, copy=False)
        out = np.full(self.layout.frame, fill, dtype=np.float32)
        out[y : y + h, x : x + w] = roi_map
        return out

    def boxes(self, roi_map: np.ndarray, threshold: float) -> list[list[float]]:
        """Anomalous regions of a ROI map in frame pixels (:func:`region_boxes`)."""
        return region_boxes(roi_map, threshold, self.layout.roi[:2])
