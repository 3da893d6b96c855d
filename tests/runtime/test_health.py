"""Tests of lemo_edge.runtime.bundle.health: ``lemo-edge health`` (last frame, fps, state, process, failing sinks).

Events files are written by the real EventsSink or by hand (one JSON object per line, as the loop writes them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lemo_edge.backbone import resolve_spec
from lemo_edge.config import ModelConfig
from lemo_edge.model import LemoModel
from lemo_edge.runtime.bundle import check_health, failing_sinks, tail_lines
from lemo_edge.runtime.frames import Frame, FrameResult
from lemo_edge.runtime.main import main
from lemo_edge.runtime.sinks import EventsSink
from lemo_edge.runtime.state_store import StateStore
from lemo_edge.state import save_state
from lemo_edge.updater import OnlineUpdater

CONFIG = ModelConfig(size=64, memory_size=256)
MQTT = "mqtt://broker.plant:1883/plant/line3/lemo"
REFUSED = "ConnectionRefusedError: [Errno 111] Connection refused"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _state(folder: Path) -> Path:
    save_state(folder, OnlineUpdater(LemoModel(CONFIG, resolve_spec(CONFIG.backbone))))
    return folder


def _events(path: Path, n: int, start: float, fps: float) -> None:
    sink = EventsSink(path)
    for i in range(n):
        frame = Frame(image=None, index=i, timestamp=start + i / fps)  # type: ignore[arg-type]
        sink.write(frame, FrameResult(1.0, None, False, 2.0, True, {"total": 5.0}))
    sink.close()


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def _write_events(path: Path, records: list[dict[str, Any]]) -> None:
    """A hand-written events file: one compact JSON object per line."""
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def _frame(index: int, stamp: float, failing: Any = None) -> dict[str, Any]:
    record: dict[str, Any] = {"time": _iso(stamp), "frame": index, "score": 1.0, "decision": "normal"}
    if failing is not None:
        record["failing_sinks"] = failing
    return record


def test_health_of_a_live_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with StateStore(tmp_path / "state") as store:  # holds the folder with this process's pid, as a run does
        _state(store.directory)
        _events(tmp_path / "events.jsonl", 120, time.time() - 12.0, fps=10.0)
        code, out, _ = _cli(capsys, "health", "--state", str(store.directory), "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["healthy"] and report["reasons"] == []
    assert report["last_frame"]["frame"] == 119 and 0 <= report["last_frame"]["age_s"] < 30
    assert report["fps"] == pytest.approx(10.0, rel=0.01) and report["fps_frames"] == 50
    assert report["state"]["exists"] and report["state"]["updates"] == 0 and report["state"]["age_s"] < 30
    assert report["process"] == {"pid": os.getpid(), "running": True}
    assert report["events"] == str(tmp_path / "events.jsonl")
    assert report["failing_sinks"] == []  # the events sink writes the field: every sink works


def test_health_reports_a_stale_or_stopped_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _events(tmp_path / "events.jsonl", 10, time.time() - 300.0, fps=5.0)
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"time": "2030-01-0')  # a line still being written is not read
    code, out, _ = _cli(capsys, "health", "--state", str(state), "--max-age", "60")
    assert code == 1 and out.startswith("UNHEALTHY: last frame 29") and "s ago (max 60 s)" in out
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / ".lock").write_text(f"{dead.pid}\n")
    report = check_health(state, max_age_s=1000)
    assert not report.healthy and report.reasons == [f"the run that last held {state} (pid {dead.pid}) is not running"]
    assert report.fps == pytest.approx(5.0, rel=0.01) and report.last_frame is not None
    assert report.last_frame["frame"] == 9


def test_health_without_events_and_with_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "state").mkdir()
    code, out, _ = _cli(capsys, "health", "--state", str(tmp_path / "state"))
    assert code == 1 and "UNHEALTHY: no events file" in out
    code, _, err = _cli(capsys, "health", "--state", str(tmp_path / "missing"))
    assert code == 2 and "--state: expected the run's state folder" in err
    code, _, err = _cli(capsys, "health", "--state", str(tmp_path), "--max-age", "-1")
    assert code == 2 and "expected a number > 0" in err


def test_tail_lines_reads_backwards_in_blocks(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1000)) + "partial")
    assert tail_lines(path, 3, block=7) == ["line 997", "line 998", "line 999"]
    assert tail_lines(path, 5000, block=64)[:2] == ["line 0", "line 1"]
    path.write_text("")
    assert tail_lines(path, 3) == []


# -- failing sinks ----------------------------------------------------------------------------------------------------


def test_a_failing_sink_makes_the_run_unhealthy_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    failing = [{"sink": MQTT, "error": REFUSED, "since": now - 42.0, "failures": 7}]
    records = [_frame(i, now - 2.0 + i / 10, failing=[] if i < 10 else failing) for i in range(20)]
    with StateStore(tmp_path / "state") as store:  # a live process: the sink is the only problem
        _write_events(tmp_path / "events.jsonl", records)
        code, out, _ = _cli(capsys, "health", "--state", str(store.directory))
        assert code == 1, out
        lines = out.splitlines()
        assert lines[0] == f"UNHEALTHY: sink {MQTT} failing for 42 s (7 failures): {REFUSED}"
        assert any(
            line.startswith(f"  sink {MQTT}: FAILING since ") and line.endswith(f"7 failures: {REFUSED}")
            for line in lines
        )
        code, out, _ = _cli(capsys, "health", "--state", str(store.directory), "--json")
    assert code == 1
    report = json.loads(out)
    assert not report["healthy"] and len(report["reasons"]) == 1 and MQTT in report["reasons"][0]
    (sink,) = report["failing_sinks"]
    assert sink["sink"] == MQTT and sink["error"] == REFUSED and sink["failures"] == 7
    assert sink["since"] == datetime.fromtimestamp(now - 42.0, tz=timezone.utc).isoformat(timespec="seconds")
    assert sink["failing_for_s"] == pytest.approx(42.0, abs=5.0)


def test_the_last_record_that_reports_sinks_decides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    failing = [{"sink": MQTT, "error": REFUSED, "since": now - 5.0, "failures": 3}]
    state = tmp_path / "state"
    state.mkdir()
    events = tmp_path / "events.jsonl"
    # Recovered: the sink failed, then the last records say all is well.
    _write_events(events, [_frame(0, now - 1.0, failing), _frame(1, now - 0.5, [])])
    code, out, _ = _cli(capsys, "health", "--state", str(state))
    assert code == 0 and out.startswith("healthy") and "  sinks: all working" in out, out
    # A record without the field after it (a run header, or a writer that does not report sinks) does not hide it.
    _write_events(events, [_frame(0, now - 1.0, []), _frame(1, now - 0.5, failing), {"run": "header"}])
    report = check_health(state, now=now)
    assert not report.healthy and report.failing_sinks is not None
    assert [s["sink"] for s in report.failing_sinks] == [MQTT]
    assert report.reasons == [f"sink {MQTT} failing for 5 s (3 failures): {REFUSED}"]
    # Events that never report sinks: unknown, not a reason; the text says nothing about sinks.
    _write_events(events, [_frame(0, now - 1.0), _frame(1, now - 0.5)])
    report = check_health(state, now=now)
    assert report.healthy and report.failing_sinks is None and "sink" not in report.format()


def test_several_failing_sinks_and_malformed_fields(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    two = [
        {"sink": MQTT, "error": REFUSED, "since": now - 60.0, "failures": 12},
        {"sink": "overlays/", "error": "OSError: [Errno 28] No space left on device", "since": None, "failures": 1},
    ]
    sinks = failing_sinks([_frame(0, now, two)], now)
    assert sinks == [
        {"sink": MQTT, "error": REFUSED, "since": now - 60.0, "failures": 12, "failing_for_s": 60.0},
        {
            "sink": "overlays/",
            "error": "OSError: [Errno 28] No space left on device",
            "since": None,
            "failures": 1,
            "failing_for_s": None,
        },
    ]
    state = tmp_path / "state"
    state.mkdir()
    _write_events(tmp_path / "events.jsonl", [_frame(0, now, two)])
    report = check_health(state, now=now + 1.0)
    assert report.reasons == [
        f"sink {MQTT} failing for 61 s (12 failures): {REFUSED}",
        "sink overlays/ failing (1 failure): OSError: [Errno 28] No space left on device",
    ]
    text = report.format()
    assert f"  sink {MQTT}: FAILING since 2023-11-14T22:12:20+00:00 (61 s), 12 failures: {REFUSED}" in text
    assert "  sink overlays/: FAILING, 1 failure: OSError: [Errno 28] No space left on device" in text
    # A field that is not a list of objects is never taken for working sinks.
    (bad,) = failing_sinks([_frame(0, now, "mqtt down")], now) or [None]
    assert bad is not None and bad["sink"] == "?" and "expected a list of sinks, got 'mqtt down'" in bad["error"]
    (bad,) = failing_sinks([_frame(0, now, [42])], now) or [None]
    assert bad is not None and "expected an object per sink, got 42" in bad["error"]


def test_health_reads_what_the_events_sink_writes(tmp_path: Path) -> None:
    """The loop's records (EventsSink of a FrameResult with failing_sinks) are what health reads."""
    now = time.time()
    failure = {"sink": MQTT, "error": REFUSED, "since": now - 3.0, "failures": 2}
    sink = EventsSink(tmp_path / "events.jsonl")
    for i in range(5):
        result = FrameResult(1.0, None, False, 2.0, True, {"total": 5.0}, failing_sinks=[failure] if i == 4 else [])
        sink.write(Frame(image=None, index=i, timestamp=now - 1.0 + i / 10), result)  # type: ignore[arg-type]
    sink.close()
    (tmp_path / "state").mkdir()
    report = check_health(tmp_path / "state", now=now)
    assert not report.healthy and report.reasons == [f"sink {MQTT} failing for 3 s (2 failures): {REFUSED}"]
