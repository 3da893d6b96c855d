"""Dataset readers: the MVTec AD folder layout, manifest JSON files, and ``synthetic://``.

Every reader returns :class:`DatasetSplits` whose items load lazily into :class:`Sample`s:
``image (H, W, 3) uint8 RGB``, ``mask (H, W) uint8 {0, 1}`` or ``None``, ``label`` 0/1.
Grayscale, 16-bit and RGBA files are converted explicitly; an unreadable file raises
:class:`DatasetError` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lemo_edge.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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
    """A lazily loaded sample: a file (and its mask file), or a generator call."""

    name: str
    label: int
    path: Path | None = None
    mask_path: Path | None = None
    make: Callable[[], Sample] | None = field(default=None, compare=False)

    def load(self) -> Sample:
        """Read the image (and mask) from disk, or generate it."""
        if self.make is not None:
            return self.make()
        assert self.path is not None
        image = read_image(self.path)
        mask = None
        if self.label == 1:
            mask = read_mask(self.mask_path, image.shape[:2])
        elif self.label == 0:
            mask = np.zeros(image.shape[:2], np.uint8)
        return Sample(image, mask, self.label, self.name)


@dataclass
class DatasetSplits:
    """The three splits every protocol uses."""

    name: str
    train_good: list[Item]
    test_good: list[Item]
    test_defect: list[Item]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB.

    Grayscale is replicated to three channels, 16-bit is scaled to 8-bit, alpha is dropped.

    Raises:
        DatasetError: the file is missing or cannot be decoded.
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
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise DatasetError(f"image: expected 1, 3 or 4 channels, got {image.shape[2]} in {str(path)!r}")


def read_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Read a mask (``>= 128`` = defect) as ``(H, W) uint8`` {0, 1}; a missing file gives zeros."""
    if path is None or not path.is_file():
        return np.zeros(shape, np.uint8)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"mask: expected a decodable image, got {str(path)!r}")
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return (mask >= 128).astype(np.uint8)


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize to ``(H, W)``: image with area/linear interpolation, mask with nearest."""
    h, w = size
    if sample.image.shape[:2] == (h, w):
        return sample
    shrink = sample.image.shape[0] > h and sample.image.shape[1] > w
    image = cv2.resize(sample.image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    mask = None if sample.mask is None else cv2.resize(sample.mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return Sample(image, mask, sample.label, sample.name)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def open_mvtec(root: Path) -> DatasetSplits:
    """MVTec AD category folder: ``train/good``, ``test/<kind>``, ``ground_truth/<kind>/<stem>_mask.png``."""
    train = [Item(p.name, 0, p) for p in _images_in(root / "train" / "good")]
    test_good, test_defect = [], []
    for kind in sorted(d for d in (root / "test").iterdir() if d.is_dir()):
        for p in _images_in(kind):
            if kind.name == "good":
                test_good.append(Item(f"good/{p.name}", 0, p))
            else:
                mask = root / "ground_truth" / kind.name / f"{p.stem}_mask.png"
                test_defect.append(Item(f"{kind.name}/{p.name}", 1, p, mask))
    if not train or not (test_good or test_defect):
        raise DatasetError(f"dataset: {root} has no images in train/good or test/*")
    return DatasetSplits(root.name, train, test_good, test_defect)


def open_manifest(path: Path) -> DatasetSplits:
    """Manifest JSON with ``train_good``, ``test_good``, ``test_defect`` lists of image paths
    relative to its folder; a defect's mask is the same path with the suffix ``.png``."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"manifest: expected a JSON file, got {str(path)!r} ({err})") from err
    missing = [k for k in ("train_good", "test_good", "test_defect") if not isinstance(manifest.get(k), list)]
    if missing:
        raise DatasetError(f"manifest: expected lists {missing} in {str(path)!r}")
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


def open_dataset(uri: str, seed: int = 0) -> DatasetSplits:
    """Open a dataset from a URI.

    Accepted: ``synthetic://?seed=0&size=256&n_train=200&n_test_good=50&n_test_defect=50``;
    a manifest JSON file or a folder holding ``split.json``; an MVTec AD category folder.

    Raises:
        DatasetError: nothing at ``uri`` matches a known layout.
    """
    if uri.startswith("synthetic://"):
        from lemo_edge.synthetic import synthetic_dataset

        return synthetic_dataset(uri)
    path = Path(uri)
    if path.is_file() and path.suffix == ".json":
        return open_manifest(path)
    if path.is_dir() and (path / "split.json").is_file():
        return open_manifest(path / "split.json")
    if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        return open_mvtec(path)
    raise DatasetError(
        f"dataset: expected synthetic://..., a manifest .json, a folder with split.json, or an MVTec AD "
        f"category folder (train/good, test/<kind>), got {uri!r}"
    )
