"""What every dataset reader returns: :class:`Sample`, the lazily loaded :class:`Item` and :class:`DatasetSplits`.

Kept apart from the readers (``lemo_edge.datasets``, ``lemo_edge.synthetic``) so both can import these types without
importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lemo_edge.errors import DatasetError
from lemo_edge.images import read_image, read_mask


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
        has_mask: False when the dataset has image-level labels only: a defect image's mask is then unknown
            (``Sample.mask`` None) rather than all zeros.
    """

    name: str
    label: int
    path: Path | None = None
    mask_path: Path | None = None
    make: Callable[[], Sample] | None = field(default=None, compare=False)
    has_mask: bool = True

    def load(self) -> Sample:
        """Read the image (and mask) from disk, or generate it.

        Returns:
            A Sample: image ``(H, W, 3) uint8`` RGB; mask ``(H, W) uint8`` {0, 1}, all zeros for a
            normal image (label 0), None for a defect image without a known mask (``has_mask`` False).

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
        if self.label == 1 and self.has_mask:
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
