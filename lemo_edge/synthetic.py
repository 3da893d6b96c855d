"""A built-in synthetic industrial stream: seeded textured surfaces with exact defect masks.

Needs no data, so the demo and most tests use it. A stream's seed fixes the surface family
(brushed-metal grain direction and scale, base tone, illumination); every frame is deterministic
given ``(seed, index)`` and varies by shift, grain noise and illumination. Defects are scratches
(thin curves), blobs (dark or bright spots) and cracks (jagged polylines), each 1-8% of the image
area at most, with contrast of two to three times the texture's own variation.

URI: ``synthetic://?seed=0&size=256&defect_rate=0.1`` (stream) and, for ``lemo-edge eval``,
``n_train``, ``n_test_good``, ``n_test_defect`` (dataset splits).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from lemo_edge.datasets import DatasetSplits, Item, Sample
from lemo_edge.errors import InputError

DEFAULTS: dict[str, float] = {
    "seed": 0,
    "size": 256,
    "defect_rate": 0.1,
    "n_train": 200,
    "n_test_good": 50,
    "n_test_defect": 50,
}


def parse_synthetic_uri(uri: str) -> dict[str, float]:
    """Parse ``synthetic://?key=value&...`` into a dict of the parameters in :data:`DEFAULTS`.

    Raises:
        InputError: not a synthetic URI, an unknown key, or a value out of range.
    """
    parts = urlsplit(uri)
    if parts.scheme != "synthetic":
        raise InputError(f"synthetic source: expected 'synthetic://?...', got {uri!r}")
    params = dict(DEFAULTS)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in DEFAULTS:
            raise InputError(f"synthetic source: unknown parameter {key!r}; valid: {sorted(DEFAULTS)}")
        try:
            params[key] = float(value) if key == "defect_rate" else int(value)
        except ValueError as err:
            raise InputError(f"synthetic source: {key} expected a number, got {value!r}") from err
    if not 0.0 <= params["defect_rate"] <= 1.0:
        raise InputError(f"synthetic source: defect_rate expected 0..1, got {params['defect_rate']}")
    if params["size"] < 32 or int(params["size"]) % 32:
        raise InputError(f"synthetic source: size expected a multiple of 32 >= 32, got {params['size']}")
    return params


def _surface(seed: int, index: int, size: int) -> np.ndarray:
    """Normal surface ``(size, size) float32`` in [0, 1] for frame ``index`` of stream ``seed``."""
    family = np.random.default_rng([seed, 0])
    frame = np.random.default_rng([seed, 1, index])
    angle = family.uniform(0, 180)
    grain = family.uniform(6, 14)
    base = family.uniform(0.35, 0.55)
    big = size * 2
    noise = frame.normal(0, 1, (big, big)).astype(np.float32)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=grain, sigmaY=0.8)
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
    streaks = cv2.warpAffine(streaks, rot, (big, big), borderMode=cv2.BORDER_REFLECT)
    dy, dx = frame.integers(0, size // 2, 2)
    streaks = streaks[size // 2 + dy - size // 4 : size // 2 + dy - size // 4 + size,
                      size // 2 + dx - size // 4 : size // 2 + dx - size // 4 + size]
    streaks = streaks / (streaks.std() + 1e-6)
    fine = cv2.GaussianBlur(frame.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tilt = frame.uniform(-0.08, 0.08, 2)
    light = tilt[0] * (yy - 0.5) + tilt[1] * (xx - 0.5)
    return np.clip(base + 0.05 * streaks + 0.02 * fine + light, 0.0, 1.0)


def _defect(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A defect mask ``(size, size) uint8`` and its signed intensity change."""
    mask = np.zeros((size, size), np.uint8)
    kind = rng.choice(["scratch", "blob", "crack"])
    if kind == "blob":
        centre = tuple(int(v) for v in rng.integers(size // 8, size - size // 8, 2))
        axes = tuple(int(v) for v in rng.integers(size // 40 + 2, size // 12 + 3, 2))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        steps = 6 if kind == "scratch" else 10
        point = rng.uniform(size * 0.15, size * 0.85, 2)
        heading = rng.uniform(0, 2 * np.pi)
        points = [point.copy()]
        for _ in range(steps):
            heading += rng.normal(0, 0.15 if kind == "scratch" else 0.8)
            point = np.clip(point + rng.uniform(size / 40, size / 16) * np.array([np.cos(heading), np.sin(heading)]),
                            2, size - 3)
            points.append(point.copy())
        width = int(rng.integers(2, 4)) if kind == "scratch" else int(rng.integers(2, 5))
        cv2.polylines(mask, [np.round(np.array(points)).astype(np.int32)], False, 1, width)
    sign = -1.0 if rng.random() < 0.6 else 1.0
    return mask, sign * float(rng.uniform(0.14, 0.22))


def synthetic_sample(seed: int, index: int, size: int = 256, defect: bool = False) -> Sample:
    """Frame ``index`` of stream ``seed``: ``(size, size, 3) uint8`` RGB, exact mask, label."""
    surface = _surface(seed, index, size)
    mask = np.zeros((size, size), np.uint8)
    if defect:
        rng = np.random.default_rng([seed, 2, index])
        mask, delta = _defect(rng, size)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)
        surface = np.clip(surface + delta * soft, 0.0, 1.0)
    gray = (surface * 255.0).round().astype(np.uint8)
    return Sample(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), mask, int(defect), f"synthetic-{seed}-{index}")


class SyntheticStream:
    """An endless, indexable synthetic stream; frame ``i`` is a defect with prob. ``defect_rate``."""

    def __init__(self, seed: int = 0, size: int = 256, defect_rate: float = 0.1) -> None:
        self.seed, self.size, self.defect_rate = int(seed), int(size), float(defect_rate)

    def is_defect(self, index: int) -> bool:
        """Whether frame ``index`` carries a defect (seeded per index)."""
        return bool(np.random.default_rng([self.seed, 3, index]).random() < self.defect_rate)

    def __getitem__(self, index: int) -> Sample:
        return synthetic_sample(self.seed, index, self.size, self.is_defect(index))

    def __iter__(self) -> Iterator[Sample]:
        index = 0
        while True:
            yield self[index]
            index += 1


def synthetic_dataset(uri: str) -> DatasetSplits:
    """Dataset splits from ``synthetic://?seed=..&size=..&n_train=..&n_test_good=..&n_test_defect=..``."""
    p = parse_synthetic_uri(uri)
    seed, size = int(p["seed"]), int(p["size"])
    n_train, n_good, n_defect = int(p["n_train"]), int(p["n_test_good"]), int(p["n_test_defect"])

    def item(index: int, defect: bool) -> Item:
        return Item(f"synthetic-{seed}-{index}", int(defect),
                    make=lambda: synthetic_sample(seed, index, size, defect))

    train = [item(i, False) for i in range(n_train)]
    good = [item(n_train + i, False) for i in range(n_good)]
    bad = [item(n_train + n_good + i, True) for i in range(n_defect)]
    return DatasetSplits(f"synthetic(seed={seed})", train, good, bad)
