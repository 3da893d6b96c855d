"""The live view sink (``http://HOST:PORT``): URI options, routes, the token, 404 outside its routes, and a viewer
that never reads does not hold up the loop."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from lemo_edge.backbone import FeatureLevel, FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError
from lemo_edge.model import LemoModel
from lemo_edge.runtime.frames import Frame, FrameResult
from lemo_edge.runtime.liveview import TOKEN_ENV, LiveViewOptions, LiveViewSink, parse_live_uri
from lemo_edge.runtime.sinks import open_sinks
from lemo_edge.updater import OnlineUpdater

TOKEN = "s3cret-token-0123456789"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _frame(index: int, h: int = 96, w: int = 128, seed: int = 0) -> Frame:
    image = np.random.default_rng(seed + index).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Frame(image, index, 1_700_000_000.0 + index)


def _result(score: float, threshold: float = 0.5, h: int = 96, w: int = 128) -> FrameResult:
    amap = np.full((h, w), score, np.float32)
    return FrameResult(score, amap, score > threshold, threshold, score <= threshold, {"total": 4.0}, reason="x")


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture
def sink() -> Iterator[LiveViewSink]:
    live = LiveViewSink(LiveViewOptions(port=0, fps=1000.0, anomalies=2))
    yield live
    live.close()


# -- URI options --------------------------------------------------------------------------------------------------


def test_parse_live_uri_defaults_and_parameters(tmp_path):
    options = parse_live_uri("http://127.0.0.1:8080", environ={})
    assert (options.host, options.port, options.token, options.fps) == ("127.0.0.1", 8080, None, 5.0)
    options = parse_live_uri("http://localhost:0/?fps=2.5&quality=60&width=320&history=50&anomalies=3", environ={})
    assert (options.fps, options.quality, options.width, options.history, options.anomalies) == (2.5, 60, 320, 50, 3)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    options = parse_live_uri(f"http://0.0.0.0:8080?token_file={token_file}", environ={TOKEN_ENV: "other"})
    assert options.host == "0.0.0.0" and options.token == TOKEN  # the file wins over the environment
    assert parse_live_uri("http://10.1.2.3:8080", environ={TOKEN_ENV: TOKEN}).token == TOKEN


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://127.0.0.1", r"expected a port, e.g. http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/admin", r"expected http://HOST:PORT\[/\]"),
        ("http://127.0.0.1:8080?colour=red", r"unknown parameters \['colour'\]"),
        ("http://127.0.0.1:8080?token=abc", r"the token is never taken from the URI; use \?token_file=PATH"),
        ("http://127.0.0.1:8080?fps=fast", r"expected fps=<float>, got 'fast'"),
        ("http://127.0.0.1:8080?fps=0", r"live view fps: expected a number > 0, got 0.0"),
        ("http://127.0.0.1:8080?quality=101", r"live view quality: expected 1..100, got 101"),
        ("http://127.0.0.1:8080?token_file=/nonexistent/t", r"token_file: expected a readable text file"),
    ],
)
def test_parse_live_uri_errors(uri, message):
    with pytest.raises(InputError, match=message):
        parse_live_uri(uri, environ={})


def test_refuses_a_non_loopback_address_without_a_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    expected = r"live view on 0.0.0.0: expected a token for an address other than loopback .*token_file=PATH.*"
    with pytest.raises(InputError, match=expected + TOKEN_ENV):
        open_sinks(["http://0.0.0.0:0"], headless=True)
    with pytest.raises(InputError, match="live view on 192.168.1.5: expected a token"):
        parse_live_uri("http://192.168.1.5:8080", environ={})


def test_port_in_use_is_a_clear_error(sink):
    with pytest.raises(InputError, match=rf"live view: cannot listen on 127.0.0.1:{sink.port}"):
        LiveViewSink(LiveViewOptions(port=sink.port))


# -- routes -------------------------------------------------------------------------------------------------------


def test_routes_page_status_frame_thumbnails(sink):
    status, headers, body = _get(sink.url + "frame.jpg")
    assert status == 503  # no frame yet
    for i, score in enumerate([0.1, 0.2, 0.9, 0.3, 0.8, 0.7]):
        sink.write(_frame(i), _result(score))
    status, headers, body = _get(sink.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "stream.mjpg" in page and "status.json" in page and "<canvas" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"

    status, headers, body = _get(sink.url + "status.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    state = json.loads(body)
    assert state["counts"]["frames"] == 6 and state["counts"]["anomalies"] == 3
    assert state["counts"]["threshold"] == 0.5 and state["counts"]["decision"] == "anomaly"
    assert state["history"]["frame"] == [0, 1, 2, 3, 4, 5]
    assert state["history"]["score"] == pytest.approx([0.1, 0.2, 0.9, 0.3, 0.8, 0.7])
    assert state["history"]["anomaly"] == [False, False, True, False, True, True]
    assert [a["frame"] for a in state["anomalies"]] == [5, 4]  # the last 2 (anomalies=2), newest first

    status, headers, body = _get(sink.url + "frame.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (96, 128, 3)
    status, _, body = _get(sink.url + state["anomalies"][0]["thumb"])
    assert status == 200 and cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape[1] == 128
    assert _get(sink.url + "thumb/1.jpg")[0] == 404  # the first anomaly's thumbnail was let go (anomalies=2)
    assert _get(sink.url + "status.json", method="HEAD")[0] == 200


def test_mjpeg_stream_sends_the_latest_frames(sink):
    sink.write(_frame(0), _result(0.1))
    with socket.create_connection(("127.0.0.1", sink.port), timeout=10) as conn:
        conn.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"--lemoframe") < 1 or b"\xff\xd9" not in data:
            data += conn.recv(65536)
        assert b"multipart/x-mixed-replace; boundary=lemoframe" in data
        sink.write(_frame(1), _result(0.2))
        while data.count(b"--lemoframe") < 2:
            data += conn.recv(65536)
    assert data.count(b"Content-Type: image/jpeg") >= 2


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/etc/passwd",
        "/../../etc/passwd",
        "/thumb/abc.jpg",
        "/thumb/7.jpg",
        "/status.json/x",
        "/x?/status.json",
    ],
)
def test_nothing_outside_its_routes(sink, path):
    sink.write(_frame(0), _result(0.9))
    assert _get(f"http://127.0.0.1:{sink.port}{path}")[0] == 404


def test_other_methods_are_refused(sink):
    assert _get(sink.url + "status.json", method="POST")[0] == 501
    assert _get(sink.url, method="DELETE")[0] == 501


def test_fps_limits_encoding_but_every_score_is_kept():
    clock = FakeClock()
    live = LiveViewSink(LiveViewOptions(port=0, fps=2.0, width=64), clock=clock)
    try:
        for i in range(20):
            live.write(_frame(i), _result(0.1))
            clock.now += 0.125  # 8 frames a second for 2.5 s
        assert live.encoded == 5  # 2 a second: at 0, 0.5, 1, 1.5 and 2 s
        state = json.loads(_get(live.url + "status.json")[2])
        assert len(state["history"]["score"]) == 20 and state["frames_published"] == 5
        jpeg = _get(live.url + "frame.jpg")[2]
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (48, 64)  # scaled to width
    finally:
        live.close()


def test_model_and_memory_state_after_attach(sink):
    spec = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 6, 8),))
    updater = OnlineUpdater(LemoModel(ModelConfig(size=64, memory_size=128, warmup=3), spec))
    sink.attach(updater)
    model = json.loads(_get(sink.url + "status.json")[2])["model"]
    assert model["input_size"] == 64 and model["memory_capacity"] == 128 and model["memory_items"] == 0
    assert model["warming_up"] is True and model["updates"] == 0 and model["letterbox"] is False
    sink.attach(OnlineUpdater(LemoModel(ModelConfig(size="64x128", letterbox=True, memory_size=128), spec)))
    model = json.loads(_get(sink.url + "status.json")[2])["model"]
    assert model["input_size"] == "64x128" and model["letterbox"] is True


def test_non_finite_scores_are_null_in_the_status(sink):
    sink.write(_frame(0), _result(float("nan")))
    state = json.loads(_get(sink.url + "status.json")[2])
    assert state["history"]["score"] == [None] and state["counts"]["score"] is None


# -- the token ----------------------------------------------------------------------------------------------------


def test_token_required_on_another_address():
    live = LiveViewSink(LiveViewOptions(host="0.0.0.0", port=0, token=TOKEN))
    try:
        live.write(_frame(0), _result(0.1))
        base = f"http://127.0.0.1:{live.port}"
        for path in ("/", "/status.json", "/frame.jpg", "/stream.mjpg", "/nope"):
            status, headers, body = _get(base + path)
            assert status == 401, path  # also outside the routes: nothing is told without the token
            assert headers["WWW-Authenticate"].startswith("Bearer") and b"expected the live view's token" in body
        assert _get(base + "/status.json?token=wrong")[0] == 401
        assert _get(base + "/status.json", {"Authorization": "Bearer " + TOKEN[:-1]})[0] == 401
        assert _get(base + "/status.json?token=")[0] == 401
        assert _get(base + "/status.json?token=" + TOKEN)[0] == 200
        assert _get(base + "/status.json", {"Authorization": "Bearer " + TOKEN})[0] == 200
        assert _get(base + "/frame.jpg", {"X-Lemo-Token": TOKEN})[0] == 200
        assert _get(base + "/nope?token=" + TOKEN)[0] == 404
    finally:
        live.close()


def test_token_from_the_environment_through_open_sinks(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    (live,) = open_sinks(["http://127.0.0.2:0"], headless=True)
    try:
        assert isinstance(live, LiveViewSink)
        assert _get(f"http://127.0.0.2:{live.port}/status.json")[0] == 401
        assert _get(f"http://127.0.0.2:{live.port}/status.json?token={TOKEN}")[0] == 200
    finally:
        live.close()


# -- a viewer never holds up the loop -----------------------------------------------------------------------------


def test_a_viewer_that_never_reads_does_not_block_the_loop():
    live = LiveViewSink(LiveViewOptions(port=0, fps=1000.0, quality=100, width=1024, client_timeout=2.0))
    stuck = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # ...and never reads a byte
    done = threading.Event()
    written = []

    def loop() -> None:
        for i in range(150):  # noise JPEGs of ~1 MB each: far more than the socket buffers hold
            live.write(_frame(i, 720, 1024), _result(0.1, h=720, w=1024))
            written.append(i)
        done.set()

    try:
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        # a liveness bound, not a speed one: a write blocked on the stuck viewer would never finish
        assert done.wait(timeout=120), f"the loop is blocked after {len(written)} frames"
        assert live.encoded == 150
        state = json.loads(_get(live.url + "status.json")[2])  # another viewer is served meanwhile
        assert state["counts"]["frames"] == 150
        assert _get(live.url + "frame.jpg")[0] == 200
    finally:
        stuck.close()
        live.close()
