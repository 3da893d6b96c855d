"""One benchmark run (:func:`run_bench`): the matrix, the interleaved ratios, the scale and the limits.

The results are a JSON-ready dict; :mod:`~lemo_edge.runtime.bench.report` writes them to files.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from lemo_edge.config import ModelConfig, size_hw
from lemo_edge.errors import BackendUnavailableError, InputError, LemoError, MissingDependencyError
from lemo_edge.runtime.bench.config import (
    TARGET_FRAME_MS,
    TARGET_K_SCALING,
    TARGET_LEMO_VS_PATCHCORE,
    BenchConfig,
    size_key,
    size_text,
)
from lemo_edge.runtime.bench.environment import (
    MemoryPeak,
    achieved,
    backbone_cost,
    default_threads,
    environment,
    load_average,
    machine_name,
    measure_peaks,
    scorer_cost,
)
from lemo_edge.runtime.bench.pipeline import (
    FramePipeline,
    JpegFrames,
    MatrixScorer,
    bound_stage,
    build_patchcore_bank,
    index_search,
    lemo_vs_patchcore,
    search_threads,
)
from lemo_edge.runtime.bench.timing import (
    FRAME,
    STAGES,
    device_sync,
    interleave,
    measure_stages,
    ratio,
    summarize,
)
from lemo_edge.scoring import Scorer

log = logging.getLogger(__name__)

RATIOS_DOC: dict[str, str] = {
    "ort_vs_torch_backbone": (
        "p50 of the torch-eager backbone call / p50 of the onnxruntime backbone call, batch 1, on the same "
        "preprocessed image, interleaved, each with the thread settings of the pipeline (see threads); > 1 means "
        "onnxruntime is that many times faster"
    ),
    "cuda_vs_torch_scorer": (
        "p50 of the torch reference scorer / p50 of the CUDA kernel (both k=score_k) on the same embeddings and "
        "memory (default K), interleaved; > 1 means the kernel is that many times faster"
    ),
    "lemo_vs_patchcore_frame": (
        "p50 of a PatchCore frame / p50 of a LeMO frame, interleaved, same backend and input: both run "
        "preprocess + backbone + scoring + anomaly map (sigma of the config) + image score; PatchCore scores "
        "as PatchCore does (nearest neighbour, k=1, over its bank of raw patch features, the image score re-weighted "
        "over 9 bank neighbours, nearest-upsampled map), LeMO by its "
        "adapter + memory of K items (default config, top-k scorer, the frozen Inspector step: no online "
        "update); PatchCore's scoring runs on as many torch threads as LeMO's search (threads.knn_search); "
        "> 1 means LeMO is that many times faster"
    ),
    "lemo_vs_patchcore_score": (
        "the same interleaved frames, scoring only: p50 of PatchCore's nearest-neighbour search / p50 of "
        "LeMO's score (adapter + nearest memory, the score part of its step), excluding the shared preprocess, "
        "backbone and map"
    ),
    "lemo_vs_patchcore_frame_full_bank": (
        "as lemo_vs_patchcore_frame, with a PatchCore bank of 10% of all training patches (its real size; "
        "items drawn at random since only the bank size sets the cost), 1 warm-up and fewer iterations "
        "(such a frame takes long)"
    ),
    "default_vs_exact_frame": (
        "p50 of a full frame with the online update searching exactly (the torch reference scorer) / p50 of the "
        "same frame searching as the config says (its knn backend), interleaved, same backend, input and primed "
        "memory; only when the config's search is not the exact one; > 1 means the default is that many times faster"
    ),
    "update_overhead": (
        "p50 of a full frame with the gated online update (Inspector step) / p50 of the same frame without it "
        "(the frozen step), same model, interleaved: how many times the cost of a frame the update makes it"
    ),
}


# -- the run ----------------------------------------------------------------------------------------------------------


class _Backends:
    """Lazily created feature backends per (name, size); failures are recorded, not raised."""

    def __init__(self, config: BenchConfig, device: torch.device, extractor: Any) -> None:
        from lemo_edge.runtime.backends import backend_status

        self.config = config
        self.device = device
        self.extractor = extractor
        self._made: dict[tuple[str, int | tuple[int, int]], Any] = {}
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

    def get(self, name: str, size: int | tuple[int, int]) -> Any | None:
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
                    name, backbone=self.config.model.backbone, size=size_hw(size), device=str(self.device)
                )
        except (MissingDependencyError, BackendUnavailableError, LemoError, RuntimeError) as err:
            log.warning("bench: backend %s at %s unavailable: %s", name, size_text(size), err)
            self.status[name] = f"failed at {size_key(size)}: {err}"
            if name in self.names:
                self.names.remove(name)
        self._made[key] = backend
        return backend


def primary_scorer(config: BenchConfig, scorers: Mapping[str, MatrixScorer]) -> str:
    """The column of ``frame_p50_ms`` and the ratios: the config's own search (``knn`` when the config names an
    index and the memory is on the CPU), else the torch reference (``torch``, what an exact memory runs)."""
    return "knn" if config.model.knn != "exact" and "knn" in scorers else "torch"


def _scorers(config: BenchConfig, device: torch.device) -> tuple[dict[str, MatrixScorer], dict[str, str]]:
    """The scorers of the matrix: ``torch`` (k = score_k), ``knn`` (the config's own index when it names one,
    else the faiss-ivf index when faiss is installed) and ``cuda`` (the CUDA kernel, k = score_k) where it loads."""
    from lemo_edge.runtime.scorers import CudaMemoryScorer, TorchMemoryScorer

    k = config.model.score_k
    scorers = {"torch": MatrixScorer("torch", TorchMemoryScorer(k), k, f"torch reference, k={k}")}
    status: dict[str, str] = {}
    if config.model.method == "coreset" and config.model.knn != "exact" and device.type == "cpu":
        scorers["knn"] = index_search(k, config.model.knn)
    elif config.model.method == "coreset" and device.type == "cpu":
        from lemo_edge.knn import available_backends

        if "faiss-ivf" in available_backends():
            scorers["knn"] = index_search(k)
        else:
            status["knn"] = "unavailable: faiss-cpu not installed (pip install 'lemo-edge[knn]')"
    status.update({name: s.description for name, s in scorers.items()})
    if device.type == "cuda":
        try:
            scorers["cuda"] = MatrixScorer("cuda", CudaMemoryScorer(device, k), k, f"CUDA kernel, k={k}")
            status["cuda"] = scorers["cuda"].description
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
        self.sync = device_sync(self.device)
        self.frames: JpegFrames | None = None
        self._pools: dict[tuple[str, int | tuple[int, int]], torch.Tensor] = {}
        self.prefill: JpegFrames | None = None

    def model_config(self, size: int | tuple[int, int], **changes: Any) -> ModelConfig:
        return self.config.model.replace(size=size, **changes)

    def pipeline(
        self, backend: Any, size: int | tuple[int, int], scorer: Scorer | None, batch: int = 1, **changes: Any
    ) -> FramePipeline:
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
            "knn_search_policy": (
                "int8/bf16 search: query blocks split among min(4, physical cores) Python threads of one torch "
                "thread each, when torch runs one thread (lemo_edge.knn); PatchCore's scoring gets as many"
            ),
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
        patches = min(h * w for h, w in map(size_hw, config.sizes)) // spec.stride**2
        run.prefill = JpegFrames(
            max(1, min(16, math.ceil(1.1 * max_k / patches))), config.source_hw, config.seed, start=1000
        )
        result["input"] = {
            "source": f"synthetic frames (seed {config.seed}) JPEG-encoded with cv2.imencode",
            "source_hw": list(config.source_hw),
            "jpeg_quality": run.frames.quality,
            "distinct_frames": len(run.frames),
            "jpeg_bytes_mean": float(np.mean([b.size for b in run.frames.encoded])),
            "preprocess": "cv2.imdecode + BGR->RGB + cv2.resize INTER_AREA + copy into a (B, 3, H, W) uint8 tensor",
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
        primary_key = size_key(config.primary_size)
        main = primary_scorer(config, scorers)
        primary = [e for e in matrix if e["size"] == primary_key and e["batch"] == 1 and e["scorer"] == main]
        if not primary:
            raise BackendUnavailableError("bench: no backend could run the primary configuration")
        fastest = min(primary, key=lambda e: e["frame"]["p50"])
        result["per_backend"] = {
            e["backend"]: {s: {"p50": v["p50"], "p99": v["p99"]} for s, v in {**e["stages"], FRAME: e["frame"]}.items()}
            for e in primary
        }
        result["frame_p50_ms"] = fastest["frame"]["p50"]
        result["frame_p50_doc"] = (
            f"p50 of one full frame (preprocess to online update) at {size_text(config.primary_size)}, "
            f"batch 1, the model config given (K={config.model.memory_size}, top-{config.model.score_k}, "
            f"search: {scorers[main].description}), on the backend whose frame p50 is lowest"
        )
        result["frame_p50_backend"] = fastest["backend"]
        fastest_backend = backends.get(fastest["backend"], config.primary_size)

        ratios, details, patchcore = _ratios(run, backends, scorers, fastest_backend)
        result["ratios"] = ratios
        result["ratios_doc"] = {k: RATIOS_DOC[k] for k in ratios}
        result["ratio_details"] = details
        result["patchcore"] = patchcore
        result["threads"]["knn_search"] = details["lemo_vs_patchcore_frame"]["search_threads"]  # as measured

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


def _entry(run: _Run, pipe: FramePipeline, backend_name: str, scorer: MatrixScorer, batch: int) -> dict[str, Any]:
    config = run.config
    warmup, iters = (config.warmup, config.frames) if batch == 1 else (config.batch_warmup, config.batch_frames)
    with MemoryPeak(run.device) as peak:
        times = measure_stages(pipe.stages(update=True), warmup=warmup, iters=iters, sync=run.sync)
    frame = summarize(times[FRAME])
    return {
        "backend": backend_name,
        "scorer": scorer.name,
        "size": size_key(pipe.config.size),
        "batch": batch,
        "memory_size": pipe.config.memory_size,
        "memory_items": int(pipe.model.memory.items.shape[0]),
        "score_k": scorer.k,
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


def _matrix(run: _Run, backends: _Backends, scorers: Mapping[str, MatrixScorer]) -> list[dict[str, Any]]:
    config = run.config
    entries = []
    for size in config.sizes:
        for name in list(backends.names):
            backend = backends.get(name, size)
            if backend is None:
                continue
            for scorer_name, scorer in scorers.items():
                for batch in config.batches:
                    run.progress(f"matrix: {name} x {scorer_name} scorer, {size_text(size)}, batch {batch}")
                    pipe = run.pipeline(backend, size, scorer.scorer, batch, **scorer.config_changes)
                    entries.append(_entry(run, pipe, name, scorer, batch))
    return entries


def _ratios(
    run: _Run, backends: _Backends, scorers: Mapping[str, MatrixScorer], fastest: Any
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
            run.progress(f"ratio: onnxruntime vs torch backbone, {size_text(s)}")
            assert run.frames is not None
            image = torch.from_numpy(run.frames.decode(0, s)).permute(2, 0, 1)[None].contiguous()
            times = interleave(
                {
                    "torch": [("backbone", bound_stage(tb, image))],
                    "onnxruntime": [("backbone", bound_stage(ob, image))],
                },
                **iters,
            )
            by_size[str(size_key(s))] = ratio(times["torch"]["backbone"], times["onnxruntime"]["backbone"])
        if str(size_key(size)) in by_size:
            ratios["ort_vs_torch_backbone"] = by_size[str(size_key(size))]["value"]
            details["ort_vs_torch_backbone"] = {**by_size[str(size_key(size))], "by_size": by_size}

    main = scorers[primary_scorer(config, scorers)]
    pipe = run.pipeline(fastest, size, main.scorer, **main.config_changes)
    if "cuda" in scorers:
        run.progress("ratio: CUDA vs torch scorer")
        with torch.no_grad():
            emb = pipe.model.embed(pipe.backbone(pipe.preprocess(0)))
        z = emb.reshape(-1, emb.shape[-1]).contiguous()
        items = pipe.model.memory.items.detach().contiguous()
        ref, cuda = _torch_scorer(scorers["cuda"].k), scorers["cuda"].scorer
        assert cuda is not None
        times = interleave(
            {"torch": [("score", lambda _i: ref(z, items))], "cuda": [("score", lambda _i: cuda(z, items))]}, **iters
        )
        r = ratio(times["torch"]["score"], times["cuda"]["score"])
        ratios["cuda_vs_torch_scorer"] = r["value"]
        details["cuda_vs_torch_scorer"] = {**r, "n_patches": z.shape[0], "memory_items": items.shape[0]}

    if main.name != "torch":
        run.progress("ratio: the config's search vs the exact one, full frame with update")
        exact = run.pipeline(fastest, size, scorers["torch"].scorer)
        times = interleave({"exact": exact.stages(True), "default": pipe.stages(True)}, **iters)
        r = ratio(times["exact"][FRAME], times["default"][FRAME])
        ratios["default_vs_exact_frame"] = r["value"]
        details["default_vs_exact_frame"] = {**r, "search": main.description}

    run.progress("ratio: update overhead")
    times = interleave({"with_update": pipe.stages(True), "without_update": pipe.stages(False)}, **iters)
    r = ratio(times["with_update"][FRAME], times["without_update"][FRAME])
    ratios["update_overhead"] = r["value"]
    details["update_overhead"] = {**r, "update_p50_ms": statistics.median(times["with_update"]["update"])}

    run.progress("PatchCore bank")
    bank, patchcore = build_patchcore_bank(config, pipe)
    run.progress(f"ratio: LeMO vs PatchCore frame (bank {bank.shape[0]} items)")
    lemo, pc = lemo_vs_patchcore(pipe, bank, config.ratio_warmup, config.ratio_iters, run.sync)
    ratios["lemo_vs_patchcore_frame"] = pc["frame"]["value"]
    ratios["lemo_vs_patchcore_score"] = pc["score"]["value"]
    details["lemo_vs_patchcore_frame"] = {
        **pc["frame"],
        "bank_size": bank.shape[0],
        "lemo_k": lemo,
        "search_threads": search_threads(pipe.model),
    }
    details["lemo_vs_patchcore_score"] = pc["score"]
    if config.patchcore_full_bank and patchcore.get("patches_total"):
        total = int(patchcore["patches_total"] * config.patchcore_fraction)
        run.progress(f"ratio: LeMO vs PatchCore frame, full-size bank ({total} items)")
        full = patchcore.pop("_all_patches_sample")(total)
        warmup, iters = min(1, config.ratio_warmup), max(3, config.ratio_iters // 5)
        _lemo, pcf = lemo_vs_patchcore(pipe, full, warmup, iters, run.sync)
        ratios["lemo_vs_patchcore_frame_full_bank"] = pcf["frame"]["value"]
        details["lemo_vs_patchcore_frame_full_bank"] = {**pcf["frame"], "bank_size": full.shape[0]}
    patchcore.pop("_all_patches_sample", None)
    return ratios, details, patchcore


def _scale(
    run: _Run,
    backends: _Backends,
    scorers: Mapping[str, MatrixScorer],
    fastest: Any,
    matrix: list[dict[str, Any]],
) -> dict[str, Any]:
    config = run.config
    device = run.device
    size = config.primary_size
    spec = fastest.spec
    h, w = size_hw(size)
    n = (h // spec.stride) * (w // spec.stride)
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
        variants["cuda"] = scorers["cuda"].scorer
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
            t = summarize(measure_stages([("backbone", bound_stage(backend, image))], **timing)["backbone"])
            size_rows.append(
                {"component": f"backbone {name}", "size": s, "p50_ms": t["p50"], "p99_ms": t["p99"], "samples": t["n"]}
            )
        for e in matrix:
            if e["size"] == s and e["batch"] == 1 and e["scorer"] == primary_scorer(config, scorers):
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
            # the memory's own search (what the config's ``knn`` says), as a user's run would search
            pipe = run.pipeline(fastest, size, None, memory_size=k, score_k=top)
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
        "size": size_key(size),
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
    entries = [e for e in matrix if e["size"] == size_key(size) and e["batch"] == 1]
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
    big, small, most = TARGET_K_SCALING
    top = result["config"]["model"]["score_k"]
    at = {r["k"]: r["frame_p50_ms"] for r in rows if r["score_k"] == top}
    scaling = at[big] / at[small] if big in at and small in at and at[small] > 0 else None
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
        "k_scaling": {
            "k": big,
            "of_k": small,
            "score_k": top,
            "target": most,
            "measured": scaling,
            "met": scaling is not None and scaling <= most,
            "doc": f"frame p50 at K={big} / frame p50 at K={small} (top-{top}, full frame with update, the memory's "
            "own search; not interleaved: measured one K after the other)",
        },
    }
