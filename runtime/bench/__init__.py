"""Latency benchmark of the inspection pipeline (``lemo-edge bench``): stages, ratios, scaling and the machine's limits.

One run measures, on this machine and in one process:

- **matrix**: each available feature backend (torch, onnxruntime; tensorrt with CUDA) x scorer (torch
  reference; the model's inverted index; the CUDA kernel with CUDA) x input size x batch, the latency of
  every stage of a frame (``preprocess``: JPEG decode + colour conversion + resize of a synthetic camera
  frame encoded with ``cv2.imencode``; ``backbone``; then the parts of the one frame step every caller
  runs, :meth:`lemo_edge.inspector.Inspector.step`, as it times them: ``score`` (adapter + nearest
  memory), ``map`` (anomaly map and image score, read back: the frame's host synchronisation) and
  ``update`` (decision and gated online update)) and of the whole frame, as p50/p90/p99 over the measured
  frames (warm-up excluded), frames per second and peak host/device memory;
- **ratios**, each from contenders run side by side and interleaved (their order alternates every
  iteration, so drift and other processes' load hit both alike); their definitions go into the results
  (:data:`~lemo_edge.runtime.bench.run.RATIOS_DOC`);
- **scale**: the scorer's cost against K (memory items), D (feature channels, incl. a synthetic
  D=1024) and input size, the online update's and the whole frame's cost against K;
- **limits**: FLOPs and bytes per frame of the backbone (``FlopCounterMode``) and of the scorer, and the
  fraction achieved of this machine's peak matmul GFLOP/s and memcpy GB/s measured in the same run.

Modules:

- :mod:`~lemo_edge.runtime.bench.timing`: statistics (:func:`summarize`, :func:`ratio`) and timers
  (:func:`run_stages`, :func:`measure_stages`, :func:`interleave`), pure, with the clock and the
  synchronisation as arguments (tested with fake clocks);
- :mod:`~lemo_edge.runtime.bench.environment`: ``/proc`` parsing, peak memory, machine peaks, threads,
  versions, FLOP/byte costs;
- :mod:`~lemo_edge.runtime.bench.pipeline`: the JPEG frames, the timed frame pipeline, PatchCore's frame;
- :mod:`~lemo_edge.runtime.bench.config`: :class:`BenchConfig` and the targets;
- :mod:`~lemo_edge.runtime.bench.run`: :func:`run_bench`, the JSON-ready results;
- :mod:`~lemo_edge.runtime.bench.report`: :func:`write_results` (JSON, markdown, PNG plots);
- :mod:`~lemo_edge.runtime.bench.cli`: the ``bench`` sub-command.
"""

from __future__ import annotations

from lemo_edge.runtime.bench.config import (
    TARGET_FRAME_MS,
    TARGET_LEMO_VS_PATCHCORE,
    BenchConfig,
    default_patchcore_data,
)
from lemo_edge.runtime.bench.environment import (
    MemoryPeak,
    achieved,
    backbone_cost,
    cpu_model,
    default_threads,
    environment,
    load_average,
    machine_name,
    measure_peaks,
    peak_host_memory_mb,
    scorer_cost,
    slugify,
)
from lemo_edge.runtime.bench.pipeline import (
    FramePipeline,
    JpegFrames,
    MatrixScorer,
    build_patchcore_bank,
    index_search,
    lemo_vs_patchcore,
)
from lemo_edge.runtime.bench.report import markdown_report, results_stem, write_plots, write_results
from lemo_edge.runtime.bench.run import RATIOS_DOC, run_bench
from lemo_edge.runtime.bench.timing import (
    FRAME,
    STAGES,
    Stage,
    Timed,
    device_sync,
    interleave,
    measure_stages,
    ratio,
    run_stages,
    summarize,
)

__all__ = [
    "BenchConfig",
    "FRAME",
    "FramePipeline",
    "JpegFrames",
    "MatrixScorer",
    "MemoryPeak",
    "RATIOS_DOC",
    "STAGES",
    "Stage",
    "TARGET_FRAME_MS",
    "TARGET_LEMO_VS_PATCHCORE",
    "Timed",
    "achieved",
    "backbone_cost",
    "build_patchcore_bank",
    "cpu_model",
    "default_patchcore_data",
    "default_threads",
    "device_sync",
    "environment",
    "index_search",
    "interleave",
    "lemo_vs_patchcore",
    "load_average",
    "machine_name",
    "markdown_report",
    "measure_peaks",
    "measure_stages",
    "peak_host_memory_mb",
    "ratio",
    "results_stem",
    "run_bench",
    "run_stages",
    "scorer_cost",
    "slugify",
    "summarize",
    "write_plots",
    "write_results",
]
