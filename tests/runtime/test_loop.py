"""Tests of lemo_edge.runtime.loop: the inspection loop in-process (real backbone, real model, small config)."""

from __future__ import annotations

import io
import json
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
from lemo_edge.runtime.loop import (
    InspectionLoop,
    LoopOptions,
    RunSummary,
    StateStore,
    StatusLine,
    StopFlag,
)
from lemo_edge.runtime.sinks import EventsSink
from lemo_edge.runtime.sources import SourceStats, open_source
from lemo_edge.scoring import nearest_memory
from lemo_edge.state import load_state
from lemo_edge.synthetic import synthetic_sample
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
    # every result is consistent with its own threshold; the warm-up frames all update
    for _, result in sink.results:
        assert result.is_anomaly == (result.score > result.threshold)
        assert result.anomaly_map is not None and result.anomaly_map.shape == (SIZE, SIZE)
        assert result.anomaly_map.dtype == np.float32
    assert all(r.updated for _, r in sink.results[: CONFIG.warmup])
    # after the warm-up only frames judged normal update the model
    assert not any(r.updated and r.is_anomaly for _, r in sink.results)
    # the events sink is written last, so its records carry the complete latencies
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(records) == 20 and all("total" in r["latency_ms"] and "sinks" in r["latency_ms"] for r in records)
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
    resized = [f for f, _ in sink.results if f.index == 93][0]
    assert resized.image.shape == (SIZE, SIZE, 3)  # resized to the model's size, the map fits it


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


def test_a_scorer_replaces_the_reference_with_identical_scores(backend: ModuleBackend) -> None:
    updater = _updater(backend)
    frames = [_frame(i) for i in range(8)]
    InspectionLoop(ListSource(frames[:6]), backend, updater).run()
    calls = []

    def scorer(z: torch.Tensor, memory: torch.Tensor):
        calls.append(z.shape)
        return nearest_memory(z, memory, CONFIG.score_k)

    loop = InspectionLoop(ListSource([]), backend, updater, scorer=scorer)
    for frame in frames[6:]:
        _, images = loop._preprocess(frame)
        features = backend(images)
        with torch.no_grad():
            expected = updater.model.score(features).patch
            got = loop._score(features).patch
        torch.testing.assert_close(got, expected)
    assert len(calls) == 2


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
