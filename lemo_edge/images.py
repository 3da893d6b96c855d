"""Image files and decoded frames to ``(H, W, 3) uint8`` RGB: one policy for ``eval`` and ``run``.

The policy, applied by :func:`to_rgb8` (and so by :func:`read_image`):

- 8-bit pixels are kept as they are.
- 16-bit pixels are scaled to 8 bits linearly, ``[0, 65535] -> [0, 255]``: ``round(value / 257)``
  (65535 / 257 = 255 exactly, so the whole range maps onto the whole range; no contrast stretch).
- Grayscale (``(H, W)`` or ``(H, W, 1)``) is replicated to three channels.
- Four channels (BGRA): the alpha channel is dropped (not composited).
- Three channels are OpenCV's BGR order and are swapped to RGB.
- Anything else (float, signed or 32-bit pixels, 2 or more than 4 channels, another rank, an empty
  array) raises :class:`~lemo_edge.errors.InputError` naming what came; its scale is never guessed.

Masks (:func:`read_mask`) are read as 8-bit grayscale; pixels ``>= 128`` are defects.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from lemo_edge.errors import DatasetError, InputError, describe

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 128  # mask pixels >= this (8-bit grayscale) are defects

_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Convert a decoded image or frame (as OpenCV returns it) to RGB with the module's policy.

    Args:
        image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA, ``uint8`` or ``uint16``.

    Returns:
        ``(H, W, 3) uint8`` RGB, C-contiguous (a new array).

    Raises:
        InputError: another dtype, rank or channel count, or an empty image; the message names what came.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"image: expected a numpy array, got {describe(image)}")
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"image: expected uint8 or uint16 pixels, got {describe(image)}")
    channels = 1 if image.ndim == 2 else image.shape[2] if image.ndim == 3 else 0
    if channels not in _TO_RGB:
        raise InputError(f"image: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) pixels, got {describe(image)}")
    if image.size == 0:
        raise InputError(f"image: expected at least one pixel, got {describe(image)}")
    if image.dtype == np.uint16:
        # round(v / 257) in integers: 257 is odd, so v / 257 is never exactly k + 0.5.
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if channels == 1 and image.ndim == 3:
        image = image[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(image), _TO_RGB[channels])


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB, converted by :func:`to_rgb8` (see the module's policy).

    Files are decoded from their bytes (``cv2.IMREAD_UNCHANGED``), so non-ASCII paths work.

    Args:
        path: image file (png, jpg, bmp, tiff, ...).

    Returns:
        ``(H, W, 3) uint8`` RGB.

    Raises:
        DatasetError: the file is missing, unreadable or cannot be decoded.
        InputError: the decoded pixels are outside the policy (e.g. float32); the message names the file.
    """
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    except OSError as err:
        raise DatasetError(f"image: expected a readable file, got {str(path)!r} ({err})") from err
    if data is None:
        raise DatasetError(f"image: expected a readable file, got {str(path)!r} (not found)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"image: expected a decodable image, got {str(path)!r} ({data.size} bytes, corrupt?)")
    try:
        return to_rgb8(image)
    except InputError as err:
        raise InputError(f"{err} in {str(path)!r}") from None


def read_mask(path: str | Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Read a defect mask: pixels ``>= 128`` (as 8-bit grayscale) are defects.

    Args:
        path: mask file; None, a missing file or an empty (0-byte) file give an all-zero mask.
        shape: ``(H, W)`` of the mask's image.

    Returns:
        ``(H, W) uint8`` in {0, 1}.

    Raises:
        DatasetError: the file cannot be decoded, or its size is not ``shape`` (never resized).
    """
    shape = (int(shape[0]), int(shape[1]))
    if path is None:
        return np.zeros(shape, np.uint8)
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return np.zeros(shape, np.uint8)
    mask = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"mask: expected a decodable image, got {str(path)!r} (corrupt?)")
    if mask.shape != shape:
        raise DatasetError(f"mask: expected the size of its image {shape}, got {mask.shape} in {str(path)!r}")
    binary = (mask >= MASK_THRESHOLD).astype(np.uint8)
    if mask.any() and not binary.any():
        logger.warning(
            "mask %s: no pixel >= %d (max %d); stored as {0, 1}? read as no defect",
            path,
            MASK_THRESHOLD,
            int(mask.max()),
        )
    return binary
