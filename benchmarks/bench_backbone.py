"""Backbone latency on CPU: onnxruntime vs torch eager, measured side by side in one run.

Both backends come from :func:`lemo_edge.runtime.backends.create_backend` (the ONNX file is exported
into the lemo-edge cache if needed). Each iteration runs every contender once on the same
``(1, 3, 256, 256) uint8`` image, in an order rotated per iteration, after a shared warm-up; the
medians and the ratio torch / onnxruntime are printed and written to a JSON file.

    python benchmarks/bench_backbone.py [--warmup 20] [--iters 100] [--variants] [--out FILE]

``--variants`` adds torch with one thread and onnxruntime sessions with other options (spinning
threads, extended instead of all graph optimisations, one thread) to see which settings matter here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lemo_edge.runtime.backends import OrtFeatureExtractor, create_backend, physical_cores

RESULTS = Path(__file__).resolve().parent / "results"


def _ort_variant(onnx_path: Path, level: str | None = None, **options: object) -> Callable[[torch.Tensor], object]:
    backend = OrtFeatureExtractor(onnx_path, "cpu", **options)  # type: ignore[arg-type]
    if level is not None:  # rebuild the session with another graph optimisation level
        import onnxruntime as ort

        session_options = backend._session.get_session_options()
        session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        backend._session = ort.InferenceSession(str(onnx_path), session_options, providers=["CPUExecutionProvider"])
    return backend


def _single_threaded(fn: Callable[[torch.Tensor], object]) -> Callable[[torch.Tensor], object]:
    """Run ``fn`` with one torch intra-op thread (torch's OpenMP pool degrades badly when cores are shared)."""

    def run(images: torch.Tensor) -> object:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(images)
        finally:
            torch.set_num_threads(threads)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--variants", action="store_true", help="also time other onnxruntime session options")
    parser.add_argument("--out", type=Path, default=RESULTS / "backbone_cpu.json")
    args = parser.parse_args(argv)

    size = (args.size, args.size)
    torch_backend = create_backend("torch", size=size)
    ort_backend = create_backend("onnxruntime", size=size, device="cpu")
    contenders: dict[str, Callable[[torch.Tensor], object]] = {
        "torch eager": torch_backend,
        "onnxruntime": ort_backend,
    }
    if args.variants:
        path = ort_backend.onnx_path  # type: ignore[attr-defined]
        contenders["torch eager 1 thread"] = _single_threaded(torch_backend)
        contenders["onnxruntime spin"] = _ort_variant(path, spin=True)
        contenders["onnxruntime extended-opt"] = _ort_variant(path, level="ORT_ENABLE_EXTENDED")
        contenders["onnxruntime 1 thread"] = _ort_variant(path, threads=1)

    image = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    load_before = os.getloadavg()[0]
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                start = time.perf_counter()
                contenders[name](image)
                elapsed = time.perf_counter() - start
                if i >= args.warmup:
                    times[name].append(elapsed * 1e3)

    load_after = os.getloadavg()[0]
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["torch eager"]
    cpu = platform.processor() or platform.machine()
    print(
        f"backbone {torch_backend.spec.name} {size[0]}x{size[1]} batch 1, CPU: {cpu}, "
        f"{physical_cores()} physical cores, torch threads {torch.get_num_threads()}; "
        f"{args.warmup} warm-up + {args.iters} interleaved iterations; "
        f"1-min load average {load_before:.2f} before, {load_after:.2f} after (other processes skew this)"
    )
    for name, median in medians.items():
        print(f"  {name:28s} median {median:8.2f} ms   torch/this = {base / median:5.2f}x")
    result = {
        "backbone": torch_backend.spec.name,
        "size": list(size),
        "batch": 1,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "physical_cores": physical_cores(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "warmup": args.warmup,
        "iters": args.iters,
        "load_average_1min": [load_before, load_after],
        "median_ms": medians,
        "ratio_torch_over_onnxruntime": base / medians["onnxruntime"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
