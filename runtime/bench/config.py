"""What one benchmark run measures (:class:`BenchConfig`, its ``--quick`` preset) and the targets it checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lemo_edge.config import ModelConfig, parse_input_size, size_hw
from lemo_edge.errors import InputError

TARGET_FRAME_MS = 20.0
"""Target p50 of one full frame (with the online update) at the primary size, in ms."""

TARGET_LEMO_VS_PATCHCORE = 3.0
"""Target ratio of a PatchCore frame's p50 to a LeMO frame's p50."""

TARGET_K_SCALING = (32768, 8192, 2.0)
"""Frame p50 at the first K at most the last number times the frame p50 at the second K (default top-k)."""


def size_key(size: int | tuple[int, int]) -> int | str:
    """How results name a size: the side of a square (as before), ``"HxW"`` otherwise."""
    h, w = size_hw(size)
    return h if h == w else f"{h}x{w}"


def size_text(size: int | tuple[int, int]) -> str:
    """``"HxW"`` of a bench size, for labels."""
    h, w = size_hw(size)
    return f"{h}x{w}"


def default_patchcore_data() -> Path | None:
    """``../shared/data/magnetic_tile`` relative to the working directory or to the repository, if present."""
    repository = Path(__file__).resolve().parents[2]  # runtime/bench/config.py -> the repository
    for candidate in (Path("../shared/data/magnetic_tile"), repository.parent / "shared" / "data" / "magnetic_tile"):
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures, and how long.

    Attributes:
        model: the model config (its ``size`` is replaced per input size).
        sizes: input sizes of the matrix: a side (square) or ``(H, W)`` (also ``"HxW"``), multiples of 32.
        primary_size: the size of ``frame_p50_ms``, the ratios and the K scale (must be in ``sizes``).
        batches: batch sizes of the matrix (1 for latency, 8 for throughput).
        backends: backends to try (None: every one available on the device).
        device: ``cpu`` or ``cuda``.
        threads: torch intra-op threads (None: usable cores - 1, as ``lemo-edge run``).
        warmup, frames: warm-up and recorded iterations at batch 1.
        batch_warmup, batch_frames: the same for larger batches.
        ratio_warmup, ratio_iters: the same for interleaved ratios.
        scale_k: memory sizes K of the scale (scorer alone, update and frame).
        scale_d: feature dimensions D of the scorer scale (synthetic embeddings).
        scale_sizes: input sides of the size scale.
        scale_score_k: top-k values of the frame-vs-K runs (the default's and 1).
        scale_warmup, scale_iters, scale_budget_s: per scale point.
        frame_k: K values of the full-frame-vs-K runs (None: ``scale_k``).
        source_hw: camera frame size (H, W) of the JPEG input.
        source_frames: distinct JPEG frames cycled through.
        patchcore_data: dataset whose ``train_good`` builds PatchCore's bank (None: synthetic frames).
        patchcore_images: at most this many training images (None: all).
        patchcore_synthetic_images: synthetic frames used without a dataset.
        patchcore_subsample: random patches the coreset is selected from.
        patchcore_fraction: bank size as a fraction of the subsample.
        patchcore_selection: ``kcenter`` (PatchCore's greedy k-center) or ``random`` (same bank size,
            no selection; the nearest-neighbour cost depends only on the size).
        patchcore_full_bank: also compare against a bank of ``patchcore_fraction`` of all patches.
        peak_matmul_n, peak_copy_mb, peak_reps: the machine-peak measurement.
        plots: write PNG plots.
        seed: seed of every random choice.
        quick: recorded in the results (the smaller matrix of ``--quick``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    sizes: tuple[int | tuple[int, int], ...] = (224, 256, 320)
    primary_size: int | tuple[int, int] = 256
    batches: tuple[int, ...] = (1, 8)
    backends: tuple[str, ...] | None = None
    device: str = "cpu"
    threads: int | None = None
    warmup: int = 10
    frames: int = 100
    batch_warmup: int = 2
    batch_frames: int = 20
    ratio_warmup: int = 5
    ratio_iters: int = 60
    scale_k: tuple[int, ...] = (10, 64, 256, 1024, 4096, 8192, 16384, 32768)
    scale_d: tuple[int, ...] = (64, 152, 512, 1024)
    scale_sizes: tuple[int, ...] = (224, 256, 320)
    scale_score_k: tuple[int, ...] = (3, 1)
    scale_warmup: int = 3
    scale_iters: int = 30
    scale_budget_s: float | None = 6.0
    frame_k: tuple[int, ...] | None = None
    source_hw: tuple[int, int] = (480, 640)
    source_frames: int = 8
    patchcore_data: Path | None = None
    patchcore_images: int | None = None
    patchcore_synthetic_images: int = 200
    patchcore_subsample: int = 100_000
    patchcore_fraction: float = 0.1
    patchcore_selection: str = "kcenter"
    patchcore_full_bank: bool = True
    peak_matmul_n: int = 2048
    peak_copy_mb: int = 256
    peak_reps: int = 5
    plots: bool = True
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.sizes or any(not isinstance(s, (int, tuple, list, str)) for s in self.sizes):
            raise InputError(f"sizes: expected input sizes (S or HxW), got {self.sizes!r}")
        object.__setattr__(self, "sizes", tuple(parse_input_size(s, "sizes") for s in self.sizes))
        object.__setattr__(self, "primary_size", parse_input_size(self.primary_size, "primary_size"))
        if self.primary_size not in self.sizes:
            raise InputError(f"primary_size: expected one of sizes {list(self.sizes)}, got {self.primary_size}")
        if not self.batches or any(b < 1 for b in self.batches) or 1 not in self.batches:
            raise InputError(f"batches: expected positive batch sizes including 1, got {list(self.batches)}")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads: expected >= 1, got {self.threads}")
        counts = {
            "frames": self.frames,
            "batch_frames": self.batch_frames,
            "ratio_iters": self.ratio_iters,
            "scale_iters": self.scale_iters,
        }
        bad = {k: v for k, v in counts.items() if v < 1}
        if bad or min(self.warmup, self.batch_warmup, self.ratio_warmup, self.scale_warmup) < 0:
            raise InputError(f"iterations: expected >= 1 recorded and >= 0 warm-up, got {bad or 'a negative warm-up'}")
        if any(not 1 <= k <= 65536 for k in (*self.scale_k, *(self.frame_k or ()))):
            raise InputError(f"scale_k: expected memory sizes in 1..65536, got {list(self.scale_k)}")
        if any(d < 1 for d in self.scale_d) or any(k < 1 for k in self.scale_score_k):
            raise InputError(f"scale: expected D >= 1 and top-k >= 1, got {list(self.scale_d)}, {self.scale_score_k}")
        if self.patchcore_selection not in ("kcenter", "random"):
            raise InputError(f"patchcore_selection: expected 'kcenter' or 'random', got {self.patchcore_selection!r}")
        if not 0 < self.patchcore_fraction <= 1:
            raise InputError(f"patchcore_fraction: expected in (0, 1], got {self.patchcore_fraction}")

    @classmethod
    def quick_preset(cls, **changes: Any) -> BenchConfig:
        """The ``--quick`` matrix: 256 only, fewer frames, a K subset, random PatchCore selection.

        It finishes in under 3 minutes on a 2-core CPU.
        """
        preset: dict[str, Any] = {
            "sizes": (256,),
            "primary_size": 256,
            "warmup": 5,
            "frames": 30,
            "batch_warmup": 1,
            "batch_frames": 2,
            "ratio_warmup": 3,
            "ratio_iters": 20,
            "scale_k": (10, 64, 256, 1024, 4096, 8192),
            "scale_d": (152, 1024),
            "scale_sizes": (224, 256, 320),
            "scale_warmup": 1,
            "scale_iters": 10,
            "scale_budget_s": 1.5,
            "frame_k": (1024, 4096, 8192, 16384, 32768),
            "patchcore_selection": "random",
            "peak_reps": 3,
            "quick": True,
        }
        preset.update(changes)
        return cls(**preset)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, the model config as its dict)."""
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        out["patchcore_data"] = str(self.patchcore_data) if self.patchcore_data is not None else None
        return out
