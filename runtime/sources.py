"""Frame sources addressed by URIs, in the manner of jetson-inference's ``videoSource``.

Accepted URIs (see :func:`open_source`); "live" sources are cameras and streams:

- ``0``, ``/dev/video0``, ``v4l2://0``: V4L2 / default camera through ``cv2.VideoCapture`` (live).
- ``csi://0?width=1280&height=720&fps=30&flip=0``: Jetson CSI camera, GStreamer ``nvarguscamerasrc`` (live).
- ``rtsp://...``, ``rtsps://...``, ``http(s)://...``: network stream through FFmpeg (live), opened with bounded
  open/read timeouts (:func:`stream_capture_factory`) so that a frozen server or a lost network is noticed and
  the stream reopened; each outage is counted in :attr:`SourceStats.dropouts`.
- ``clip.mp4``, ``file://clip.avi``: video file.
- ``images/``, ``file://images``, ``one.png``: folder of images (or one image) read in name order, each converted by
  :func:`lemo_edge.images.read_image` (the one policy ``eval`` uses too: 16-bit scaled by 1/257, grayscale
  replicated, alpha dropped, other formats skipped as ``unsupported_format``).
- ``synthetic://?seed=0&defect_rate=0.1&size=256``: :class:`lemo_edge.synthetic.SyntheticStream` frames with
  ground-truth label and mask.

Every source captures in its own thread into a bounded queue. Live sources drop the oldest queued frame when the
consumer falls behind; finite sources block the producer instead, so nothing is lost. :meth:`Source.read` returns
``None`` on timeout and the loop goes on. Bad input never stops a loop: unreadable, empty, corrupt or wrongly sized
frames are skipped, counted in :attr:`SourceStats.skipped` and logged once per kind. A live source that stops
delivering is reopened with exponential backoff.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from lemo_edge.errors import DatasetError, InputError, SourceError, describe
from lemo_edge.images import IMAGE_SUFFIXES, read_image, to_rgb8

from .frames import Frame

log = logging.getLogger(__name__)

STREAM_SCHEMES: tuple[str, ...] = ("rtsp", "rtsps", "http", "https")
ACCEPTED_URIS = (
    "0 (camera index), /dev/videoN, v4l2://N, csi://N, rtsp://..., rtsps://..., http(s)://..., "
    "a video file or file://PATH, a folder of images (.jpg .png .bmp .tif) or an image file, "
    "synthetic://?seed=0&defect_rate=0.1&size=256"
)

# Seconds of a producer's blocking put before it re-checks the stop flag.
_PUT_POLL_S = 0.1
# Seconds close() waits for the capture thread.
_JOIN_TIMEOUT_S = 2.0


class CaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` the capture sources use (a test can provide a fake)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[Any, int], CaptureLike]
"""``(target, api_preference) -> capture``; target is a camera index, a path, a URL or a GStreamer pipeline."""


def default_capture_factory(target: Any, api: int) -> CaptureLike:
    """Open ``target`` with ``cv2.VideoCapture(target, api)``."""
    return cv2.VideoCapture(target, api)


# How long opening a network stream, and one read of it, may block before it counts as failed (the source then
# reopens with backoff). OpenCV's FFmpeg default is 30 s each; a stream whose server froze (or whose network went
# away without closing the connection) blocked the capture thread for longer than 40 s without these (measured
# with a SIGSTOPped RTSP server; with them the read fails about 5 s after the last frame).
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 5_000


def stream_capture_factory(target: Any, api: int) -> CaptureLike:
    """Open a network stream with ``cv2.VideoCapture`` and bounded open/read timeouts.

    Args:
        target: the stream URL (``rtsp://``, ``rtsps://``, ``http(s)://``).
        api: OpenCV backend preference (``cv2.CAP_FFMPEG``).

    Returns:
        The capture; a read that waits longer than :data:`STREAM_READ_TIMEOUT_MS` fails (``(False, None)``).
    """
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        STREAM_OPEN_TIMEOUT_MS,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        STREAM_READ_TIMEOUT_MS,
    ]
    return cv2.VideoCapture(target, api, params)


@dataclass
class SourceStats:
    """Counters of a source since it was opened.

    Attributes:
        frames_read: frames accepted by the capture thread (queued), dropped ones included.
        dropped: frames discarded unread because the consumer fell behind (live sources only).
        skipped: frames rejected before queueing, by kind (``"empty"``, ``"unreadable"``, ``"size_mismatch"``,
            ``"unsupported_format"``) -> count.
        reconnects: reopen attempts after a live source stopped delivering.
        dropouts: times a live source stopped delivering (each one followed by one or more reopen attempts).
        recovered: dropouts after which frames came again.
    """

    frames_read: int = 0
    dropped: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    dropouts: int = 0
    recovered: int = 0


@dataclass
class _Raw:
    """What a producer yields: an RGB image with its metadata, or the kind of a skipped frame."""

    image: np.ndarray | None
    label: int | None = None
    mask: np.ndarray | None = None
    name: str = ""
    skip: str = ""
    detail: str = ""


_END = object()


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise InputError(f"size: expected (height, width) of two positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def csi_pipeline(sensor_id: int, width: int, height: int, fps: int, flip_method: int = 0) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc), ending in a BGR appsink for OpenCV.

    Args:
        sensor_id: CSI sensor index (``csi://0`` -> 0).
        width: capture width in pixels.
        height: capture height in pixels.
        fps: capture frame rate.
        flip_method: ``nvvidconv flip-method`` (0 none, 2 rotate 180, ...).

    Returns:
        The pipeline string, to be opened with ``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)``.

    Raises:
        InputError: a negative sensor id, a non-positive size or frame rate, or a flip method outside 0..7.
    """
    for name, value, low in (("sensor_id", sensor_id, 0), ("width", width, 1), ("height", height, 1), ("fps", fps, 1)):
        if not isinstance(value, int) or value < low:
            raise InputError(f"csi_pipeline: expected {name} an int >= {low}, got {value!r}")
    if not isinstance(flip_method, int) or not 0 <= flip_method <= 7:
        raise InputError(f"csi_pipeline: expected flip_method in 0..7, got {flip_method!r}")
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"format=(string)NV12, framerate=(fraction){fps}/1 ! "
        f"nvvidconv flip-method={flip_method} ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def _opencv_has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class Source:
    """Base of every frame source: a capture thread feeding a bounded queue.

    Subclasses open their device in ``__init__`` (raising :class:`SourceError` when that fails), then call
    :meth:`_start`; the thread iterates :meth:`_produce` and releases the device with :meth:`_release`.

    Use as an iterator (ends at the end of a file/folder) or call :meth:`read` in a loop::

        with open_source("csi://0") as source:
            while not source.exhausted:
                frame = source.read(timeout=1.0)
                if frame is None:
                    continue
                ...
    """

    live: bool = False

    def __init__(self, uri: str, *, size: tuple[int, int] | None, queue_size: int, live: bool) -> None:
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            raise InputError(f"queue_size: expected an int >= 1, got {queue_size!r}")
        self.uri = uri
        self.live = live
        self.size = _check_size(size)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stats = SourceStats()
        self._warned: set[str] = set()
        self._expected_hw: tuple[int, int] | None = self.size
        self._next_index = 0
        self._exhausted = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- subclass hooks ---------------------------------------------------------------------------------------------
    def _produce(self) -> Iterator[_Raw]:
        """Yield RGB images (or skips) until the end of the input or until ``self._stop`` is set."""
        raise NotImplementedError

    def _release(self) -> None:
        """Release the device; runs in the capture thread when it ends."""

    # -- consumer side ---------------------------------------------------------------------------------------------
    @property
    def stats(self) -> SourceStats:
        """A snapshot of the counters (safe to keep; later frames do not change it)."""
        with self._lock:
            s = self._stats
            return SourceStats(s.frames_read, s.dropped, dict(s.skipped), s.reconnects, s.dropouts, s.recovered)

    @property
    def exhausted(self) -> bool:
        """True once the end of the input was reached and every queued frame was read, or after :meth:`close`."""
        return self._exhausted

    def read(self, timeout: float = 1.0) -> Frame | None:
        """Next frame, waiting at most ``timeout`` seconds.

        Args:
            timeout: seconds to wait; 0 polls.

        Returns:
            The next :class:`Frame` (``image (H, W, 3) uint8`` RGB), or None on timeout or once :attr:`exhausted`.

        Raises:
            SourceError: the capture thread failed on an unexpected error (raised once, at the end of the stream).
        """
        if self._exhausted:
            return None
        try:
            item = self._queue.get(timeout=max(float(timeout), 0.0))
        except queue.Empty:
            return None
        if item is _END:
            self._exhausted = True
            if self._error is not None:
                error, self._error = self._error, None
                raise SourceError(f"{self.uri}: capture failed: {error!r}") from error
            return None
        return item

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        while True:
            frame = self.read(timeout=0.5)
            if frame is not None:
                return frame
            if self._exhausted:
                raise StopIteration

    def close(self) -> None:
        """Stop the capture thread and release the device; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning(
                    "%s: capture thread still blocked after %.1f s; it will exit on its own", self.uri, _JOIN_TIMEOUT_S
                )
        self._drain()
        self._exhausted = True

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, live={self.live})"

    # -- producer side ---------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"lemo-source:{self.uri}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in self._produce():
                if self._stop.is_set():
                    break
                frame = self._accept(raw)
                if frame is not None:
                    self._put(frame)
        except Exception as exc:  # unexpected: surfaced by read() at the end of the stream
            log.exception("%s: capture thread failed", self.uri)
            self._error = exc
        finally:
            try:
                self._release()
            except Exception:
                log.exception("%s: release failed", self.uri)
            self._put_blocking(_END)

    def _skip(self, kind: str, detail: str) -> None:
        with self._lock:
            self._stats.skipped[kind] = self._stats.skipped.get(kind, 0) + 1
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(
                "%s: skipped a frame (%s): %s; further '%s' skips are only counted in stats.skipped",
                self.uri,
                kind,
                detail,
                kind,
            )
        else:
            log.debug("%s: skipped a frame (%s): %s", self.uri, kind, detail)

    def _accept(self, raw: _Raw) -> Frame | None:
        if raw.skip:
            self._skip(raw.skip, raw.detail)
            return None
        image = raw.image
        if image is None or image.size == 0:
            self._skip("empty", "no image data")
            return None
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            self._skip("unsupported_format", f"expected (H, W, 3) uint8, got {describe(image)}")
            return None
        h, w = image.shape[:2]
        resized = None
        if self.size is not None:  # the model's input, made here in the capture thread; the frame stays as captured
            resized = image if (h, w) == self.size else cv2.resize(image, self.size[::-1], interpolation=cv2.INTER_AREA)
        elif self._expected_hw is None:
            self._expected_hw = (h, w)
        elif (h, w) != self._expected_hw:
            self._skip("size_mismatch", f"expected {self._expected_hw[0]}x{self._expected_hw[1]}, got {h}x{w}")
            return None
        frame = Frame(
            image=np.ascontiguousarray(image),
            index=self._next_index,
            timestamp=time.time(),
            label=None if raw.label is None else int(raw.label),
            mask=raw.mask,
            name=raw.name,
            resized=None if resized is None else np.ascontiguousarray(resized),
        )
        self._next_index += 1
        return frame

    def _put(self, frame: Frame) -> None:
        with self._lock:
            self._stats.frames_read += 1
        if not self.live:
            self._put_blocking(frame)
            return
        while not self._stop.is_set():
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    continue
                with self._lock:
                    self._stats.dropped += 1

    def _put_blocking(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_PUT_POLL_S)
                return
            except queue.Full:
                continue
        if item is _END:  # closing: make sure a reader blocked in read() wakes up
            self._drain()
            try:
                self._queue.put_nowait(_END)
            except queue.Full:
                pass

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class CaptureSource(Source):
    """A ``cv2.VideoCapture``-like device: camera, CSI pipeline, network stream or video file.

    Args:
        uri: the URI the source was opened from (for messages).
        target: what the capture factory opens (camera index, device path, URL, pipeline string, file path).
        api: OpenCV backend preference (``cv2.CAP_ANY``, ``cv2.CAP_V4L2``, ``cv2.CAP_GSTREAMER``, ...).
        live: True for cameras and streams (drop oldest frames, reconnect); False for files (block, end on EOF).
        size: ``(height, width)`` of ``Frame.resized`` (the model's input), or None to keep the first frame's size.
        queue_size: frames buffered between the capture thread and the consumer.
        reconnect: reopen a live source that stops delivering; if False, the stream ends instead.
        capture_factory: opens ``(target, api)``; defaults to ``cv2.VideoCapture``. Tests pass a fake.
        backoff_initial: first reopen delay in seconds, doubled after every failed attempt.
        backoff_max: largest reopen delay in seconds.

    Raises:
        SourceError: the device cannot be opened at all.
    """

    def __init__(
        self,
        uri: str,
        target: Any,
        api: int = cv2.CAP_ANY,
        *,
        live: bool,
        size: tuple[int, int] | None = None,
        queue_size: int = 4,
        reconnect: bool = True,
        capture_factory: CaptureFactory | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        super().__init__(uri, size=size, queue_size=queue_size, live=live)
        if not backoff_initial > 0 or not backoff_max >= backoff_initial:
            raise InputError(
                f"backoff: expected 0 < backoff_initial <= backoff_max, got {backoff_initial!r}, {backoff_max!r}"
            )
        self.target = target
        self.api = api
        self.reconnect = reconnect
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self._factory: CaptureFactory = capture_factory or default_capture_factory
        self._delay = self.backoff_initial
        self._capture: CaptureLike | None = self._open_capture()
        if self._capture is None:
            hint = ""
            if api == cv2.CAP_GSTREAMER and capture_factory is None and not _opencv_has_gstreamer():
                hint = " (this OpenCV build has no GStreamer support; install the JetPack OpenCV)"
            raise SourceError(f"{uri}: cannot open {'stream' if live else 'video file'} {target!r}{hint}")
        self._start()

    def _open_capture(self) -> CaptureLike | None:
        try:
            capture = self._factory(self.target, self.api)
        except Exception as exc:
            log.debug("%s: opening %r raised %r", self.uri, self.target, exc)
            return None
        try:
            if capture.isOpened():
                return capture
            capture.release()
        except Exception as exc:
            log.debug("%s: capture of %r unusable: %r", self.uri, self.target, exc)
        return None

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def _read_one(self) -> tuple[bool, np.ndarray | None]:
        if self._capture is None:
            return False, None
        try:
            return self._capture.read()
        except Exception as exc:  # cv2.error from a broken stream counts as a failed read
            log.debug("%s: read raised %r", self.uri, exc)
            return False, None

    def _reopen(self, attempt: int) -> bool:
        """Wait the backoff delay and reopen; False if the source was closed meanwhile."""
        delay = self._delay
        self._delay = min(delay * 2.0, self.backoff_max)
        if attempt == 1:
            log.warning(
                "%s: capture stopped delivering; reopening with backoff (%.1f s, doubling up to %.1f s)",
                self.uri,
                delay,
                self.backoff_max,
            )
        else:
            log.info("%s: reopen attempt %d in %.1f s", self.uri, attempt, delay)
        if self._stop.wait(delay):
            return False
        self._release()
        with self._lock:
            self._stats.reconnects += 1
        self._capture = self._open_capture()
        return True

    def _produce(self) -> Iterator[_Raw]:
        failures = 0
        while not self._stop.is_set():
            ok, image = self._read_one()
            if not ok:
                if not self.live:
                    return  # end of file
                if not self.reconnect:
                    log.warning("%s: capture stopped delivering; reconnect is off, ending the stream", self.uri)
                    return
                failures += 1
                if failures == 1:
                    with self._lock:
                        self._stats.dropouts += 1
                if not self._reopen(failures):
                    return
                continue
            if failures:
                log.warning("%s: capture delivering again after %d reopen attempt(s)", self.uri, failures)
                failures = 0
                with self._lock:
                    self._stats.recovered += 1
            self._delay = self.backoff_initial
            if image is None or getattr(image, "size", 0) == 0:
                yield _Raw(None, skip="empty", detail="capture returned an empty frame")
                continue
            try:
                yield _Raw(to_rgb8(image))
            except InputError as exc:
                yield _Raw(None, skip="unsupported_format", detail=str(exc))


class ImageFolderSource(Source):
    """Image files read in name order (``.jpg .jpeg .png .bmp .tif .tiff``, case-insensitive).

    Args:
        uri: the URI the source was opened from (for messages).
        paths: the image files, in the order they are read.
        size: ``(height, width)`` of ``Frame.resized`` (the model's input), or None to keep the first image's size.
        queue_size: frames buffered between the reading thread and the consumer.

    Raises:
        SourceError: no image file to read.
    """

    def __init__(
        self, uri: str, paths: list[Path], *, size: tuple[int, int] | None = None, queue_size: int = 4
    ) -> None:
        super().__init__(uri, size=size, queue_size=queue_size, live=False)
        if not paths:
            raise SourceError(f"{uri}: expected image files ({' '.join(IMAGE_SUFFIXES)}), found none")
        self.paths = list(paths)
        self._start()

    @classmethod
    def from_folder(cls, uri: str, folder: Path, **kwargs: Any) -> ImageFolderSource:
        """Open every image file directly in ``folder``, sorted by name."""
        paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return cls(uri, paths, **kwargs)

    def _produce(self) -> Iterator[_Raw]:
        for path in self.paths:
            if self._stop.is_set():
                return
            try:
                image = read_image(path)
            except DatasetError as exc:  # missing, unreadable or not decodable
                yield _Raw(None, skip="unreadable", detail=str(exc))
                continue
            except InputError as exc:  # decoded, but outside lemo_edge.images' policy (e.g. float pixels)
                yield _Raw(None, skip="unsupported_format", detail=str(exc))
                continue
            yield _Raw(image, name=path.name)


class SyntheticSource(Source):
    """Frames from :class:`lemo_edge.synthetic.SyntheticStream`, with ground-truth label and mask.

    Args:
        uri: ``synthetic://?seed=0&defect_rate=0.1&size=256`` (parsed by ``lemo_edge.synthetic.parse_synthetic_uri``).
        size: ``(height, width)`` of ``Frame.resized`` (the model's input), or None.
        queue_size: frames buffered between the generator thread and the consumer.

    Raises:
        SourceError: ``lemo_edge.synthetic`` cannot be imported.
        InputError: a malformed synthetic URI (from ``parse_synthetic_uri``).
    """

    def __init__(self, uri: str, *, size: tuple[int, int] | None = None, queue_size: int = 4) -> None:
        super().__init__(uri, size=size, queue_size=queue_size, live=False)
        try:
            synthetic = importlib.import_module("lemo_edge.synthetic")
        except ImportError as exc:
            raise SourceError(f"{uri}: the synthetic generator is unavailable: {exc}") from exc
        self.params: dict[str, Any] = dict(synthetic.parse_synthetic_uri(uri))
        # The URI may also carry dataset-split parameters (n_train, ...) that the stream does not take.
        stream_keys = ("seed", "size", "defect_rate")
        shaped = self.params["width"] or self.params["height"]
        self._stream = synthetic.SyntheticStream(
            **{k: self.params[k] for k in stream_keys if k in self.params},
            shape=synthetic.frame_shape(self.params) if shaped else None,
            defect_px=synthetic.defect_px(self.params),
        )
        self._start()

    def _produce(self) -> Iterator[_Raw]:
        for sample in self._stream:
            if self._stop.is_set():
                return
            yield _Raw(sample.image, label=sample.label, mask=sample.mask, name=sample.name)


def _query_int(query: dict[str, list[str]], key: str, default: int, uri: str) -> int:
    if key not in query:
        return default
    try:
        return int(query[key][-1])
    except ValueError:
        raise InputError(f"{uri}: expected {key}=<int>, got {key}={query[key][-1]!r}") from None


def open_source(
    uri: str,
    *,
    size: tuple[int, int] | None = None,
    queue_size: int = 4,
    reconnect: bool = True,
    capture_factory: CaptureFactory | None = None,
) -> Source:
    """Open a frame source from a URI (see the module docstring for the accepted forms).

    Args:
        uri: camera index, ``/dev/videoN``, ``v4l2://N``, ``csi://N[?width=&height=&fps=&flip=]``, ``rtsp://``,
            ``rtsps://``, ``http(s)://`` stream, video file path or ``file://PATH``, folder of images or image file,
            ``synthetic://?...``.
        size: ``(height, width)`` every frame is also resized to (``cv2.INTER_AREA``, in the capture thread) as
            ``Frame.resized``, the frame itself staying as captured; None: no resized copy, and frames of another
            size than the first are skipped.
        queue_size: frames buffered between the capture thread and the consumer (>= 1).
        reconnect: reopen a live source that stops delivering (exponential backoff 0.1 s doubling up to 5 s).
        capture_factory: opens ``(target, api_preference)`` for camera/stream/video sources; defaults to
            ``cv2.VideoCapture``.

    Returns:
        A started :class:`Source`; close it (or use it as a context manager).

    Raises:
        InputError: an unknown scheme, a malformed URI or bad ``size``/``queue_size``.
        SourceError: the source cannot be opened at all (missing file, camera not found, no image in a folder).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"uri: expected a non-empty string ({ACCEPTED_URIS}), got {uri!r}")
    uri = uri.strip()
    capture_kw: dict[str, Any] = {
        "size": size,
        "queue_size": queue_size,
        "reconnect": reconnect,
        "capture_factory": capture_factory,
    }
    if uri.isdigit():
        return CaptureSource(uri, int(uri), cv2.CAP_ANY, live=True, **capture_kw)
    if uri.startswith("/dev/video"):
        return CaptureSource(uri, uri, cv2.CAP_V4L2, live=True, **capture_kw)

    if "://" in uri:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "v4l2":
            device = parts.netloc + parts.path
            if device.isdigit():
                return CaptureSource(uri, int(device), cv2.CAP_V4L2, live=True, **capture_kw)
            if device.startswith("/dev/video"):
                return CaptureSource(uri, device, cv2.CAP_V4L2, live=True, **capture_kw)
            raise InputError(f"{uri}: expected v4l2://N or v4l2:///dev/videoN")
        if scheme == "csi":
            if not parts.netloc.isdigit() or parts.path not in ("", "/"):
                raise InputError(f"{uri}: expected csi://N[?width=W&height=H&fps=F&flip=M]")
            query = parse_qs(parts.query)
            pipeline = csi_pipeline(
                int(parts.netloc),
                _query_int(query, "width", 1280, uri),
                _query_int(query, "height", 720, uri),
                _query_int(query, "fps", 30, uri),
                _query_int(query, "flip", 0, uri),
            )
            return CaptureSource(uri, pipeline, cv2.CAP_GSTREAMER, live=True, **capture_kw)
        if scheme in STREAM_SCHEMES:
            stream_kw = {**capture_kw, "capture_factory": capture_factory or stream_capture_factory}
            return CaptureSource(uri, uri, cv2.CAP_FFMPEG, live=True, **stream_kw)
        if scheme == "synthetic":
            return SyntheticSource(uri, size=size, queue_size=queue_size)
        if scheme == "file":
            path = Path(uri.split("://", 1)[1])  # file://rel/path and file:///abs/path, taken verbatim
        else:
            raise InputError(f"{uri}: unknown source scheme {scheme!r}; accepted: {ACCEPTED_URIS}")
    else:
        path = Path(uri)

    path = path.expanduser()
    if path.is_dir():
        return ImageFolderSource.from_folder(uri, path, size=size, queue_size=queue_size)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(uri, [path], size=size, queue_size=queue_size)
    if path.is_file():
        return CaptureSource(uri, str(path), cv2.CAP_ANY, live=False, **capture_kw)
    raise SourceError(f"{uri}: no such file or folder {str(path)!r}; accepted: {ACCEPTED_URIS}")
