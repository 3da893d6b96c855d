"""Nearest-memory scoring on the GPU: the CUDA kernel vs the torch reference, against the card's measured peaks.

For N in (1024, 8192) patches, K in (256, 1024, 4096, 8192, 16384) items, D = 152 (the default features),
k in (1, 3) nearest items and float32/float16 inputs, both scorers run on the same inputs, interleaved, after a
warm-up; medians of CUDA-event times. Each row also records the kernel's agreement with the reference (max abs
score difference, share of equal indices) and its time against what its work needs at the peaks measured on
this card in the same run:

- flops: ``2 N K D`` (one fused multiply-add per patch, item and dimension: the kernel computes
  ``|m|^2 - 2 z.m`` on the CUDA cores in float32) over the measured float32 CUDA-core peak (a large float32
  ``torch.mm`` with TF32 off); the float16 tensor-core peak is recorded too, for what a tensor-core kernel
  could reach;
- bytes: ``(N + K) D`` input elements + ``16 N`` output bytes (the compulsory DRAM traffic; re-reads of the
  memory by the patch tiles come from L2) over the measured copy bandwidth (a 1 GiB device-to-device copy).

The larger of the two times is the bound; ``binds`` says which, ``x_bound`` is kernel time / bound.

    python benchmarks/bench_kernel.py [--warmup 5] [--iters 30] [--out-dir DIR]

Writes ``kernel_<gpu>.json`` and ``kernel_<gpu>.md`` (default: benchmarks/results/). Exits with status 2 and a
message when no CUDA GPU, or no kernel, is available.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
NS = (1024, 8192)
KS = (256, 1024, 4096, 8192, 16384)
DS = (152,)
TOPS = (1, 3)
DTYPES = (torch.float32, torch.float16)


def _time(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
    """CUDA-event times (ms) of ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _matmul_flops(dtype: torch.dtype, warmup: int, iters: int, size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda").to(dtype)
    ms = statistics.median(_time(functools.partial(torch.mm, a, a), warmup, iters))
    return 2 * size**3 / (ms * 1e-3)


def _copy_bandwidth(warmup: int, iters: int, elements: int = 2**28) -> float:
    src = torch.empty(elements, dtype=torch.float32, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = statistics.median(_time(functools.partial(dst.copy_, src), warmup, iters))
    return 2 * elements * 4 / (ms * 1e-3)  # read + write


def measure_peaks(warmup: int = 3, iters: int = 10) -> dict[str, float]:
    """Measured peaks of this card: float32 CUDA-core and float16 tensor-core FLOP/s, copy bandwidth (B/s)."""
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        fp32 = _matmul_flops(torch.float32, warmup, iters)
        fp16 = _matmul_flops(torch.float16, warmup, iters)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    bandwidth = _copy_bandwidth(warmup, iters)
    torch.cuda.empty_cache()
    return {"fp32_simt_flops": fp32, "fp16_tensor_flops": fp16, "copy_bytes_per_s": bandwidth}


def work(n: int, k: int, d: int, element: int) -> tuple[float, float]:
    """``(flops, bytes)`` one scoring call needs (see the module docstring)."""
    return 2.0 * n * k * d, float((n + k) * d * element + 16 * n)


def _markdown(result: dict) -> str:
    peaks = result["peaks"]
    lines = [
        f"# Nearest-memory kernel on {result['device']} (sm_{result['compute_capability'].replace('.', '')})",
        "",
        f"{result['date']}, torch {result['torch']}, CUDA {result['cuda']}, launcher {result['launcher']}; "
        f"median of {result['iters']} CUDA-event times after {result['warmup']} warm-up, interleaved.",
        "",
        f"Measured peaks: float32 CUDA cores {peaks['fp32_simt_flops'] / 1e12:.1f} TFLOP/s, float16 tensor cores "
        f"{peaks['fp16_tensor_flops'] / 1e12:.1f} TFLOP/s, copy bandwidth {peaks['copy_bytes_per_s'] / 1e9:.0f} GB/s.",
        "",
        "| dtype | k | N | K | D | kernel ms | torch ms | speed-up | bound ms | binds | x bound | max abs diff | "
        "same index |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['dtype']} | {r['k']} | {r['N']} | {r['K']} | {r['D']} | {r['kernel_ms']:.4f} | "
            f"{r['torch_ms']:.4f} | {r['speedup']:.2f}x | {r['bound_ms']:.4f} | {r['binds']} | "
            f"{r['x_bound']:.2f} | {r['max_abs_diff']:.2e} | {r['same_index']:.4f} |"
        )
    lines += [
        "",
        "bound: max(2NKD / float32 CUDA-core peak, compulsory bytes / copy bandwidth); x bound = kernel / bound.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--launcher", default="auto", choices=("auto", "driver", "pycuda"))
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_kernel: no CUDA GPU visible to torch; this benchmark needs one", file=sys.stderr)
        return 2
    from lemo_edge.errors import LemoError
    from lemo_edge.runtime.scorers import CudaMemoryScorer, TorchMemoryScorer

    try:
        kernels = {k: CudaMemoryScorer(k=k, launcher=args.launcher) for k in TOPS}
    except LemoError as err:
        print(f"bench_kernel: the CUDA kernel cannot load here: {err}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true float32
    device = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    print(f"{device} (sm_{major}{minor}): measuring peaks", flush=True)
    peaks = measure_peaks()
    print(
        f"peaks: fp32 {peaks['fp32_simt_flops'] / 1e12:.1f} TFLOP/s, "
        f"fp16 tensor {peaks['fp16_tensor_flops'] / 1e12:.1f} TFLOP/s, copy {peaks['copy_bytes_per_s'] / 1e9:.0f} GB/s",
        flush=True,
    )
    rows = []
    header = f"{'dtype':8s} {'k':>2s} {'N':>5s} {'K':>6s} {'D':>4s} {'kernel ms':>10s} {'torch ms':>9s} {'x':>6s}"
    print(header + f" {'bound ms':>9s} {'binds':>5s} {'x bound':>7s} {'max diff':>9s}")
    generator = torch.Generator(device="cuda").manual_seed(0)
    for dtype, top, n, k, d in itertools.product(DTYPES, TOPS, NS, KS, DS):
        z = torch.randn(n, d, device="cuda", generator=generator).to(dtype)
        memory = torch.randn(k, d, device="cuda", generator=generator).to(dtype)
        kernel, reference = kernels[top], TorchMemoryScorer(top)
        got, expected = kernel(z, memory), reference(z, memory)
        max_diff = float((got.score - expected.score).abs().max())
        same = float((got.index == expected.index).float().mean())
        kernel_ms, torch_ms = [], []
        for _ in range(2):  # interleave the two in halves to share clock/thermal drift
            kernel_ms += _time(functools.partial(kernel, z, memory), args.warmup, args.iters // 2)
            torch_ms += _time(functools.partial(reference, z, memory), args.warmup, args.iters // 2)
        kernel_med, torch_med = statistics.median(kernel_ms), statistics.median(torch_ms)
        flops, nbytes = work(n, k, d, z.element_size())
        flops_ms, bytes_ms = flops / peaks["fp32_simt_flops"] * 1e3, nbytes / peaks["copy_bytes_per_s"] * 1e3
        bound = max(flops_ms, bytes_ms)
        row = {
            "dtype": str(dtype).removeprefix("torch."),
            "k": top,
            "N": n,
            "K": k,
            "D": d,
            "kernel_ms": kernel_med,
            "torch_ms": torch_med,
            "speedup": torch_med / kernel_med,
            "flops": flops,
            "bytes": nbytes,
            "flops_ms": flops_ms,
            "bytes_ms": bytes_ms,
            "bound_ms": bound,
            "binds": "flops" if flops_ms >= bytes_ms else "bytes",
            "x_bound": kernel_med / bound,
            "x_fp16_tensor_flops": kernel_med / (flops / peaks["fp16_tensor_flops"] * 1e3),
            "max_abs_diff": max_diff,
            "same_index": same,
        }
        rows.append(row)
        print(
            f"{row['dtype']:8s} {top:2d} {n:5d} {k:6d} {d:4d} {kernel_med:10.4f} {torch_med:9.4f} "
            f"{row['speedup']:5.2f}x {bound:9.4f} {row['binds']:>5s} {row['x_bound']:7.2f} {max_diff:9.2e}",
            flush=True,
        )
    result = {
        "device": device,
        "compute_capability": f"{major}.{minor}",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "launcher": kernels[TOPS[0]].launcher,
        "cubin": kernels[TOPS[0]]._kernel.cubin.name,
        "warmup": args.warmup,
        "iters": args.iters,
        "peaks": peaks,
        "rows": rows,
    }
    name = f"kernel_{re.sub(r'[^A-Za-z0-9]+', '_', device).strip('_')}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out_dir / f"{name}.md").write_text(_markdown(result), encoding="utf-8")
    print(f"wrote {args.out_dir / name}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
