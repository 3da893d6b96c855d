"""Dataset readers: the MVTec AD folder layout, manifest JSON files, labelled folders and ``synthetic://``.

Every reader returns :class:`DatasetSplits` whose items load lazily into :class:`Sample`s:
``image (H, W, 3) uint8 RGB``, ``mask (H, W) uint8 {0, 1}`` or ``None``, ``label`` 0/1.

Datasets with image-level labels only (a manifest without mask files, an MVTec folder without ``ground_truth/``,
a folder of ``good/`` and defect folders) give defect samples whose mask is ``None`` (unknown): the evaluation then
reports the image metrics and marks the pixel metrics as not available.
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
    "open_labelled_folders",
    "open_manifest",
    "open_mvtec",
    "resize_sample",
]

logger = logging.getLogger(__name__)

ACCEPTED = (
    "synthetic://..., a manifest .json, a folder with split.json, an MVTec AD category folder "
    "(train/good, test/<kind>, optional ground_truth/<kind>/<stem>_mask.png), or a folder of a good/ folder and "
    "defect folders (any other name) of images"
)
NORMAL_FOLDERS: tuple[str, ...] = ("good", "normal", "ok")
"""Names (case-insensitive) of the normal folder of a labelled-folders dataset (:func:`open_labelled_folders`)."""


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

    ``test/good`` is ``test_good``; every other ``test/<kind>`` is ``test_defect``. Without a ``ground_truth/``
    folder the dataset has image-level labels only (defect masks unknown, logged); with one, a defect image
    without a mask file gets an all-zero mask (logged once per dataset).

    Raises:
        DatasetError: no images in ``train/good`` or in ``test/*``.
    """
    train = [Item(p.name, 0, p) for p in _images_in(root / "train" / "good")]
    test_good, test_defect = [], []
    has_masks = (root / "ground_truth").is_dir()
    unmasked = 0
    for kind in sorted(d for d in (root / "test").iterdir() if d.is_dir()):
        for p in _images_in(kind):
            if kind.name == "good":
                test_good.append(Item(f"good/{p.name}", 0, p))
            elif not has_masks:
                test_defect.append(Item(f"{kind.name}/{p.name}", 1, p, has_mask=False))
            else:
                mask = root / "ground_truth" / kind.name / f"{p.stem}_mask.png"
                unmasked += not mask.is_file()
                test_defect.append(Item(f"{kind.name}/{p.name}", 1, p, mask))
    if not train or not (test_good or test_defect):
        raise DatasetError(f"dataset: expected images in train/good and test/*, got none in {str(root)!r}")
    if not has_masks and test_defect:
        _log_image_labels_only(root, "no ground_truth/ folder")
    if unmasked:
        logger.warning("dataset %s: %d defect images have no ground_truth mask; read as all-zero masks", root, unmasked)
    return DatasetSplits(root.name, train, test_good, test_defect)


def _log_image_labels_only(where: Path, why: str) -> None:
    logger.info("dataset %s: image-level labels only (%s); the pixel metrics will be reported as n/a", where, why)


def open_labelled_folders(root: Path) -> DatasetSplits:
    """A folder of a ``good/`` folder and one or more defect folders of images: image-level labels only.

    The normal folder is named ``good``, ``normal`` or ``ok`` (any case); every other sub-folder holding images
    is a defect kind (``defect/``, ``scratch/``, ...). The normal images, sorted by name, are split in turn
    between ``train_good`` (the 1st, 3rd, ...) and ``test_good`` (the 2nd, 4th, ...); every defect image is in
    ``test_defect``, its mask unknown (``Sample.mask`` None).

    Args:
        root: the folder.

    Returns:
        The splits, named after the folder.

    Raises:
        DatasetError: no normal folder, fewer than 2 normal images, or no defect folder with images.
    """
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    normal = [d for d in folders if d.name.lower() in NORMAL_FOLDERS]
    if len(normal) != 1:
        names = [d.name for d in folders]
        raise DatasetError(
            f"dataset: expected one normal folder ({'/, '.join(NORMAL_FOLDERS)}/) beside defect folders in "
            f"{str(root)!r}, got the folders {names}"
        )
    good = _images_in(normal[0])
    defect_kinds = [(d, _images_in(d)) for d in folders if d is not normal[0]]
    test_defect = [Item(f"{d.name}/{p.name}", 1, p, has_mask=False) for d, paths in defect_kinds for p in paths]
    if len(good) < 2 or not test_defect:
        raise DatasetError(
            f"dataset: expected at least 2 images in {str(normal[0])!r} and images in a defect folder beside it, "
            f"got {len(good)} normal and {len(test_defect)} defect images"
        )
    train = [Item(f"{normal[0].name}/{p.name}", 0, p) for p in good[0::2]]
    test_good = [Item(f"{normal[0].name}/{p.name}", 0, p) for p in good[1::2]]
    _log_image_labels_only(root, "labelled folders")
    return DatasetSplits(root.name, train, test_good, test_defect)


def _is_labelled_folders(path: Path) -> bool:
    """Whether ``path`` holds a normal folder (``good/``, ...) with images and another folder with images."""
    folders = [d for d in path.iterdir() if d.is_dir()]
    normal = [d for d in folders if d.name.lower() in NORMAL_FOLDERS]
    return len(normal) == 1 and any(_images_in(d) for d in folders if d is not normal[0])


def open_manifest(path: Path) -> DatasetSplits:
    """Manifest JSON with ``train_good``, ``test_good``, ``test_defect`` lists of image paths.

    Paths are relative to the manifest's folder; a defect image's mask is the same path with the
    suffix ``.png`` (missing or empty: all zeros). When no defect image has a mask file, the manifest has
    image-level labels only: every defect mask is unknown (``Sample.mask`` None). Other keys (``"dataset"``,
    notes) are allowed.

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

    def mask_of(rel: str) -> Path | None:
        p = root / rel
        return p.with_suffix(".png") if p.suffix.lower() != ".png" else None

    masks = [mask_of(rel) for rel in manifest["test_defect"]]
    has_masks = any(m is not None and m.is_file() for m in masks)
    if manifest["test_defect"] and not has_masks:
        _log_image_labels_only(path, "no mask file beside any defect image")
    name = str(manifest.get("dataset", root.name))
    return DatasetSplits(
        name,
        [Item(rel, 0, root / rel) for rel in manifest["train_good"]],
        [Item(rel, 0, root / rel) for rel in manifest["test_good"]],
        [
            Item(rel, 1, root / rel, mask, has_mask=has_masks)
            for rel, mask in zip(manifest["test_defect"], masks, strict=True)
        ],
    )


def open_dataset(uri: str | Path, seed: int = 0) -> DatasetSplits:
    """Open a dataset from a URI; only file listings are read until items are loaded.

    Accepted: ``synthetic://?seed=0&size=256&n_train=200&n_test_good=50&n_test_defect=50``; a
    manifest JSON file or a folder holding ``split.json``; an MVTec AD category folder; a folder of a
    ``good/`` folder and defect folders (:func:`open_labelled_folders`). A leading ``file://`` is stripped.

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
        if path.is_dir() and _is_labelled_folders(path):
            return open_labelled_folders(path)
    found = "an unknown URI scheme" if "://" in text else "no such path" if not path.exists() else "another layout"
    raise DatasetError(f"dataset: expected {ACCEPTED}, got {str(uri)!r} ({found})")
