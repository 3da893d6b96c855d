"""Result sinks addressed by URIs, in the manner of jetson-inference's ``videoOutput``, and the guard that keeps a
failing sink from ending a run (:class:`SinkGuard`).

Accepted outputs (see :func:`open_sinks`):

- ``events.jsonl``: :class:`EventsSink`, one JSON object per frame (:func:`event_record`), flushed per line.
- ``overlays/`` (an existing folder, a trailing ``/`` or a path without suffix): :class:`OverlayFolderSink`,
  an overlay PNG for every anomalous frame.
- ``run.mp4`` / ``run.avi``: :class:`VideoSink`, the overlay of every frame (``mp4v`` / ``MJPG``).
- ``display://0``: :class:`DisplaySink`, an OpenCV window; skipped (logged) when headless or without a display.
- ``mqtt://host:port/topic?heartbeat=10`` (``mqtts://`` for TLS): :class:`~lemo_edge.runtime.mqtt.MqttSink`, one
  message per anomalous frame and heartbeats, through an on-disk queue (paho-mqtt, imported on use).
- ``http://127.0.0.1:8080[?token_file=PATH&fps=5]``: :class:`~lemo_edge.runtime.liveview.LiveViewSink`, a live view
  page and JSON status served from the run (any address but loopback needs a token).

``file://PATH`` is accepted for the file outputs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lemo_edge.errors import BackendUnavailableError, InputError, describe

from .events import Sink, event_record
from .frames import Frame, FrameResult

log = logging.getLogger(__name__)

__all__ = [
    "DisplaySink",
    "EventsSink",
    "OverlayFolderSink",
    "Sink",
    "SinkGuard",
    "VideoSink",
    "event_record",
    "open_sinks",
    "render_overlay",
    "sink_names",
]

VIDEO_FOURCC: dict[str, str] = {".mp4": "mp4v", ".avi": "MJPG"}
ACCEPTED_SINKS = (
    "PATH.jsonl, a folder (existing, trailing '/' or no suffix), PATH.mp4, PATH.avi, display://N, "
    "mqtt://host:port/topic, http://HOST:PORT (live view)"
)

# Weight of the heat map in the overlay blend.
_HEAT_ALPHA = 0.45
_CONTOUR_RGB = (255, 255, 255)
_TEXT_ANOMALY_RGB = (255, 48, 48)
_TEXT_NORMAL_RGB = (48, 255, 48)


def render_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray | None,
    threshold: float,
    score: float,
    boxes: Sequence[Sequence[float]] = (),
) -> np.ndarray:
    """Blend a JET heat map of the anomaly map over the image, outline ``map > threshold``, draw the anomalous
    regions' boxes and print the score.

    The map is scaled so that 0 maps to the bottom of the colour scale (blue), ``threshold`` to its middle and
    ``2 * threshold`` or more to its top (red). A non-positive or non-finite threshold falls back to the map's
    maximum as the middle. With ``anomaly_map=None`` only the score is printed.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        anomaly_map: ``(H, W)`` float (float32 expected) at the image's size, or None.
        threshold: decision threshold, in the map's units.
        score: image score, printed top left (red when ``score > threshold``, else green).
        boxes: ``[x, y, w, h, peak], ...`` in the image's pixels (:attr:`FrameResult.boxes`), drawn in red.

    Returns:
        ``(H, W, 3) uint8`` RGB overlay (a new array).

    Raises:
        InputError: the image is not ``(H, W, 3) uint8`` or the map is not ``(H, W)`` at the image's size.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image: expected (H, W, 3) uint8, got {describe(image)}")
    h, w = image.shape[:2]
    if anomaly_map is None:
        out = image.copy()
    else:
        if not isinstance(anomaly_map, np.ndarray) or anomaly_map.shape != (h, w):
            raise InputError(f"anomaly_map: expected ({h}, {w}) float32, got {describe(anomaly_map)}")
        amap = np.nan_to_num(anomaly_map.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
        middle = float(threshold) if math.isfinite(threshold) and threshold > 0 else float(amap.max(initial=0.0))
        scale = 255.0 / (2.0 * middle) if middle > 0 else 0.0
        levels = np.clip(amap * scale, 0.0, 255.0).astype(np.uint8)
        heat = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        out = cv2.addWeighted(image, 1.0 - _HEAT_ALPHA, heat, _HEAT_ALPHA, 0.0)
        if math.isfinite(threshold):
            region = (amap > threshold).astype(np.uint8)
            if region.any():
                contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                thickness = max(1, round(min(h, w) / 200))
                cv2.drawContours(out, contours, -1, _CONTOUR_RGB, thickness)
    box_thickness = max(1, round(min(h, w) / 300))
    for box in boxes:
        x, y, bw, bh = (int(v) for v in box[:4])
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), _TEXT_ANOMALY_RGB, box_thickness)
    anomalous = math.isfinite(score) and math.isfinite(threshold) and score > threshold
    text = f"score {score:.4g} / thr {threshold:.4g}"
    font_scale = max(0.35, min(h, w) / 600)
    origin = (4, 4 + int(22 * font_scale))
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 3, cv2.LINE_AA)
    colour = _TEXT_ANOMALY_RGB if anomalous else _TEXT_NORMAL_RGB
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, 1, cv2.LINE_AA)
    return out


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


class EventsSink:
    """Appends one JSON line per frame to a ``.jsonl`` file, flushed after each line.

    Args:
        path: the file; parent folders are created; an existing file is appended to.
        record: builds the line's fields from ``(frame, result)``; defaults to :func:`event_record`.
    """

    def __init__(self, path: str | Path, record: Callable[[Frame, FrameResult], dict[str, Any]] = event_record) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._record = record
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Append ``record(frame, result)`` as one line."""
        self.write_record(self._record(frame, result))

    def write_record(self, record: dict[str, Any]) -> None:
        """Append any JSON-serialisable dict as one line (e.g. a run header or a threshold change)."""
        if self._file.closed:
            raise InputError(f"{self.path}: expected an open events sink, got a closed one")
        self._file.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file; idempotent."""
        if not self._file.closed:
            self._file.close()

    def __repr__(self) -> str:
        return f"EventsSink({str(self.path)!r})"


class OverlayFolderSink:
    """Writes ``render_overlay`` PNGs of anomalous frames only, named ``{index:06d}[_{name}].png``.

    Args:
        folder: output folder, created if missing.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = 0

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Write the overlay if ``result.is_anomaly``; otherwise do nothing."""
        if not result.is_anomaly:
            return
        overlay = render_overlay(frame.image, result.anomaly_map, result.threshold, result.score, result.boxes)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(frame.name).stem) if frame.name else ""
        path = self.folder / (f"{frame.index:06d}_{stem}.png" if stem else f"{frame.index:06d}.png")
        if not cv2.imwrite(str(path), _bgr(overlay)):
            log.warning("%s: could not write %s", self.folder, path)
            return
        self.written += 1

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"OverlayFolderSink({str(self.folder)!r})"


class VideoSink:
    """Writes the overlay of every frame to a video (``.mp4``: ``mp4v``, ``.avi``: ``MJPG``).

    The writer opens on the first frame, at its size; later frames of another size are resized to it.

    Args:
        path: ``.mp4`` or ``.avi`` file; parent folders are created.
        fps: frame rate written in the file.

    Raises:
        InputError: another suffix or a non-positive fps.
        BackendUnavailableError: (on the first write) OpenCV cannot open a writer for this codec here.
    """

    def __init__(self, path: str | Path, fps: float = 30.0) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_FOURCC:
            raise InputError(f"{self.path}: expected a video suffix in {sorted(VIDEO_FOURCC)}, got {suffix!r}")
        if not fps > 0:
            raise InputError(f"fps: expected > 0, got {fps!r}")
        self.fps = float(fps)
        self.fourcc = VIDEO_FOURCC[suffix]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height)
        self._warned_resize = False
        self.written = 0

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Append the frame's overlay."""
        overlay = render_overlay(frame.image, result.anomaly_map, result.threshold, result.score, result.boxes)
        h, w = overlay.shape[:2]
        if self._writer is None:
            writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*self.fourcc), self.fps, (w, h))
            if not writer.isOpened():
                raise BackendUnavailableError(
                    f"{self.path}: OpenCV cannot open a {self.fourcc} video writer at {w}x{h}; "
                    "try the other container (.avi MJPG is the most widely available)"
                )
            self._writer, self._size = writer, (w, h)
        elif self._size is not None and (w, h) != self._size:
            if not self._warned_resize:
                self._warned_resize = True
                log.warning("%s: frame of %dx%d resized to the video's %dx%d", self.path, w, h, *self._size)
            overlay = cv2.resize(overlay, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(_bgr(overlay))
        self.written += 1

    def close(self) -> None:
        """Finish the file; idempotent."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __repr__(self) -> str:
        return f"VideoSink({str(self.path)!r}, fourcc={self.fourcc!r})"


def display_available() -> bool:
    """Whether a window can be shown: on Linux, ``$DISPLAY`` or ``$WAYLAND_DISPLAY`` is set."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class DisplaySink:
    """Shows the overlay of every frame in an OpenCV window (``cv2.imshow``).

    Args:
        index: display number of ``display://N`` (used in the window title).

    Raises:
        BackendUnavailableError: this OpenCV has no GUI support (e.g. ``opencv-python-headless``).

    Attributes:
        quit_requested: set once the user pressed ``q`` or ``Esc`` in the window; the loop may stop on it.
    """

    def __init__(self, index: int = 0) -> None:
        self.window = f"lemo-edge display://{index}"
        try:
            cv2.namedWindow(self.window, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise BackendUnavailableError(f"display://{index}: this OpenCV build cannot open windows ({exc})") from exc
        self.quit_requested = False
        self._open = True

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Show the overlay and poll the keyboard for 1 ms."""
        overlay = render_overlay(frame.image, result.anomaly_map, result.threshold, result.score, result.boxes)
        cv2.imshow(self.window, _bgr(overlay))
        if (cv2.waitKey(1) & 0xFF) in (ord("q"), 27):
            self.quit_requested = True

    def close(self) -> None:
        """Close the window; idempotent."""
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.window)
            except cv2.error:
                pass

    def __repr__(self) -> str:
        return f"DisplaySink({self.window!r})"


# -- failing sinks ----------------------------------------------------------------------------------------------------


class SinkGuard:
    """A sink that never ends the run: a failed write is logged once, counted and retried with exponential backoff.

    After the ``n``-th failure in a row the sink is left out for ``min(backoff_max_s, backoff_min_s * 2 ** (n - 1))``
    seconds of ``clock`` (frames in between are not written to it, only counted), then tried again; the first write
    that succeeds ends the streak. ``KeyboardInterrupt`` and other non-``Exception`` errors still propagate.

    Args:
        sink: the sink to guard.
        name: its name in logs, the summary and ``failing_sinks``.
        clock: monotonic seconds for the backoff (the loop's clock).
        wall: Unix time for :attr:`since` (``time.time``).
        backoff_min_s: delay after the first failure of a streak (> 0).
        backoff_max_s: largest delay (>= ``backoff_min_s``).

    Raises:
        InputError: a non-positive ``backoff_min_s`` or ``backoff_max_s < backoff_min_s``.

    Attributes:
        failures: failed writes in the run (all streaks).
        streak: failed writes since the last success (0: healthy).
        skipped: frames not written because the sink was waiting out its backoff.
        error: ``"Type: message"`` of the last failure, or ``""``.
        since: Unix time of the streak's first failure, or None when healthy.
    """

    def __init__(
        self,
        sink: Sink,
        name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        if not backoff_min_s > 0 or not backoff_max_s >= backoff_min_s:
            raise InputError(
                f"sink backoff: expected 0 < backoff_min_s <= backoff_max_s, got {backoff_min_s!r}, {backoff_max_s!r}"
            )
        self.sink = sink
        self.name = name
        self._clock = clock
        self._wall = wall
        self.backoff_min_s = float(backoff_min_s)
        self.backoff_max_s = float(backoff_max_s)
        self.failures = 0
        self.streak = 0
        self.skipped = 0
        self.error = ""
        self.since: float | None = None
        self._retry_at = -math.inf
        self._missed = 0
        self._logged = False

    @property
    def failing(self) -> bool:
        """Whether the last write attempt failed."""
        return self.streak > 0

    @property
    def quit_requested(self) -> bool:
        """The guarded sink's ``quit_requested`` (a display's ``q``), False without one."""
        return bool(getattr(self.sink, "quit_requested", False))

    def write(self, frame: Frame, result: FrameResult) -> bool:
        """Write to the sink unless it is waiting out a backoff; returns whether the frame was written."""
        if self.streak and self._clock() < self._retry_at:
            self.skipped += 1
            self._missed += 1
            return False
        try:
            self.sink.write(frame, result)
        except Exception as err:  # noqa: BLE001 - a sink's failure (full disk, lost mount, ...) never ends the run
            self._failed(err)
            return False
        if self.streak:
            log.info(
                "sink %s recovered after %d failures (%d frames not written to it)",
                self.name,
                self.streak,
                self._missed,
            )
            self.streak, self.error, self.since, self._missed = 0, "", None, 0
        return True

    def _failed(self, err: Exception) -> None:
        self.failures += 1
        self._missed += 1
        self.streak += 1
        if self.since is None:
            self.since = self._wall()
        self.error = f"{type(err).__name__}: {err}"
        delay = min(self.backoff_max_s, self.backoff_min_s * 2.0 ** min(self.streak - 1, 64))
        self._retry_at = self._clock() + delay
        if not self._logged:
            self._logged = True
            log.warning(
                "sink %s failed (%s); retrying after %g s, the delay doubling up to %g s; the run goes on and "
                "further failures of this sink are only counted",
                self.name,
                self.error,
                delay,
                self.backoff_max_s,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        else:
            log.debug("sink %s failed again (%d in a row): %s", self.name, self.streak, self.error)

    def status(self) -> dict[str, Any] | None:
        """``{"sink", "error", "since", "failures"}`` while failing (``failures``: of this streak), else None."""
        if not self.streak:
            return None
        return {"sink": self.name, "error": self.error, "since": self.since, "failures": self.streak}

    def close(self) -> None:
        """Close the guarded sink."""
        self.sink.close()

    def __repr__(self) -> str:
        return f"SinkGuard({self.name!r})"


def sink_names(sinks: list[Any]) -> list[str]:
    """A distinct name per sink: its ``name`` attribute, its ``repr`` when it has its own, else its class name.

    Repeated names get ``#2``, ``#3``, ... appended.
    """
    names: list[str] = []
    for sink in sinks:
        name = getattr(sink, "name", None)
        if not isinstance(name, str) or not name:
            name = repr(sink) if type(sink).__repr__ is not object.__repr__ else type(sink).__name__
        base, n = name, 1
        while name in names:
            n += 1
            name = f"{base}#{n}"
        names.append(name)
    return names


def _open_sink(uri: str, headless: bool, mqtt_config: str | Path | None = None) -> Sink | None:
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"sink: expected a non-empty string ({ACCEPTED_SINKS}), got {uri!r}")
    text = uri.strip()
    if "://" in text:
        scheme, _, rest = text.partition("://")
        scheme = scheme.lower()
        if scheme == "display":
            if not rest.isdigit():
                raise InputError(f"{uri}: expected display://N")
            if headless:
                log.info("%s: skipped (headless)", uri)
                return None
            if not display_available():
                log.warning("%s: skipped: no display ($DISPLAY and $WAYLAND_DISPLAY are unset)", uri)
                return None
            try:
                return DisplaySink(int(rest))
            except BackendUnavailableError as exc:
                log.warning("%s: skipped: %s", uri, exc)
                return None
        if scheme in ("mqtt", "mqtts"):
            from .mqtt import MqttSink

            return MqttSink(text, config_path=mqtt_config)
        if scheme == "http":
            from .liveview import LiveViewSink, parse_live_uri

            return LiveViewSink(parse_live_uri(text))
        if scheme != "file":
            raise InputError(f"{uri}: unknown sink scheme {scheme!r}; accepted: {ACCEPTED_SINKS}")
        text = rest
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return EventsSink(path)
    if suffix in VIDEO_FOURCC:
        return VideoSink(path)
    if path.is_dir() or text.endswith(("/", os.sep)) or not suffix:
        return OverlayFolderSink(path)
    raise InputError(f"{uri}: unknown sink type {suffix!r}; accepted: {ACCEPTED_SINKS}")


def open_sinks(uris: list[str], *, headless: bool, mqtt_config: str | Path | None = None) -> list[Sink]:
    """Open the sinks named by ``uris`` (see the module docstring for the accepted forms).

    Args:
        uris: output URIs, e.g. ``["events.jsonl", "overlays/", "run.mp4", "display://0"]``.
        headless: never open a display; ``display://N`` is then logged and skipped (as it is without a display).
        mqtt_config: MQTT credentials/TLS file for ``mqtt://`` sinks (default ``$LEMO_EDGE_MQTT_CONFIG``).

    Returns:
        The opened sinks, in the order of ``uris`` (skipped displays left out).

    Raises:
        InputError: an unknown scheme or suffix, a bad ``mqtt://`` or ``http://`` URI, or a live view on an address
            other than loopback without a token (sinks opened before it are closed again).
        MissingDependencyError: an ``mqtt://`` sink without paho-mqtt >= 2.0.
    """
    if isinstance(uris, str):
        raise InputError(f"uris: expected a list of strings, got the string {uris!r}")
    sinks: list[Sink] = []
    try:
        for uri in uris:
            sink = _open_sink(uri, headless, mqtt_config)
            if sink is not None:
                sinks.append(sink)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
