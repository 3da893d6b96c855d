"""Frozen, JSON-serialisable configuration of a LeMO model and its online learning."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lemo_edge.errors import InputError

METHODS = ("coreset", "lemo")
LOSS_SIGNS = ("fixed", "paper")
ADMISSIONS = ("recurrence", "coverage")
# lemo_edge.knn.BACKENDS (imported there: no import here)
KNN_BACKENDS = ("exact", "faiss-ivf", "usearch", "bf16", "int8")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model: features, memory, loss, scoring and online learning.

    Attributes:
        backbone: timm name of the frozen backbone.
        size: input shape in pixels, each side a multiple of 32: an int for the square ``size x size`` or
            ``(H, W)`` (also ``[H, W]`` in JSON or ``"HxW"`` text; a square pair is stored as the int). Images
            are resized to it (see :attr:`input_hw`), or letterboxed into it with ``letterbox``.
        letterbox: keep the frame's aspect ratio: scale it to fit inside ``H x W`` and pad the rest with a
            constant; padded cells are neither scored nor learned and maps are returned at the frame's own
            pixels (lemo_edge.letterbox).
        method: ``"coreset"``: memory items are inserted from the stream where coverage is worst
            and merged when K is reached (streaming k-center); ``"lemo"``: the paper's learned
            memory (orthogonal-noise init, contrastive loss), with the additions in docs/method.md.
        memory_size: K, the number of memory items; the memory never grows past it.
        embed_dim: D' of the adapter's output; 0 means "same as the backbone's D".
        score_k: number of nearest items averaged into a patch score.
        sigma: Gaussian smoothing of the anomaly map, in input pixels.
        position_norm: normalise patch scores per position by running statistics of accepted
            images' scores (see model.PositionNorm).
        position_window: window (images) of those running statistics.
        insert_per_image: (coreset) at most this many items inserted per image; a frame cut into T tiles may
            insert T times that, at most K / 8 (``lemo_edge.memory.frame_budget``).
        merge_slack: (coreset) when K is exceeded, merge down to ``(1 - merge_slack) * K`` items:
            small values merge a little on most images instead of much every few images (same
            accuracy, a far lower p99 of the update; docs/method.md section 7).
        admission: (coreset) ``"recurrence"``: of an image's least-covered patches, those whose position-
            normalised score is at most ``admit_z`` enter the memory at once; the more surprising ones wait in a
            pending pool and enter only once patches of ``confirm_images`` later learned images came nearer to
            them than they were to the memory; unconfirmed ones expire after ``pending_ttl`` learned images
            (docs/method.md section 8); ``"coverage"``: all enter at once (the rule before the pool; it learns
            the defects it sees).
        pending_size: (coreset, recurrence) rows of K reserved for the pending pool; 0: K / 8.
        confirm_images: (coreset, recurrence) later images whose patches must recur near a pending item.
        pending_ttl: (coreset, recurrence) learned images a pending item waits before it expires.
        admit_z: (coreset, recurrence) patches whose position-normalised score is at most this enter the
            memory at once; only the more surprising ones wait in the pending pool; ``None``: all wait.
        pending_searched: (coreset, recurrence) score against the pending rows too (a rare pattern is
            usable while it waits, and so is a defect); otherwise they only collect evidence.
        knn: (coreset) nearest-item search: ``"exact"`` (the torch reference), ``"int8"`` (default: an int8
            product shortlists 4 items per patch, ranked by exact float32 distances: recall@3 0.998, the Magnetic
            Tile AUROCs of the exact search within 1e-4 online and mixed, much faster than it on a CPU with int8
            dot products, exact on one without), ``"bf16"`` (the same with a bfloat16 product: 1.6x), or a library
            index (``"faiss-ivf"``, ``"usearch"``: approximate, faster still); all follow the memory
            (lemo_edge.knn) and need ``pending_searched=False``; a memory on a GPU always searches exactly (or by
            the CUDA scorer).
        adapter: learn the adapter (1x1 CoordConv) online; otherwise it stays at identity.
        steps_per_image: optimiser steps per incoming image (lemo, or coreset with ``adapter``).
        lr_memory: learning rate of the memory items (lemo).
        lr_adapter: learning rate of the adapter.
        tau: InfoNCE temperature.
        q: positives per patch in the contrastive loss.
        margin: negatives farther than ``margin`` (in units of the features' median norm) are clipped.
        loss_sign: ``"fixed"`` or ``"paper"`` (see lemo_edge.loss).
        compactness: weight of the compactness term (lemo).
        reseed_after: (lemo) items no patch chose in this many images are re-seeded from the
            current image's least-covered patches; 0 disables.
        refresh_every: (lemo) run the paper's memory refresh every N images; 0 disables.
        refresh_min_patches: items with fewer assigned patches at a refresh are dissolved.
        gate: after ``warmup`` images, only images scoring below the threshold update the model.
        warmup: images learned unconditionally at the start of a stream.
        threshold_k: online threshold = mean + k * std of accepted image scores.
        seed: seed of the memory initialisation.
    """

    backbone: str = "tf_efficientnet_lite0"
    size: int | tuple[int, int] = 256
    letterbox: bool = False
    method: str = "coreset"
    memory_size: int = 8192
    embed_dim: int = 0
    score_k: int = 3
    sigma: float = 4.0
    position_norm: bool = True
    position_window: int = 64
    insert_per_image: int = 64
    merge_slack: float = 0.01
    admission: str = "recurrence"
    pending_size: int = 0
    confirm_images: int = 2
    pending_ttl: int = 32
    admit_z: float | None = 4.0
    pending_searched: bool = False
    knn: str = "int8"
    adapter: bool = False
    steps_per_image: int = 1
    lr_memory: float = 1e-2
    lr_adapter: float = 1e-4
    tau: float = 1.0
    q: int = 1
    margin: float | None = None
    loss_sign: str = "fixed"
    compactness: float = 1.0
    reseed_after: int = 8
    refresh_every: int = 0
    refresh_min_patches: int = 2
    gate: bool = True
    warmup: int = 16
    threshold_k: float = 5.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        """Check every field's type and range (:data:`FIELD_RULES`); numbers are normalised to ``int``/``float``.

        Raises:
            InputError: the first bad field, naming it, its range and the value, e.g.
                ``position_window: expected an integer >= 1, got 0``.
        """
        for name, rule in FIELD_RULES.items():
            object.__setattr__(self, name, rule.check(name, getattr(self, name)))
        if self.method == "coreset" and self.admission == "recurrence":
            if self.pending_size and not 1 <= self.pending_size < self.memory_size:
                raise InputError(
                    f"pending_size: expected 1..memory_size-1 ({self.memory_size - 1}) with admission "
                    f"'recurrence', got {self.pending_size}"
                )
            if self.knn != "exact" and self.pending_searched:
                raise InputError(
                    "knn: expected 'exact' with pending_searched (the index follows the confirmed items), "
                    f"got {self.knn!r}"
                )
        if not isinstance(self.extra, dict) or not all(isinstance(k, str) for k in self.extra):
            raise InputError(f"extra: expected a dict with string keys, got {self.extra!r}")

    @property
    def input_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the model's input in pixels (``(size, size)`` for an int ``size``)."""
        return size_hw(self.size)

    @property
    def pending_rows(self) -> int:
        """Rows of K the pending pool holds (``pending_size``, or K / 8 when it is 0; 0 without recurrence)."""
        if self.method != "coreset" or self.admission != "recurrence":
            return 0
        return self.pending_size or max(1, self.memory_size // 8)

    def replace(self, **changes: Any) -> ModelConfig:
        """Return a copy with ``changes`` applied (validated); unknown names raise InputError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"config: unknown fields {unknown}; valid: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`, keys sorted."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise InputError. A config saved before the library index
        (``ivf_lists``/``ivf_probe``, the hand-written inverted file) loads with ``knn="faiss-ivf"`` for a
        non-zero ``ivf_lists``, else with the default search (a config file may omit any field)."""
        data = dict(data)
        lists = data.pop("ivf_lists", None)
        data.pop("ivf_probe", None)
        if lists and "knn" not in data:
            data["knn"] = "faiss-ivf"
        return cls().replace(**data)


SIZE_ALIGNMENT = 32  # the backbones' output stride: every input side is a multiple of it


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of an input size as configs and benchmarks hold it: a side (a square) or ``(H, W)``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


_HW = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


def parse_input_size(value: Any, what: str = "size") -> int | tuple[int, int]:
    """An input size as :class:`ModelConfig` stores it: an int for a square, else ``(H, W)``.

    Args:
        value: ``256``, ``"256"``, ``"256x640"`` (H x W), ``[256, 640]`` or ``(256, 640)``.
        what: the name the error message starts with.

    Returns:
        ``256`` for any square (``"256x256"`` too), ``(256, 640)`` otherwise.

    Raises:
        InputError: not one or two integers, or a side that is not a positive multiple of 32, e.g.
            ``size: expected H and W multiples of 32, got 250x256``.
    """
    sides: list[Any]
    if isinstance(value, str):
        match = _HW.match(value)
        if not match:
            raise InputError(f"{what}: expected SIZE or HxW (e.g. 256 or 256x640), got {value!r}")
        sides = [int(match.group(1)), int(match.group(2) or match.group(1))]
    elif isinstance(value, (list, tuple)):
        sides = list(value)
    else:
        sides = [value, value]
    if len(sides) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in sides):
        raise InputError(f"{what}: expected an integer or [H, W] of integers, got {value!r}")
    h, w = int(sides[0]), int(sides[1])
    if h <= 0 or w <= 0 or h % SIZE_ALIGNMENT or w % SIZE_ALIGNMENT:
        shown = value.strip() if isinstance(value, str) else f"{h}x{w}" if isinstance(value, (list, tuple)) else h
        raise InputError(f"{what}: expected H and W positive multiples of {SIZE_ALIGNMENT}, got {shown}")
    return h if h == w else (h, w)


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; otherwise an InputError whose message starts with ``what``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{what}: expected a JSON object, got invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class FieldRule:
    """The type and range of one config field.

    Attributes:
        kind: ``bool``, ``str``, ``int`` (bools refused) or ``float`` (ints accepted, bools refused, finite only).
        expected: the range as the error message states it, e.g. ``"an integer >= 1"``.
        ok: whether a value of the right type is in range.
        optional: ``None`` is allowed too.
        parse: ``(value, name) -> value`` that checks and normalises the field itself (raising InputError
            naming ``name``); ``kind`` and ``ok`` are then unused.
    """

    kind: type
    expected: str
    ok: Callable[[Any], bool] = lambda value: True
    optional: bool = False
    parse: Callable[[Any, str], Any] | None = None

    def check(self, name: str, value: Any) -> Any:
        """Return ``value`` (an ``int``/``float`` for number fields) or raise InputError naming ``name``."""
        if self.parse is not None:
            return self.parse(value, name)
        if value is None and self.optional:
            return None
        if self.kind is bool:
            right_type = isinstance(value, bool)
        elif self.kind is int:
            right_type = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        elif self.kind is float:
            right_type = isinstance(value, numbers.Real) and not isinstance(value, bool)
        else:
            right_type = isinstance(value, self.kind)
        if not right_type:
            raise InputError(f"{name}: expected {self.expected}, got {value!r} ({type(value).__name__})")
        normalised = self.kind(value) if self.kind in (int, float) else value
        if (self.kind is float and not math.isfinite(normalised)) or not self.ok(normalised):
            raise InputError(f"{name}: expected {self.expected}, got {value!r}")
        return normalised


def _int(low: int, high: int | None = None) -> FieldRule:
    if high is None:
        return FieldRule(int, f"an integer >= {low}", lambda v: v >= low)
    return FieldRule(int, f"an integer in [{low}, {high}]", lambda v: low <= v <= high)


def _float(low: float, *, above: bool = False, optional: bool = False) -> FieldRule:
    text = f"a finite number {'>' if above else '>='} {low:g}"
    return FieldRule(
        float,
        f"null or {text}" if optional else text,
        (lambda v: v > low) if above else (lambda v: v >= low),
        optional,
    )


FIELD_RULES: dict[str, FieldRule] = {
    "backbone": FieldRule(str, "a non-empty timm model name", lambda v: bool(v.strip())),
    "size": FieldRule(object, "an integer, [H, W] or 'HxW', multiples of 32", parse=parse_input_size),
    "letterbox": FieldRule(bool, "a bool"),
    "method": FieldRule(str, f"one of {list(METHODS)}", lambda v: v in METHODS),
    "memory_size": FieldRule(int, "1..65536", lambda v: 1 <= v <= 65536),
    "embed_dim": _int(0),
    "score_k": _int(1),
    "sigma": _float(0.0),
    "position_norm": FieldRule(bool, "a bool"),
    "position_window": _int(1),
    "insert_per_image": _int(1),
    "merge_slack": FieldRule(float, "a fraction in (0, 1)", lambda v: 0.0 < v < 1.0),
    "admission": FieldRule(str, f"one of {list(ADMISSIONS)}", lambda v: v in ADMISSIONS),
    "pending_size": _int(0),
    "confirm_images": _int(1),
    "pending_ttl": _int(1),
    "admit_z": FieldRule(float, "null or a finite number", optional=True),
    "pending_searched": FieldRule(bool, "a bool"),
    "knn": FieldRule(str, f"one of {list(KNN_BACKENDS)}", lambda v: v in KNN_BACKENDS),
    "adapter": FieldRule(bool, "a bool"),
    "steps_per_image": _int(1),
    "lr_memory": _float(0.0),
    "lr_adapter": _float(0.0),
    "tau": _float(0.0, above=True),
    "q": _int(1),
    "margin": _float(0.0, above=True, optional=True),
    "loss_sign": FieldRule(str, f"one of {list(LOSS_SIGNS)}", lambda v: v in LOSS_SIGNS),
    "compactness": _float(0.0),
    "reseed_after": _int(0),
    "refresh_every": _int(0),
    "refresh_min_patches": _int(0),
    "gate": FieldRule(bool, "a bool"),
    "warmup": _int(0),
    "threshold_k": _float(0.0),
    "seed": _int(0, 2**63 - 1),
}
"""Type and range of every ModelConfig field but ``extra`` (checked in ``__post_init__``, in this order)."""
