"""Dataset readers: the MVTec AD folder layout, manifest JSON files, and ``synthetic://``.

Every reader returns :class:`DatasetSplits` whose items load lazily into :class:`Sample`s:
``image (H, W, 3) uint8 RGB``, ``mask (H, W) uint8 {0, 1}`` or ``None``, ``label`` 0/1.
Image files are read by :func:`lemo_edge.images.read_image` (its policy: 16-bit scaled by 1/257, grayscale
replicated, alpha dropped, anything else refused); an unreadable file raises :class:`DatasetError` naming it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from lemo_edge.errors import DatasetError, InputError, describe
from lemo_edge.images import IMAGE_SUFFIXES
from lemo_edge.samples import DatasetSplits, Item, Sample
from lemo_edge.synthetic import synthetic_dataset

__all__ = [
    "ACCEPTED",
    "DatasetSplits",
    "Item",
    "Sample",
    "open_dataset",
    "open_manifest",
    "open_mvtec",
    "resize_sample",
]

logger = logging.getLogger(__name__)

ACCEPTED = (
    "synthetic://..., a manifest .json, a folder with split.json, or an MVTec AD category folder "
    "(train/good, test/<kind>, ground_truth/<kind>/<stem>_mask.png)"
)


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
