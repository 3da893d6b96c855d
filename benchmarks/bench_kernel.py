"""Nearest-memory scoring on the GPU: the CUDA kernel vs the torch reference, CUDA-event timings.

For every N in (1024, 4096), K in (10, 256, 4096), D in (152, 1024) and dtype (float32, float16), both
scorers run on the same inputs, interleaved, after a warm-up; medians of CUDA-event times are printed
and written as JSON to ``benchmarks/results/kernel_<gpu>.json`` with the device name.

    python benchmarks/bench_kernel.py [--warmup 10] [--iters 50] [--out FILE]

Exits with status 2 and a message when no CUDA GPU (or no pycuda / nvcc) is available.
"""

from __future__ import annotations

import argparse
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
NS = (1024, 4096)
KS = (10, 256, 4096)
DS = (152, 1024)


def _time(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_kernel: no CUDA GPU visible to torch; this benchmark needs one", file=sys.stderr)
        return 2
    from lemo_edge.errors import LemoError
    from lemo_edge.runtime.scorers import CudaMemoryScorer, TorchMemoryScorer

    try:
        cuda_scorer = CudaMemoryScorer()
    except LemoError as err:
        print(f"bench_kernel: the CUDA kernel cannot load here: {err}", file=sys.stderr)
        return 2
    torch_scorer = TorchMemoryScorer()
    device = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    rows = []
    print(f"{device} (sm_{major}{minor}), median of {args.iters} after {args.warmup} warm-up, CUDA events")
    print(f"{'dtype':8s} {'N':>5s} {'K':>5s} {'D':>5s} {'kernel ms':>10s} {'torch ms':>10s} {'speed-up':>9s}")
    for dtype, n, k, d in itertools.product((torch.float32, torch.float16), NS, KS, DS):
        z = torch.randn(n, d, device="cuda").to(dtype)
        memory = torch.randn(k, d, device="cuda").to(dtype)
        kernel_ms, torch_ms = [], []
        for _ in range(2):  # interleave the two in halves to share clock/thermal drift
            kernel_ms += _time(functools.partial(cuda_scorer, z, memory), args.warmup, args.iters // 2)
            torch_ms += _time(functools.partial(torch_scorer, z, memory), args.warmup, args.iters // 2)
        kernel_med, torch_med = statistics.median(kernel_ms), statistics.median(torch_ms)
        row = {
            "dtype": str(dtype).removeprefix("torch."),
            "N": n,
            "K": k,
            "D": d,
            "kernel_ms": kernel_med,
            "torch_ms": torch_med,
            "speedup": torch_med / kernel_med,
        }
        rows.append(row)
        print(
            f"{row['dtype']:8s} {n:5d} {k:5d} {d:5d} {row['kernel_ms']:10.4f} {row['torch_ms']:10.4f} "
            f"{row['speedup']:8.2f}x"
        )
    out = args.out or RESULTS / f"kernel_{re.sub(r'[^A-Za-z0-9]+', '_', device).strip('_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "device": device,
        "compute_capability": f"{major}.{minor}",
        "torch": torch.__version__,
        "warmup": args.warmup,
        "iters": args.iters,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
