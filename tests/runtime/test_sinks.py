"""Tests of lemo_edge.runtime.sinks: overlays, JSONL events, overlay folders, videos and URI parsing."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from lemo_edge.errors import InputError
from lemo_edge.runtime.events import event_record
from lemo_edge.runtime.frames import Frame, FrameResult
from lemo_edge.runtime.sinks import (
    EventsSink,
    OverlayFolderSink,
    SinkGuard,
    VideoSink,
    open_sinks,
    render_overlay,
    sink_names,
)

H, W = 64, 96
THRESHOLD = 2.0


def _frame(index: int, label: int | None = None, name: str = "") -> Frame:
    image = np.full((H, W, 3), 128, np.uint8)
    return Frame(image=image, index=index, timestamp=1_700_000_000.25 + index, label=label, name=name)


def _map_with_defect() -> np.ndarray:
    """(H, W) float32: 0 everywhere, 4 * threshold in a square at rows 20:44, cols 30:60."""
    amap = np.zeros((H, W), np.float32)
    amap[20:44, 30:60] = 4 * THRESHOLD
    return amap


def _result(anomalous: bool) -> FrameResult:
    amap = _map_with_defect() if anomalous else np.zeros((H, W), np.float32)
    return FrameResult(
        score=float(amap.max()),
        anomaly_map=amap,
        is_anomaly=anomalous,
        threshold=THRESHOLD,
        updated=not anomalous,
        latency_ms={"backbone": 3.5, "total": 5.25},
    )


# -- render_overlay ---------------------------------------------------------------------------------------------------


def test_overlay_colours_anomalous_region_and_draws_contour() -> None:
    image = np.full((H, W, 3), 128, np.uint8)
    out = render_overlay(image, _map_with_defect(), THRESHOLD, score=8.0)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert (image == 128).all()  # input untouched
    inside = out[28:38, 38:52].reshape(-1, 3).astype(int).mean(0)
    outside = out[50:60, 5:20].reshape(-1, 3).astype(int).mean(0)
    assert inside[0] > inside[2] + 40  # hot: red in RGB
    assert outside[2] > outside[0] + 40  # cold: blue
    # The contour of map > threshold is white, on the square's border.
    assert (out[20, 35:55] == 255).all() and (out[30:40, 30] == 255).all()


def test_overlay_threshold_is_middle_of_colour_scale() -> None:
    image = np.zeros((H, W, 3), np.uint8)
    at_threshold = render_overlay(image, np.full((H, W), THRESHOLD, np.float32), THRESHOLD, 0.0)
    doubled = render_overlay(image, np.full((H, W), 2 * THRESHOLD, np.float32), 2 * THRESHOLD, 0.0)
    assert np.array_equal(at_threshold[40:, 40:], doubled[40:, 40:])  # only the relation to threshold matters
    centre = at_threshold[50, 60].astype(int)
    assert centre[1] > centre[0] and centre[1] > centre[2]  # middle of JET is green-ish


def test_overlay_without_map_prints_score_only() -> None:
    image = np.full((H, W, 3), 128, np.uint8)
    out = render_overlay(image, None, THRESHOLD, score=1.0)
    assert out.shape == image.shape
    assert (out[40:, :] == 128).all() and not (out[:20] == 128).all()  # text at the top only


def test_overlay_rejects_bad_shapes() -> None:
    image = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(InputError, match=r"image: expected \(H, W, 3\) uint8, got \(64, 96\) uint8"):
        render_overlay(image[..., 0], None, THRESHOLD, 0.0)
    with pytest.raises(InputError, match=r"anomaly_map: expected \(64, 96\) float32, got \(32, 48\) float32"):
        render_overlay(image, np.zeros((32, 48), np.float32), THRESHOLD, 0.0)


# -- events -----------------------------------------------------------------------------------------------------------


def test_event_record_fields() -> None:
    record = event_record(_frame(3, label=1, name="x.png"), _result(anomalous=True))
    assert set(record) == {
        "time",
        "frame",
        "score",
        "decision",
        "threshold",
        "updated",
        "learned",
        "reason",
        "finite",
        "failing_sinks",
        "boxes",
        "latency_ms",
        "label",
        "name",
    }
    assert record["failing_sinks"] == [] and record["finite"] is True and record["reason"] == ""
    assert record["boxes"] == []
    when = datetime.fromisoformat(record["time"])
    assert when.utcoffset() == timedelta(0) and when.timestamp() == pytest.approx(1_700_000_003.25)
    assert record["frame"] == 3 and record["decision"] == "anomaly" and record["label"] == 1
    assert record["score"] == 8.0 and record["threshold"] == THRESHOLD and record["updated"] is False
    normal = event_record(_frame(4), _result(anomalous=False))
    assert normal["decision"] == "normal" and "label" not in normal and "name" not in normal
    nan = FrameResult(float("nan"), None, False, float("inf"), False, {}, reason="not finite", finite=False)
    record = event_record(_frame(5), nan)
    assert record["score"] is None and record["finite"] is False and record["reason"] == "not finite"  # no NaN
    failing = [{"sink": "VideoSink('x.mp4')", "error": "OSError: disk full", "since": 1.5, "failures": 2}]
    result = FrameResult(1.0, None, False, 2.0, True, {}, reason="below threshold", failing_sinks=failing)
    record = event_record(_frame(6), result)
    assert record["failing_sinks"] == failing and record["learned"] is True and record["reason"] == "below threshold"
    json.dumps(record, allow_nan=False)
    boxed = FrameResult(
        9.0, None, True, 2.0, False, {}, boxes=[[1700.0, 900.0, 14.0, 12.0, 9.0], [3, 4, 5, 6, math.inf]]
    )
    record = event_record(_frame(7), boxed)
    assert record["boxes"] == [[1700, 900, 14, 12, 9.0], [3, 4, 5, 6, None]]
    json.dumps(record, allow_nan=False)


def test_overlay_draws_the_boxes_in_the_image_pixels() -> None:
    image = np.full((H, W, 3), 128, np.uint8)
    out = render_overlay(image, None, THRESHOLD, score=8.0, boxes=[[40, 30, 20, 16, 8.0]])
    assert (out[30, 40:60] == (255, 48, 48)).all() and (out[45, 40:60] == (255, 48, 48)).all()  # top and bottom
    assert (out[30:46, 40] == (255, 48, 48)).all() and (out[30:46, 59] == (255, 48, 48)).all()  # left and right
    assert (out[31:45, 41:59] == 128).all() and (out[50:, :] == 128).all()  # nothing drawn inside or elsewhere


def test_events_sink_writes_flushed_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "run" / "events.jsonl"
    (sink,) = open_sinks([str(path)], headless=True)
    assert isinstance(sink, EventsSink)
    sink.write(_frame(0, label=0), _result(anomalous=False))
    sink.write(_frame(1, label=1), _result(anomalous=True))
    lines = path.read_text().splitlines()  # before close: flushed per line
    assert len(lines) == 2
    sink.write_record({"event": "threshold", "value": 1.5})
    sink.close()
    sink.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("decision") for r in records] == ["normal", "anomaly", None]
    assert records[1]["latency_ms"] == {"backbone": 3.5, "total": 5.25} and records[1]["label"] == 1
    assert records[2] == {"event": "threshold", "value": 1.5}


# -- overlay folder and video -----------------------------------------------------------------------------------------


def test_overlay_folder_writes_anomalous_frames_only(tmp_path: Path) -> None:
    folder = tmp_path / "overlays"
    (sink,) = open_sinks([f"{folder}/"], headless=True)
    assert isinstance(sink, OverlayFolderSink)
    for i in range(4):
        sink.write(_frame(i, name=f"part {i}.png"), _result(anomalous=i % 2 == 1))
    sink.close()
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["000001_part_1.png", "000003_part_3.png"]
    written = cv2.imread(str(folder / files[0]))
    assert written.shape == (H, W, 3)
    assert written[32, 45, 2] > written[32, 45, 0] + 40  # red on disk (BGR)


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_sink_writes_every_frame(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"run{suffix}"
    (sink,) = open_sinks([f"file://{path}"], headless=True)
    assert isinstance(sink, VideoSink)
    for i in range(6):
        sink.write(_frame(i), _result(anomalous=i == 2))
    sink.write(Frame(np.zeros((32, 48, 3), np.uint8), 6, 0.0), FrameResult(0.0, None, False, 1.0, False, {}))
    sink.close()
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    assert len(frames) == 7 and frames[0].shape == (H, W, 3)
    assert frames[2][32, 45, 2] > frames[2][32, 45, 0] + 40  # the anomalous frame's overlay is red there


def test_video_sink_rejects_other_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"expected a video suffix in \['.avi', '.mp4'\], got '.mkv'"):
        VideoSink(tmp_path / "x.mkv")


# -- open_sinks -------------------------------------------------------------------------------------------------------


def test_open_sinks_dispatch(tmp_path: Path) -> None:
    existing = tmp_path / "existing.d"
    existing.mkdir()
    sinks = open_sinks(
        [str(tmp_path / "e.jsonl"), str(existing), str(tmp_path / "nosuffix"), str(tmp_path / "v.avi")],
        headless=True,
    )
    assert [type(s).__name__ for s in sinks] == ["EventsSink", "OverlayFolderSink", "OverlayFolderSink", "VideoSink"]
    for sink in sinks:
        sink.close()
    assert open_sinks([], headless=True) == []


def test_display_skipped_when_headless_or_without_display(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.INFO, logger="lemo_edge.runtime.sinks"):
        assert open_sinks(["display://0"], headless=True) == []
        assert "display://0: skipped (headless)" in caplog.text
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        monkeypatch.setattr("sys.platform", "linux")
        assert open_sinks(["display://0"], headless=False) == []
        assert "no display" in caplog.text


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("rtmp://host/live", "unknown sink scheme 'rtmp'; accepted: PATH.jsonl"),
        ("out/report.txt", "unknown sink type '.txt'; accepted: PATH.jsonl"),
        ("display://main", "expected display://N"),
    ],
)
def test_open_sinks_unknown(tmp_path: Path, uri: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        open_sinks([str(tmp_path / "ok.jsonl"), uri], headless=True)


# -- the guard of failing sinks ---------------------------------------------------------------------------------------


class _Failing:
    def __init__(self) -> None:
        self.fail = True
        self.writes = 0

    def write(self, frame: Frame, result: FrameResult) -> None:
        self.writes += 1
        if self.fail:
            raise OSError("disk full")

    def close(self) -> None:
        pass


def test_sink_guard_backs_off_doubling_up_to_the_maximum_and_recovers() -> None:
    now = [0.0]
    sink = _Failing()
    guard = SinkGuard(sink, "disk", clock=lambda: now[0], wall=lambda: 1234.5, backoff_min_s=1.0, backoff_max_s=4.0)
    tried_at = []
    for step in range(40):  # 0.5 s per frame over 20 s
        now[0] = 0.5 * step
        before = sink.writes
        assert guard.write(_frame(step), _result(False)) is False
        if sink.writes > before:
            tried_at.append(now[0])
    assert tried_at == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0]  # delays 1, 2, 4, then capped at 4
    assert guard.failing and guard.failures == guard.streak == 7 and guard.skipped == 33
    assert guard.status() == {"sink": "disk", "error": "OSError: disk full", "since": 1234.5, "failures": 7}
    sink.fail = False
    now[0] = 23.0
    assert guard.write(_frame(40), _result(False)) is True
    assert not guard.failing and guard.status() is None and guard.failures == 7
    with pytest.raises(InputError, match="expected 0 < backoff_min_s <= backoff_max_s, got 2.0, 1.0"):
        SinkGuard(sink, "x", backoff_min_s=2.0, backoff_max_s=1.0)


def test_sink_guard_lets_keyboard_interrupt_through() -> None:
    class Interrupting(_Failing):
        def write(self, frame: Frame, result: FrameResult) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SinkGuard(Interrupting(), "x").write(_frame(0), _result(False))


def test_sink_names_are_distinct(tmp_path: Path) -> None:
    a, b = EventsSink(tmp_path / "a.jsonl"), EventsSink(tmp_path / "a.jsonl")
    try:
        names = sink_names([a, b, _Failing(), _Failing()])
    finally:
        a.close()
        b.close()
    assert names == [repr(a), repr(a) + "#2", "_Failing", "_Failing#2"]
