"""The benchmark harness itself (lemo_edge.runtime.bench): timing, statistics, ratios and the results schema.

Wall-clock times are never asserted: the timing primitives run on fake clocks, and the one real run is
a tiny configuration (64 x 64, a few frames, K <= 32) whose results are checked for their shape only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError
from lemo_edge.runtime import bench
from lemo_edge.runtime.bench import (
    FRAME,
    STAGES,
    BenchConfig,
    Timed,
    interleave,
    measure_stages,
    ratio,
    run_stages,
    scorer_cost,
    summarize,
)


class FakeClock:
    """A clock that only moves when a fake stage says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- statistics -------------------------------------------------------------------------------------------------------


def test_summarize_percentiles_of_a_known_distribution() -> None:
    s = summarize([float(v) for v in range(1, 101)])  # 1..100: linear interpolation like numpy
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert (s["mean"], s["min"], s["max"], s["n"]) == (pytest.approx(50.5), 1.0, 100.0, 100)
    shuffled = np.random.default_rng(0).permutation(np.arange(1, 101, dtype=float))
    assert summarize(list(shuffled)) == s  # order does not matter


def test_summarize_rejects_no_values() -> None:
    with pytest.raises(InputError, match="summarize: expected at least one latency, got none"):
        summarize([])


def test_ratio_from_fake_timings() -> None:
    r = ratio([4.0, 6.0, 5.0], [2.0, 2.0, 2.0])
    assert r["value"] == pytest.approx(2.5)  # median 5 / median 2
    assert r["paired_median"] == pytest.approx(2.5)  # median of 2, 3, 2.5
    assert (r["numerator_p50_ms"], r["denominator_p50_ms"], r["n"]) == (5.0, 2.0, 3)
    assert np.isnan(ratio([1.0, 2.0], [1.0])["paired_median"])  # unpaired lists: no paired ratio


def test_ratio_errors_say_what_was_expected() -> None:
    with pytest.raises(InputError, match="ratio: expected latencies on both sides, got 0 and 1"):
        ratio([], [1.0])
    with pytest.raises(InputError, match="ratio: expected a positive denominator median, got 0"):
        ratio([1.0], [0.0])


# -- timing -----------------------------------------------------------------------------------------------------------


def test_warmup_is_excluded_from_the_measurement() -> None:
    clock = FakeClock()

    def slow_first(i: int) -> int:  # the first three calls take a second, later ones 1 ms
        clock.advance(1.0 if i < 3 else 0.001)
        return i

    def steady(i: int) -> int:
        clock.advance(0.002)
        return i

    stages = [("first", slow_first), ("second", steady)]
    times = measure_stages(stages, warmup=3, iters=5, clock=clock)
    assert times["first"] == pytest.approx([1.0] * 5)
    assert times["second"] == pytest.approx([2.0] * 5)
    assert times[FRAME] == pytest.approx([3.0] * 5)

    clock.now, clock.reads = 0.0, 0
    calls_before = 0  # the same stages without a warm-up record the slow calls
    no_warmup = measure_stages(stages, warmup=calls_before, iters=5, clock=clock)
    assert no_warmup["first"] == pytest.approx([1000.0] * 3 + [1.0] * 2)


def test_stages_are_chained_and_the_first_gets_the_iteration_index() -> None:
    seen: list[int] = []
    stages = [("a", lambda i: seen.append(i) or i * 10), ("b", lambda x: x + 1)]
    measure_stages(stages, warmup=2, iters=3, clock=FakeClock())
    assert seen == [0, 1, 2, 3, 4]
    times = run_stages([("a", lambda i: i + 1), ("b", lambda x: x * 2)], 4, clock=FakeClock())
    assert set(times) == {"a", "b", FRAME}


def test_sync_runs_before_every_clock_read_after_a_stage() -> None:
    events: list[str] = []
    clock = FakeClock()

    def read() -> float:
        events.append("clock")
        return clock()

    stages = [("a", lambda i: events.append("a")), ("b", lambda x: events.append("b"))]
    run_stages(stages, 0, sync=lambda: events.append("sync"), clock=read)
    assert events == ["clock", "a", "sync", "clock", "b", "sync", "clock"]


def test_budget_stops_after_the_minimum_iterations() -> None:
    clock = FakeClock()

    def stage(i: int) -> int:
        clock.advance(1.0)
        return i

    times = measure_stages([("s", stage)], warmup=1, iters=100, clock=clock, budget_s=0.5, min_iters=3)
    assert len(times["s"]) == 3


def test_measure_rejects_bad_iteration_counts() -> None:
    with pytest.raises(InputError, match="measure: expected warmup >= 0 and iters >= 1, got warmup=0, iters=0"):
        measure_stages([("s", lambda i: i)], warmup=0, iters=0)
    with pytest.raises(InputError, match="interleave: expected at least one contender, got none"):
        interleave({}, warmup=0, iters=1)
    with pytest.raises(InputError, match="interleave: expected warmup >= 0 and iters >= 1, got warmup=-1, iters=1"):
        interleave({"a": [("s", lambda i: i)]}, warmup=-1, iters=1)


def test_interleave_alternates_the_order_and_gives_the_right_ratio() -> None:
    clock = FakeClock()
    calls: list[tuple[int, str]] = []

    def contender(name: str, seconds: float) -> list[bench.Stage]:
        def run(i: int) -> int:
            calls.append((i, name))
            clock.advance(seconds)
            return i

        return [("work", run)]

    times = interleave(
        {"slow": contender("slow", 0.003), "fast": contender("fast", 0.001)}, warmup=2, iters=4, clock=clock
    )
    assert [name for _i, name in calls] == ["slow", "fast", "fast", "slow"] * 3  # A B, B A, ...
    assert [i for i, _ in calls] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert len(times["slow"]["work"]) == len(times["fast"][FRAME]) == 4  # warm-up excluded
    assert ratio(times["slow"][FRAME], times["fast"][FRAME])["value"] == pytest.approx(3.0)


def test_a_timed_stage_is_recorded_as_its_parts() -> None:
    clock = FakeClock()
    received: list[int] = []

    def step(i: int) -> Timed:  # times its own parts, like an Inspector step
        clock.advance(0.004)
        return Timed(i + 1, {"score": 1.5, "map": 0.5, "update": 2.0})

    def pre(i: int) -> int:
        clock.advance(0.001)
        return i

    stages = [("pre", pre), ("step", step), ("post", lambda x: received.append(x))]
    times = run_stages(stages, 4, clock=clock)
    assert times == pytest.approx({"pre": 1.0, "score": 1.5, "map": 0.5, "update": 2.0, "post": 0.0, FRAME: 5.0})
    assert received == [5]  # the next stage gets the value, not the Timed
    measured = measure_stages(stages, warmup=1, iters=3, clock=clock)
    assert set(measured) == {"pre", "score", "map", "update", "post", FRAME} and len(measured["update"]) == 3
    both = interleave({"a": stages, "b": stages[:1]}, warmup=0, iters=2, clock=clock)
    assert set(both["a"]) == set(measured) and set(both["b"]) == {"pre", FRAME}


# -- costs, memory, environment ---------------------------------------------------------------------------------------


def test_scorer_cost_formula() -> None:
    c = scorer_cost(n=1024, k=8192, d=152)
    assert c["flops"] == 2 * 1024 * 8192 * 152
    assert c["bytes"] == 1024 * 152 * 4 + 8192 * 152 * 4 + 1024 * 12
    assert c["bytes_materialised"] == c["bytes"] + 2 * 1024 * 8192 * 4


def test_achieved_fraction_of_peak() -> None:
    a = bench.achieved(2e9, 1e9, 100.0, {"matmul_gflops": 40.0, "memcpy_gbs": 20.0})
    assert a["gflops"] == pytest.approx(20.0) and a["fraction_of_peak_flops"] == pytest.approx(0.5)
    assert a["gbs"] == pytest.approx(10.0) and a["fraction_of_peak_bandwidth"] == pytest.approx(0.5)


def test_peak_host_memory_grows_with_an_allocation() -> None:
    before = bench.peak_host_memory_mb()
    assert before is not None and before > 0
    with bench.MemoryPeak(torch.device("cpu")) as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    assert peak.host_mb is not None and peak.host_mb >= 64
    assert peak.host_scope in ("block", "process lifetime")


def test_machine_name_is_a_slug() -> None:
    assert bench.slugify("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13-64-core-processor"
    assert bench.machine_name(torch.device("cpu")).startswith("cpu-")


def test_jpeg_frames_decode_to_the_input_size() -> None:
    frames = bench.JpegFrames(2, source_hw=(48, 64))
    image = frames.decode(3, 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    with pytest.raises(InputError, match=r"frames: expected count >= 1 and sides >= 32, got 0 frames of \(48, 64\)"):
        bench.JpegFrames(0, source_hw=(48, 64))


def test_jpeg_frames_decode_to_height_by_width() -> None:
    image = bench.JpegFrames(2, source_hw=(48, 64)).decode(0, (32, 96))
    assert image.shape == (32, 96, 3)  # cv2 takes (W, H): a swap gives (96, 32, 3)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(InputError, match=r"primary_size: expected one of sizes \[224\], got 256"):
        BenchConfig(sizes=(224,))
    with pytest.raises(InputError, match=r"^sizes: expected H and W positive multiples of 32, got 100$"):
        BenchConfig(sizes=(100,), primary_size=100)
    with pytest.raises(InputError, match=r"^sizes: expected H and W positive multiples of 32, got 250x256$"):
        BenchConfig(sizes=("250x256",), primary_size=256)
    with pytest.raises(InputError, match=r"primary_size: expected one of sizes \[\(256, 640\)\], got \(640, 256\)"):
        BenchConfig(sizes=("256x640",), primary_size="640x256")
    assert BenchConfig(sizes=("256x640", 256), primary_size=[256, 640]).primary_size == (256, 640)
    with pytest.raises(InputError, match="device: expected 'cpu' or 'cuda', got 'tpu'"):
        BenchConfig(device="tpu")
    with pytest.raises(InputError, match=r"batches: expected positive batch sizes including 1, got \[8\]"):
        BenchConfig(batches=(8,))
    with pytest.raises(InputError, match="patchcore_selection: expected 'kcenter' or 'random', got 'all'"):
        BenchConfig(patchcore_selection="all")
    quick = BenchConfig.quick_preset()
    assert quick.quick and quick.sizes == (256,) and quick.primary_size == 256


# -- the pipeline: the Inspector's step --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_backend() -> object:
    from lemo_edge.backbone import create_feature_extractor
    from lemo_edge.runtime.backends import TorchFeatureExtractor

    return TorchFeatureExtractor(create_feature_extractor(), "cpu")


def _pipeline(backend: object, batch: int = 1, scorer: object = None, **changes: object) -> bench.FramePipeline:
    frames = bench.JpegFrames(2, source_hw=(48, 64))
    config = ModelConfig(size=64, memory_size=32).replace(**changes)
    pipe = bench.FramePipeline(backend, config, scorer, frames, torch.device("cpu"), batch)
    pipe.prime(pipe.embeddings(bench.JpegFrames(2, source_hw=(48, 64), start=1000)))
    return pipe


def test_the_pipeline_scores_and_learns_through_the_inspector(torch_backend: object) -> None:
    pipe = _pipeline(torch_backend)
    memory = pipe.model.memory
    assert 0 < memory.items.shape[0] <= 32 and memory.coverage_radius > 0  # primed: full, then merged
    assert (pipe.updates, pipe.observed) == (0, 0)  # priming is not counted
    assert [name for name, _ in pipe.stages(True)] == ["preprocess", "backbone", "step"]

    features = pipe.backbone(pipe.preprocess(0))
    _maps, expected = pipe.inspector.score(features)  # the batch scoring of the same memory
    seen = pipe.updater.stats.seen
    timed = pipe.step(features)
    assert set(timed.parts_ms) == {"score", "map", "update"} and all(v >= 0 for v in timed.parts_ms.values())
    assert pipe.last is not None and pipe.last.score == pytest.approx(float(expected[0]), rel=1e-5)
    assert pipe.updater.stats.seen == seen + 1 and pipe.observed == 1 and timed.value == int(pipe.last.learned)

    items = memory.items.clone()
    frozen = pipe.step_frozen(features)
    assert pipe.last.reason == "frozen" and frozen.value == 0
    assert pipe.updater.stats.seen == seen + 1 and pipe.observed == 1  # the frozen step never learns
    assert torch.equal(memory.items, items)


def test_a_non_square_pipeline_preprocesses_to_h_by_w_and_steps(torch_backend: object) -> None:
    pipe = _pipeline(torch_backend, size="64x96")
    images = pipe.preprocess(0)
    assert images.shape == (1, 3, 64, 96) and pipe.model.grid == (8, 12)
    pipe.step(pipe.backbone(images))
    assert pipe.last is not None and pipe.last.map.shape == (64, 96) and pipe.observed == 1


def test_a_batch_is_stepped_frame_by_frame(torch_backend: object) -> None:
    pipe = _pipeline(torch_backend, batch=2)
    seen = pipe.updater.stats.seen
    times = run_stages(pipe.stages(True), 0)
    assert set(times) == {*STAGES, FRAME}
    assert pipe.updater.stats.seen == seen + 2 and pipe.observed == 2


def test_matrix_scorers_reach_the_memory(torch_backend: object) -> None:
    from lemo_edge.runtime.scorers import TorchMemoryScorer

    scorer = TorchMemoryScorer(3)
    assert _pipeline(torch_backend, scorer=scorer).model.memory.scorer is scorer
    knn = bench.index_search(3, backend="faiss-ivf")  # faiss-cpu: a dev dependency
    memory = _pipeline(torch_backend, scorer=knn.scorer, **knn.config_changes).model.memory
    assert knn.scorer is None and memory.scorer is None and memory.index is not None  # searches by its index


# -- CLI --------------------------------------------------------------------------------------------------------------


def test_cli_registers_bench_and_builds_the_quick_config(tmp_path: Path) -> None:
    from lemo_edge.runtime.bench.cli import config_from_args, run
    from lemo_edge.runtime.main import build_parser

    args = build_parser().parse_args(
        ["bench", "--quick", "--json", str(tmp_path / "b.json"), "--device", "cpu", "--threads", "1"]
    )
    assert args.func is run
    config = config_from_args(args)
    assert config.quick and config.device == "cpu" and config.threads == 1 and config.sizes == (256,)

    missing = build_parser().parse_args(["bench", "--patchcore-data", str(tmp_path / "nope")])
    with pytest.raises(InputError, match="--patchcore-data: expected a dataset folder or manifest, got"):
        config_from_args(missing)


def test_cli_size_measures_one_shape_and_a_bad_one_is_named() -> None:
    from lemo_edge.runtime.bench.cli import config_from_args
    from lemo_edge.runtime.main import build_parser, main

    config = config_from_args(build_parser().parse_args(["bench", "--quick", "--device", "cpu", "--size", "64x128"]))
    assert config.sizes == ((64, 128),) and config.primary_size == (64, 128)
    assert config_from_args(build_parser().parse_args(["bench", "--device", "cpu", "--size", "320"])).sizes == (320,)
    assert main(["bench", "--device", "cpu", "--size", "250x256"]) == 2


def test_cli_rejects_a_bad_device() -> None:
    from lemo_edge.runtime.main import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--device", "tpu"])
    assert exc.value.code == 2


# -- a tiny real run: the results schema ------------------------------------------------------------------------------


def _tiny_config() -> BenchConfig:
    return BenchConfig(
        model=ModelConfig(size=64, memory_size=32),
        sizes=(64,),
        primary_size=64,
        batches=(1, 2),
        threads=1,
        warmup=1,
        frames=3,
        batch_warmup=0,
        batch_frames=2,
        ratio_warmup=1,
        ratio_iters=3,
        scale_k=(8, 16),
        scale_d=(16,),
        scale_sizes=(64,),
        scale_warmup=0,
        scale_iters=2,
        scale_budget_s=None,
        source_hw=(48, 64),
        source_frames=2,
        patchcore_synthetic_images=3,
        patchcore_subsample=100,
        peak_matmul_n=64,
        peak_copy_mb=1,
        peak_reps=2,
    )


def test_tiny_bench_writes_the_results_schema(tmp_path: Path) -> None:
    config = _tiny_config()
    result = bench.run_bench(config)
    files = bench.write_results(result, tmp_path / "results", tmp_path / "copy" / "b.json")
    stem = bench.results_stem(result)
    assert files["json"] == tmp_path / "results" / f"{stem}.json"
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0
    assert {p.suffix for p in files.values()} == {".json", ".md", ".png"}
    data = json.loads(files["json"].read_text(encoding="utf-8"))
    assert json.loads(files["json_copy"].read_text(encoding="utf-8")) == data

    for key in ("environment", "threads", "peaks", "matrix", "per_backend", "ratios", "ratios_doc", "scale", "limits"):
        assert key in data, key
    env = data["environment"]
    assert {"cpu_model", "usable_cpus", "versions"} <= set(env) and "torch" in env["versions"]
    assert len(data["load_average"]["start"]) == 3 and data["threads"]["torch"] == 1
    assert data["threads"]["knn_search"] == data["ratio_details"]["lemo_vs_patchcore_frame"]["search_threads"] >= 1

    backends = {"torch", "onnxruntime"}  # onnxruntime is a hard dependency
    assert set(data["per_backend"]) == backends
    for stages in data["per_backend"].values():
        assert set(stages) == {*STAGES, FRAME}
        assert all(v["p50"] > 0 and v["p99"] >= v["p50"] for v in stages.values())
    for entry in data["matrix"]:
        assert entry["frame"]["n"] == (config.frames if entry["batch"] == 1 else config.batch_frames)
        assert entry["fps"] > 0 and entry["peak_host_mb"] > 0
    assert {(e["backend"], e["batch"]) for e in data["matrix"]} == {(b, n) for b in backends for n in (1, 2)}

    required = {"lemo_vs_patchcore_frame", "update_overhead", "ort_vs_torch_backbone"}
    assert required <= set(data["ratios"])
    assert set(data["ratios_doc"]) == set(data["ratios"])
    assert all(v > 0 for v in data["ratios"].values())
    assert data["frame_p50_ms"] == min(data["per_backend"][b]["frame"]["p50"] for b in backends)
    assert "synthetic" in data["patchcore"]["source"] and data["patchcore"]["bank_size"] >= 1

    assert {(r["k"], r["score_k"]) for r in data["scale"]["frame_vs_k"]} == {(8, 3), (8, 1), (16, 3), (16, 1)}
    assert {r["d"] for r in data["scale"]["k"]} == {16, 152}
    assert data["limits"]["backbone"]["flops"] > 0 and data["limits"]["scorer"]["d"] == 152
    assert data["targets"]["frame_p50_ms"]["measured_ms"] == data["frame_p50_ms"]
    assert "| backend | scorer |" in files["markdown"].read_text(encoding="utf-8")


def test_tiny_bench_at_a_non_square_size_names_it_h_by_w(tmp_path: Path) -> None:
    config = dataclasses.replace(
        _tiny_config(), model=ModelConfig(size="64x96", memory_size=32), sizes=((64, 96),), primary_size=(64, 96)
    )
    config = dataclasses.replace(config, backends=("torch",), batches=(1,))
    result = bench.run_bench(config)
    assert {e["size"] for e in result["matrix"]} == {"64x96"} and result["scale"]["size"] == "64x96"
    assert result["scale"]["n_patches"] == 8 * 12 and "at 64x96" in result["frame_p50_doc"]
    files = bench.write_results(result, tmp_path / "results", None, plots=False)
    assert "at 64x96" in files["markdown"].read_text(encoding="utf-8")


def test_primary_column_is_the_configs_own_search() -> None:
    """frame_p50_ms and the ratios time the search the config names: the index's column, else the reference."""
    from lemo_edge.runtime.bench.run import _scorers, primary_scorer

    cpu = torch.device("cpu")
    config = BenchConfig(model=ModelConfig(knn="bf16"))
    scorers, status = _scorers(config, cpu)
    assert primary_scorer(config, scorers) == "knn"
    assert scorers["knn"].scorer is None and scorers["knn"].config_changes == {"knn": "bf16"}
    assert "bf16" in status["knn"]
    exact = BenchConfig(model=ModelConfig(knn="exact"))
    scorers, _ = _scorers(exact, cpu)
    assert primary_scorer(exact, scorers) == "torch"


def test_targets_state_the_k_scaling() -> None:
    """Frame at K=32768 over frame at K=8192 (the config's top-k) against its target of at most 2x."""
    from lemo_edge.runtime.bench.run import _targets

    rows = [
        {"k": k, "score_k": top, "frame_p50_ms": ms}
        for k, top, ms in ((8192, 3, 30.0), (32768, 3, 75.0), (8192, 1, 10.0), (32768, 1, 15.0))
    ]
    result = {
        "frame_p50_ms": 30.0,
        "frame_p50_backend": "onnxruntime",
        "config": {"model": {"memory_size": 8192, "score_k": 3}},
        "scale": {"frame_vs_k": rows},
        "ratios": {"lemo_vs_patchcore_frame": 2.0},
    }
    scaling = _targets(result)["k_scaling"]
    assert scaling["measured"] == pytest.approx(2.5) and scaling["score_k"] == 3 and not scaling["met"]
    result["scale"]["frame_vs_k"] = rows[:1]
    assert _targets(result)["k_scaling"]["measured"] is None
