"""The machine the benchmark runs on: peak memory, CPU/GPU and versions, threads, measured peaks and costs.

Host memory is read from ``/proc`` where it exists (psutil or getrusage otherwise); the machine's peak
matmul GFLOP/s and memcpy GB/s are measured with the timers of :mod:`~lemo_edge.runtime.bench.timing`,
and :func:`achieved` relates a stage's latency and its FLOPs/bytes to them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import platform
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lemo_edge.config import size_hw
from lemo_edge.runtime.bench.timing import device_sync, measure_stages
from lemo_edge.utils import package_version

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
        "versions": {p: v for p in packages if (v := package_version(p)) is not None},
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


def measure_peaks(
    device: torch.device, matmul_n: int, copy_mb: int, reps: int, threads: Sequence[int]
) -> dict[str, Any]:
    """This machine's peak: an ``n x n`` fp32 matmul (GFLOP/s) and a large copy (GB/s, read + write).

    On CPU both run with each torch thread count in ``threads``; the best is the machine peak.

    Returns:
        ``{"matmul_gflops", "memcpy_gbs", "by_threads": {...}, "matmul_n", "copy_mb", "reps"}``.
    """
    sync = device_sync(device)
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


def backbone_cost(extractor: torch.nn.Module, size: int | tuple[int, int], dim: int, stride: int) -> dict[str, Any]:
    """FLOPs (``FlopCounterMode``) and bytes of one backbone call on a ``(1, 3, H, W) uint8`` image.

    ``size``: a side (square) or ``(H, W)``; the result's ``size`` is the side or ``"HxW"``.

    ``bytes_min`` is weights + input + output (each touched once); ``bytes_activations`` adds every leaf
    module's output written once and read once, a closer estimate of the memory traffic.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(extractor.parameters()).device
    height, width = size_hw(size)
    images = torch.zeros((1, 3, height, width), dtype=torch.uint8, device=device)
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
    output = dim * (height // stride) * (width // stride) * 4
    bytes_min = weights + images.numel() + output
    return {
        "size": height if height == width else f"{height}x{width}",
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
