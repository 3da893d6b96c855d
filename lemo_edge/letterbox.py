"""Letterbox: fit a frame into the model's ``H x W`` keeping its aspect ratio, and map results back.

The frame is scaled by ``min(H / h0, W / w0)`` and placed at the top-left corner of an ``H x W`` canvas;
the bottom and right margins are filled with a constant (:data:`PAD_VALUE`). The content then starts on
a patch-cell boundary, and a patch cell counts as content when its centre lies in the scaled frame
(:func:`valid_cells`). The model neither scores (their patch scores are set to the frame's lowest) nor
learns padded cells, and :func:`unletterbox_map` crops a map to the content and resizes it to the
frame's own pixels. :class:`Letterbox` records the geometry, so the mapping back needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lemo_edge.errors import InputError, describe

PAD_VALUE = 114
"""Constant grey of the padding (uint8, every channel); it is never scored nor learned."""


@dataclass(frozen=True)
class Letterbox:
    """Where a frame lies in the model's input.

    Attributes:
        frame_hw: ``(h0, w0)`` of the frame.
        input_hw: ``(H, W)`` of the model's input.
        content_hw: ``(h, w)`` of the scaled frame at the top-left of the input (the rest is padding).
        pad_value: the constant the padding holds.
    """

    frame_hw: tuple[int, int]
    input_hw: tuple[int, int]
    content_hw: tuple[int, int]
    pad_value: int = PAD_VALUE

    @property
    def padded(self) -> bool:
        """Whether any padding was added."""
        return self.content_hw != self.input_hw

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record: frame, input and content ``[h, w]``, padding ``[top, bottom, left, right]``, value."""
        (ih, iw), (ch, cw) = self.input_hw, self.content_hw
        return {
            "frame_hw": list(self.frame_hw),
            "input_hw": list(self.input_hw),
            "content_hw": list(self.content_hw),
            "pad": [0, ih - ch, 0, iw - cw],
            "pad_value": self.pad_value,
        }


def letterbox_geometry(frame_hw: tuple[int, int], input_hw: tuple[int, int]) -> Letterbox:
    """The :class:`Letterbox` of a frame of ``frame_hw`` in an input of ``input_hw``.

    Raises:
        InputError: a side of either shape is not a positive integer.
    """
    if len(frame_hw) != 2 or len(input_hw) != 2 or min(*frame_hw, *input_hw) <= 0:
        raise InputError(f"letterbox: expected positive (h, w) shapes, got frame {frame_hw} and input {input_hw}")
    h0, w0 = int(frame_hw[0]), int(frame_hw[1])
    ih, iw = int(input_hw[0]), int(input_hw[1])
    scale = min(ih / h0, iw / w0)
    ch, cw = min(ih, max(1, round(h0 * scale))), min(iw, max(1, round(w0 * scale)))
    return Letterbox((h0, w0), (ih, iw), (ch, cw))


def letterbox_image(image: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Scale ``image`` into ``input_hw`` keeping its aspect ratio and pad the rest with :data:`PAD_VALUE`.

    Args:
        image: ``(h0, w0, C) uint8`` (or ``(h0, w0)``, e.g. a mask: padded with 0, resized nearest).
        input_hw: ``(H, W)`` of the result.

    Returns:
        ``(H, W, C) uint8`` (``(H, W)`` for a 2-D input) and the geometry.
    """
    if image.ndim not in (2, 3) or image.dtype != np.uint8:
        raise InputError(f"letterbox: expected an (H, W, 3) or (H, W) uint8 image, got {describe(image)}")
    box = letterbox_geometry(image.shape[:2], input_hw)
    ch, cw = box.content_hw
    if image.ndim == 2:
        content = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_NEAREST)
        out = np.zeros(box.input_hw, np.uint8)
    else:
        shrink = ch < image.shape[0] and cw < image.shape[1]
        content = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out = np.full((*box.input_hw, image.shape[2]), box.pad_value, np.uint8)
    out[:ch, :cw] = content
    return out, box


def valid_cells(box: Letterbox, grid: tuple[int, int]) -> torch.Tensor:
    """``(h, w) bool`` cpu: the patch cells whose centre lies in the content (the others are padding); the
    top-left cell always counts, so a frame thinner than half a cell still has one."""
    (ih, iw), (ch, cw) = box.input_hw, box.content_hw
    gh, gw = grid
    first = torch.arange(gh) == 0
    rows = ((torch.arange(gh, dtype=torch.float64) + 0.5) * (ih / gh) < ch) | first
    first = torch.arange(gw) == 0
    cols = ((torch.arange(gw, dtype=torch.float64) + 0.5) * (iw / gw) < cw) | first
    return rows[:, None] & cols[None, :]


def unletterbox_map(amap: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """A map of the model's input, cropped to the content and resized (bilinear) to the frame's pixels.

    Args:
        amap: ``(H, W) float32`` (any device) at ``box.input_hw``.
        box: the frame's geometry.

    Returns:
        ``(h0, w0) float32`` on the same device.
    """
    if amap.ndim != 2 or tuple(amap.shape) != box.input_hw:
        raise InputError(f"unletterbox: expected a map of {box.input_hw}, got {describe(amap)}")
    ch, cw = box.content_hw
    content = amap[:ch, :cw].float()
    if (ch, cw) == box.frame_hw:
        return content.contiguous()
    return F.interpolate(content[None, None], size=box.frame_hw, mode="bilinear", align_corners=False)[0, 0]
