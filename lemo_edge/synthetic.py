"""A built-in synthetic industrial stream: seeded textured surfaces with exact defect masks.

Needs no data, so the demo and most tests use it. A stream's seed fixes the surface: its texture
family (brushed metal, woven fabric or cast/granular surface, see :func:`texture_family`), tone,
grain and illumination; the structure of the surface is one seeded canvas per ``(seed, size)``.
Every frame is deterministic given ``(seed, index)`` and varies by shift over that canvas, fresh
fine grain, illumination and gain jitter and sensor noise.

A defective frame is the normal frame of the same ``(seed, index)`` with one defect painted into
it, and differs from it only inside the mask. Defects are scratches (one to three thin curves),
blobs (dark or bright irregular spots) and cracks (jagged branching polylines), covering 1-8% of
the image, with an intensity change of two to three times the texture's own standard deviation.

URI: ``synthetic://?seed=0&size=256&defect_rate=0.1`` (stream) and, for ``lemo-edge eval``,
``n_train``, ``n_test_good``, ``n_test_defect`` (dataset splits). Frames of another shape, e.g. a camera's
``width=1920&height=1080``, show a larger piece of the same surface at the same pixel scale as a
``size x size`` frame (``size`` then only sets the texture's scale). ``defect_min=10&defect_max=20`` draws
defects whose longest side is that many pixels (default 0: defects cover 1-8% of the frame).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from lemo_edge.errors import InputError
from lemo_edge.samples import DatasetSplits, Item, Sample

DEFAULTS: dict[str, float] = {
    "seed": 0,
    "size": 256,
    "defect_rate": 0.1,
    "n_train": 200,
    "n_test_good": 50,
    "n_test_defect": 50,
    "width": 0,
    "height": 0,
    "defect_min": 0,
    "defect_max": 0,
}
FAMILIES = ("brushed", "fabric", "cast")
DEFECT_KINDS = ("scratch", "blob", "crack")
AREA_RANGE = (0.01, 0.08)  # defect area as a fraction of the image
CONTRAST_RANGE = (2.0, 3.0)  # defect intensity change in units of the texture's standard deviation
MIN_SIZE = 32

# Seed-sequence tags, so that the family, the frame, the defect and the stream's choice are independent.
_FAMILY, _FRAME, _DEFECT, _CHOICE = 0, 1, 2, 3


def parse_synthetic_uri(uri: str, *, seed: int | None = None) -> dict[str, float]:
    """Parse ``synthetic://?key=value&...`` into a dict of the parameters in :data:`DEFAULTS`.

    Args:
        uri: e.g. ``"synthetic://?defect_rate=0.1&seed=0&size=256"``; absent keys take their defaults.
        seed: seed used when the URI has no ``seed=`` (default: ``DEFAULTS["seed"]``).

    Returns:
        Every key of :data:`DEFAULTS`: ``defect_rate`` a float in [0, 1]; ``seed``, ``size`` (a
        multiple of 32), ``n_train``, ``n_test_good`` and ``n_test_defect`` non-negative ints.

    Raises:
        InputError: not a synthetic URI, an unknown or repeated key, or a value out of range.
    """
    parts = urlsplit(uri)
    if parts.scheme != "synthetic" or parts.netloc or parts.path not in ("", "/"):
        raise InputError(f"synthetic source: expected 'synthetic://?key=value&...', got {uri!r}")
    params = dict(DEFAULTS)
    if seed is not None:
        params["seed"] = int(seed)
    seen: set[str] = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in DEFAULTS:
            raise InputError(f"synthetic source: unknown parameter {key!r}; valid: {sorted(DEFAULTS)}")
        if key in seen:
            raise InputError(f"synthetic source: expected {key} once, got it twice in {uri!r}")
        seen.add(key)
        try:
            params[key] = float(value) if key == "defect_rate" else int(value)
        except ValueError as err:
            kind = "a number" if key == "defect_rate" else "an integer"
            raise InputError(f"synthetic source: {key} expected {kind}, got {value!r}") from err
    if not 0.0 <= params["defect_rate"] <= 1.0:
        raise InputError(f"synthetic source: defect_rate expected 0..1, got {params['defect_rate']}")
    if params["size"] < MIN_SIZE or int(params["size"]) % 32:
        raise InputError(f"synthetic source: size expected a multiple of 32 >= 32, got {params['size']}")
    for key in ("seed", "n_train", "n_test_good", "n_test_defect"):
        if params[key] < 0:
            raise InputError(f"synthetic source: {key} expected >= 0, got {params[key]}")
    for key in ("width", "height"):
        if params[key] != 0 and params[key] < MIN_SIZE:
            raise InputError(f"synthetic source: {key} expected 0 (= size) or >= {MIN_SIZE}, got {params[key]}")
    shape = frame_shape(params)
    lo, hi = int(params["defect_min"]), int(params["defect_max"])
    if (lo or hi) and not 2 <= lo <= hi <= min(shape) // 2:
        raise InputError(
            f"synthetic source: defect_min and defect_max expected 2 <= min <= max <= {min(shape) // 2} "
            f"(half the shorter side), or both 0, got {lo} and {hi}"
        )
    return params


def frame_shape(params: dict[str, float]) -> tuple[int, int]:
    """``(height, width)`` of the frames of parsed URI parameters (``height``/``width`` 0: ``size``)."""
    size = int(params["size"])
    return int(params["height"]) or size, int(params["width"]) or size


def defect_px(params: dict[str, float]) -> tuple[int, int] | None:
    """``(defect_min, defect_max)`` of parsed URI parameters, or None for the default relative sizes."""
    lo, hi = int(params["defect_min"]), int(params["defect_max"])
    return (lo, hi) if lo else None


def texture_family(seed: int) -> str:
    """The texture family of stream ``seed``: ``FAMILIES[seed % 3]`` (brushed, fabric, cast)."""
    return FAMILIES[int(seed) % len(FAMILIES)]


@dataclass(frozen=True)
class _Surface:
    """What a seed fixes: family, tone, grain and illumination, and the structure canvas."""

    family: str
    color: np.ndarray  # (3,) float32 RGB in 0..255
    contrast: float  # texture std relative to the tone
    tilt: np.ndarray  # (2,) illumination gradient over the image (y, x)
    vignette: float
    grain: float  # weight of the per-frame fine grain relative to the canvas structure
    canvas: np.ndarray  # (height + size, width + size) float32, zero mean, unit std, read-only


def _normalise(field: np.ndarray) -> np.ndarray:
    field = field - field.mean()
    return (field / (field.std() + 1e-6)).astype(np.float32)


def _brushed(rng: np.random.Generator, shape: tuple[int, int], size: int) -> np.ndarray:
    nh, nw = shape
    n = max(shape)
    angle = rng.uniform(0, 180)
    pad = n // 2
    noise = rng.normal(0, 1, (n + 2 * pad, n + 2 * pad)).astype(np.float32)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=size * rng.uniform(0.03, 0.07), sigmaY=size * 0.003 + 0.5)
    centre = ((n + 2 * pad) / 2, (n + 2 * pad) / 2)
    rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
    streaks = cv2.warpAffine(streaks, rotation, (n + 2 * pad, n + 2 * pad), borderMode=cv2.BORDER_REFLECT)
    streaks = _normalise(streaks[pad : pad + nh, pad : pad + nw])
    mottling = _normalise(cv2.GaussianBlur(rng.normal(0, 1, (nh, nw)).astype(np.float32), (0, 0), size * 0.08))
    return _normalise(streaks + 0.3 * mottling)


def _fabric(rng: np.random.Generator, shape: tuple[int, int], size: int) -> np.ndarray:
    period = size * rng.uniform(0.035, 0.06)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    angle = np.deg2rad(rng.uniform(-8, 8))
    u = (np.cos(angle) * xx + np.sin(angle) * yy) / period
    v = (-np.sin(angle) * xx + np.cos(angle) * yy) / period
    # thread irregularity: every thread is a little thicker or brighter than its neighbours
    rows = rng.normal(0, 0.25, int(np.ceil(np.abs(v).max())) + 3)
    cols = rng.normal(0, 0.25, int(np.ceil(np.abs(u).max())) + 3)
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    warp_on_top = (iu + iv) % 2 == 0
    warp = np.sin(np.pi * (u - iu)) * (1 + cols[iu % cols.size])
    weft = np.sin(np.pi * (v - iv)) * (1 + rows[iv % rows.size])
    weave = np.where(warp_on_top, warp, weft).astype(np.float32)
    fibres = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), 0.8)
    return _normalise(weave + 0.25 * _normalise(fibres))


def _cast(rng: np.random.Generator, shape: tuple[int, int], size: int) -> np.ndarray:
    field = np.zeros(shape, np.float32)
    for scale, weight in ((0.004, 0.5), (0.01, 1.0), (0.025, 0.8), (0.06, 0.5)):
        octave = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), size * scale + 0.3)
        field += weight * _normalise(octave)
    return _normalise(field)


_PALETTES = {
    "brushed": ((150, 158, 165), 15),
    "fabric": ((120, 130, 150), 35),
    "cast": ((135, 120, 105), 20),
}


@functools.lru_cache(maxsize=8)
def _surface(seed: int, size: int, shape: tuple[int, int] | None = None) -> _Surface:
    """What ``seed`` fixes, with a canvas for frames of ``shape`` (default ``(size, size)``): ``shape + size``."""
    h, w = shape or (size, size)
    family = texture_family(seed)
    rng = np.random.default_rng([seed, _FAMILY, 1])
    base, spread = _PALETTES[family]
    color = np.clip(np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3), 90, 170).astype(np.float32)
    make = {"brushed": _brushed, "fabric": _fabric, "cast": _cast}[family]
    canvas = make(rng, (h + size, w + size), size)
    canvas.setflags(write=False)
    return _Surface(
        family=family,
        color=color,
        contrast=float(rng.uniform(0.07, 0.1)),
        tilt=rng.uniform(-0.12, 0.12, 2).astype(np.float32),
        vignette=float(rng.uniform(0.0, 0.12)),
        grain=float(rng.uniform(0.25, 0.4)),
        canvas=canvas,
    )


def _check_frame_args(seed: int, index: int, size: int) -> None:
    if int(seed) != seed or seed < 0:
        raise InputError(f"seed: expected an integer >= 0, got {seed!r}")
    if int(index) != index or index < 0:
        raise InputError(f"index: expected an integer >= 0, got {index!r}")
    if int(size) != size or size < MIN_SIZE:
        raise InputError(f"size: expected an integer >= {MIN_SIZE}, got {size!r}")


def _frame_fields(
    seed: int, index: int, size: int, shape: tuple[int, int] | None = None
) -> tuple[_Surface, np.ndarray, np.ndarray, np.ndarray]:
    """Texture ``t`` and illumination ``light`` ``(h, w) float32`` and noise ``(h, w, 3) float32`` of a frame of
    ``shape`` (default ``(size, size)``)."""
    h, w = shape or (size, size)
    surface = _surface(seed, size, None if (h, w) == (size, size) else (h, w))
    rng = np.random.default_rng([seed, _FRAME, index])
    dy, dx = (int(v) for v in rng.integers(0, size, 2))
    structure = surface.canvas[dy : dy + h, dx : dx + w]
    fine = _normalise(cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 0.8))
    texture = (structure + surface.grain * fine) / np.float32(np.sqrt(1 + surface.grain**2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / np.float32(h) - np.float32(0.5), xx / np.float32(w) - np.float32(0.5)
    tilt = surface.tilt + rng.uniform(-0.03, 0.03, 2).astype(np.float32)
    gain = np.float32(rng.uniform(0.97, 1.03))
    light = gain * (1 + tilt[0] * yy + tilt[1] * xx - surface.vignette * (xx**2 + yy**2))
    noise = rng.normal(0, 1.5, (h, w, 3)).astype(np.float32)
    return surface, texture, light, noise


# -- defects -----------------------------------------------------------------------------------------------------------


def _curve(rng: np.random.Generator, size: int, length: float) -> np.ndarray:
    """A gently bent curve (quadratic Bezier) of about ``length`` pixels inside the image, ``(P, 1, 2) int32``."""
    margin = size * 0.06
    heading = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(heading), np.sin(heading)])
    start = rng.uniform(margin, size - margin, 2)
    end = start + direction * length
    # pull the curve back inside if it leaves the image
    lo, hi = np.full(2, margin), np.full(2, size - margin)
    shift = np.clip(end, lo, hi) - end
    start, end = np.clip(start + shift, lo, hi), np.clip(end + shift, lo, hi)
    normal = np.array([-direction[1], direction[0]])
    middle = (start + end) / 2 + normal * rng.normal(0, 0.12) * length
    t = np.linspace(0, 1, max(8, int(length / 4)))[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * middle + t**2 * end
    return np.round(points).astype(np.int32).reshape(-1, 1, 2)


def _walk(rng: np.random.Generator, size: int, start: np.ndarray, heading: float, steps: int) -> np.ndarray:
    """A jagged polyline (random walk with sharp turns) inside the image, ``(steps + 1, 1, 2) int32``."""
    margin = size * 0.04
    points = [start.copy()]
    point = start.copy()
    for _ in range(steps):
        heading += rng.normal(0, 0.55)
        step = size * rng.uniform(0.025, 0.055)
        point = point + step * np.array([np.cos(heading), np.sin(heading)])
        for axis in range(2):  # reflect off the border
            if not margin <= point[axis] <= size - margin:
                point[axis] = np.clip(point[axis], margin, size - margin)
                heading = np.pi - heading if axis == 0 else -heading
        points.append(point.copy())
    return np.round(np.asarray(points)).astype(np.int32).reshape(-1, 1, 2)


def _draw(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One attempt at a defect: binary mask ``(size, size) uint8`` and its profile ``(size, size) float32``."""
    mask = np.zeros((size, size), np.uint8)
    if kind == "blob":
        target = rng.uniform(0.013, 0.065) * size * size
        stretch = rng.uniform(1.0, 2.2)
        theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        radius = np.ones_like(theta)
        for k in range(2, 6):
            radius += rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        r0 = np.sqrt(target / np.pi / np.mean(radius**2))
        x, y = r0 * radius * np.cos(theta) * np.sqrt(stretch), r0 * radius * np.sin(theta) / np.sqrt(stretch)
        rot = rng.uniform(0, np.pi)
        x, y = x * np.cos(rot) - y * np.sin(rot), x * np.sin(rot) + y * np.cos(rot)
        reach = max(np.abs(x).max(), np.abs(y).max()) + 2
        cx, cy = rng.uniform(reach, size - reach, 2) if reach < size / 2 else (size / 2, size / 2)
        polygon = np.round(np.stack([x + cx, y + cy], axis=1)).astype(np.int32)
        cv2.fillPoly(mask, [polygon], 1)
        # a stain: strongest in its middle, fading towards (but not to zero at) its edge
        depth = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
        profile = 0.6 + 0.4 * np.clip(depth / max(0.35 * r0, 1.0), 0.0, 1.0)
        return mask, (profile * mask).astype(np.float32)
    width = max(2, int(round(size * rng.uniform(0.008, 0.014))))
    if kind == "scratch":
        lines = int(rng.integers(1, 4))
        target = rng.uniform(0.011, 0.025) * size * size
        length = min(target / (width * lines), 0.95 * size)
        first = _curve(rng, size, length)
        for i in range(lines):
            offset = np.round(rng.normal(0, 1, 2) * size * 0.02 * i).astype(np.int32)
            cv2.polylines(mask, [first + offset], False, 1, width, lineType=cv2.LINE_8)
    else:  # crack: a jagged main path and a few branches
        target = rng.uniform(0.011, 0.035) * size * size
        total_steps = max(6, int(target / width / (size * 0.04)))
        main = max(4, int(total_steps * rng.uniform(0.55, 0.8)))
        start = rng.uniform(size * 0.2, size * 0.8, 2)
        path = _walk(rng, size, start, rng.uniform(0, 2 * np.pi), main)
        cv2.polylines(mask, [path], False, 1, width, lineType=cv2.LINE_8)
        left = total_steps - main
        while left > 1:
            steps = min(left, int(rng.integers(2, 6)))
            origin = path[int(rng.integers(1, len(path))), 0].astype(np.float64)
            branch = _walk(rng, size, origin, rng.uniform(0, 2 * np.pi), steps)
            cv2.polylines(mask, [branch], False, 1, max(1, width - 1), lineType=cv2.LINE_8)
            left -= steps
    return mask, mask.astype(np.float32)


def _defect(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A defect of ``kind`` covering :data:`AREA_RANGE` of the image: mask ``uint8`` and profile ``float32``."""
    lo, hi = AREA_RANGE[0] * size * size, AREA_RANGE[1] * size * size
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(40):
        mask, profile = _draw(kind, rng, size)
        area = float(mask.sum())
        if lo <= area <= hi:
            return mask, profile
        miss = lo - area if area < lo else area - hi
        if best is None or miss < best[0]:
            best = (miss, mask, profile)
    assert best is not None
    _, mask, profile = best
    kernel = np.ones((3, 3), np.uint8)
    while mask.sum() < lo:  # thin shapes clipped by the border: thicken them
        mask = cv2.dilate(mask, kernel)
    while mask.sum() > hi:
        mask = cv2.erode(mask, kernel)
    return mask, np.maximum(profile, 0.6).astype(np.float32) * mask


def _small_defect(
    kind: str, rng: np.random.Generator, extent: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A defect of ``kind`` whose longest side is ``extent`` pixels, at a random place in a ``shape`` frame.

    Drawn as :func:`_defect` draws it in a square of ``4 * extent`` (at least 32), cut to its bounding box,
    scaled to ``extent`` and pasted; returns the frame's mask ``uint8`` and profile ``float32``.
    """
    local, profile = _defect(kind, rng, max(MIN_SIZE, 4 * extent))
    ys, xs = np.nonzero(local)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    crop, crop_profile = local[box], profile[box]
    scale = extent / max(crop.shape)
    bh, bw = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = cv2.resize(crop, (bw, bh), interpolation=cv2.INTER_NEAREST)
    if not small.any():  # a thin shape scaled away: keep its middle pixel
        small[bh // 2, bw // 2] = 1
    small_profile = np.maximum(cv2.resize(crop_profile, (bw, bh), interpolation=cv2.INTER_LINEAR), 0.6) * small
    h, w = shape
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    mask = np.zeros(shape, np.uint8)
    out = np.zeros(shape, np.float32)
    mask[y : y + bh, x : x + bw], out[y : y + bh, x : x + bw] = small, small_profile
    return mask, out


def synthetic_sample(
    seed: int,
    index: int,
    size: int = 256,
    defect: bool = False,
    *,
    kind: str | None = None,
    shape: tuple[int, int] | None = None,
    defect_px: tuple[int, int] | None = None,
) -> Sample:
    """Frame ``index`` of stream ``seed``, normal or with one defect.

    Args:
        seed: stream seed (>= 0); it fixes the texture family, tone and illumination.
        index: frame index (>= 0).
        size: side of the square image (>= 32), and the texture's scale for another ``shape``.
        defect: paint one defect into the frame; the image then differs from the normal frame of
            the same ``(seed, index)`` only inside the mask.
        kind: the defect kind, one of :data:`DEFECT_KINDS`; default: drawn from the frame's seed.
        shape: ``(height, width)`` of the frame (each >= 32); default ``(size, size)``.
        defect_px: ``(lo, hi)``: the defect's longest side in pixels, drawn in ``[lo, hi]``; default: the
            defect covers 1-8% of the frame.

    Returns:
        A Sample: ``(h, w, 3) uint8`` RGB, ``(h, w) uint8`` mask in {0, 1} (zeros when normal), label
        ``int(defect)`` and name ``"synthetic-{seed}-{index}"``.

    Raises:
        InputError: a negative seed or index, a side below 32, an unknown ``kind`` or a bad ``defect_px``.
    """
    _check_frame_args(seed, index, size)
    if kind is not None and kind not in DEFECT_KINDS:
        raise InputError(f"kind: expected one of {list(DEFECT_KINDS)}, got {kind!r}")
    seed, index, size = int(seed), int(index), int(size)
    h, w = (int(shape[0]), int(shape[1])) if shape is not None else (size, size)
    if min(h, w) < MIN_SIZE:
        raise InputError(f"shape: expected sides >= {MIN_SIZE}, got {shape!r}")
    if defect_px is not None and not 2 <= defect_px[0] <= defect_px[1] <= min(h, w) // 2:
        raise InputError(f"defect_px: expected 2 <= lo <= hi <= {min(h, w) // 2}, got {defect_px!r}")
    surface, texture, light, noise = _frame_fields(seed, index, size, (h, w))
    c = np.float32(surface.contrast)
    relief = 1 + c * texture
    mask = np.zeros((h, w), np.uint8)
    if defect:
        rng = np.random.default_rng([seed, _DEFECT, index])
        drawn = str(rng.choice(DEFECT_KINDS))  # always drawn, so that kind=drawn reproduces the default
        chosen = drawn if kind is None else kind
        if defect_px is None and (h, w) == (size, size):
            mask, profile = _defect(chosen, rng, size)
        else:
            lo, hi = defect_px or (max(2, min(h, w) // 8), max(2, min(h, w) // 3))
            mask, profile = _small_defect(chosen, rng, int(rng.integers(lo, hi + 1)), (h, w))
        if chosen == "blob":
            sign = -1.0 if rng.random() < 0.5 else 1.0
            relief = relief - c * texture * np.float32(0.5) * profile  # a stain hides part of the texture
        elif chosen == "scratch":
            sign = 1.0 if surface.family == "brushed" and rng.random() < 0.7 else -1.0
        else:
            sign = -1.0
        # the mean change over the mask is CONTRAST_RANGE times the texture's std
        strength = np.float32(sign * rng.uniform(*CONTRAST_RANGE) / float(profile[mask == 1].mean()))
        relief = relief + c * strength * profile
    image = surface.color[None, None, :] * (light * relief)[:, :, None] + noise
    rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return Sample(rgb, mask, int(defect), f"synthetic-{seed}-{index}")


class SyntheticStream:
    """An indexable synthetic stream; frame ``i`` is a defect with probability ``defect_rate``.

    The choice is seeded per index, so ``stream[i]`` is the same whenever it is asked for. Iteration
    is endless unless ``length`` is given.

    Args:
        seed: stream seed (>= 0).
        size: side of the square frames (>= 32); the texture's scale for another ``shape``.
        defect_rate: probability that a frame carries a defect, in [0, 1].
        length: number of frames, or None for an endless stream.
        shape: ``(height, width)`` of the frames; default ``(size, size)``.
        defect_px: the defects' longest side in pixels, ``(lo, hi)``; default: 1-8% of the frame.

    Raises:
        InputError: an argument out of range.
    """

    def __init__(
        self,
        seed: int = 0,
        size: int = 256,
        defect_rate: float = 0.1,
        length: int | None = None,
        shape: tuple[int, int] | None = None,
        defect_px: tuple[int, int] | None = None,
    ) -> None:
        _check_frame_args(seed, 0, size)
        if not 0.0 <= float(defect_rate) <= 1.0:
            raise InputError(f"defect_rate: expected a probability in [0, 1], got {defect_rate!r}")
        if length is not None and (int(length) != length or length < 0):
            raise InputError(f"length: expected None or an integer >= 0, got {length!r}")
        self.seed, self.size, self.defect_rate = int(seed), int(size), float(defect_rate)
        self.length = None if length is None else int(length)
        self.shape, self.defect_px = shape, defect_px
        if shape is not None or defect_px is not None:  # checks them now, not at the first defect
            synthetic_sample(self.seed, 0, self.size, False, shape=shape, defect_px=defect_px)

    @property
    def family(self) -> str:
        """The texture family of this stream (see :func:`texture_family`)."""
        return texture_family(self.seed)

    def is_defect(self, index: int) -> bool:
        """Whether frame ``index`` carries a defect (seeded per index)."""
        return bool(np.random.default_rng([self.seed, _CHOICE, int(index)]).random() < self.defect_rate)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless SyntheticStream has no len(); pass length=N to bound it")
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InputError(f"index: expected an integer >= 0, got {index!r}")
        if index < 0 or (self.length is not None and index >= self.length):
            bound = "" if self.length is None else f" and < {self.length}"
            raise IndexError(f"index: expected an integer >= 0{bound}, got {index}")
        return synthetic_sample(
            self.seed, int(index), self.size, self.is_defect(int(index)), shape=self.shape, defect_px=self.defect_px
        )

    def __iter__(self) -> Iterator[Sample]:
        index = 0
        while self.length is None or index < self.length:
            yield self[index]
            index += 1


def synthetic_dataset(uri: str, *, seed: int | None = None) -> DatasetSplits:
    """Dataset splits from ``synthetic://?seed=..&size=..&n_train=..&n_test_good=..&n_test_defect=..``.

    ``train_good`` is frames ``0 .. n_train - 1`` (normal), ``test_good`` the next ``n_test_good``
    (normal) and ``test_defect`` the next ``n_test_defect`` frames, each with a defect. Items
    generate their sample on ``load()``; ``seed`` is used when the URI has no ``seed=``.

    Raises:
        InputError: a malformed URI (see :func:`parse_synthetic_uri`).
    """
    p = parse_synthetic_uri(uri, seed=seed)
    s, size = int(p["seed"]), int(p["size"])
    n_train, n_good, n_defect = int(p["n_train"]), int(p["n_test_good"]), int(p["n_test_defect"])

    shape = frame_shape(p) if (p["width"] or p["height"]) else None

    def item(index: int, defect: bool) -> Item:
        make = functools.partial(synthetic_sample, s, index, size, defect, shape=shape, defect_px=defect_px(p))
        return Item(f"synthetic-{s}-{index}", int(defect), make=make)

    train = [item(i, False) for i in range(n_train)]
    good = [item(n_train + i, False) for i in range(n_good)]
    bad = [item(n_train + n_good + i, True) for i in range(n_defect)]
    return DatasetSplits(f"synthetic(seed={s})", train, good, bad)
