"""Tests of lemo_edge.runtime.loop and its parts (stopping, state store, status, summary): the inspection loop
in-process (real backbone, real model, small config)."""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError, StateError
from lemo_edge.model import LemoModel
from lemo_edge.runtime.cli import ModuleBackend
from lemo_edge.runtime.frames import Frame, FrameResult
from lemo_edge.runtime.loop import InspectionLoop, LoopOptions
from lemo_edge.runtime.sinks import EventsSink
from lemo_edge.runtime.sources import SourceStats, open_source
from lemo_edge.runtime.state_store import StateStore, move_updater
from lemo_edge.runtime.status import StatusLine
from lemo_edge.runtime.stopping import StopFlag
from lemo_edge.runtime.summary import RunSummary
from lemo_edge.scoring import Nearest, nearest_memory
from lemo_edge.state import load_state
from lemo_edge.synthetic import synthetic_sample
from lemo_edge.tiling import TileSpec
from lemo_edge.updater import OnlineUpdater

SIZE = 64
CONFIG = ModelConfig(size=SIZE, memory_size=256, warmup=4)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread, as ``lemo-edge run`` uses on 2 cores: spinning OpenMP workers stall beside other work."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def backend(extractor) -> ModuleBackend:
    return ModuleBackend(extractor, torch.device("cpu"))


def _updater(backend: ModuleBackend, config: ModelConfig = CONFIG) -> OnlineUpdater:
    return OnlineUpdater(LemoModel(config, backend.spec))


def _frame(i: int, defect: bool = False, image: np.ndarray | None = None) -> Frame:
    sample = synthetic_sample(0, i, size=SIZE, defect=defect)
    return Frame(
        image=sample.image if image is None else image,
        index=i,
        timestamp=time.time(),
        label=int(defect),
        name=sample.name,
    )


class ListSource:
    """A finite source handing out prepared frames (for frames no real source would let through)."""

    live = False

    def __init__(self, frames: list[Frame]) -> None:
        self._frames = deque(frames)
        self.exhausted = False
        self.stats = SourceStats()

    def read(self, timeout: float = 1.0) -> Frame | None:
        if not self._frames:
            self.exhausted = True
            return None
        return self._frames.popleft()


class RecordingSink:
    def __init__(self) -> None:
        self.results: list[tuple[Frame, FrameResult]] = []

    def write(self, frame: Frame, result: FrameResult) -> None:
        self.results.append((frame, result))

    def close(self) -> None:
        pass


# -- options, status, summary -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_frames": 0}, "frames: expected >= 1, got 0"),
        ({"save_every": 0}, "save_every: expected >= 1, got 0"),
        ({"read_timeout_s": 0.0}, "read_timeout_s: expected > 0"),
        ({"sink_retry_min_s": 0.0}, "sink_retry_min_s: expected > 0, got 0.0"),
        ({"sink_retry_min_s": 2.0, "sink_retry_max_s": 1.0}, r"sink_retry_max_s: expected >= sink_retry_min_s \(2.0\)"),
    ],
)
def test_options_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        LoopOptions(**kwargs)


def test_status_line_on_a_terminal_is_rate_limited_and_rewritten() -> None:
    stream = io.StringIO()
    status = StatusLine(stream, tty=True, interval_s=0.25)
    assert status.due(1, 100.0)
    status.write("a", 100.0)
    assert not status.due(2, 100.1)
    assert status.due(3, 100.3)
    status.write("b", 100.3)
    status.close()
    assert stream.getvalue() == "\r\x1b[2Ka\r\x1b[2Kb\n"


def test_status_line_elsewhere_writes_plain_lines_every_n_frames() -> None:
    stream = io.StringIO()
    status = StatusLine(stream, tty=False, every=10)
    assert [n for n in range(1, 31) if status.due(n, 0.0)] == [10, 20, 30]
    status.write("frame 10")
    status.close()
    assert stream.getvalue() == "frame 10\n"
    assert not StatusLine(io.StringIO(), tty=False, every=0).due(100, 0.0)


def test_summary_json_has_no_infinities() -> None:
    summary = RunSummary(frames=3, threshold=math.inf, skipped={"unreadable": 2})
    data = summary.to_dict()
    assert data["threshold"] is None and data["skipped_total"] == 2
    json.dumps(data, allow_nan=False)
    assert "skipped 2 (unreadable 2)" in summary.format()
    text = RunSummary(frames=3, nonfinite=1, sink_failures={"VideoSink('a.mp4')": 2}).format()
    assert "; not finite 1" in text and "sink failures: VideoSink('a.mp4') 2" in text
    assert RunSummary(sink_failures={"x": 1}).to_dict()["sink_failures"] == {"x": 1}


# -- state store ------------------------------------------------------------------------------------------------------


def test_state_store_is_exclusive_and_removes_stale_temporaries(tmp_path: Path) -> None:
    stale = tmp_path / ".state.safetensors.abc123.tmp"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"half a save")
    with StateStore(tmp_path) as store:
        assert not stale.exists()
        assert not store.exists() and store.saved_config() is None
        with pytest.raises(StateError, match=r"in use by another lemo-edge run \(pid \d+\)"):
            StateStore(tmp_path)
    StateStore(tmp_path).close()  # released


def test_corrupt_state_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.safetensors").write_bytes(b"\x00" * 64)
    with StateStore(tmp_path) as store, pytest.raises(StateError, match="is not a lemo-edge state file"):
        store.saved_config()


# -- the loop ---------------------------------------------------------------------------------------------------------


def test_loop_decides_learns_saves_and_reports(backend: ModuleBackend, tmp_path: Path) -> None:
    frames = [_frame(i, defect=i % 5 == 4) for i in range(20)]
    sink = RecordingSink()
    events = EventsSink(tmp_path / "events.jsonl")
    with StateStore(tmp_path / "state") as store:
        loop = InspectionLoop(
            ListSource(frames),
            backend,
            _updater(backend),
            [events, sink],
            store=store,
            options=LoopOptions(save_every=4),
        )
        summary = loop.run()
    events.close()
    assert summary.frames == 20 and summary.stopped == "end of input"
    assert summary.labelled == 20 and summary.prequential_auroc is not None
    assert summary.updates == sum(r.updated for _, r in sink.results) == summary.total_updates
    assert summary.anomalies == sum(r.is_anomaly for _, r in sink.results)
    assert summary.saves >= summary.updates // 4
    assert set(summary.latency_ms) == {"preprocess", "backbone", "score", "map", "update", "sinks", "total"}
    assert summary.nonfinite == 0 and summary.sink_failures == {}
    assert summary.threshold < math.inf and any(r.is_anomaly for _, r in sink.results)  # the gate is exercised
    # every frame got the one right answer: judged against the threshold it was given, learned in the warm-up
    # or when judged normal, never otherwise
    for i, (_, result) in enumerate(sink.results):
        warmup = i < CONFIG.warmup
        assert result.is_anomaly == (result.score > result.threshold), i
        assert result.updated == (warmup or result.score <= result.threshold), i
        expected = "warm-up" if warmup else "below threshold" if result.score <= result.threshold else "above threshold"
        assert result.reason == expected, i
        assert result.finite and result.failing_sinks == []
        assert result.anomaly_map is not None and result.anomaly_map.shape == (SIZE, SIZE)
        assert result.anomaly_map.dtype == np.float32
    # the events sink is written last, so its records carry the complete latencies; and the decision's fields
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(records) == 20 and all("total" in r["latency_ms"] and "sinks" in r["latency_ms"] for r in records)
    for record, (_, result) in zip(records, sink.results, strict=True):
        assert record["learned"] == record["updated"] == result.updated and record["reason"] == result.reason
        assert record["finite"] is True and record["failing_sinks"] == []
    saved = load_state(tmp_path / "state", backend.spec, CONFIG)
    assert saved.stats.updates == summary.total_updates


def test_freeze_never_updates(backend: ModuleBackend, tmp_path: Path) -> None:
    updater = _updater(backend)
    sink = RecordingSink()
    loop = InspectionLoop(
        ListSource([_frame(i) for i in range(6)]), backend, updater, [sink], options=LoopOptions(freeze=True)
    )
    summary = loop.run()
    assert summary.frames == 6 and summary.updates == 0 and updater.stats.seen == 0
    assert not any(r.updated for _, r in sink.results)


def test_bad_frames_are_skipped_counted_and_the_loop_goes_on(
    backend: ModuleBackend, caplog: pytest.LogCaptureFixture
) -> None:
    good = [_frame(i) for i in range(6)]
    bad = [
        _frame(90, image=np.zeros((SIZE, SIZE, 3), np.float32)),
        _frame(91, image=np.zeros((SIZE, SIZE), np.uint8)),
        _frame(92, image=np.zeros((SIZE, SIZE, 3), np.float32)),
    ]
    big = _frame(93, image=cv2.resize(synthetic_sample(0, 93, size=SIZE).image, (96, 80)))
    sink = RecordingSink()
    loop = InspectionLoop(ListSource(good[:3] + bad + [big] + good[3:]), backend, _updater(backend), [sink])
    with caplog.at_level("WARNING"):
        summary = loop.run()
    assert summary.frames == 7 and summary.skipped == {"preprocess:InputError": 3}
    assert [m for m in caplog.messages if "skipped a frame" in m] == [
        "skipped a frame (preprocess:InputError): frame 90: frame: expected (H, W, 3) uint8, got (64, 64, 3) float32; "
        "further 'preprocess:InputError' skips are only counted"
    ]
    big_frame, big_result = [(f, r) for f, r in sink.results if f.index == 93][0]
    assert big_frame.image.shape == (80, 96, 3)  # the sinks get the frame as it came, the map resized to it
    assert big_result.anomaly_map is not None and big_result.anomaly_map.shape == (80, 96)


def test_stop_flag_ends_the_run_after_the_current_frame(backend: ModuleBackend, tmp_path: Path) -> None:
    flag = StopFlag()
    sink = RecordingSink()

    class StoppingSink(RecordingSink):
        def write(self, frame: Frame, result: FrameResult) -> None:
            super().write(frame, result)
            if len(self.results) == 3:
                flag.set("signal SIGTERM")

    stopping = StoppingSink()
    with StateStore(tmp_path) as store:
        loop = InspectionLoop(
            ListSource([_frame(i) for i in range(10)]),
            backend,
            _updater(backend),
            [sink, stopping],
            store=store,
            stop=flag,
        )
        summary = loop.run()
    assert summary.frames == 3 and summary.stopped == "signal SIGTERM"
    assert summary.saves == 1 and load_state(tmp_path, backend.spec).stats.updates == 3


def test_the_injected_scorer_is_the_one_used(backend: ModuleBackend) -> None:
    """A scorer that adds a constant to the reference shifts every score by it (no position norm in between)."""
    config = CONFIG.replace(position_norm=False)
    updater = _updater(backend, config)
    frames = [_frame(i, defect=i == 9) for i in range(10)]
    InspectionLoop(ListSource(frames[:6]), backend, updater).run()
    offset = 0.5
    calls: list[tuple[int, ...]] = []

    def shifted(z: torch.Tensor, memory: torch.Tensor) -> Nearest:
        calls.append(tuple(z.shape))
        nearest = nearest_memory(z, memory, config.score_k)
        return nearest._replace(score=nearest.score + offset)

    def scores(scorer: object) -> list[float]:
        sink = RecordingSink()
        frozen = LoopOptions(freeze=True)
        InspectionLoop(
            ListSource(frames[6:]), backend, copy.deepcopy(updater), [sink], options=frozen, scorer=scorer
        ).run()
        return [r.score for _, r in sink.results]

    reference, injected = scores(None), scores(shifted)
    assert len(calls) == 4 and all(shape[0] == (SIZE // backend.spec.stride) ** 2 for shape in calls)
    np.testing.assert_allclose(injected, np.asarray(reference) + offset, rtol=1e-5, atol=1e-5)


class FlakySink(RecordingSink):
    """Raises ``OSError(ENOSPC)`` on every write of a frame with ``index < fail_below``; records the attempts."""

    def __init__(self, fail_below: int) -> None:
        super().__init__()
        self.fail_below = fail_below
        self.attempts: list[int] = []

    def write(self, frame: Frame, result: FrameResult) -> None:
        self.attempts.append(frame.index)
        if frame.index < self.fail_below:
            raise OSError(28, "No space left on device")
        super().write(frame, result)


class ClockedSource(ListSource):
    """A :class:`ListSource` whose frames arrive every ``period`` seconds of a fake clock (``source.now``)."""

    def __init__(self, frames: list[Frame], period: float) -> None:
        super().__init__(frames)
        self.period = period
        self.now = 0.0

    def read(self, timeout: float = 1.0) -> Frame | None:
        frame = super().read(timeout)
        if frame is not None:
            self.now = frame.index * self.period
        return frame

    def clock(self) -> float:
        return self.now


def test_a_failing_sink_is_logged_once_counted_retried_with_backoff_and_recovers(
    backend: ModuleBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flaky, after = FlakySink(fail_below=10), RecordingSink()
    events = EventsSink(tmp_path / "events.jsonl")
    source = ClockedSource([_frame(i) for i in range(30)], period=0.5)
    t0 = time.time()
    loop = InspectionLoop(source, backend, _updater(backend), [events, flaky, after], clock=source.clock)
    with caplog.at_level(logging.DEBUG, logger="lemo_edge.runtime.sinks"):
        summary = loop.run()
    events.close()
    assert summary.frames == 30 and summary.stopped == "end of input"
    # fails at t=0, 1 and 3 s (frames 0, 2, 6; backoff 1, 2, 4 s), retried at t=7 s (frame 14) and recovered
    assert flaky.attempts == [0, 2, 6, *range(14, 30)]
    assert [f.index for f, _ in flaky.results] == list(range(14, 30))
    assert [f.index for f, _ in after.results] == list(range(30))  # the other sinks go on
    assert summary.sink_failures == {"FlakySink": 3}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "sink FlakySink failed (OSError: [Errno 28] No space left on device)" in warnings[0]
    assert "retrying after 1 s" in warnings[0] and "further failures of this sink are only counted" in warnings[0]
    assert any("sink FlakySink recovered after 3 failures (14 frames not written to it)" in m for m in caplog.messages)
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(records) == 30
    for record in records:
        i, failing = record["frame"], record["failing_sinks"]
        if i >= 14:
            assert failing == [], i
            continue
        (failure,) = failing
        assert failure["sink"] == "FlakySink" and failure["error"] == "OSError: [Errno 28] No space left on device"
        assert failure["failures"] == (1 if i < 2 else 2 if i < 6 else 3), i
        assert t0 <= failure["since"] <= time.time()
    assert len({r["failing_sinks"][0]["since"] for r in records[:14]}) == 1  # the streak's first failure


def test_a_failing_events_sink_does_not_stop_the_other_sinks(backend: ModuleBackend, tmp_path: Path) -> None:
    events = EventsSink(tmp_path / "events.jsonl")
    events.close()  # every write now raises InputError
    sink = RecordingSink()
    source = ClockedSource([_frame(i) for i in range(8)], period=0.5)
    summary = InspectionLoop(source, backend, _updater(backend), [events, sink], clock=source.clock).run()
    assert summary.frames == 8 and [f.index for f, _ in sink.results] == list(range(8))
    name = repr(events)
    assert summary.sink_failures == {name: 3}  # frames 0, 2 and 6
    assert sink.results[0][1].failing_sinks == []
    failing = sink.results[1][1].failing_sinks
    assert [f["sink"] for f in failing] == [name] and "expected an open events sink" in failing[0]["error"]


def test_a_frame_that_is_not_finite_is_counted_judged_normal_and_not_learned(
    backend: ModuleBackend, tmp_path: Path
) -> None:
    calls = []

    def poisoned(images: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        features = backend(images)
        return features * math.nan if len(calls) == 8 else features

    sink = RecordingSink()
    events = EventsSink(tmp_path / "events.jsonl")
    updater = _updater(backend)
    summary = InspectionLoop(ListSource([_frame(i) for i in range(10)]), poisoned, updater, [sink, events]).run()
    events.close()
    assert summary.frames == 10 and summary.nonfinite == 1 and updater.stats.updates == summary.updates
    bad = sink.results[7][1]
    assert not bad.finite and not bad.updated and not bad.is_anomaly and bad.reason == "not finite"
    assert all(r.finite for i, (_, r) in enumerate(sink.results) if i != 7)
    record = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[7])
    assert record["finite"] is False and record["learned"] is False and record["reason"] == "not finite"
    assert record["score"] is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_the_loop_on_cuda_decides_as_on_the_cpu(extractor) -> None:
    """End to end on ``synthetic://``: model and backbone on CUDA give the CPU run's decisions and scores."""
    uri, n = f"synthetic://?defect_rate=0.2&seed=3&size={SIZE}", 40
    config = CONFIG.replace(threshold_k=2.0)  # a few anomalies among the 40 frames (4 on the CPU)
    allow = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare the math, not TF32
    try:
        runs = {}
        for name in ("cpu", "cuda"):
            device = torch.device(name)
            device_backend = ModuleBackend(copy.deepcopy(extractor), device)
            updater = _updater(device_backend, config)
            move_updater(updater, device)
            sink = RecordingSink()
            with open_source(uri, size=(SIZE, SIZE)) as source:
                summary = InspectionLoop(
                    source, device_backend, updater, [sink], options=LoopOptions(max_frames=n)
                ).run()
            assert summary.frames == n and summary.nonfinite == 0
            runs[name] = [r for _, r in sink.results]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allow
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert [(r.is_anomaly, r.updated, r.reason) for r in cuda] == [(r.is_anomaly, r.updated, r.reason) for r in cpu]
    assert any(r.is_anomaly for r in cpu)
    np.testing.assert_allclose([r.score for r in cuda], [r.score for r in cpu], rtol=1e-4, atol=1e-4)
    for a, b in zip(cuda, cpu, strict=True):
        assert a.anomaly_map is not None and b.anomaly_map is not None
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-4)


class _Camera:
    """A fake live camera: delivers ``ok`` synthetic frames, then fails ``fail`` reads (drops out), then recovers."""

    def __init__(self, ok: int, fail: int) -> None:
        self.ok, self.fail = ok, fail
        self.reads = 0
        self.opens = 0
        self.lock = threading.Lock()

    def factory(self, target: object, api: int) -> _Capture:
        self.opens += 1
        return _Capture(self)


class _Capture:
    def __init__(self, camera: _Camera) -> None:
        self.camera = camera
        self.open = True

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.open

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.005)
        with self.camera.lock:
            n = self.camera.reads
            self.camera.reads += 1
        if self.camera.ok <= n < self.camera.ok + self.camera.fail:
            return False, None
        return True, cv2.cvtColor(synthetic_sample(1, n, size=SIZE).image, cv2.COLOR_RGB2BGR)

    def release(self) -> None:
        self.open = False


def test_live_source_that_drops_out_is_reconnected_and_the_loop_goes_on(backend: ModuleBackend) -> None:
    camera = _Camera(ok=12, fail=3)
    source = open_source("0", size=(SIZE, SIZE), capture_factory=camera.factory)
    try:
        assert source.live
        loop = InspectionLoop(source, backend, _updater(backend), options=LoopOptions(max_frames=30))
        summary = loop.run()
    finally:
        source.close()
    assert summary.frames == 30 and summary.stopped == "frames limit"
    assert summary.reconnects >= 1 and camera.opens >= 2
    assert summary.labelled == 0 and summary.prequential_auroc is None


def _shaped_frame(i: int, shape: tuple[int, int], defect: bool = False) -> Frame:
    sample = synthetic_sample(0, i, size=SIZE, defect=defect, shape=shape, defect_px=(10, 16) if defect else None)
    return Frame(sample.image, i, time.time(), label=int(defect), mask=sample.mask, name=sample.name)


def test_frames_are_resized_to_h_by_w_of_a_non_square_model(backend: ModuleBackend) -> None:
    """A 64x128 (H x W) model: 96 x 192 frames are resized to 64 x 128 for the model (cv2 takes (W, H): a swap
    would feed 128 x 64 inputs, whose features the model refuses, and every frame would be skipped); the sinks get
    the frames as they came, with the map at their 96 x 192 pixels."""
    updater = _updater(backend, CONFIG.replace(size="64x128"))
    sink = RecordingSink()
    frames = [_shaped_frame(i, (96, 192), defect=i % 4 == 3) for i in range(8)]
    summary = InspectionLoop(ListSource(frames), backend, updater, [sink]).run()
    assert summary.frames == 8 and summary.updates > 0 and not summary.skipped
    assert updater.model.grid == (8, 16)
    assert {f.image.shape for f, _ in sink.results} == {(96, 192, 3)}
    assert {r.anomaly_map.shape for _, r in sink.results} == {(96, 192)}


def test_letterbox_keeps_the_frame_and_maps_back_to_its_pixels(backend: ModuleBackend) -> None:
    """A 64x64 letterbox model on 48 x 96 frames: content 32 x 64, padded below; the sinks get the frame as it came
    and the map at its 48 x 96 pixels; padded cells are never learned (masks are letterboxed for the counts)."""
    updater = _updater(backend, CONFIG.replace(letterbox=True))
    sink = RecordingSink()
    frames = [_shaped_frame(i, (48, 96), defect=i % 4 == 3) for i in range(8)]
    summary = InspectionLoop(ListSource(frames), backend, updater, [sink]).run()
    assert summary.frames == 8 and summary.updates > 0 and not summary.skipped
    assert [f.image.shape for f, _ in sink.results] == [(48, 96, 3)] * 8
    assert all(f.image is g.image for (f, _), g in zip(sink.results, frames, strict=True))
    assert {r.anomaly_map.shape for _, r in sink.results} == {(48, 96)}
    assert all(math.isfinite(r.score) for _, r in sink.results)


# -- tiles and a region of interest -----------------------------------------------------------------------------------

TILE_CONFIG = ModelConfig(size=32, memory_size=512, warmup=4, insert_per_image=64)
WIDE = (96, 128)  # (H, W) frames larger than the 32x32 model input


def _wide_frame(i: int, square: tuple[int, int, int] | None = None) -> Frame:
    """A 128x96 synthetic frame; ``square=(x, y, side)`` paints a white square there (an obvious defect)."""
    image = synthetic_sample(0, i, size=64, shape=WIDE).image.copy()
    if square is not None:
        x, y, side = square
        image[y : y + side, x : x + side] = 255
    return Frame(image=image, index=i, timestamp=time.time(), label=int(square is not None))


@pytest.mark.parametrize(
    ("tiling", "square"),
    [
        (TileSpec((32, 32), 8), (70, 40, 10)),
        (TileSpec((32, 32), 8, (16, 8, 96, 80)), (70, 40, 10)),
        (None, (60, 30, 12)),
    ],
    ids=["tiles", "tiles-roi", "resized"],
)
def test_a_run_reports_boxes_in_the_frame_pixels(
    backend: ModuleBackend, tmp_path: Path, tiling: TileSpec | None, square: tuple[int, int, int]
) -> None:
    frames = [_wide_frame(i) for i in range(24)] + [_wide_frame(24, square)]
    sink = RecordingSink()
    events = EventsSink(tmp_path / "events.jsonl")
    updater = _updater(backend, TILE_CONFIG)
    loop = InspectionLoop(ListSource(frames), backend, updater, [sink, events], tiling=tiling)
    summary = loop.run()
    events.close()
    assert summary.frames == 25 and summary.skipped == {}
    if tiling is not None:
        assert updater.model.layout == tiling.layout(WIDE)
    normal = [r for _, r in sink.results[:-1]]
    assert all(r.boxes == [] for r in normal if not r.is_anomaly)
    frame, result = sink.results[-1]
    assert frame.image.shape == (*WIDE, 3) and result.anomaly_map is not None and result.anomaly_map.shape == WIDE
    assert result.is_anomaly and result.boxes
    x, y, w, h, peak = result.boxes[0]
    sx, sy, side = square
    assert x < sx + side and sx < x + w and y < sy + side and sy < y + h  # the box is on the square
    # a box, not the frame: without tiles the 32x32 model sees the frame as 4 x 4 cells, and its smoothed map
    # spreads one cell's defect over most of the frame (measured 104 x 74 of 128 x 96); tiles keep it small
    share = 0.5 if tiling is not None else 0.75
    assert x + w <= WIDE[1] and y + h <= WIDE[0] and w * h < share * WIDE[0] * WIDE[1]
    assert peak == pytest.approx(result.score, rel=1e-3)  # without tiles: the map resized to the frame
    if tiling is not None and tiling.roi is not None:
        rx, ry, rw, rh = tiling.roi
        assert rx <= x and ry <= y and x + w <= rx + rw and y + h <= ry + rh
        outside = np.ones(WIDE, bool)
        outside[ry : ry + rh, rx : rx + rw] = False
        assert float(np.abs(result.anomaly_map[outside]).max()) == 0.0
    record = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert record["decision"] == "anomaly" and record["boxes"][0] == [x, y, w, h, pytest.approx(peak)]


def test_a_source_resizing_for_the_model_leaves_the_frame_and_its_boxes_in_captured_pixels(
    backend: ModuleBackend, tmp_path: Path
) -> None:
    """A folder of 128x96 images opened at the 32x32 model input, as ``lemo-edge run`` opens it without tiles: the
    capture thread resizes each frame for the model (``Frame.resized``), the sinks and events get the frame as
    captured, with the map and the box at its pixels (not at the model's 32 x 32)."""
    square = (60, 30, 12)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(25):
        frame = _wide_frame(i, square if i == 24 else None)
        cv2.imwrite(str(folder / f"f{i:03d}.png"), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    sink = RecordingSink()
    with open_source(str(folder), size=(32, 32)) as source:
        summary = InspectionLoop(source, backend, _updater(backend, TILE_CONFIG), [sink]).run()
    assert summary.frames == 25 and summary.skipped == {}
    frame, result = sink.results[-1]
    assert frame.resized is not None and frame.resized.shape == (32, 32, 3)
    assert frame.image.shape == (*WIDE, 3) and result.anomaly_map is not None and result.anomaly_map.shape == WIDE
    assert result.is_anomaly and result.boxes
    x, y, w, h, _ = result.boxes[0]
    sx, sy, side = square
    assert x < sx + side and sx < x + w and y < sy + side and sy < y + h
    assert x + w <= WIDE[1] and y + h <= WIDE[0] and max(x + w, y + h) > 32  # frame pixels, beyond the model's 32


def test_tiles_learn_with_one_memory_and_the_layout_is_saved(backend: ModuleBackend, tmp_path: Path) -> None:
    tiling = TileSpec((32, 32), 8)
    frames = [_wide_frame(i) for i in range(8)]
    with StateStore(tmp_path / "s") as store:
        updater = _updater(backend, TILE_CONFIG)
        summary = InspectionLoop(ListSource(frames), backend, updater, store=store, tiling=tiling).run()
        assert summary.updates == 8 and updater.model.memory.items.shape[0] <= TILE_CONFIG.memory_size
        layout = tiling.layout(WIDE)
        assert updater.model.position_norm is not None
        assert updater.model.position_norm.mean.shape == (layout.count, *updater.model.grid)
        loaded = store.load(backend.spec)
    assert loaded.model.layout == layout
    with pytest.raises(
        StateError,
        match="tile layout: expected tiles 32x32 overlap 8 over roi 0,0,128,96 of a 128x96 "
        r"frame \(20 tiles\) \(the model learned with it\), got no tiles and no roi",
    ):
        InspectionLoop(ListSource([]), backend, loaded)
    with pytest.raises(StateError, match=r"got tiles 64x64 overlap 8"):
        InspectionLoop(ListSource([]), backend, loaded, tiling=TileSpec((64, 64), 8))
    with pytest.raises(StateError, match=r"got tiles 32x32 overlap 8 over roi 0,0,64,64"):
        InspectionLoop(ListSource([]), backend, loaded, tiling=TileSpec((32, 32), 8, (0, 0, 64, 64)))
    small = Frame(image=np.zeros((64, 96, 3), np.uint8), index=0, timestamp=time.time())
    with pytest.raises(StateError, match=r"got tiles 32x32 overlap 8 over roi 0,0,96,64 of a 96x64 frame"):
        InspectionLoop(ListSource([small]), backend, loaded, tiling=tiling).run()


def test_a_roi_outside_the_frame_ends_the_run_with_a_clear_error(backend: ModuleBackend) -> None:
    loop = InspectionLoop(
        ListSource([_wide_frame(0)]), backend, _updater(backend, TILE_CONFIG), tiling=TileSpec(roi=(100, 0, 64, 64))
    )
    with pytest.raises(
        InputError,
        match=r"roi: expected a rectangle inside the 128x96 frame, got x=100,y=0,w=64,h=64 "
        r"\(right edge 164 > 128\)",
    ):
        loop.run()


def test_a_frame_of_another_size_than_the_tiles_is_skipped(backend: ModuleBackend) -> None:
    frames = [
        _wide_frame(0),
        Frame(image=np.zeros((64, 64, 3), np.uint8), index=1, timestamp=time.time()),
        _wide_frame(2),
    ]
    loop = InspectionLoop(ListSource(frames), backend, _updater(backend, TILE_CONFIG), tiling=TileSpec((32, 32), 8))
    summary = loop.run()
    assert summary.frames == 2 and summary.skipped == {"preprocess:InputError": 1}


def test_tiles_count_defect_patches_from_masks(backend: ModuleBackend) -> None:
    sample = synthetic_sample(0, 3, size=64, defect=True, shape=WIDE)
    frames = [_wide_frame(i) for i in range(3)]
    frames.append(Frame(sample.image, 3, time.time(), label=1, mask=sample.mask))
    for frame in frames[:3]:
        frame.mask = np.zeros(WIDE, np.uint8)
    summary = InspectionLoop(
        ListSource(frames), backend, _updater(backend, TILE_CONFIG), tiling=TileSpec((32, 32), 8)
    ).run()
    assert summary.contamination is not None and summary.contamination["defect_patches"] > 0
