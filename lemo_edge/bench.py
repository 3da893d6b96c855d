"""Latency benchmark of the inspection pipeline: stages, ratios, scaling and the machine's limits.

One run measures, on this machine and in one process:

- **matrix**: each available feature backend (torch, onnxruntime; tensorrt with CUDA) x scorer (torch
  reference; the CUDA kernel with CUDA) x input size x batch, the latency of every stage of a frame
  (``preprocess``: JPEG decode + colour conversion + resize of a synthetic camera frame encoded with
  ``cv2.imencode``; ``backbone``; ``embed`` (adapter); ``score`` (nearest memory); ``map`` (anomaly map
  and image score, copied to the host); ``update`` (the gated online update)) and of the whole frame, as
  p50/p90/p99 over the measured frames (warm-up excluded), frames per second and peak host/device memory;
- **ratios**, each from contenders run side by side and interleaved (their order alternates every
  iteration, so drift and other processes' load hit both alike); their definitions go into the results
  (:data:`RATIOS_DOC`);
- **scale**: the scorer's cost against K (memory items), D (feature channels, incl. a synthetic
  D=1024) and input size, the online update's and the whole frame's cost against K;
- **limits**: FLOPs and bytes per frame of the backbone (``FlopCounterMode``) and of the scorer, and the
  fraction achieved of this machine's peak matmul GFLOP/s and memcpy GB/s measured in the same run.

The timing primitives (:func:`measure_stages`, :func:`interleave`, :func:`summarize`, :func:`ratio`)
are pure and take the clock and the synchronisation as arguments, so they are tested with fake
clocks. On CUDA every stage synchronises the device before the clock is read.

:func:`run_bench` returns the results as a JSON-ready dict; :func:`write_results` writes
``<machine>-<date>.json``, a markdown table ``<machine>-<date>.md`` and PNG plots.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import socket
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lemo_edge.config import ModelConfig
from lemo_edge.errors import BackendUnavailableError, InputError, LemoError, MissingDependencyError

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("preprocess", "backbone", "embed", "score", "map", "update")
"""Stages of one frame, in order."""

FRAME = "frame"
"""Key of the whole frame (first stage's start to last stage's end) in timing results."""

PERCENTILES: tuple[int, ...] = (50, 90, 99)

TARGET_FRAME_MS = 10.0
TARGET_LEMO_VS_PATCHCORE = 5.0

RATIOS_DOC: dict[str, str] = {
    "ort_vs_torch_backbone": (
        "p50 of the torch-eager backbone call / p50 of the onnxruntime backbone call, batch 1, on the same "
        "preprocessed image, interleaved, each with the thread settings of the pipeline (see threads); > 1 means "
        "onnxruntime is that many times faster"
    ),
    "cuda_vs_torch_scorer": (
        "p50 of the torch reference scorer (k=1) / p50 of the CUDA kernel (k=1) on the same embeddings and "
        "memory (default K), interleaved; > 1 means the kernel is that many times faster"
    ),
    "lemo_vs_patchcore_frame": (
        "p50 of a PatchCore frame / p50 of a LeMO frame, interleaved, same backend and input: both run "
        "preprocess + backbone + scoring + anomaly map (sigma of the config) + image score; PatchCore scores "
        "by the nearest neighbour (torch reference, k=1) over its bank of raw patch features, LeMO by its "
        "adapter + memory of K items (default config, top-k scorer, no online update); > 1 means LeMO is "
        "that many times faster"
    ),
    "lemo_vs_patchcore_score": (
        "the same interleaved frames, scoring only: p50 of PatchCore's nearest-neighbour search / p50 of "
        "LeMO's embed + score, excluding the shared preprocess, backbone and map"
    ),
    "lemo_vs_patchcore_frame_full_bank": (
        "as lemo_vs_patchcore_frame, with a PatchCore bank of 10% of all training patches (its real size; "
        "items drawn at random since only the bank size sets the cost), 1 warm-up and fewer iterations "
        "(such a frame takes long)"
    ),
    "update_overhead": (
        "p50 of a full frame with the gated online update / p50 of the same frame without it, same model, "
        "interleaved: how many times the cost of a frame the update makes it"
    ),
}


# -- statistics -------------------------------------------------------------------------------------------------------


def summarize(values_ms: Sequence[float]) -> dict[str, float]:
    """Percentiles (linear interpolation), mean, min, max and count of latencies.

    Args:
        values_ms: ``(n,)`` latencies in milliseconds, n >= 1.

    Returns:
        ``{"p50", "p90", "p99", "mean", "min", "max", "n"}``.

    Raises:
        InputError: no values.
    """
    values = np.asarray(values_ms, dtype=np.float64).ravel()
    if values.size == 0:
        raise InputError("summarize: expected at least one latency, got none")
    pcts = np.percentile(values, PERCENTILES)
    out = {f"p{p}": float(v) for p, v in zip(PERCENTILES, pcts, strict=True)}
    out.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()), n=int(values.size))
    return out


def ratio(slow_ms: Sequence[float], fast_ms: Sequence[float]) -> dict[str, float | int]:
    """How many times slower ``slow`` is than ``fast``: ratio of their medians, and the median of paired ratios.

    Args:
        slow_ms: latencies of the contender in the numerator.
        fast_ms: latencies of the contender in the denominator (paired by iteration when of equal length).

    Returns:
        ``{"value": p50(slow) / p50(fast), "paired_median": median(slow_i / fast_i) (NaN unless paired),
        "numerator_p50_ms", "denominator_p50_ms", "n"}``.

    Raises:
        InputError: either list is empty or the denominator's median is not positive.
    """
    if not len(slow_ms) or not len(fast_ms):
        raise InputError(f"ratio: expected latencies on both sides, got {len(slow_ms)} and {len(fast_ms)}")
    num, den = statistics.median(slow_ms), statistics.median(fast_ms)
    if not den > 0:
        raise InputError(f"ratio: expected a positive denominator median, got {den}")
    paired = math.nan
    if len(slow_ms) == len(fast_ms) and all(f > 0 for f in fast_ms):
        paired = statistics.median(s / f for s, f in zip(slow_ms, fast_ms, strict=True))
    return {
        "value": num / den,
        "paired_median": paired,
        "numerator_p50_ms": num,
        "denominator_p50_ms": den,
        "n": min(len(slow_ms), len(fast_ms)),
    }


# -- timing -----------------------------------------------------------------------------------------------------------

Stage = tuple[str, Callable[[Any], Any]]
"""A named step of a pipeline: it takes the previous step's output (the first step: the iteration index)."""

Clock = Callable[[], float]
Sync = Callable[[], None] | None


def run_stages(
    stages: Sequence[Stage], arg: Any, sync: Sync = None, clock: Clock = time.perf_counter
) -> dict[str, float]:
    """Run ``stages`` once as a chain and time each one.

    Args:
        stages: ``[(name, fn)]``; each ``fn`` receives the previous output, the first one ``arg``.
        arg: input of the first stage (the iteration index in this module).
        sync: called after every stage, before the clock is read (``torch.cuda.synchronize`` on CUDA).
        clock: seconds, monotonic.

    Returns:
        ``{name: ms}`` per stage and :data:`FRAME`: the whole chain.
    """
    times: dict[str, float] = {}
    start = last = clock()
    value = arg
    for name, fn in stages:
        value = fn(value)
        if sync is not None:
            sync()
        now = clock()
        times[name] = times.get(name, 0.0) + 1e3 * (now - last)
        last = now
    times[FRAME] = 1e3 * (last - start)
    return times


def measure_stages(
    stages: Sequence[Stage],
    *,
    warmup: int,
    iters: int,
    sync: Sync = None,
    clock: Clock = time.perf_counter,
    budget_s: float | None = None,
    min_iters: int = 3,
) -> dict[str, list[float]]:
    """Time ``stages`` over ``warmup + iters`` iterations; the warm-up is run but not recorded.

    Iteration ``i`` (warm-up included, from 0) passes ``i`` to the first stage.

    Args:
        stages: the pipeline (see :func:`run_stages`).
        warmup: iterations run first and discarded (first calls allocate, compile, fill caches).
        iters: iterations recorded.
        sync: device synchronisation before each clock read.
        clock: seconds, monotonic.
        budget_s: stop recording once this many seconds were spent on recorded iterations, after at
            least ``min_iters`` of them (None: always ``iters``).
        min_iters: the fewest recorded iterations when a budget ends the measurement.

    Returns:
        ``{stage: [ms, ...]}`` and :data:`FRAME`, one entry per recorded iteration.

    Raises:
        InputError: a negative warm-up or fewer than one iteration.
    """
    if warmup < 0 or iters < 1:
        raise InputError(f"measure: expected warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    for i in range(warmup):
        run_stages(stages, i, sync, clock)
    out: dict[str, list[float]] = {name: [] for name, _ in stages}
    out[FRAME] = []
    t0 = clock()
    for j in range(iters):
        for name, value in run_stages(stages, warmup + j, sync, clock).items():
            out[name].append(value)
        if budget_s is not None and j + 1 >= min_iters and clock() - t0 > budget_s:
            break
    return out


def interleave(
    contenders: Mapping[str, Sequence[Stage]],
    *,
    warmup: int,
    iters: int,
    sync: Sync = None,
    clock: Clock = time.perf_counter,
) -> dict[str, dict[str, list[float]]]:
    """Time several pipelines side by side, alternating their order every iteration.

    Iteration ``i`` runs every contender once, starting with contender ``i mod n`` (for two: A B, B A,
    A B, ...), each receiving ``i``, so slow drift (thermal, other processes) affects all alike.

    Args:
        contenders: ``{name: stages}``.
        warmup: iterations run first and discarded.
        iters: iterations recorded.
        sync: device synchronisation before each clock read.
        clock: seconds, monotonic.

    Returns:
        ``{name: {stage: [ms, ...], FRAME: [...]}}``, lists paired by iteration.

    Raises:
        InputError: no contenders, a negative warm-up or fewer than one iteration.
    """
    if not contenders:
        raise InputError("interleave: expected at least one contender, got none")
    if warmup < 0 or iters < 1:
        raise InputError(f"interleave: expected warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    names = list(contenders)
    out: dict[str, dict[str, list[float]]] = {
        name: {**{stage: [] for stage, _ in contenders[name]}, FRAME: []} for name in names
    }
    for i in range(warmup + iters):
        r = i % len(names)
        for name in names[r:] + names[:r]:
            times = run_stages(contenders[name], i, sync, clock)
            if i >= warmup:
                for stage, value in times.items():
                    out[name][stage].append(value)
    return out


# -- memory -----------------------------------------------------------------------------------------------------------


def reset_peak_host_memory() -> bool:
    """Reset the kernel's peak-RSS counter of this process (``/proc/self/clear_refs``); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_host_memory_mb() -> float | None:
    """Peak resident memory of this process in MiB: psutil when installed, else ``VmHWM``, else getrusage.

    Returns:
        MiB, or None where none of them is available.
    """
    try:
        psutil = importlib.import_module("psutil")
        info = psutil.Process().memory_full_info()
        peak = getattr(info, "peak_wset", None)  # Windows only; on Linux psutil reads no peak
        if peak:
            return float(peak) / 2**20
    except (ImportError, OSError, AttributeError):
        pass
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0
    except (ImportError, OSError):
        return None


class MemoryPeak:
    """Peak host (RSS) and device (``torch.cuda.max_memory_allocated``) memory over a block.

    The host peak covers the block only where the kernel lets the counter be reset (Linux); otherwise it
    is the process's lifetime peak (:attr:`host_scope` says which).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host_mb: float | None = None
        self.device_mb: float | None = None
        self.host_scope = ""

    def __enter__(self) -> MemoryPeak:
        self.host_scope = "block" if reset_peak_host_memory() else "process lifetime"
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        self.host_mb = peak_host_memory_mb()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.device_mb = torch.cuda.max_memory_allocated(self.device) / 2**20


# -- environment ------------------------------------------------------------------------------------------------------


def slugify(text: str) -> str:
    """Lower-case ``a-z0-9`` words joined by ``-`` (``"AMD EPYC 7B13"`` -> ``"amd-epyc-7b13"``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()`` or the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_name(device: torch.device) -> str:
    """Results-file name of this machine: the GPU's name on CUDA, else ``cpu-<model>``, as a slug."""
    if device.type == "cuda":
        return slugify(torch.cuda.get_device_name(device))
    return "cpu-" + slugify(cpu_model())


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """CPU, cores, memory, GPU and library versions of this machine."""
    from lemo_edge.runtime.backends import physical_cores

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_total = round(float(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    packages = (
        "torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "numpy",
        "opencv-python-headless",
        "timm",
        "matplotlib",
        "psutil",
        "lemo-edge",
    )
    env: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": physical_cores(),
        "memory_gib": mem_total,
        "device": str(device),
        "gpu": None,
        "versions": {p: v for p in packages if (v := _version(p)) is not None},
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device if device.type == "cuda" else 0)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 2),
            "cuda": torch.version.cuda,
        }
    return env


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, or None where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def default_threads() -> int:
    """Torch intra-op threads, as ``lemo-edge run`` uses them: usable cores - 1, at least 1."""
    from lemo_edge.runtime.cli import default_threads as run_default

    return run_default()


# -- machine peaks ----------------------------------------------------------------------------------------------------


def _device_sync(device: torch.device) -> Sync:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def measure_peaks(
    device: torch.device, matmul_n: int, copy_mb: int, reps: int, threads: Sequence[int]
) -> dict[str, Any]:
    """This machine's peak: an ``n x n`` fp32 matmul (GFLOP/s) and a large copy (GB/s, read + write).

    On CPU both run with each torch thread count in ``threads``; the best is the machine peak.

    Returns:
        ``{"matmul_gflops", "memcpy_gbs", "by_threads": {...}, "matmul_n", "copy_mb", "reps"}``.
    """
    sync = _device_sync(device)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(matmul_n, matmul_n, device=device, generator=gen)
    b = torch.randn(matmul_n, matmul_n, device=device, generator=gen)
    src = torch.ones(copy_mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    flops = 2.0 * matmul_n**3
    moved = 2.0 * src.numel() * 4
    previous = torch.get_num_threads()
    by_threads: dict[str, dict[str, float]] = {}
    counts = list(threads) if device.type == "cpu" else [previous]
    try:
        for n in counts:
            torch.set_num_threads(n)
            mm = measure_stages([("mm", lambda _i: torch.mm(a, b))], warmup=1, iters=reps, sync=sync)["mm"]
            cp = measure_stages([("cp", lambda _i: dst.copy_(src))], warmup=1, iters=reps, sync=sync)["cp"]
            by_threads[str(n)] = {
                "matmul_gflops": flops / (min(mm) * 1e-3) / 1e9,
                "memcpy_gbs": moved / (min(cp) * 1e-3) / 1e9,
            }
    finally:
        torch.set_num_threads(previous)
    return {
        "matmul_gflops": max(v["matmul_gflops"] for v in by_threads.values()),
        "memcpy_gbs": max(v["memcpy_gbs"] for v in by_threads.values()),
        "by_threads": by_threads,
        "matmul_n": matmul_n,
        "copy_mb": copy_mb,
        "reps": reps,
        "definition": "best of reps; matmul: 2 n^3 flops; memcpy: bytes read + bytes written",
    }


def backbone_cost(extractor: torch.nn.Module, size: int, dim: int, stride: int) -> dict[str, Any]:
    """FLOPs (``FlopCounterMode``) and bytes of one backbone call on a ``(1, 3, size, size) uint8`` image.

    ``bytes_min`` is weights + input + output (each touched once); ``bytes_activations`` adds every leaf
    module's output written once and read once, a closer estimate of the memory traffic.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(extractor.parameters()).device
    images = torch.zeros((1, 3, size, size), dtype=torch.uint8, device=device)
    activations = [0]

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            activations[0] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in extractor.modules() if not list(m.children())]
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            extractor(images)
    finally:
        for h in handles:
            h.remove()
    weights = sum(t.numel() * t.element_size() for t in (*extractor.parameters(), *extractor.buffers()))
    output = dim * (size // stride) ** 2 * 4
    bytes_min = weights + images.numel() + output
    return {
        "size": size,
        "flops": int(counter.get_total_flops()),
        "weights_bytes": int(weights),
        "bytes_min": int(bytes_min),
        "bytes_activations": int(bytes_min + 2 * activations[0]),
    }


def scorer_cost(n: int, k: int, d: int) -> dict[str, int]:
    """FLOPs and bytes of scoring ``n`` patches against ``k`` items of ``d`` channels (float32).

    ``flops = 2 n k d`` (the distance matmul); ``bytes = n d 4 + k d 4 + n 12`` (inputs, score and index);
    ``bytes_materialised`` adds the ``n x k`` distance matrix written and read once (the torch reference).
    """
    base = n * d * 4 + k * d * 4 + n * 12
    return {"n": n, "k": k, "d": d, "flops": 2 * n * k * d, "bytes": base, "bytes_materialised": base + 2 * n * k * 4}


def achieved(cost_flops: float, cost_bytes: float, ms: float, peaks: Mapping[str, Any]) -> dict[str, float]:
    """GFLOP/s and GB/s achieved by work of ``cost_flops``/``cost_bytes`` taking ``ms``, and their peak fractions."""
    s = ms * 1e-3
    gflops = cost_flops / s / 1e9 if s > 0 else math.nan
    gbs = cost_bytes / s / 1e9 if s > 0 else math.nan
    return {
        "ms": ms,
        "gflops": gflops,
        "gbs": gbs,
        "fraction_of_peak_flops": gflops / peaks["matmul_gflops"],
        "fraction_of_peak_bandwidth": gbs / peaks["memcpy_gbs"],
        "arithmetic_intensity": cost_flops / cost_bytes if cost_bytes else math.nan,
    }


# -- input frames -----------------------------------------------------------------------------------------------------


class JpegFrames:
    """Synthetic camera frames kept JPEG-encoded (``cv2.imencode``); :meth:`decode` is the preprocess stage.

    Args:
        count: distinct frames (cycled by index).
        source_hw: ``(H, W)`` of the encoded frames (a crop of a square synthetic frame).
        seed: synthetic stream seed.
        start: index of the first synthetic frame.
        quality: JPEG quality.
    """

    def __init__(
        self, count: int, source_hw: tuple[int, int] = (480, 640), seed: int = 0, start: int = 0, quality: int = 90
    ) -> None:
        import cv2

        from lemo_edge.synthetic import synthetic_sample

        if count < 1 or min(source_hw) < 32:
            raise InputError(f"frames: expected count >= 1 and sides >= 32, got {count} frames of {source_hw}")
        h, w = source_hw
        self.source_hw = (int(h), int(w))
        self.quality = quality
        self.encoded: list[np.ndarray] = []
        for i in range(count):
            rgb = synthetic_sample(seed, start + i, max(h, w)).image[:h, :w]
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise BackendUnavailableError("frames: cv2.imencode could not encode a JPEG")
            self.encoded.append(buf)

    def __len__(self) -> int:
        return len(self.encoded)

    def decode(self, index: int, size: int) -> np.ndarray:
        """Frame ``index mod count``: decoded, RGB, resized to ``(size, size, 3) uint8`` (INTER_AREA)."""
        import cv2

        bgr = cv2.imdecode(self.encoded[index % len(self.encoded)], cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"frames: expected a decodable JPEG, got frame {index % len(self.encoded)} corrupt")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


# -- the pipeline -----------------------------------------------------------------------------------------------------


class FramePipeline:
    """One LeMO model fed by one feature backend and one scorer, split into the timed :data:`STAGES`.

    The stages do what :class:`lemo_edge.runtime.loop.InspectionLoop` does per frame, without sinks.
    ``batch > 1`` runs preprocess per frame, the backbone, embed, score and map on the batch and the
    online update per frame (the updater learns from one image at a time).

    Args:
        backend: ``(B, 3, S, S) uint8`` -> ``(B, D, S/s, S/s) float32`` features.
        config: model config (its ``size`` is S).
        scorer: nearest-memory scorer (``runtime.scorers``); its ``k`` should be ``config.score_k``.
        frames: the JPEG frames decoded by the preprocess stage.
        device: where the model lives (the backend's features are moved there).
        batch: frames per call.
    """

    def __init__(
        self,
        backend: Any,
        config: ModelConfig,
        scorer: Any,
        frames: JpegFrames,
        device: torch.device,
        batch: int = 1,
    ) -> None:
        from lemo_edge.model import LemoModel
        from lemo_edge.updater import OnlineUpdater

        if batch < 1:
            raise InputError(f"batch: expected >= 1, got {batch}")
        self.backend = backend
        self.config = config
        self.scorer = scorer
        self.frames = frames
        self.device = device
        self.batch = batch
        self.model = LemoModel(config, backend.spec).to(device)
        self.updater = OnlineUpdater(self.model)
        self._clone = self.updater.optimizer is not None
        size = config.size
        self.images = torch.empty((batch, 3, size, size), dtype=torch.uint8, pin_memory=device.type == "cuda")
        self.updates = 0
        self.observed = 0

    # stages
    def preprocess(self, index: int) -> torch.Tensor:
        """Decode, convert and resize ``batch`` JPEG frames into the reused ``(B, 3, S, S) uint8`` cpu tensor."""
        for b in range(self.batch):
            image = self.frames.decode(index * self.batch + b, self.config.size)
            self.images[b].copy_(torch.from_numpy(image).permute(2, 0, 1))
        return self.images

    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S) uint8`` -> ``(B, D, h, w) float32`` on the model's device."""
        features = self.backend(images)
        if features.device != self.device:
            features = features.to(self.device)
        if self._clone:  # inference tensors / reused buffers cannot feed gradient steps
            features = features.clone()
        return features

    def embed(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter: features -> ``(B, h*w, D') float32`` embeddings."""
        with torch.no_grad():
            return features, self.model.embed(features)

    def score(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Nearest-memory scores of the embeddings and position normalisation (:class:`~lemo_edge.model.Scores`)."""
        from lemo_edge.memory import CoresetMemory
        from lemo_edge.model import Scores

        features, emb = inputs
        model = self.model
        with torch.no_grad():
            b, p, d = emb.shape
            items = model.memory.items.detach()
            if items.shape[0] == 0:
                return features, model.score(features)
            z = emb.reshape(b * p, d)
            if isinstance(self.scorer, IndexSearch) and isinstance(model.memory, CoresetMemory):
                nearest = model.memory.search(z, min(self.scorer.k, items.shape[0]))
            else:
                nearest = self.scorer(z, items)
            raw = nearest.score.view(b, *model.grid)
            patch = model.position_norm(raw) if model.position_norm is not None else raw
        return features, Scores(emb, nearest, raw, patch)

    def map(self, inputs: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, Any, list[float]]:
        """Anomaly maps and image scores, copied to the host (the frame's host synchronisation)."""
        features, scores = inputs
        with torch.no_grad():
            maps, image_scores = self.model.maps(scores.patch)
            values = image_scores.float().cpu().tolist()
            self.last_map = maps.float().cpu().numpy()
        return features, scores, values

    def update(self, inputs: tuple[torch.Tensor, Any, list[float]]) -> int:
        """The gated online update, one image at a time; returns how many images were learned."""
        features, scores, values = inputs
        learned = 0
        for i, value in enumerate(values):
            one = scores if len(values) == 1 else _image_scores(scores, i)
            learned += int(self.updater.observe(features[i : i + 1], one, value))
        self.updates += learned
        self.observed += len(values)
        return learned

    def stages(self, update: bool = True) -> list[Stage]:
        """The pipeline as ``[(name, fn)]``, with or without the online update."""
        out: list[Stage] = [
            ("preprocess", self.preprocess),
            ("backbone", self.backbone),
            ("embed", self.embed),
            ("score", self.score),
            ("map", self.map),
        ]
        if update:
            out.append(("update", self.update))
        return out

    # state
    def embeddings(self, frames: JpegFrames) -> torch.Tensor:
        """``(n * h * w, D') float32`` embeddings of every frame of ``frames`` (for priming a memory)."""
        out = []
        for i in range(len(frames)):
            image = torch.from_numpy(frames.decode(i, self.config.size)).permute(2, 0, 1)[None].contiguous()
            features = self.backbone(image)
            with torch.no_grad():
                out.append(self.model.embed(features)[0].detach().clone())
        return torch.cat(out)

    def prime(self, pool: torch.Tensor, seed: int = 0) -> None:
        """Bring a coreset memory to its steady state: full, then one real insertion merges it down.

        The memory is filled with K rows of ``pool`` (real patch embeddings; with slight noise when the
        pool is smaller than K), then one frame is scored and learned: inserting beyond K runs the
        memory's merge, which leaves it at (1 - merge_slack) K with the coverage radius of the merges,
        as after a long stream. A learned memory (``method="lemo"``) is always full: nothing to do.
        """
        from lemo_edge.memory import CoresetMemory

        memory = self.model.memory
        if not isinstance(memory, CoresetMemory):
            return
        k = memory.capacity
        gen = torch.Generator().manual_seed(seed)
        pool = pool.to(self.device)
        index = torch.randperm(pool.shape[0], generator=gen)[:k].to(self.device)
        rows = pool[index]
        if rows.shape[0] < k:
            extra = torch.randint(0, pool.shape[0], (k - rows.shape[0],), generator=gen).to(self.device)
            noise = 0.05 * pool.std() * torch.randn(extra.numel(), pool.shape[1], generator=gen).to(self.device)
            rows = torch.cat([rows, pool[extra] + noise])
        with torch.no_grad():
            memory.bank[:k] = rows
            memory.count.fill_(k)
        value: Any = 0
        for _name, fn in self.stages(update=False):
            value = fn(value)
        features, scores, values = value
        for i, _v in enumerate(values):
            one = scores if len(values) == 1 else _image_scores(scores, i)
            self.updater.observe(features[i : i + 1], one, values[i], force=True)


def _bound(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[Any], Any]:
    """A stage calling ``fn(x)`` whatever it receives (the same input every iteration)."""

    def call(_arg: Any) -> Any:
        return fn(x)

    return call


def _image_scores(scores: Any, i: int) -> Any:
    """Image ``i``'s slice of a batch's :class:`~lemo_edge.model.Scores` (what the updater expects for one image)."""
    from lemo_edge.model import Scores
    from lemo_edge.scoring import Nearest

    p = scores.embeddings.shape[1]
    sl = slice(i * p, (i + 1) * p)
    n = scores.nearest
    nearest = Nearest(n.score[sl], n.index[sl], None if n.distance is None else n.distance[sl])
    return Scores(scores.embeddings[i : i + 1], nearest, scores.raw[i : i + 1], scores.patch[i : i + 1])


# -- configuration ----------------------------------------------------------------------------------------------------


def default_patchcore_data() -> Path | None:
    """``../shared/data/magnetic_tile`` relative to the working directory or to the repository, if present."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (Path("../shared/data/magnetic_tile"), here.parent / "shared" / "data" / "magnetic_tile"):
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures, and how long.

    Attributes:
        model: the model config (its ``size`` is replaced per input size).
        sizes: input sides of the matrix.
        primary_size: the side of ``frame_p50_ms``, the ratios and the K scale (must be in ``sizes``).
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
    sizes: tuple[int, ...] = (224, 256, 320)
    primary_size: int = 256
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
    scale_k: tuple[int, ...] = (10, 64, 256, 1024, 4096, 8192)
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
        if not self.sizes or any(s <= 0 or s % 32 for s in self.sizes):
            raise InputError(f"sizes: expected positive multiples of 32, got {list(self.sizes)}")
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
            "frame_k": (64, 256, 1024, 4096, 8192),
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


# -- the run ----------------------------------------------------------------------------------------------------------


class _Backends:
    """Lazily created feature backends per (name, size); failures are recorded, not raised."""

    def __init__(self, config: BenchConfig, device: torch.device, extractor: Any) -> None:
        from lemo_edge.runtime.backends import backend_status

        self.config = config
        self.device = device
        self.extractor = extractor
        self._made: dict[tuple[str, int], Any] = {}
        self.status: dict[str, str] = {}
        wanted = config.backends
        self.names: list[str] = []
        for status in backend_status():
            if wanted is not None and status.name not in wanted:
                continue
            if not status.available:
                self.status[status.name] = f"unavailable: {status.reason}"
            elif status.name == "tensorrt" and device.type != "cuda":
                self.status[status.name] = "skipped: needs --device cuda"
            else:
                self.names.append(status.name)
                self.status[status.name] = status.reason
        if wanted is not None:
            unknown = sorted(set(wanted) - {s.name for s in backend_status()})
            if unknown:
                raise InputError(f"backends: expected among ['onnxruntime', 'tensorrt', 'torch'], got {unknown}")

    def get(self, name: str, size: int) -> Any | None:
        key = (name, size)
        if key in self._made:
            return self._made[key]
        from lemo_edge.runtime.backends import TorchFeatureExtractor, create_backend

        backend: Any = None
        try:
            if name == "torch":
                backend = TorchFeatureExtractor(self.extractor, self.device)
            else:
                backend = create_backend(
                    name, backbone=self.config.model.backbone, size=(size, size), device=str(self.device)
                )
        except (MissingDependencyError, BackendUnavailableError, LemoError, RuntimeError) as err:
            log.warning("bench: backend %s at %d unavailable: %s", name, size, err)
            self.status[name] = f"failed at {size}: {err}"
            if name in self.names:
                self.names.remove(name)
        self._made[key] = backend
        return backend


class IndexSearch:
    """The matrix's ``ivf`` scorer: the model's own search through an inverted index (lemo_edge.ivf).

    Not called with ``(z, items)`` like the other scorers: its pipelines are built with
    :attr:`config_changes` and score through ``memory.search``, which keeps the index in step with
    the memory's insertions and merges.
    """

    name = "ivf"

    def __init__(self, k: int, lists: int = 64, probe: int = 8) -> None:
        self.k = k
        self.config_changes = {"ivf_lists": lists, "ivf_probe": probe}
        self.description = f"inverted index ({lists} lists, {probe} probed), k={k}"


def _scorers(config: BenchConfig, device: torch.device) -> tuple[dict[str, Any], dict[str, str]]:
    """The scorers of the matrix: ``torch`` (k = score_k), ``ivf`` (64 lists, 8 probed; when the
    config searches exactly) and ``cuda`` (k = 1) where it loads."""
    from lemo_edge.runtime.scorers import CudaMemoryScorer, TorchMemoryScorer

    scorers: dict[str, Any] = {"torch": TorchMemoryScorer(config.model.score_k)}
    status = {"torch": f"torch reference, k={config.model.score_k}"}
    if config.model.method == "coreset" and not config.model.ivf_lists:
        scorers["ivf"] = IndexSearch(config.model.score_k)
        status["ivf"] = scorers["ivf"].description
    if device.type == "cuda":
        try:
            scorers["cuda"] = CudaMemoryScorer(device)
            status["cuda"] = "CUDA kernel, k=1"
        except (LemoError, RuntimeError, ImportError) as err:
            status["cuda"] = f"unavailable: {err}"
    else:
        status["cuda"] = "skipped: needs --device cuda"
    return scorers, status


def _torch_scorer(k: int) -> Any:
    from lemo_edge.runtime.scorers import TorchMemoryScorer

    return TorchMemoryScorer(k)


class _Run:
    """State of one :func:`run_bench` call."""

    def __init__(self, config: BenchConfig, progress: Callable[[str], None] | None) -> None:
        self.config = config
        self.progress = progress or (lambda text: log.info("bench: %s", text))
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailableError("bench: --device cuda requested, but no CUDA GPU is visible to torch")
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.sync = _device_sync(self.device)
        self.frames: JpegFrames | None = None
        self._pools: dict[tuple[str, int], torch.Tensor] = {}
        self.prefill: JpegFrames | None = None

    def model_config(self, size: int, **changes: Any) -> ModelConfig:
        return self.config.model.replace(size=size, **changes)

    def pipeline(self, backend: Any, size: int, scorer: Any, batch: int = 1, **changes: Any) -> FramePipeline:
        """A primed pipeline (memory at steady state)."""
        assert self.frames is not None and self.prefill is not None
        config = self.model_config(size, **changes)
        pipe = FramePipeline(backend, config, scorer, self.frames, self.device, batch)
        key = (backend.name, size)
        if key not in self._pools:
            self._pools[key] = pipe.embeddings(self.prefill)
        pipe.prime(self._pools[key], self.config.seed)
        return pipe


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark described by ``config``; returns the JSON-ready results (see module docstring).

    Args:
        config: what to measure.
        progress: called with a short line as each section starts (default: logged).

    Raises:
        BackendUnavailableError: ``device="cuda"`` without a GPU.
        DatasetError: ``patchcore_data`` cannot be read.
    """
    from lemo_edge.backbone import create_feature_extractor

    run = _Run(config, progress)
    device = run.device
    previous_threads = torch.get_num_threads()
    threads = config.threads or default_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    load_start = load_average()
    try:
        result: dict[str, Any] = {
            "schema": 1,
            "started": started.isoformat(timespec="seconds"),
            "machine": machine_name(device),
            "environment": environment(device),
            "config": config.to_dict(),
        }
        from lemo_edge.runtime.backends import physical_cores

        result["threads"] = {
            "torch": threads,
            "torch_policy": "--threads" if config.threads else "usable cores - 1 (as lemo-edge run)",
            "onnxruntime_intra_op": physical_cores(),
            "onnxruntime_policy": "physical cores, no spinning (runtime.backends.OrtFeatureExtractor)",
        }
        run.progress("machine peaks (matmul, memcpy)")
        thread_counts = sorted({threads, max(1, result["environment"]["usable_cpus"] or 1)})
        peaks_start = measure_peaks(device, config.peak_matmul_n, config.peak_copy_mb, config.peak_reps, thread_counts)

        run.progress("backbone and input frames")
        extractor = create_feature_extractor(config.model.backbone)
        spec = extractor.spec
        flops = backbone_cost(extractor, config.primary_size, spec.dim, spec.stride)
        backends = _Backends(config, device, extractor)
        scorers, scorer_status = _scorers(config, device)
        run.frames = JpegFrames(config.source_frames, config.source_hw, config.seed)
        max_k = max(config.model.memory_size, *config.scale_k, *(config.frame_k or ()))
        patches = (min(config.sizes) // spec.stride) ** 2
        run.prefill = JpegFrames(
            max(1, min(16, math.ceil(1.1 * max_k / patches))), config.source_hw, config.seed, start=1000
        )
        result["input"] = {
            "source": f"synthetic frames (seed {config.seed}) JPEG-encoded with cv2.imencode",
            "source_hw": list(config.source_hw),
            "jpeg_quality": run.frames.quality,
            "distinct_frames": len(run.frames),
            "jpeg_bytes_mean": float(np.mean([b.size for b in run.frames.encoded])),
            "preprocess": "cv2.imdecode + BGR->RGB + cv2.resize INTER_AREA + copy into a (B, 3, S, S) uint8 tensor",
            "memory_priming": (
                "coreset memory filled with K real patch embeddings of other frames, then one forced update "
                "(merge to 0.9 K, radius set); warm-up frames update it further"
            ),
        }
        result["backbone"] = {"name": spec.name, "dim": spec.dim, "stride": spec.stride}

        matrix = _matrix(run, backends, scorers)
        result["matrix"] = matrix
        result["backends"] = backends.status
        result["scorers"] = scorer_status
        primary = [e for e in matrix if e["size"] == config.primary_size and e["batch"] == 1 and e["scorer"] == "torch"]
        if not primary:
            raise BackendUnavailableError("bench: no backend could run the primary configuration")
        fastest = min(primary, key=lambda e: e["frame"]["p50"])
        result["per_backend"] = {
            e["backend"]: {s: {"p50": v["p50"], "p99": v["p99"]} for s, v in {**e["stages"], FRAME: e["frame"]}.items()}
            for e in primary
        }
        result["frame_p50_ms"] = fastest["frame"]["p50"]
        result["frame_p50_doc"] = (
            f"p50 of one full frame (preprocess to online update) at {config.primary_size}x{config.primary_size}, "
            "batch 1, the model config given (default: K=8192, top-3 torch scorer), on the backend whose frame "
            "p50 is lowest"
        )
        result["frame_p50_backend"] = fastest["backend"]
        fastest_backend = backends.get(fastest["backend"], config.primary_size)

        ratios, details, patchcore = _ratios(run, backends, scorers, fastest_backend)
        result["ratios"] = ratios
        result["ratios_doc"] = {k: RATIOS_DOC[k] for k in ratios}
        result["ratio_details"] = details
        result["patchcore"] = patchcore

        result["scale"] = _scale(run, backends, scorers, fastest_backend, matrix)
        run.progress("machine peaks again (the best of start and end counts)")
        peaks_end = measure_peaks(device, config.peak_matmul_n, config.peak_copy_mb, config.peak_reps, thread_counts)
        peaks = {
            **peaks_start,
            "matmul_gflops": max(peaks_start["matmul_gflops"], peaks_end["matmul_gflops"]),
            "memcpy_gbs": max(peaks_start["memcpy_gbs"], peaks_end["memcpy_gbs"]),
            "by_threads": {"start": peaks_start["by_threads"], "end": peaks_end["by_threads"]},
            "definition": peaks_start["definition"] + "; measured at the start and the end of the run, best kept",
        }
        result["peaks"] = peaks
        dim = config.model.embed_dim or spec.dim
        result["limits"] = _limits(run, dim, flops, peaks, fastest, matrix, result["scale"])
        result["targets"] = _targets(result)
    finally:
        torch.set_num_threads(previous_threads)
    result["load_average"] = {"start": load_start, "end": load_average()}
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _entry(run: _Run, pipe: FramePipeline, backend_name: str, scorer_name: str, batch: int) -> dict[str, Any]:
    config = run.config
    warmup, iters = (config.warmup, config.frames) if batch == 1 else (config.batch_warmup, config.batch_frames)
    with MemoryPeak(run.device) as peak:
        times = measure_stages(pipe.stages(update=True), warmup=warmup, iters=iters, sync=run.sync)
    frame = summarize(times[FRAME])
    return {
        "backend": backend_name,
        "scorer": scorer_name,
        "size": pipe.config.size,
        "batch": batch,
        "memory_size": pipe.config.memory_size,
        "memory_items": int(pipe.model.memory.items.shape[0]),
        "score_k": getattr(pipe.scorer, "k", 1),
        "warmup": warmup,
        "stages": {s: summarize(times[s]) for s in STAGES},
        "frame": frame,
        "fps": batch * 1e3 / frame["mean"],
        "updated_fraction": pipe.updates / max(1, pipe.observed),
        "peak_host_mb": peak.host_mb,
        "peak_host_scope": peak.host_scope,
        "peak_device_mb": peak.device_mb,
        "provider": run_backend_label(pipe.backend),
    }


def run_backend_label(backend: Any) -> str:
    """``name`` or ``name (providers)`` of a backend."""
    providers = getattr(backend, "providers", None)
    return f"{backend.name} ({', '.join(providers)})" if providers else str(backend.name)


def _matrix(run: _Run, backends: _Backends, scorers: Mapping[str, Any]) -> list[dict[str, Any]]:
    config = run.config
    entries = []
    for size in config.sizes:
        for name in list(backends.names):
            backend = backends.get(name, size)
            if backend is None:
                continue
            for scorer_name, scorer in scorers.items():
                for batch in config.batches:
                    run.progress(f"matrix: {name} x {scorer_name} scorer, {size}x{size}, batch {batch}")
                    pipe = run.pipeline(backend, size, scorer, batch, **getattr(scorer, "config_changes", {}))
                    entries.append(_entry(run, pipe, name, scorer_name, batch))
    return entries


def _ratios(
    run: _Run, backends: _Backends, scorers: Mapping[str, Any], fastest: Any
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    config = run.config
    size = config.primary_size
    ratios: dict[str, float] = {}
    details: dict[str, Any] = {}
    iters: dict[str, Any] = {"warmup": config.ratio_warmup, "iters": config.ratio_iters, "sync": run.sync}

    torch_b, ort_b = backends.get("torch", size), None
    if "onnxruntime" in backends.names:
        ort_b = backends.get("onnxruntime", size)
    if torch_b is not None and ort_b is not None:
        by_size = {}
        for s in config.sizes:
            tb, ob = backends.get("torch", s), backends.get("onnxruntime", s)
            if tb is None or ob is None:
                continue
            run.progress(f"ratio: onnxruntime vs torch backbone, {s}x{s}")
            assert run.frames is not None
            image = torch.from_numpy(run.frames.decode(0, s)).permute(2, 0, 1)[None].contiguous()
            times = interleave(
                {
                    "torch": [("backbone", _bound(tb, image))],
                    "onnxruntime": [("backbone", _bound(ob, image))],
                },
                **iters,
            )
            by_size[str(s)] = ratio(times["torch"]["backbone"], times["onnxruntime"]["backbone"])
        if str(size) in by_size:
            ratios["ort_vs_torch_backbone"] = by_size[str(size)]["value"]
            details["ort_vs_torch_backbone"] = {**by_size[str(size)], "by_size": by_size}

    pipe = run.pipeline(fastest, size, scorers["torch"])
    if "cuda" in scorers:
        run.progress("ratio: CUDA vs torch scorer")
        _f, emb = pipe.embed(pipe.backbone(pipe.preprocess(0)))
        z = emb.reshape(-1, emb.shape[-1]).contiguous()
        items = pipe.model.memory.items.detach().contiguous()
        ref, cuda = _torch_scorer(1), scorers["cuda"]
        times = interleave(
            {"torch": [("score", lambda _i: ref(z, items))], "cuda": [("score", lambda _i: cuda(z, items))]}, **iters
        )
        r = ratio(times["torch"]["score"], times["cuda"]["score"])
        ratios["cuda_vs_torch_scorer"] = r["value"]
        details["cuda_vs_torch_scorer"] = {**r, "n_patches": z.shape[0], "memory_items": items.shape[0]}

    run.progress("ratio: update overhead")
    times = interleave({"with_update": pipe.stages(True), "without_update": pipe.stages(False)}, **iters)
    r = ratio(times["with_update"][FRAME], times["without_update"][FRAME])
    ratios["update_overhead"] = r["value"]
    details["update_overhead"] = {**r, "update_p50_ms": statistics.median(times["with_update"]["update"])}

    run.progress("PatchCore bank")
    bank, patchcore = _patchcore_bank(run, pipe)
    run.progress(f"ratio: LeMO vs PatchCore frame (bank {bank.shape[0]} items)")
    lemo, pc = _lemo_vs_patchcore(run, pipe, bank, config.ratio_warmup, config.ratio_iters)
    ratios["lemo_vs_patchcore_frame"] = pc["frame"]["value"]
    ratios["lemo_vs_patchcore_score"] = pc["score"]["value"]
    details["lemo_vs_patchcore_frame"] = {**pc["frame"], "bank_size": bank.shape[0], "lemo_k": lemo}
    details["lemo_vs_patchcore_score"] = pc["score"]
    if config.patchcore_full_bank and patchcore.get("patches_total"):
        total = int(patchcore["patches_total"] * config.patchcore_fraction)
        run.progress(f"ratio: LeMO vs PatchCore frame, full-size bank ({total} items)")
        full = patchcore.pop("_all_patches_sample")(total)
        _lemo, pcf = _lemo_vs_patchcore(run, pipe, full, min(1, config.ratio_warmup), max(3, config.ratio_iters // 5))
        ratios["lemo_vs_patchcore_frame_full_bank"] = pcf["frame"]["value"]
        details["lemo_vs_patchcore_frame_full_bank"] = {**pcf["frame"], "bank_size": full.shape[0]}
    patchcore.pop("_all_patches_sample", None)
    return ratios, details, patchcore


def _patchcore_bank(run: _Run, pipe: FramePipeline) -> tuple[torch.Tensor, dict[str, Any]]:
    """PatchCore's bank from the training images' raw patch features (same backend and size as ``pipe``)."""
    from lemo_edge.baselines import patchcore_bank

    config = run.config
    size = pipe.config.size
    t0 = time.perf_counter()
    data = config.patchcore_data
    if data is not None:
        from lemo_edge.datasets import open_dataset, resize_sample

        splits = open_dataset(data)
        items = splits.train_good[: config.patchcore_images] if config.patchcore_images else splits.train_good
        source = f"{splits.name} train_good ({data})"
        loader: Any = ((resize_sample(item.load(), (size, size)).image) for item in items)
        count = len(items)
    else:
        from lemo_edge.synthetic import synthetic_sample

        count = config.patchcore_synthetic_images
        source = f"synthetic frames (seed {config.seed + 1}): no --patchcore-data and no ../shared/data/magnetic_tile"
        loader = (synthetic_sample(config.seed + 1, i, size).image for i in range(count))
    gen = torch.Generator().manual_seed(config.seed)
    per_image = max(1, math.ceil(config.patchcore_subsample / max(1, count)))
    sampled, patches_total = [], 0
    reservoir: list[torch.Tensor] = []  # a uniform sample of every patch, for the full-size bank
    reservoir_per_image = 0
    for image in loader:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].contiguous()
        with torch.no_grad():
            feats = pipe.backbone(tensor)[0]
        z = feats.flatten(1).T.float()  # (P, D)
        patches_total += z.shape[0]
        pick = torch.randperm(z.shape[0], generator=gen)[: min(per_image, z.shape[0])].to(z.device)
        sampled.append(z[pick].cpu())
        if config.patchcore_full_bank:
            reservoir_per_image = max(1, math.ceil(z.shape[0] * config.patchcore_fraction))
            pick = torch.randperm(z.shape[0], generator=gen)[:reservoir_per_image].to(z.device)
            reservoir.append(z[pick].cpu())
    pool = torch.cat(sampled)[: config.patchcore_subsample]
    bank_size = max(1, int(round(pool.shape[0] * config.patchcore_fraction)))
    if config.patchcore_selection == "kcenter":
        bank = patchcore_bank(pool, bank_size, subsample=pool.shape[0], seed=config.seed)
        selection = "greedy k-center coreset (lemo_edge.baselines.patchcore_bank, projection 128)"
    else:
        bank = pool[torch.randperm(pool.shape[0], generator=gen)[:bank_size]]
        selection = (
            "random (--quick: the k-center selection is skipped; "
            "the nearest-neighbour cost depends only on the bank size)"
        )
    info: dict[str, Any] = {
        "source": source,
        "images": count,
        "patches_total": patches_total,
        "subsample": int(pool.shape[0]),
        "fraction": config.patchcore_fraction,
        "bank_size": int(bank.shape[0]),
        "selection": selection,
        "scoring": "nearest neighbour (k=1), lemo_edge.scoring.nearest_memory, raw backbone patch features",
        "build_s": time.perf_counter() - t0,
    }
    if reservoir:
        all_sample = torch.cat(reservoir)

        def sample(n: int) -> torch.Tensor:
            return all_sample[torch.randperm(all_sample.shape[0], generator=gen)[:n]].to(run.device)

        info["_all_patches_sample"] = sample
    return bank.to(run.device), info


def _lemo_vs_patchcore(
    run: _Run, pipe: FramePipeline, bank: torch.Tensor, warmup: int, iters: int
) -> tuple[int, dict[str, dict[str, Any]]]:
    from lemo_edge.scoring import anomaly_map, image_scores, nearest_memory

    model = pipe.model
    size = pipe.config.size
    sigma = pipe.config.sigma

    def pc_score(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = features[0].flatten(1).T
            return nearest_memory(z, bank, 1).score.view(1, *model.grid)

    def pc_map(patch: torch.Tensor) -> list[float]:
        with torch.no_grad():
            maps = anomaly_map(patch, (size, size), sigma)
            values = image_scores(maps).cpu().tolist()
            pipe.last_map = maps.float().cpu().numpy()
        return values

    patchcore: list[Stage] = [
        ("preprocess", pipe.preprocess),
        ("backbone", pipe.backbone),
        ("score", pc_score),
        ("map", pc_map),
    ]
    times = interleave(
        {"lemo": pipe.stages(update=False), "patchcore": patchcore},
        warmup=warmup,
        iters=iters,
        sync=run.sync,
    )
    lemo_score = [e + s for e, s in zip(times["lemo"]["embed"], times["lemo"]["score"], strict=True)]
    out = {
        "frame": ratio(times["patchcore"][FRAME], times["lemo"][FRAME]),
        "score": ratio(times["patchcore"]["score"], lemo_score),
    }
    return int(model.memory.items.shape[0]), out


def _scale(
    run: _Run, backends: _Backends, scorers: Mapping[str, Any], fastest: Any, matrix: list[dict[str, Any]]
) -> dict[str, Any]:
    config = run.config
    device = run.device
    size = config.primary_size
    spec = fastest.spec
    n = (size // spec.stride) ** 2
    default_k = config.model.memory_size
    score_k = config.model.score_k
    timing: dict[str, Any] = {
        "warmup": config.scale_warmup,
        "iters": config.scale_iters,
        "sync": run.sync,
        "budget_s": config.scale_budget_s,
    }
    variants: dict[str, Any] = {f"torch-top{score_k}": _torch_scorer(score_k)}
    if score_k != 1:
        variants["torch-top1"] = _torch_scorer(1)
    if "cuda" in scorers:
        variants["cuda"] = scorers["cuda"]
    gen = torch.Generator(device=device).manual_seed(config.seed)

    def scorer_p50(scorer: Any, n_: int, k: int, d: int) -> dict[str, float]:
        if getattr(scorer, "k", 1) > k:
            scorer = _torch_scorer(k)
        z = torch.randn(n_, d, device=device, generator=gen)
        memory = torch.randn(k, d, device=device, generator=gen)
        times = measure_stages([("score", lambda _i: scorer(z, memory))], **timing)["score"]
        s = summarize(times)
        return {"p50_ms": s["p50"], "p99_ms": s["p99"], "samples": s["n"]}

    dims = sorted({spec.dim, *config.scale_d})
    k_rows = []
    for d in dims:
        for name, scorer in variants.items():
            for k in config.scale_k:
                run.progress(f"scale: scorer {name}, K={k}, D={d}")
                k_rows.append({"scorer": name, "k": k, "d": d, "n_patches": n, **scorer_p50(scorer, n, k, d)})
    d_rows = [r for r in k_rows if r["k"] == (default_k if default_k in config.scale_k else max(config.scale_k))]
    size_rows = []
    for s in config.scale_sizes:
        n_s = (s // spec.stride) ** 2
        for name, scorer in variants.items():
            run.progress(f"scale: scorer {name} at {s}x{s}")
            size_rows.append(
                {
                    "component": f"scorer {name}",
                    "size": s,
                    "n_patches": n_s,
                    **scorer_p50(scorer, n_s, default_k, spec.dim),
                }
            )
        for name in list(backends.names):
            from_matrix = [e for e in matrix if e["backend"] == name and e["size"] == s and e["batch"] == 1]
            if from_matrix:
                st = from_matrix[0]["stages"]["backbone"]
                size_rows.append(
                    {
                        "component": f"backbone {name}",
                        "size": s,
                        "p50_ms": st["p50"],
                        "p99_ms": st["p99"],
                        "samples": st["n"],
                    }
                )
                continue
            if name != "torch":  # other backends would need an export/build per size: matrix sizes only
                continue
            backend = backends.get(name, s)
            if backend is None or run.frames is None:
                continue
            image = torch.from_numpy(run.frames.decode(0, s)).permute(2, 0, 1)[None].contiguous()
            run.progress(f"scale: backbone {name} at {s}x{s}")
            t = summarize(measure_stages([("backbone", _bound(backend, image))], **timing)["backbone"])
            size_rows.append(
                {"component": f"backbone {name}", "size": s, "p50_ms": t["p50"], "p99_ms": t["p99"], "samples": t["n"]}
            )
        for e in matrix:
            if e["size"] == s and e["batch"] == 1 and e["scorer"] == "torch":
                size_rows.append(
                    {
                        "component": f"frame {e['backend']}",
                        "size": s,
                        "p50_ms": e["frame"]["p50"],
                        "p99_ms": e["frame"]["p99"],
                        "samples": e["frame"]["n"],
                    }
                )

    frame_rows = []
    for k in config.frame_k or config.scale_k:
        for top in config.scale_score_k:
            top = min(top, k)
            run.progress(f"scale: full frame with update, K={k}, top-{top}")
            pipe = run.pipeline(fastest, size, _torch_scorer(top), memory_size=k, score_k=top)
            times = measure_stages(pipe.stages(True), **timing)
            frame = summarize(times[FRAME])
            frame_rows.append(
                {
                    "k": k,
                    "score_k": top,
                    "memory_items": int(pipe.model.memory.items.shape[0]),
                    "frame_p50_ms": frame["p50"],
                    "frame_p99_ms": frame["p99"],
                    "samples": frame["n"],
                    "stages_p50_ms": {s_: statistics.median(times[s_]) for s_ in STAGES},
                    "updated_fraction": pipe.updates / max(1, pipe.observed),
                }
            )
    return {
        "backend": run_backend_label(fastest),
        "size": size,
        "n_patches": n,
        "k": k_rows,
        "d": d_rows,
        "input_size": size_rows,
        "frame_vs_k": frame_rows,
        "note": "scorer rows: random embeddings (N, D) and memory (K, D); frame rows: the real pipeline, primed memory",
    }


def _limits(
    run: _Run,
    dim: int,
    backbone: dict[str, Any],
    peaks: dict[str, Any],
    fastest: dict[str, Any],
    matrix: list[dict[str, Any]],
    scale: dict[str, Any],
) -> dict[str, Any]:
    config = run.config
    size = config.primary_size
    entries = [e for e in matrix if e["size"] == size and e["batch"] == 1]
    backbone_by = {}
    for e in entries:
        if e["scorer"] == "torch":
            backbone_by[e["backend"]] = achieved(
                backbone["flops"], backbone["bytes_activations"], e["stages"]["backbone"]["p50"], peaks
            )
    n = scale["n_patches"]
    items = fastest["memory_items"]
    cost = scorer_cost(n, items, dim)
    scorer_by = {}
    for e in entries:
        if e["backend"] == fastest["backend"]:
            scorer_by[e["scorer"]] = achieved(cost["flops"], cost["bytes"], e["stages"]["score"]["p50"], peaks)
    return {
        "peaks": {"matmul_gflops": peaks["matmul_gflops"], "memcpy_gbs": peaks["memcpy_gbs"]},
        "backbone": {**backbone, "achieved": backbone_by},
        "scorer": {**cost, "backend": fastest["backend"], "achieved": scorer_by},
        "note": (
            "backbone bytes = weights + input + output + every layer's output written and read once; scorer bytes = "
            "N*D*4 + K*D*4 + outputs (the torch reference also writes and reads the N x K distances: "
            "bytes_materialised); fractions are of this run's peaks. A fraction above 1 means faster than the "
            "measured peak: data that stays in cache (bandwidth), or a peak measured while other processes held a "
            "core (see load_average)"
        ),
    }


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    frame = result["frame_p50_ms"]
    rows = result["scale"]["frame_vs_k"]
    by_k = [
        {
            "k": r["k"],
            "score_k": r["score_k"],
            "frame_p50_ms": r["frame_p50_ms"],
            "meets": r["frame_p50_ms"] <= TARGET_FRAME_MS,
        }
        for r in rows
    ]
    meeting = [r for r in by_k if r["meets"]]
    pc = result["ratios"].get("lemo_vs_patchcore_frame")
    return {
        "frame_p50_ms": {
            "target_ms": TARGET_FRAME_MS,
            "measured_ms": frame,
            "met": frame <= TARGET_FRAME_MS,
            "times_over": frame / TARGET_FRAME_MS,
            "backend": result["frame_p50_backend"],
            "config": f"default (K={result['config']['model']['memory_size']}, "
            f"top-{result['config']['model']['score_k']})",
        },
        "frame_p50_by_k": by_k,
        "largest_k_meeting_frame_target": max(meeting, key=lambda r: (r["k"], r["score_k"])) if meeting else None,
        "lemo_vs_patchcore_frame": {
            "target": TARGET_LEMO_VS_PATCHCORE,
            "measured": pc,
            "met": pc is not None and pc >= TARGET_LEMO_VS_PATCHCORE,
        },
    }


# -- results files ----------------------------------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    """Replace non-finite floats by None (JSON has no NaN), paths by strings, tuples by lists."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def results_stem(result: Mapping[str, Any]) -> str:
    """``<machine>-<date>`` of a result (the date the run started, UTC)."""
    return f"{result['machine']}-{str(result['started'])[:10]}"


def write_results(
    result: dict[str, Any], out_dir: str | Path, json_path: str | Path | None = None, plots: bool = True
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and the PNG plots into ``out_dir`` (and the JSON to ``json_path``).

    The file paths are recorded in ``result["files"]`` before the JSON is written.

    Returns:
        ``{kind: path}`` of every file written.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(result)
    files: dict[str, Path] = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    if plots:
        files.update(write_plots(result, out, stem))
    if json_path is not None:
        files["json_copy"] = Path(json_path).expanduser()
    result["files"] = {k: str(v) for k, v in files.items()}
    text = json.dumps(_json_ready(result), indent=2, allow_nan=False) + "\n"
    files["json"].write_text(text, encoding="utf-8")
    if json_path is not None:
        files["json_copy"].parent.mkdir(parents=True, exist_ok=True)
        files["json_copy"].write_text(text, encoding="utf-8")
    files["markdown"].write_text(markdown_report(result), encoding="utf-8")
    return files


def _ms(stat: Mapping[str, Any] | None) -> str:
    if not stat:
        return ""
    return f"{stat['p50']:.1f} / {stat['p99']:.1f}"


def markdown_report(result: Mapping[str, Any]) -> str:
    """A markdown page of a result: environment, targets, matrix, ratios, scale and limits tables."""
    from lemo_edge.report import markdown_table

    env = result["environment"]
    gpu = env.get("gpu") or {}
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    load = result.get("load_average") or {}
    t = result["targets"]
    lines = [
        f"# Latency benchmark: {result['machine']} ({str(result['started'])[:10]})",
        "",
        f"CPU {env['cpu_model']}, {env['usable_cpus']} usable CPUs ({env['physical_cores']} physical cores), "
        f"{env['memory_gib']} GiB; GPU: {gpu.get('name', 'none')}; device {env['device']}. {versions}.",
        f"Torch threads {result['threads']['torch']} ({result['threads']['torch_policy']}); onnxruntime intra-op "
        f"threads {result['threads']['onnxruntime_intra_op']}. Load average (1, 5, 15 min) at start "
        f"{load.get('start')}, at end {load.get('end')} (other processes share this machine).",
        f"{'Quick' if result['config']['quick'] else 'Full'} run, {result['wall_s']:.0f} s. Input: "
        f"{result['input']['source']}, {result['input']['source_hw'][0]}x{result['input']['source_hw'][1]}, "
        f"resized per input size. Latencies in ms, p50 / p99 over the recorded frames (warm-up excluded).",
        "",
        "## Targets",
        "",
        f"- One full frame with the online update at {result['config']['primary_size']}x"
        f"{result['config']['primary_size']}, fastest backend ({t['frame_p50_ms']['backend']}), "
        f"{t['frame_p50_ms']['config']}: **{t['frame_p50_ms']['measured_ms']:.1f} ms p50** "
        f"(target <= {TARGET_FRAME_MS:g} ms: {'met' if t['frame_p50_ms']['met'] else 'not met'}, "
        f"{t['frame_p50_ms']['times_over']:.1f}x the target).",
    ]
    best = t["largest_k_meeting_frame_target"]
    lines.append(
        f"- Largest K meeting {TARGET_FRAME_MS:g} ms: "
        + (f"K={best['k']} top-{best['score_k']} ({best['frame_p50_ms']:.1f} ms)." if best else "none measured.")
    )
    pc = t["lemo_vs_patchcore_frame"]
    if pc["measured"] is not None:
        lines.append(
            f"- LeMO vs PatchCore, per frame at equal backbone: **{pc['measured']:.2f}x** "
            f"(target >= {TARGET_LEMO_VS_PATCHCORE:g}x: {'met' if pc['met'] else 'not met'})."
        )
    lines += ["", "## Stages (p50 / p99 ms)", ""]
    columns = [
        "backend",
        "scorer",
        "size",
        "batch",
        *STAGES,
        "frame",
        "frame p90",
        "fps",
        "peak host MB",
        "peak dev MB",
    ]
    rows = []
    for e in result["matrix"]:
        row: dict[str, Any] = {k: e[k] for k in ("backend", "scorer", "size", "batch")}
        row.update({s: _ms(e["stages"][s]) for s in STAGES})
        row.update(
            {
                "frame": _ms(e["frame"]),
                "frame p90": e["frame"]["p90"],
                "fps": e["fps"],
                "peak host MB": e["peak_host_mb"],
                "peak dev MB": e["peak_device_mb"],
            }
        )
        rows.append(row)
    lines += [markdown_table(rows, columns, ".1f"), ""]
    lines += ["## Ratios (interleaved, side by side)", ""]
    ratio_rows = [
        {"ratio": name, "value": value, "definition": result["ratios_doc"][name]}
        for name, value in result["ratios"].items()
    ]
    lines += [markdown_table(ratio_rows, ["ratio", "value", "definition"], ".2f"), ""]
    p = result["patchcore"]
    lines += [
        f"PatchCore bank: {p['bank_size']} items ({p['fraction']:g} of a {p['subsample']}-patch random subsample "
        f"of {p['patches_total']} patches from {p['images']} images: {p['source']}); selection: {p['selection']}.",
        "",
        "## Frame vs memory size K (full frame with update, fastest backend)",
        "",
    ]
    k_rows = [
        {
            "K": r["k"],
            "top-k": r["score_k"],
            "items": r["memory_items"],
            "frame p50": r["frame_p50_ms"],
            "frame p99": r["frame_p99_ms"],
            "score p50": r["stages_p50_ms"]["score"],
            "update p50": r["stages_p50_ms"]["update"],
            f"<= {TARGET_FRAME_MS:g} ms": "yes" if r["frame_p50_ms"] <= TARGET_FRAME_MS else "no",
        }
        for r in result["scale"]["frame_vs_k"]
    ]
    k_cols = ["K", "top-k", "items", "frame p50", "frame p99", "score p50", "update p50", f"<= {TARGET_FRAME_MS:g} ms"]
    lines += [markdown_table(k_rows, k_cols, ".1f"), ""]
    lines += ["## Scorer vs K and D (random embeddings, p50 ms)", ""]
    scale_rows: dict[tuple[str, int], dict[str, Any]] = {}
    ks = sorted({r["k"] for r in result["scale"]["k"]})
    for r in result["scale"]["k"]:
        row = scale_rows.setdefault((r["scorer"], r["d"]), {"scorer": r["scorer"], "D": r["d"]})
        row[f"K={r['k']}"] = r["p50_ms"]
    lines += [markdown_table(list(scale_rows.values()), ["scorer", "D", *[f"K={k}" for k in ks]], ".2f"), ""]
    lines += ["## Input size (p50 ms)", ""]
    size_rows: dict[str, dict[str, Any]] = {}
    sizes = sorted({r["size"] for r in result["scale"]["input_size"]})
    for r in result["scale"]["input_size"]:
        size_rows.setdefault(r["component"], {"component": r["component"]})[str(r["size"])] = r["p50_ms"]
    lines += [markdown_table(list(size_rows.values()), ["component", *map(str, sizes)], ".2f"), ""]
    lim = result["limits"]
    lines += [
        "## Limits",
        "",
        f"Measured peaks: matmul {lim['peaks']['matmul_gflops']:.1f} GFLOP/s, memcpy {lim['peaks']['memcpy_gbs']:.1f} "
        f"GB/s. Backbone at {lim['backbone']['size']}: {lim['backbone']['flops'] / 1e9:.3f} GFLOP, "
        f"{lim['backbone']['bytes_activations'] / 2**20:.1f} MiB. Scorer (N={lim['scorer']['n']}, "
        f"K={lim['scorer']['k']}, D={lim['scorer']['d']}): {lim['scorer']['flops'] / 1e9:.3f} GFLOP, "
        f"{lim['scorer']['bytes'] / 2**20:.1f} MiB ({lim['scorer']['bytes_materialised'] / 2**20:.1f} MiB with the "
        "distance matrix).",
        "",
    ]
    lim_rows = []
    for part in ("backbone", "scorer"):
        for name, a in lim[part]["achieved"].items():
            lim_rows.append(
                {
                    "part": part,
                    "by": name,
                    "p50 ms": a["ms"],
                    "GFLOP/s": a["gflops"],
                    "% peak FLOP/s": 100 * a["fraction_of_peak_flops"],
                    "GB/s": a["gbs"],
                    "% peak GB/s": 100 * a["fraction_of_peak_bandwidth"],
                }
            )
    cols = ["part", "by", "p50 ms", "GFLOP/s", "% peak FLOP/s", "GB/s", "% peak GB/s"]
    lines += [markdown_table(lim_rows, cols, ".1f"), ""]
    plots = [v for k, v in result.get("files", {}).items() if str(v).endswith(".png")]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines)


def write_plots(result: Mapping[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """PNG plots of the scale results (matplotlib Agg on a bare Figure, as :mod:`lemo_edge.report`).

    Returns:
        ``{"plot_k", "plot_d", "plot_size", "plot_update", "plot_stages": path}``.
    """
    from lemo_edge.report import _figure, _save

    scale = result["scale"]
    files: dict[str, Path] = {}

    # scorer vs K, one line per scorer and D
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in scale["k"]:
        series.setdefault((r["scorer"], r["d"]), []).append((r["k"], r["p50_ms"]))
    for (name, d), points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=f"{name}, D={d}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="memory items K", ylabel="scorer p50 (ms)", title=f"Scorer vs K (N={scale['n_patches']} patches)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    files["plot_k"] = _save(fig, out_dir / f"{stem}-scale-k.png")

    # scorer vs D at one K
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    by_scorer: dict[str, list[tuple[int, float]]] = {}
    k_d = scale["d"][0]["k"] if scale["d"] else None
    for r in scale["d"]:
        by_scorer.setdefault(r["scorer"], []).append((r["d"], r["p50_ms"]))
    for name, points in by_scorer.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(xlabel="feature channels D", ylabel="scorer p50 (ms)", title=f"Scorer vs D (K={k_d})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    files["plot_d"] = _save(fig, out_dir / f"{stem}-scale-d.png")

    # cost vs input size
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    comps: dict[str, list[tuple[int, float]]] = {}
    for r in scale["input_size"]:
        comps.setdefault(r["component"], []).append((r["size"], r["p50_ms"]))
    for name, points in comps.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_yscale("log")
    ax.set(xlabel="input side (pixels)", ylabel="p50 (ms)", title="Cost vs input size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    files["plot_size"] = _save(fig, out_dir / f"{stem}-scale-size.png")

    # update and full frame vs K
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for top in sorted({r["score_k"] for r in scale["frame_vs_k"]}, reverse=True):
        rows = sorted((r for r in scale["frame_vs_k"] if r["score_k"] == top), key=lambda r: r["k"])
        ks = [r["k"] for r in rows]
        ax.plot(ks, [r["frame_p50_ms"] for r in rows], marker="o", label=f"frame, top-{top}")
        ax.plot(
            ks, [r["stages_p50_ms"]["update"] for r in rows], marker="s", linestyle="--", label=f"update, top-{top}"
        )
        ax.plot(ks, [r["stages_p50_ms"]["score"] for r in rows], marker="^", linestyle=":", label=f"score, top-{top}")
    ax.axhline(TARGET_FRAME_MS, color="grey", linewidth=1, label=f"target {TARGET_FRAME_MS:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="memory items K", ylabel="p50 (ms)")
    ax.set_title(f"Frame and online update vs K ({scale['backend']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    files["plot_update"] = _save(fig, out_dir / f"{stem}-update-k.png")

    # stacked stages per matrix entry at batch 1
    entries = [e for e in result["matrix"] if e["batch"] == 1]
    fig = _figure(max(5.0, 1.2 * len(entries) + 2), 4)
    ax = fig.add_subplot()
    labels = [f"{e['backend']}\n{e['scorer']} {e['size']}" for e in entries]
    bottom = np.zeros(len(entries))
    for stage in STAGES:
        values = np.array([e["stages"][stage]["p50"] for e in entries])
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom += values
    ax.axhline(TARGET_FRAME_MS, color="grey", linewidth=1)
    ax.set(ylabel="p50 (ms)", title="Stages of one frame (batch 1)")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    files["plot_stages"] = _save(fig, out_dir / f"{stem}-stages.png")
    return files
