"""The live view of a headless box: ``http://HOST:PORT`` serves a small page and a JSON status from the running loop.

Opened as a sink (``lemo-edge run SOURCE http://127.0.0.1:8080``, see :func:`parse_live_uri`), it serves:

- ``/``: the page: the current frame with its anomaly overlay (MJPEG), the score over time against the
  threshold (a canvas chart, plain JS, nothing fetched from elsewhere), the counts, the last anomalies with
  thumbnails, the model and memory state;
- ``/stream.mjpg``: the overlay as an MJPEG stream (``multipart/x-mixed-replace``), latest frame only;
- ``/frame.jpg``: the latest overlay as one JPEG;
- ``/status.json``: counts, the score history, the last anomalies, the model and memory state;
- ``/thumb/N.jpg``: the thumbnail of anomaly N (listed in the status);

and nothing else (404). It binds to 127.0.0.1 unless told otherwise. Any other bind address needs a token (from a
file, ``?token_file=PATH``, or ``$LEMO_EDGE_LIVE_TOKEN``); it refuses to start without one. With a token every
request must carry it, as ``Authorization: Bearer TOKEN``, ``X-Lemo-Token: TOKEN`` or ``?token=TOKEN``, compared
in constant time (:func:`hmac.compare_digest`); otherwise 401.

The loop never waits for a viewer: :meth:`LiveViewSink.write` renders and encodes at most ``fps`` overlays a second
and only swaps the latest JPEG and status under a lock; each viewer is served by its own server thread, which
sends the newest frame when it is ready for one (frames in between are skipped for that viewer) and gives up on
a viewer that has not taken data for ``client_timeout`` seconds.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from lemo_edge.errors import InputError
from lemo_edge.utils import json_safe

from .events import iso_time
from .frames import Frame, FrameResult
from .liveview_page import PAGE

log = logging.getLogger(__name__)

__all__ = ["TOKEN_ENV", "LiveViewOptions", "LiveViewSink", "parse_live_uri"]

TOKEN_ENV = "LEMO_EDGE_LIVE_TOKEN"
"""Environment variable holding the live view's token (the ``token_file`` query parameter takes precedence)."""

_QUERY_KEYS = ("token_file", "fps", "quality", "width", "history", "anomalies", "client_timeout")
_BOUNDARY = "lemoframe"


@dataclass(frozen=True)
class LiveViewOptions:
    """What the live view serves and how.

    Attributes:
        host: bind address (``127.0.0.1`` by default; anything not loopback needs ``token``).
        port: TCP port (0: any free one, see :attr:`LiveViewSink.port`).
        token: the token every request must carry, or None (loopback only).
        fps: at most this many overlays are rendered and encoded per second (> 0).
        quality: JPEG quality, 1..100.
        width: overlays wider than this are scaled down to it (pixels, >= 16).
        history: scores kept for the chart (>= 2).
        anomalies: last anomalies kept with their thumbnails (>= 1).
        client_timeout: seconds a viewer may take no data before it is dropped (> 0).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    fps: float = 5.0
    quality: int = 80
    width: int = 640
    history: int = 600
    anomalies: int = 8
    client_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"live view port: expected 0..65535, got {self.port!r}")
        if not (isinstance(self.fps, int | float) and math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"live view fps: expected a number > 0, got {self.fps!r}")
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise InputError(f"live view quality: expected 1..100, got {self.quality!r}")
        for name, value, low in (
            ("width", self.width, 16),
            ("history", self.history, 2),
            ("anomalies", self.anomalies, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise InputError(f"live view {name}: expected an int >= {low}, got {value!r}")
        if not (isinstance(self.client_timeout, int | float) and self.client_timeout > 0):
            raise InputError(f"live view client_timeout: expected > 0 seconds, got {self.client_timeout!r}")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise InputError("live view token: expected a non-empty token without white space")
        if self.token is None and not is_loopback(self.host):
            raise InputError(
                f"live view on {self.host}: expected a token for an address other than loopback (127.0.0.1, ::1): "
                f"put one in a file and add ?token_file=PATH to the URI, or set ${TOKEN_ENV}; "
                "or bind to 127.0.0.1 and reach it through an SSH tunnel"
            )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1``) or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_token(path: str) -> str:
    file = Path(path).expanduser()
    try:
        token = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"live view token_file: expected a readable text file, got {str(file)!r} ({err})") from err
    if not token:
        raise InputError(f"live view token_file: expected a token in {str(file)!r}, got an empty file")
    return token


def parse_live_uri(uri: str, environ: dict[str, str] | None = None) -> LiveViewOptions:
    """Options of a live view URI ``http://HOST:PORT[/][?token_file=PATH&fps=5&quality=80&width=640&...]``.

    The query keys are the fields of :class:`LiveViewOptions` (``token_file`` instead of ``token``, which is never
    taken from the URI: command lines are visible to every user of the box). Without ``token_file`` the token is
    ``$LEMO_EDGE_LIVE_TOKEN`` when set.

    Args:
        uri: the sink URI.
        environ: the environment to read the token from (default ``os.environ``).

    Raises:
        InputError: another scheme, a path other than ``/``, an unknown or malformed parameter, an unreadable
            token file, or a non-loopback address without a token.
    """
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() != "http":
        raise InputError(f"{uri}: expected http://HOST:PORT for the live view")
    if parts.path not in ("", "/") or parts.fragment or parts.username or parts.password:
        raise InputError(f"{uri}: expected http://HOST:PORT[/][?token_file=PATH&fps=N...], got a path or credentials")
    try:
        port = parts.port
    except ValueError as err:
        raise InputError(f"{uri}: expected a port 0..65535 ({err})") from None
    if port is None:
        raise InputError(f"{uri}: expected a port, e.g. http://127.0.0.1:8080")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if "token" in unknown:
        raise InputError(f"{uri}: the token is never taken from the URI; use ?token_file=PATH or ${TOKEN_ENV}")
    if unknown:
        raise InputError(f"{uri}: unknown parameters {unknown}; accepted: {list(_QUERY_KEYS)}")
    fields: dict[str, Any] = {"host": parts.hostname or "127.0.0.1", "port": port}
    for key, cast in (
        ("fps", float),
        ("quality", int),
        ("width", int),
        ("history", int),
        ("anomalies", int),
        ("client_timeout", float),
    ):
        if key in query:
            try:
                fields[key] = cast(query[key][-1])
            except ValueError:
                raise InputError(f"{uri}: expected {key}=<{cast.__name__}>, got {query[key][-1]!r}") from None
    env = os.environ if environ is None else environ
    if "token_file" in query:
        fields["token"] = _read_token(query["token_file"][-1])
    elif env.get(TOKEN_ENV, "").strip():
        fields["token"] = env[TOKEN_ENV].strip()
    return LiveViewOptions(**fields)


class _State:
    """What the sink shares with the server threads; every field is replaced (never mutated) under ``lock``."""

    def __init__(self, history: int, anomalies: int) -> None:
        self.lock = threading.Lock()
        self.new_frame = threading.Condition(self.lock)
        self.jpeg: bytes | None = None
        self.jpeg_seq = 0
        self.scores: deque[tuple[int, float | None, float | None, bool]] = deque(maxlen=history)
        self.anomalies: deque[dict[str, Any]] = deque(maxlen=anomalies)
        self.thumbs: dict[int, bytes] = {}
        self.counts: dict[str, Any] = {}
        self.model: dict[str, Any] = {}
        self.closed = False


def _model_state(updater: Any) -> dict[str, Any]:
    """Cheap host-side facts of the model and its memory (no device work): config, items, updates, threshold."""
    model = updater.model
    config = model.config
    memory = model.memory
    items = memory.items
    stats = updater._stats  # the counters without reading the last loss from the device
    return {
        "backbone": config.backbone,
        "input_size": config.size if isinstance(config.size, int) else "x".join(map(str, config.input_hw)),
        "letterbox": bool(config.letterbox),
        "method": config.method,
        "memory_capacity": int(getattr(memory, "capacity", config.memory_size)),
        "memory_items": int(items.shape[0]),
        "memory_device": str(items.device),
        "seen": int(stats.seen),
        "updates": int(stats.updates),
        "rejected": int(stats.rejected),
        "warmup": int(config.warmup),
        "warming_up": int(stats.seen) < int(config.warmup),
        "threshold_samples": int(updater.threshold.count),
    }


class LiveViewSink:
    """The live view as a sink: an HTTP server in its own thread, fed the latest overlay and status by :meth:`write`.

    Args:
        options: where to listen and what to serve (see :func:`parse_live_uri`).
        name: the sink's name in logs and the summary (default: its URL).
        clock: monotonic seconds for the ``fps`` limit and the frame rate shown (``time.monotonic``).

    Raises:
        InputError: the address cannot be bound (in use, not local, ...).

    Attributes:
        port: the port it listens on (the chosen one when ``options.port`` is 0).
        url: ``http://HOST:PORT/`` of the page.
        encoded: overlays rendered and encoded so far.
    """

    def __init__(
        self, options: LiveViewOptions, name: str | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.options = options
        self._clock = clock
        self._state = _State(options.history, options.anomalies)
        self._interval = 1.0 / options.fps
        self._last_encode = -math.inf
        self._anomaly_id = 0
        self._updater: Any = None
        self._t0 = clock()
        self._frames = 0
        self._anomalies = 0
        self._learned = 0
        self._ends: deque[float] = deque(maxlen=32)
        self._previous_latency: dict[str, float] = {}
        self.encoded = 0
        handler = _make_handler(self._state, options)
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        try:
            self._server = Server((options.host, options.port), handler)
        except OSError as err:
            raise InputError(f"live view: cannot listen on {options.host}:{options.port} ({err})") from err
        self.port = int(self._server.server_address[1])
        host = f"[{options.host}]" if ":" in options.host else options.host
        self.url = f"http://{host}:{self.port}/"
        self.name = name or f"live view {self.url}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="lemo-liveview", daemon=True
        )
        self._thread.start()
        log.info("live view at %s (%s)", self.url, "token required" if options.token else "no token, loopback only")

    def attach(self, updater: Any) -> None:
        """Show this model's config and memory state (an :class:`~lemo_edge.updater.OnlineUpdater`)."""
        self._updater = updater
        model = _model_state(updater)
        with self._state.lock:
            self._state.model = model

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Record the frame's score; at most ``fps`` times a second also render, encode and publish its overlay."""
        from .sinks import render_overlay

        now = self._clock()
        self._frames += 1
        self._anomalies += int(result.is_anomaly)
        self._learned += int(result.updated)
        self._ends.append(now)
        score = json_safe(float(result.score))
        threshold = json_safe(float(result.threshold))
        entry = (int(frame.index), score, threshold, bool(result.is_anomaly))
        thumb = None
        if result.is_anomaly:
            thumb = self._encode(
                render_overlay(frame.image, result.anomaly_map, result.threshold, result.score, result.boxes), 160
            )
        jpeg = None
        if now - self._last_encode >= self._interval:
            self._last_encode = now
            overlay = render_overlay(frame.image, result.anomaly_map, result.threshold, result.score, result.boxes)
            jpeg = self._encode(overlay, self.options.width)
            self.encoded += 1
        model = _model_state(self._updater) if self._updater is not None and jpeg is not None else None
        ends = self._ends
        fps = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else 0.0
        counts = {
            "frames": self._frames,
            "anomalies": self._anomalies,
            "learned": self._learned,
            "fps": fps,
            "last_frame": int(frame.index),
            "last_time": iso_time(frame.timestamp),
            "score": score,
            "threshold": threshold,
            "decision": "anomaly" if result.is_anomaly else "normal",
            "reason": result.reason,
            # the loop completes a frame's latencies after the sinks it writes first: the previous frame's are whole
            "latency_ms": json_safe(float(self._previous_latency.get("total", math.nan))),
            "failing_sinks": [str(f.get("sink", "")) for f in result.failing_sinks],
            "uptime_s": now - self._t0,
        }
        self._previous_latency = result.latency_ms
        state = self._state
        with state.lock:
            state.scores.append(entry)
            state.counts = counts
            if model is not None:
                state.model = model
            if thumb is not None:
                self._anomaly_id += 1
                if len(state.anomalies) == state.anomalies.maxlen:
                    state.thumbs.pop(state.anomalies[0]["id"], None)
                state.anomalies.append(
                    {"id": self._anomaly_id, "frame": int(frame.index), "time": counts["last_time"], "score": score}
                )
                state.thumbs[self._anomaly_id] = thumb
            if jpeg is not None:
                state.jpeg = jpeg
                state.jpeg_seq += 1
                state.new_frame.notify_all()

    def _encode(self, image: np.ndarray, width: int) -> bytes | None:
        h, w = image.shape[:2]
        if w > width:
            image = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.options.quality]
        )
        return buf.tobytes() if ok else None

    def close(self) -> None:
        """Stop serving (open streams end) and release the port; idempotent."""
        state = self._state
        with state.lock:
            if state.closed:
                return
            state.closed = True
            state.new_frame.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)

    def __repr__(self) -> str:
        return f"LiveViewSink({self.url!r})"


def _status(state: _State) -> dict[str, Any]:
    with state.lock:
        scores = list(state.scores)
        anomalies = list(state.anomalies)
        counts = dict(state.counts)
        model = dict(state.model)
        seq = state.jpeg_seq
    return {
        "counts": counts,
        "model": model,
        "frames_published": seq,
        "history": {
            "frame": [s[0] for s in scores],
            "score": [s[1] for s in scores],
            "threshold": [s[2] for s in scores],
            "anomaly": [s[3] for s in scores],
        },
        "anomalies": [{**a, "thumb": f"thumb/{a['id']}.jpg"} for a in reversed(anomalies)],
    }


def _make_handler(state: _State, options: LiveViewOptions) -> type[BaseHTTPRequestHandler]:
    token = options.token.encode() if options.token else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "lemo-edge-live"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = options.client_timeout  # socket timeout: a viewer that takes no data is dropped

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
            log.debug("live view %s: " + format, self.client_address[0], *args)

        def _authorised(self, query: dict[str, list[str]]) -> bool:
            if token is None:
                return True
            offered = []
            auth = self.headers.get("Authorization", "")
            if auth[:7].lower() == "bearer ":
                offered.append(auth[7:].strip())
            offered.append(self.headers.get("X-Lemo-Token", "").strip())
            offered.extend(query.get("token", []))
            # every candidate is compared (constant time each); an empty one never matches
            return any([hmac.compare_digest(o.encode(), token) for o in offered if o])

        def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self._common_headers()
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _common_headers(self) -> None:
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'none'; img-src 'self'; connect-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; frame-ancestors 'none'",
            )

        def _error(self, status: HTTPStatus, detail: str = "") -> None:
            body = (f"{status.value} {status.phrase}" + (f": {detail}" if detail else "") + "\n").encode()
            extra = {"WWW-Authenticate": 'Bearer realm="lemo-edge"'} if status == HTTPStatus.UNAUTHORIZED else None
            self._send(status, body, "text/plain; charset=utf-8", extra)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path, _, query_text = self.path.partition("?")
            query = parse_qs(query_text)
            if not self._authorised(query):
                self._error(HTTPStatus.UNAUTHORIZED, "expected the live view's token (header or ?token=)")
                return
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/status.json":
                body = json.dumps(_status(state), allow_nan=False, separators=(",", ":")).encode()
                self._send(HTTPStatus.OK, body, "application/json")
            elif path == "/frame.jpg":
                with state.lock:
                    jpeg = state.jpeg
                if jpeg is None:
                    self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
                else:
                    self._send(HTTPStatus.OK, jpeg, "image/jpeg")
            elif path.startswith("/thumb/") and path.endswith(".jpg") and path[7:-4].isdigit():
                with state.lock:
                    thumb = state.thumbs.get(int(path[7:-4]))
                if thumb is None:
                    self._error(HTTPStatus.NOT_FOUND)
                else:
                    self._send(HTTPStatus.OK, thumb, "image/jpeg")
            elif path == "/stream.mjpg":
                self._stream()
            else:
                self._error(HTTPStatus.NOT_FOUND)

        def _stream(self) -> None:
            """Send the newest JPEG each time there is one this viewer has not had; skipped ones are never queued."""
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
            self._common_headers()
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if self.command == "HEAD":
                return
            sent = 0

            def ready() -> bool:
                return state.closed or state.jpeg_seq != sent

            try:
                while True:
                    with state.lock:
                        state.new_frame.wait_for(ready, timeout=1.0)
                        if state.closed:
                            return
                        jpeg, seq = state.jpeg, state.jpeg_seq
                    if jpeg is None or seq == sent:
                        continue
                    head = f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    self.wfile.flush()
                    sent = seq
            except (OSError, ValueError) as err:  # the viewer went away or timed out (socket.timeout is an OSError)
                log.debug("live view %s: stream ended (%r)", self.client_address[0], err)

    return Handler
