"""``lemo-edge health``: whether the service (or any ``lemo-edge run`` with a state folder) is live.

The run writes no status file, so everything comes from what it leaves behind: the last lines of its events file
(time of the last frame, fps over the last frames, the sinks that are failing), the age of the saved state and
whether the process holding the state folder (its ``.lock``) runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lemo_edge.errors import InputError


def tail_lines(path: Path, n: int, block: int = 1 << 16) -> list[str]:
    """The last ``n`` complete lines of a text file (a last line without its newline is being written: left out)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.split(b"\n")
    complete = lines[:-1]  # after the last newline: empty, or a line still being written
    if pos > 0:
        complete = complete[1:]  # the first piece may start mid-line
    return [line.decode("utf-8", errors="replace") for line in complete[-n:]]


def _event_records(lines: Sequence[str]) -> list[dict[str, Any]]:
    """The lines that are JSON objects, in order (anything else is skipped)."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _frame_records(records: Sequence[dict[str, Any]]) -> list[tuple[float, int]]:
    """``(capture time, frame index)`` of the records that are frames (a run header or other record has neither)."""
    frames = []
    for record in records:
        try:
            frames.append((datetime.fromisoformat(record["time"]).timestamp(), int(record["frame"])))
        except (ValueError, KeyError, TypeError):
            continue
    return frames


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def failing_sinks(records: Sequence[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]] | None:
    """The sinks failing at the last event record that says (its ``failing_sinks`` field, written by the loop).

    Args:
        records: event records, oldest first.
        now: the current time, for ``failing_for_s`` (default ``time.time()``).

    Returns:
        ``[{"sink", "error", "since", "failures", "failing_for_s"}]`` (``since``: seconds since the epoch; it and
        ``failing_for_s`` None when the record has no time), empty when every sink works, or None when no record has
        the field (a run that does not report it). A malformed field or
        entry counts as a failing sink whose error says what came, so it is never taken for a working one.
    """
    now = time.time() if now is None else now
    last = next((r for r in reversed(records) if "failing_sinks" in r), None)
    if last is None:
        return None
    value = last["failing_sinks"]
    if not isinstance(value, list):
        value = [{"sink": "?", "error": f"failing_sinks: expected a list of sinks, got {value!r:.200}"}]
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            entry = {"sink": "?", "error": f"failing_sinks: expected an object per sink, got {entry!r:.200}"}
        failures, since = _number(entry.get("failures")), _number(entry.get("since"))
        out.append(
            {
                "sink": str(entry.get("sink") or "?"),
                "error": str(entry.get("error") or "(no error text)"),
                "since": since,
                "failures": None if failures is None else int(failures),
                "failing_for_s": None if since is None else round(max(now - since, 0.0), 3),
            }
        )
    return out


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, tz=timezone.utc).isoformat(timespec="seconds")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _sink_problem(sink: dict[str, Any]) -> str:
    """``sink mqtt://b/t failing for 42 s (7 failures): connection refused``."""
    detail = [f"sink {sink['sink']} failing"]
    if sink["failing_for_s"] is not None:
        detail.append(f"for {sink['failing_for_s']:.0f} s")
    if sink["failures"] is not None:
        detail.append(f"({_count(sink['failures'], 'failure')})")
    return " ".join(detail) + f": {sink['error']}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class HealthReport:
    """What :func:`check_health` found.

    Attributes:
        healthy: no reason to worry.
        reasons: why not (empty when healthy).
        checked_at: when (seconds since the epoch).
        max_age_s: the largest accepted age of the last frame.
        events: the events file read, or None.
        last_frame: ``{"time", "frame", "age_s"}`` of the last frame, or None.
        fps: frames per second over the last ``fps_frames`` frames, or None.
        fps_frames: how many frames the fps covers.
        state: ``{"path", "exists", "age_s", "updates"}`` of the saved state.
        process: ``{"pid", "running"}`` of the run holding the state folder, or None when unknown.
        failing_sinks: ``[{"sink", "error", "since", "failures", "failing_for_s"}]`` from the last event record that
            has the field (:func:`failing_sinks`), empty when every sink works, None when the events do not say.
    """

    healthy: bool
    reasons: list[str]
    checked_at: float
    max_age_s: float
    events: str | None
    last_frame: dict[str, Any] | None
    fps: float | None
    fps_frames: int
    state: dict[str, Any]
    process: dict[str, Any] | None
    failing_sinks: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = dict(self.__dict__)
        out["checked_at"] = _iso(self.checked_at)
        out["failing_sinks"] = None if self.failing_sinks is None else [dict(s) for s in self.failing_sinks]
        for sink in out["failing_sinks"] or []:
            sink["since"] = None if sink["since"] is None else _iso(sink["since"])
        return out

    def format(self) -> str:
        """Human-readable report, a few lines."""
        lines = ["healthy" if self.healthy else "UNHEALTHY: " + "; ".join(self.reasons)]
        if self.last_frame is not None:
            lines.append(
                f"  last frame {self.last_frame['frame']} at {self.last_frame['time']} "
                f"({self.last_frame['age_s']:.1f} s ago; max {self.max_age_s:g} s) in {self.events}"
            )
        if self.fps is not None:
            lines.append(f"  {self.fps:.2f} fps over the last {self.fps_frames} frames")
        state = self.state
        if state["exists"]:
            updates = f", {state['updates']} updates" if state.get("updates") is not None else ""
            lines.append(f"  state {state['path']} saved {state['age_s']:.0f} s ago{updates}")
        else:
            lines.append(f"  state {state['path']}: not saved yet")
        if self.process is not None:
            running = "running" if self.process["running"] else "not running"
            lines.append(f"  process {self.process['pid']} (holds the state folder): {running}")
        if self.failing_sinks:
            for sink in self.failing_sinks:
                since = "" if sink["since"] is None else f" since {_iso(sink['since'])} ({sink['failing_for_s']:.0f} s)"
                failures = "" if sink["failures"] is None else f", {_count(sink['failures'], 'failure')}"
                lines.append(f"  sink {sink['sink']}: FAILING{since}{failures}: {sink['error']}")
        elif self.failing_sinks is not None:
            lines.append("  sinks: all working")
        return "\n".join(lines)


def check_health(
    state_dir: str | Path,
    events: str | Path | None = None,
    *,
    max_age_s: float = 60.0,
    max_state_age_s: float | None = None,
    fps_frames: int = 50,
    now: float | None = None,
) -> HealthReport:
    """Whether the run writing ``state_dir`` is live: a recent last frame, no failing sink, its process running.

    ``lemo-edge run`` writes no status file, so the time of the last frame, the fps and the failing sinks come from
    the events file's last ``fps_frames`` lines (their ``time`` fields, the capture times, and the ``failing_sinks``
    field of the last record that has one; a sink failing there makes the run unhealthy).

    Args:
        state_dir: the run's ``--state`` folder.
        events: its events file; default: ``events.jsonl`` beside the state folder (the service's layout), else in it.
        max_age_s: the last frame may be at most this old.
        max_state_age_s: if given, the saved state may be at most this old (a gated or frozen run saves rarely or
            never, so this is off by default).
        fps_frames: the fps is measured over this many last frames.
        now: the current time (default ``time.time()``).

    Raises:
        InputError: ``state_dir`` is not a folder, or a non-positive ``max_age_s``/``fps_frames``.
    """
    state_dir = Path(state_dir).expanduser()
    if not state_dir.is_dir():
        raise InputError(
            f"--state: expected the run's state folder, got {str(state_dir)!r} (no such folder, or not readable: "
            "try sudo)"
        )
    if not max_age_s > 0 or fps_frames < 2:
        raise InputError(f"health: expected max_age_s > 0 and fps_frames >= 2, got {max_age_s} and {fps_frames}")
    now = time.time() if now is None else now
    reasons: list[str] = []
    candidates = (
        [Path(events).expanduser()]
        if events is not None
        else [
            state_dir.parent / "events.jsonl",
            state_dir / "events.jsonl",
        ]
    )
    events_path = next((p for p in candidates if p.is_file()), None)
    last_frame: dict[str, Any] | None = None
    fps: float | None = None
    counted = 0
    sinks: list[dict[str, Any]] | None = None
    if events_path is None:
        reasons.append(f"no events file ({', '.join(str(p) for p in candidates)})")
    else:
        events_records = _event_records(tail_lines(events_path, fps_frames))
        records = _frame_records(events_records)
        sinks = failing_sinks(events_records, now)
        if not records:
            reasons.append(f"no frame recorded in {events_path}")
        else:
            stamp, index = records[-1]
            age = now - stamp
            last_frame = {
                "time": datetime.fromtimestamp(stamp, tz=timezone.utc).isoformat(timespec="milliseconds"),
                "frame": index,
                "age_s": round(age, 3),
            }
            if age > max_age_s:
                reasons.append(f"last frame {age:.0f} s ago (max {max_age_s:g} s)")
            span = records[-1][0] - records[0][0]
            counted = len(records)
            if counted > 1 and span > 0:
                fps = round((counted - 1) / span, 3)
        reasons += [_sink_problem(sink) for sink in sinks or []]

    from lemo_edge.state import STATE_FILE

    state_path = state_dir / STATE_FILE
    state: dict[str, Any] = {"path": str(state_path), "exists": state_path.is_file(), "age_s": None, "updates": None}
    if state["exists"]:
        state["age_s"] = round(now - state_path.stat().st_mtime, 3)
        try:
            state["updates"] = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))["stats"]["updates"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if max_state_age_s is not None and state["age_s"] > max_state_age_s:
            reasons.append(f"state saved {state['age_s']:.0f} s ago (max {max_state_age_s:g} s)")
    elif max_state_age_s is not None:
        reasons.append(f"no saved state {state_path}")

    process: dict[str, Any] | None = None
    try:
        pid = int((state_dir / ".lock").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if pid > 0:
        process = {"pid": pid, "running": _pid_running(pid)}
        if not process["running"]:
            reasons.append(f"the run that last held {state_dir} (pid {pid}) is not running")
    return HealthReport(
        healthy=not reasons,
        reasons=reasons,
        checked_at=now,
        max_age_s=max_age_s,
        events=None if events_path is None else str(events_path),
        last_frame=last_frame,
        fps=fps,
        fps_frames=counted,
        state=state,
        process=process,
        failing_sinks=sinks,
    )
