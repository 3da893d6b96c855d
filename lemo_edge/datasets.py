"""Dataset readers: the MVTec AD folder layout, manifest JSON files, and ``synthetic://``.

Every reader returns :class:`DatasetSplits` whose items load lazily into :class:`Sample`s:
``image (H, W, 3) uint8 RGB``, ``mask (H, W) uint8 {0, 1}`` or ``None``, ``label`` 0/1.
Grayscale, 16-bit and RGBA files are converted explicitly; an unreadable file raises
:class:`DatasetError` naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lemo_edge.errors import DatasetError, InputError, describe

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 128  # mask pixels >= this (8-bit grayscale) are defects
ACCEPTED = (
    "synthetic://..., a manifest .json, a folder with split.json, or an MVTec AD category folder "
    "(train/good, test/<kind>, ground_truth/<kind>/<stem>_mask.png)"
)


@dataclass(frozen=True)
class Sample:
    """One image with its ground truth.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB.
        mask: ``(H, W) uint8`` in {0, 1}, or ``None`` when unknown.
        label: 0 normal, 1 defect.
        name: a readable identifier (file name or synthetic index).
    """

    image: np.ndarray
    mask: np.ndarray | None
    label: int
    name: str


@dataclass(frozen=True)
class Item:
    """A lazily loaded sample: an image file (and its mask file), or a generator call.

    Attributes:
        name: the sample's name, unique within its dataset.
        label: 0 normal, 1 defect.
        path: image file (None when ``make`` generates the sample).
        mask_path: mask of a defect image; None or a missing file means an all-zero mask.
        make: a picklable callable returning the Sample (synthetic items), or None.
    """

    name: str
    label: int
    path: Path | None = None
    mask_path: Path | None = None
    make: Callable[[], Sample] | None = field(default=None, compare=False)

    def load(self) -> Sample:
        """Read the image (and mask) from disk, or generate it.

        Returns:
            A Sample: image ``(H, W, 3) uint8`` RGB; mask ``(H, W) uint8`` {0, 1}, all zeros for a
            normal image (label 0).

        Raises:
            DatasetError: a file is missing or unreadable, a mask's size is not its image's, or the
                item has neither a path nor a generator.
        """
        if self.make is not None:
            return self.make()
        if self.path is None:
            raise DatasetError(f"item {self.name!r}: expected an image path or a generator, got neither")
        image = read_image(self.path)
        mask = None
        if self.label == 1:
            mask = read_mask(self.mask_path, image.shape[:2])
        elif self.label == 0:
            mask = np.zeros(image.shape[:2], np.uint8)
        return Sample(image, mask, self.label, self.name)


@dataclass
class DatasetSplits:
    """The three splits every protocol uses; entries have ``.name``, ``.label`` and ``.load() -> Sample``.

    Attributes:
        name: dataset name (category folder, the manifest's ``"dataset"`` or ``synthetic(seed=S)``).
        train_good: normal images a model may learn from, in a fixed order.
        test_good: held-out normal images.
        test_defect: held-out defective images.
    """

    name: str
    train_good: list[Item]
    test_good: list[Item]
    test_defect: list[Item]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB.

    Grayscale is replicated to three channels (``cv2.COLOR_GRAY2RGB``); 16-bit is mapped linearly from
    [0, 65535] to [0, 255] (value / 257, rounded); alpha is dropped (``cv2.COLOR_BGRA2RGB``). Files are
    decoded from their bytes, so non-ASCII paths work.

    Args:
        path: image file (png, jpg, bmp, tiff, ...).

    Returns:
        ``(H, W, 3) uint8`` RGB.

    Raises:
        DatasetError: the file is missing or cannot be decoded, or has another depth or channel count.
    """
    path = Path(path)
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise DatasetError(f"image: expected a readable file, got {str(path)!r} (not found)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"image: expected a decodable image, got {str(path)!r} ({data.size} bytes, corrupt?)")
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"image: expected 8- or 16-bit pixels, got {image.dtype} in {str(path)!r}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise DatasetError(f"image: expected 1, 3 or 4 channels, got {image.shape[2]} in {str(path)!r}")


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


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize a sample to ``size``.

    The image is resized with ``INTER_AREA`` when it shrinks in both directions, else ``INTER_LINEAR``;
    the mask with ``INTER_NEAREST``, so it stays in {0, 1}.

    Args:
        sample: image ``(H, W, 3) uint8``, mask ``(H, W) uint8`` or None.
        size: ``(height, width)`` of the result.

    Returns:
        The same sample when already of that size, else a new one of ``(height, width, 3) uint8``
        with a ``(height, width) uint8`` mask (or None).

    Raises:
        InputError: ``size`` is not two positive integers, or the image is not ``(H, W, 3) uint8``.
    """
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise InputError(f"size: expected (height, width) of positive integers, got {size!r}")
    image = sample.image
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image: expected (H, W, 3) uint8, got {describe(image)}")
    h, w = int(size[0]), int(size[1])
    if sample.image.shape[:2] == (h, w):
        return sample
    shrink = sample.image.shape[0] > h and sample.image.shape[1] > w
    image = cv2.resize(sample.image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    mask = None if sample.mask is None else cv2.resize(sample.mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return Sample(image, mask, sample.label, sample.name)


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_mvtec(root: Path) -> DatasetSplits:
    """MVTec AD category folder: ``train/good``, ``test/<kind>``, ``ground_truth/<kind>/<stem>_mask.png``.

    ``test/good`` is ``test_good``; every other ``test/<kind>`` is ``test_defect``. A defect image
    without a mask file gets an all-zero mask (logged once per dataset).

    Raises:
        DatasetError: no images in ``train/good`` or in ``test/*``.
    """
    train = [Item(p.name, 0, p) for p in _images_in(root / "train" / "good")]
    test_good, test_defect = [], []
    unmasked = 0
    for kind in sorted(d for d in (root / "test").iterdir() if d.is_dir()):
        for p in _images_in(kind):
            if kind.name == "good":
                test_good.append(Item(f"good/{p.name}", 0, p))
            else:
                mask = root / "ground_truth" / kind.name / f"{p.stem}_mask.png"
                unmasked += not mask.is_file()
                test_defect.append(Item(f"{kind.name}/{p.name}", 1, p, mask))
    if not train or not (test_good or test_defect):
        raise DatasetError(f"dataset: expected images in train/good and test/*, got none in {str(root)!r}")
    if unmasked:
        logger.warning("dataset %s: %d defect images have no ground_truth mask; read as all-zero masks", root, unmasked)
    return DatasetSplits(root.name, train, test_good, test_defect)


def open_manifest(path: Path) -> DatasetSplits:
    """Manifest JSON with ``train_good``, ``test_good``, ``test_defect`` lists of image paths.

    Paths are relative to the manifest's folder; a defect image's mask is the same path with the
    suffix ``.png`` (missing or empty: all zeros). Other keys (``"dataset"``, notes) are allowed.

    Raises:
        DatasetError: the file is not JSON, or a split is not a list of strings.
    """
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"manifest: expected a JSON file, got {str(path)!r} ({err})") from err
    if not isinstance(manifest, dict):
        raise DatasetError(f"manifest: expected a JSON object, got {type(manifest).__name__} in {str(path)!r}")
    missing = [
        k
        for k in ("train_good", "test_good", "test_defect")
        if not isinstance(manifest.get(k), list) or not all(isinstance(e, str) for e in manifest[k])
    ]
    if missing:
        raise DatasetError(f"manifest: expected lists of image paths {missing} in {str(path)!r}")
    root = path.parent

    def items(key: str, label: int) -> list[Item]:
        out = []
        for rel in manifest[key]:
            p = root / rel
            mask = p.with_suffix(".png") if label and p.suffix.lower() != ".png" else None
            out.append(Item(rel, label, p, mask))
        return out

    name = str(manifest.get("dataset", root.name))
    return DatasetSplits(name, items("train_good", 0), items("test_good", 0), items("test_defect", 1))


def open_dataset(uri: str | Path, seed: int = 0) -> DatasetSplits:
    """Open a dataset from a URI; only file listings are read until items are loaded.

    Accepted: ``synthetic://?seed=0&size=256&n_train=200&n_test_good=50&n_test_defect=50``; a
    manifest JSON file or a folder holding ``split.json``; an MVTec AD category folder. A leading
    ``file://`` is stripped.

    Args:
        uri: the dataset.
        seed: seed of a synthetic dataset whose URI has no ``seed=``; file datasets keep their
            sorted (MVTec) or listed (manifest) order and ignore it.

    Raises:
        DatasetError: nothing at ``uri`` matches a known layout, or a manifest is malformed.
        InputError: a malformed synthetic URI.
    """
    text = str(uri)
    if text.startswith("synthetic:"):
        from lemo_edge.synthetic import synthetic_dataset

        return synthetic_dataset(text, seed=seed)
    if text.startswith("file://"):
        text = text[len("file://") :]
    path = Path(text).expanduser()
    if "://" not in text:
        if path.is_file() and path.suffix.lower() == ".json":
            return open_manifest(path)
        if path.is_dir() and (path / "split.json").is_file():
            return open_manifest(path / "split.json")
        if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
            return open_mvtec(path)
    found = "an unknown URI scheme" if "://" in text else "no such path" if not path.exists() else "another layout"
    raise DatasetError(f"dataset: expected {ACCEPTED}, got {str(uri)!r} ({found})")
