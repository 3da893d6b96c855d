"""Tests of lemo_edge.runtime.sources: URI parsing, capture threads, drops, skips and reconnects."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lemo_edge.errors import InputError, SourceError
from lemo_edge.runtime.frames import Frame
from lemo_edge.runtime.sources import (
    CaptureSource,
    ImageFolderSource,
    Source,
    csi_pipeline,
    open_source,
)

H, W = 48, 64


def _bgr_frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    """(h, w, 3) uint8 BGR frame whose blue channel encodes i (so RGB conversion is checkable)."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[..., 0] = 200  # blue in BGR
    frame[..., 1] = i % 256
    return frame


class FakeCamera:
    """A shared script behind every capture the factory opens, like one physical camera.

    ``script`` is a list of ``"ok"``, ``"fail"``, ``"empty"`` or ``(h, w)`` (a frame of another size) steps;
    after the script, the camera keeps delivering (``tail="ok"``) or keeps failing (``tail="fail"``).
    """

    def __init__(self, script: list[object], tail: str = "ok", period_s: float = 0.001) -> None:
        self.script = list(script)
        self.tail = tail
        self.period_s = period_s
        self.step = 0
        self.delivered = 0
        self.opens: list[tuple[float, object, int]] = []
        self.lock = threading.Lock()

    def factory(self, target: object, api: int) -> FakeCapture:
        self.opens.append((time.monotonic(), target, api))
        return FakeCapture(self)

    def next_step(self) -> object:
        with self.lock:
            step = self.script[self.step] if self.step < len(self.script) else self.tail
            self.step += 1
            return step


class FakeCapture:
    def __init__(self, camera: FakeCamera) -> None:
        self.camera = camera
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return not self.released

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.camera.period_s)
        step = self.camera.next_step()
        if step == "fail":
            return False, None
        if step == "empty":
            return True, np.zeros((0, 0, 3), np.uint8)
        if isinstance(step, tuple):
            return True, _bgr_frame(0, *step)
        i = self.camera.delivered
        self.camera.delivered += 1
        return True, _bgr_frame(i)

    def release(self) -> None:
        self.released = True


def _collect(source: Source, n: int, deadline_s: float = 10.0, delay_s: float = 0.0) -> list[Frame]:
    frames: list[Frame] = []
    end = time.monotonic() + deadline_s
    while len(frames) < n and not source.exhausted and time.monotonic() < end:
        frame = source.read(timeout=0.2)
        if frame is not None:
            frames.append(frame)
            if delay_s:
                time.sleep(delay_s)
    return frames


# -- URIs -------------------------------------------------------------------------------------------------------------


def test_unknown_scheme_lists_accepted() -> None:
    with pytest.raises(InputError) as info:
        open_source("ftp://host/clip.mp4")
    message = str(info.value)
    assert "unknown source scheme 'ftp'" in message
    for accepted in ("csi://N", "/dev/videoN", "rtsp://", "file://PATH", "synthetic://"):
        assert accepted in message


def test_missing_path_is_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(str(tmp_path / "nope.mp4"))


def test_empty_folder_is_source_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(SourceError, match="found none"):
        open_source(str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"size": (0, 10)}, "size: expected"), ({"size": (10,)}, "size: expected"), ({"queue_size": 0}, "queue_size")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), _bgr_frame(0))
    with pytest.raises(InputError, match=match):
        open_source(str(tmp_path), **kwargs)


def test_csi_pipeline_text() -> None:
    text = csi_pipeline(1, 1920, 1080, 60, flip_method=2)
    assert text.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM)")
    assert "width=(int)1920, height=(int)1080" in text
    assert "framerate=(fraction)60/1" in text
    assert "nvvidconv flip-method=2" in text
    assert "format=(string)BGR ! appsink drop=true max-buffers=1" in text
    with pytest.raises(InputError, match="width"):
        csi_pipeline(0, 0, 720, 30)


@pytest.mark.parametrize(
    ("uri", "target", "api"),
    [
        ("0", 0, cv2.CAP_ANY),
        ("/dev/video3", "/dev/video3", cv2.CAP_V4L2),
        ("v4l2://2", 2, cv2.CAP_V4L2),
        ("rtsp://10.0.0.5:554/stream", "rtsp://10.0.0.5:554/stream", cv2.CAP_FFMPEG),
        ("http://cam.local/mjpg", "http://cam.local/mjpg", cv2.CAP_FFMPEG),
        ("csi://1?width=640&height=480&fps=15", csi_pipeline(1, 640, 480, 15), cv2.CAP_GSTREAMER),
    ],
)
def test_live_uris_open_the_right_target(uri: str, target: object, api: int) -> None:
    camera = FakeCamera([], tail="ok")
    with open_source(uri, capture_factory=camera.factory) as source:
        assert source.live
        assert camera.opens[0][1:] == (target, api)
        frame = source.read(timeout=5.0)
        assert frame is not None and frame.image.shape == (H, W, 3)


def test_camera_that_cannot_open_is_source_error() -> None:
    class Closed:
        def isOpened(self) -> bool:  # noqa: N802
            return False

        def release(self) -> None:
            pass

    with pytest.raises(SourceError, match="cannot open stream"):
        open_source("/dev/video9", capture_factory=lambda target, api: Closed())


# -- conversions ------------------------------------------------------------------------------------------------------


def test_folder_frames_follow_the_one_image_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Folder sources read files with lemo_edge.images.read_image, as ``eval`` does: 16-bit scaled, alpha dropped."""
    cv2.imwrite(str(tmp_path / "a16.png"), np.full((H, W), 257 * 100, np.uint16))
    bgra = np.dstack([_bgr_frame(7), np.full((H, W), 9, np.uint8)])
    cv2.imwrite(str(tmp_path / "b_alpha.png"), bgra)
    cv2.imwrite(str(tmp_path / "c_float.tiff"), np.zeros((H, W), np.float32))
    with caplog.at_level(logging.WARNING, logger="lemo_edge.runtime.sources"):
        with open_source(str(tmp_path)) as source:
            frames = list(source)
            stats = source.stats
    assert [f.name for f in frames] == ["a16.png", "b_alpha.png"]
    assert (frames[0].image == 100).all() and frames[0].image.shape == (H, W, 3)
    assert (frames[1].image[0, 0] == [0, 7, 200]).all()
    assert stats.skipped == {"unsupported_format": 1}
    assert any("expected uint8 or uint16 pixels, got (48, 64) float32" in r.getMessage() for r in caplog.records)


# -- files and folders ------------------------------------------------------------------------------------------------


def _write_video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (W, H))
    assert writer.isOpened()
    for i in range(n):
        writer.write(_bgr_frame(i * 10))
    writer.release()


def test_video_file_read_fully_without_drops(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, 20)
    with open_source(f"file://{path}", queue_size=2) as source:
        assert isinstance(source, CaptureSource) and not source.live
        frames = _collect(source, 1000, delay_s=0.005)  # a slow consumer: the producer must block, not drop
        assert source.exhausted
        stats = source.stats
    assert [f.index for f in frames] == list(range(20))
    assert stats.frames_read == 20 and stats.dropped == 0 and stats.skipped == {} and stats.reconnects == 0
    image = frames[5].image
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    # BGR blue (200) must arrive as RGB blue: channel 2.
    assert abs(int(image[..., 2].mean()) - 200) < 8 and image[..., 0].mean() < 8
    assert abs(int(image[..., 1].mean()) - 50) < 8


def test_video_file_resized(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, 3)
    with open_source(str(path), size=(24, 40)) as source:
        frames = list(source)
    assert len(frames) == 3 and all(f.resized is not None and f.resized.shape == (24, 40, 3) for f in frames)
    assert all(f.image.shape == (H, W, 3) for f in frames)  # the frame itself stays as captured, for the sinks


def test_folder_skips_corrupt_and_mismatched_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), _bgr_frame(1))
    (tmp_path / "b.png").write_bytes(b"\x89PNG this is not really a png" * 4)
    cv2.imwrite(str(tmp_path / "c.bmp"), np.full((H, W), 77, np.uint8))  # grayscale
    (tmp_path / "d.png").write_bytes(b"garbage")
    cv2.imwrite(str(tmp_path / "e.png"), _bgr_frame(2, 10, 10))  # another size
    cv2.imwrite(str(tmp_path / "f.JPG"), _bgr_frame(3))
    (tmp_path / "g.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="lemo_edge.runtime.sources"):
        with open_source(str(tmp_path)) as source:
            assert isinstance(source, ImageFolderSource) and not source.live
            frames = list(source)
            stats = source.stats
    assert [f.name for f in frames] == ["a.png", "c.bmp", "f.JPG"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert (frames[1].image == 77).all() and frames[1].image.shape == (H, W, 3)
    assert frames[0].image[0, 0, 2] == 200  # RGB
    assert stats.skipped == {"unreadable": 2, "size_mismatch": 1}
    assert stats.frames_read == 3 and stats.dropped == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("(unreadable)" in m for m in warnings) == 1  # logged once per kind
    assert sum("(size_mismatch)" in m for m in warnings) == 1


def test_single_image_file(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "one.png"), _bgr_frame(4))
    with open_source(str(tmp_path / "one.png")) as source:
        frames = list(source)
    assert len(frames) == 1 and frames[0].name == "one.png"


# -- live sources -----------------------------------------------------------------------------------------------------


def test_live_source_reconnects_with_backoff_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCamera(["ok"] * 5 + ["fail"] * 3 + ["ok"] * 5, tail="ok")
    with caplog.at_level(logging.INFO, logger="lemo_edge.runtime.sources"):
        source = open_source("/dev/video0", capture_factory=camera.factory)
        frames = _collect(source, 10)
        stats = source.stats
        source.close()
    assert len(frames) == 10
    indices = [f.index for f in frames]
    assert indices == sorted(indices) and indices[:5] == [0, 1, 2, 3, 4]
    assert stats.reconnects == 3 and len(camera.opens) == 4
    gaps = [b[0] - a[0] for a, b in zip(camera.opens[1:], camera.opens[2:], strict=False)]
    assert gaps[0] >= 0.19 and gaps[1] >= 0.39  # 0.1 s, then 0.2 s, then 0.4 s: doubling
    assert any("reopening" in r.getMessage() for r in caplog.records)
    assert any("delivering again" in r.getMessage() for r in caplog.records)
    assert not source._thread.is_alive()  # close() stopped the live capture thread


def test_live_source_backoff_is_capped() -> None:
    camera = FakeCamera(["ok"], tail="fail")
    source = CaptureSource("fake", 0, live=True, capture_factory=camera.factory, backoff_initial=0.01, backoff_max=0.02)
    time.sleep(0.5)
    source.close()
    # Capped at 0.02 s: ~20 reopens in 0.5 s; uncapped (0.01, 0.02, 0.04, 0.08, 0.16, ...) only 5 or 6.
    assert len(camera.opens) >= 12
    assert source.stats.reconnects == len(camera.opens) - 1


def test_slow_consumer_on_live_source_drops_oldest() -> None:
    camera = FakeCamera(["ok"] * 60, tail="fail")
    with open_source("0", queue_size=2, reconnect=False, capture_factory=camera.factory) as source:
        frames = _collect(source, 1000, delay_s=0.02)
        assert source.exhausted  # reconnect=False: the stream ends when the camera fails
        stats = source.stats
    assert stats.frames_read == 60 and stats.reconnects == 0
    assert stats.dropped > 0
    assert len(frames) + stats.dropped == 60
    indices = [f.index for f in frames]
    assert indices == sorted(indices) and indices[-1] == 59  # the newest frame survives


def test_live_source_skips_empty_and_mismatched_frames() -> None:
    camera = FakeCamera(["ok", "empty", (10, 10), "empty", "ok", "ok"], tail="fail")
    with open_source("0", reconnect=False, capture_factory=camera.factory) as source:
        frames = _collect(source, 1000)
        stats = source.stats
    assert len(frames) == 3
    assert stats.skipped == {"empty": 2, "size_mismatch": 1}


def test_read_times_out_with_none() -> None:
    camera = FakeCamera([], tail="ok", period_s=0.5)
    with open_source("0", capture_factory=camera.factory) as source:
        start = time.monotonic()
        assert source.read(timeout=0.05) is None
        assert time.monotonic() - start < 0.3
        assert not source.exhausted
    assert source.exhausted and source.read(timeout=0.0) is None


def test_unexpected_producer_error_surfaces_as_source_error() -> None:
    class Broken(ImageFolderSource):
        def _produce(self):  # type: ignore[override]
            yield from super()._produce()
            raise ZeroDivisionError("bug")

    path = Path(__file__)  # any existing file; reading it fails as an image
    with Broken("broken", [path]) as source:
        with pytest.raises(SourceError, match="capture failed: ZeroDivisionError"):
            list(source)
        assert source.stats.skipped == {"unreadable": 1}


# -- synthetic --------------------------------------------------------------------------------------------------------


def test_synthetic_source_carries_label_and_mask() -> None:
    from lemo_edge.synthetic import SyntheticStream

    expected = SyntheticStream(seed=3, size=64, defect_rate=0.5)
    with open_source("synthetic://?seed=3&defect_rate=0.5&size=64&n_train=10", queue_size=2) as source:
        assert not source.live
        frames = [next(source) for _ in range(8)]
    assert [f.index for f in frames] == list(range(8))
    for f in frames:
        sample = expected[f.index]
        assert f.image.shape == (64, 64, 3) and f.image.dtype == np.uint8
        assert np.array_equal(f.image, sample.image) and f.label == sample.label and f.name == sample.name
        assert f.mask is not None and f.mask.shape == (64, 64)
        assert bool(f.mask.any()) == (f.label == 1)
    assert {f.label for f in frames} == {0, 1}
    with open_source("synthetic://?seed=3&defect_rate=0.5&size=64", size=(32, 48)) as source:
        frame = next(source)
    assert frame.resized is not None and frame.resized.shape == (32, 48, 3)
    assert frame.image.shape == (64, 64, 3) and frame.mask is not None and frame.mask.shape == (64, 64)


def test_synthetic_source_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="unknown parameter 'colour'"):
        open_source("synthetic://?colour=red")
    monkeypatch.setitem(sys.modules, "lemo_edge.synthetic", None)  # import fails
    with pytest.raises(SourceError, match="synthetic generator is unavailable"):
        open_source("synthetic://?seed=0")
