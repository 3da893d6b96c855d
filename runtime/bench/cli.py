"""``lemo-edge bench``: latency per stage, side-by-side ratios, scaling and the machine's limits.

    lemo-edge bench [--quick] [--json OUT] [--out-dir benchmarks/results] [--device cpu|cuda]
                    [--patchcore-data DIR] [--threads N] [--backends torch,onnxruntime] [--no-plots]

Results go to ``<out-dir>/<machine>-<date>.json`` with a markdown table ``.md`` and PNG plots beside
it (see :mod:`lemo_edge.runtime.bench`); ``--json OUT`` writes the same JSON to ``OUT`` too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from lemo_edge.errors import InputError

DEFAULT_OUT_DIR = Path("benchmarks") / "results"


def add_parser(sub: Any) -> None:
    """Register the ``bench`` sub-command."""
    p = sub.add_parser(
        "bench",
        help="latency benchmark: stages, backends, scorers, ratios, scaling with K/D/size",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--quick", action="store_true", help="smaller matrix (256 only, fewer frames, K subset): < 3 min")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results JSON to OUT")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"folder of <machine>-<date>.json/.md and the plots (default: {DEFAULT_OUT_DIR})",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when a GPU is visible, else cpu")
    p.add_argument(
        "--patchcore-data",
        type=Path,
        metavar="DIR",
        help="dataset whose train_good builds PatchCore's bank (default: ../shared/data/magnetic_tile when "
        "present, else synthetic frames)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: usable cores - 1, as lemo-edge run)")
    p.add_argument("--backends", help="comma-separated subset of torch,onnxruntime,tensorrt (default: all available)")
    p.add_argument("--frames", type=int, help="recorded frames per configuration at batch 1 (default: preset)")
    p.add_argument(
        "--size",
        default=None,
        metavar="S|HxW",
        help="measure this one input shape (S or HxW, multiples of 32) instead of the preset's sizes",
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~lemo_edge.runtime.bench.BenchConfig` of parsed arguments.

    Raises:
        InputError: an argument out of range or a ``--patchcore-data`` folder that does not exist.
    """
    import torch

    from lemo_edge.config import parse_input_size
    from lemo_edge.runtime.bench.config import BenchConfig, default_patchcore_data

    changes: dict[str, Any] = {}
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    changes["device"] = device
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.frames is not None:
        changes["frames"] = args.frames
    if args.backends:
        changes["backends"] = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if args.patchcore_data is not None:
        if not args.patchcore_data.expanduser().exists():
            raise InputError(
                f"--patchcore-data: expected a dataset folder or manifest, got {str(args.patchcore_data)!r}"
            )
        changes["patchcore_data"] = args.patchcore_data.expanduser()
    else:
        changes["patchcore_data"] = default_patchcore_data()
    changes["plots"] = not args.no_plots
    if getattr(args, "size", None) is not None:
        size = parse_input_size(args.size)
        changes["sizes"], changes["primary_size"] = (size,), size
    return BenchConfig.quick_preset(**changes) if args.quick else BenchConfig(**changes)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, write the results and print a summary; returns the exit code."""
    from lemo_edge.runtime.bench.config import size_text
    from lemo_edge.runtime.bench.report import write_results
    from lemo_edge.runtime.bench.run import run_bench

    config = config_from_args(args)
    t0 = time.perf_counter()

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    result = run_bench(config, progress)
    files = write_results(result, args.out_dir, args.json, plots=config.plots)
    t = result["targets"]
    print(
        f"frame p50 {result['frame_p50_ms']:.1f} ms at {size_text(config.primary_size)} "
        f"({result['frame_p50_backend']}, {t['frame_p50_ms']['config']}, with the online update); "
        f"target <= 10 ms {'met' if t['frame_p50_ms']['met'] else 'not met'}"
    )
    best = t["largest_k_meeting_frame_target"]
    if best:
        print(f"largest K meeting 10 ms: K={best['k']} top-{best['score_k']} ({best['frame_p50_ms']:.1f} ms)")
    for row in t["frame_p50_by_k"]:
        print(f"  K={row['k']:>5} top-{row['score_k']}: frame p50 {row['frame_p50_ms']:.1f} ms")
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.2f}")
    print(
        f"wall {result['wall_s']:.0f} s; load average start {result['load_average']['start']}, "
        f"end {result['load_average']['end']}"
    )
    for kind, path in files.items():
        print(f"wrote {kind}: {path}")
    return 0
