"""Tests of lemo_edge.runtime.mqtt and .mqtt_queue: URI and credentials, the on-disk queue, and real runs against
mosquitto.

The broker tests start ``mosquitto`` on a free port bound to 127.0.0.1 (skipped when the binary is missing); every
wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError, MissingDependencyError
from lemo_edge.model import LemoModel
from lemo_edge.runtime.cli import ModuleBackend
from lemo_edge.runtime.frames import Frame, FrameResult
from lemo_edge.runtime.loop import InspectionLoop, LoopOptions
from lemo_edge.runtime.mqtt import MqttSink, parse_mqtt_uri, resolve_credentials
from lemo_edge.runtime.mqtt_queue import DiskQueue
from lemo_edge.runtime.sinks import open_sinks
from lemo_edge.runtime.sources import open_source
from lemo_edge.updater import OnlineUpdater

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
NO_BROKER = "needs the mosquitto broker (Debian: apt-get install -y mosquitto)" if MOSQUITTO is None else ""
needs_broker = pytest.mark.skipif(bool(NO_BROKER), reason=NO_BROKER)
SIZE = 64
CONFIG = ModelConfig(size=SIZE, memory_size=512, threshold_k=3.0)  # about 30 anomalies in 300 frames
FRAMES = 300
SYNTHETIC = f"synthetic://?defect_rate=0.2&seed=0&size={SIZE}"
TOPIC = "plant/line3/lemo"
COMPARED = ("time", "frame", "score", "decision", "threshold", "updated", "label", "boxes")


# -- helpers ----------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Broker:
    """A mosquitto process on 127.0.0.1:``port`` with persistence in ``folder`` (stop = SIGTERM, which saves it)."""

    def __init__(self, folder: Path, port: int, extra: str = "allow_anonymous true\n") -> None:
        self.folder, self.port = folder, port
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {port} 127.0.0.1\n{extra}persistence true\npersistence_location {folder}/\n{user}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        log = open(self.folder / "mosquitto.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {(self.folder / 'mosquitto.log').read_text()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        _wait_for(listening, 10, "mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if NO_BROKER:
        pytest.skip(NO_BROKER)
    b = Broker(tmp_path / "broker", _free_port())
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A paho client subscribed to ``TOPIC/#`` with QoS 1; ``persistent`` keeps its session across broker restarts."""

    def __init__(self, port: int, *, persistent: bool = False, **auth: str) -> None:
        import paho.mqtt.client as mqtt

        self.events: list[dict] = []
        self.heartbeats: list[dict] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="lemo-test-subscriber", clean_session=not persistent
        )
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{TOPIC}/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        _wait_for(self.subscribed.is_set, 10, "the subscriber's SUBACK")

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        data = json.loads(message.payload)  # type: ignore[attr-defined]
        with self._lock:
            (self.heartbeats if message.topic.endswith("/heartbeat") else self.events).append(data)  # type: ignore[attr-defined]

    def frames(self) -> list[int]:
        with self._lock:
            return [e["frame"] for e in self.events]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def backend(extractor) -> Iterator[ModuleBackend]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # leave the other core to the broker, the capture and the MQTT threads
    yield ModuleBackend(extractor, torch.device("cpu"))
    torch.set_num_threads(previous)


def _run(backend: ModuleBackend, sinks: list) -> None:
    """300 synthetic frames (20% defects) through the real loop and model into ``sinks``; closes them."""
    with open_source(SYNTHETIC, size=(SIZE, SIZE)) as source:
        loop = InspectionLoop(
            source, backend, OnlineUpdater(LemoModel(CONFIG, backend.spec)), sinks, options=LoopOptions(FRAMES)
        )
        summary = loop.run()
    for sink in sinks:
        sink.close()
    assert summary.frames == FRAMES


def _anomalies(events: Path) -> list[dict]:
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(records) == FRAMES
    return [r for r in records if r["decision"] == "anomaly"]


def _uri(port: int, queue: Path, **params: object) -> str:
    query = {"queue": queue, "heartbeat": 0.5, "reconnect_min": 0.1, "reconnect_max": 1, "flush_timeout": 15}
    query.update(params)
    return f"mqtt://127.0.0.1:{port}/{TOPIC}?" + "&".join(f"{k}={v}" for k, v in query.items())


def _frame_and_result(index: int, anomalous: bool = True) -> tuple[Frame, FrameResult]:
    frame = Frame(np.zeros((8, 8, 3), np.uint8), index=index, timestamp=1_700_000_000.0 + index, label=1)
    return frame, FrameResult(5.0, None, anomalous, 1.0, False, {"total": 1.0})


# -- URI, credentials, dependency -------------------------------------------------------------------------------------


def test_uri_defaults_and_parameters(tmp_path: Path) -> None:
    s = parse_mqtt_uri(f"mqtt://broker.plant/{TOPIC}?queue={tmp_path}", environ={})
    assert (s.host, s.port, s.topic, s.heartbeat_topic) == ("broker.plant", 1883, TOPIC, f"{TOPIC}/heartbeat")
    assert (s.heartbeat_s, s.queue_max, s.tls, s.username) == (10.0, 10_000, False, None)
    assert s.client_id.startswith("lemo-edge-") and s.queue_dir == tmp_path
    s = parse_mqtt_uri(f"mqtts://h/{TOPIC}?heartbeat=0&client_id=box-7&queue_max=5", environ={})
    assert (s.port, s.tls, s.heartbeat_s, s.client_id, s.queue_max) == (8883, True, 0.0, "box-7", 5)
    assert "box-7" in str(s.queue_dir)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("mqtt://line3:s3cret@broker:1883/t", "credentials in the URI are refused"),
        ("mqtt://broker:1883/", "expected a topic after the host"),
        ("mqtt://broker/a/+/c", "expected a topic without wildcards"),
        ("mqtt://broker/t?hearbeat=5", "unknown parameter 'hearbeat'; valid: ['heartbeat'"),
        ("mqtt://broker/t?heartbeat=-1", "expected heartbeat >= 0, got '-1'"),
        ("mqtt://broker/t?queue_max=0", "expected queue_max >= 1"),
        ("mqtt://broker:99999/t", "expected a port 1..65535"),
        ("mqtt://broker/t?client_id=a b", "expected client_id of 1-128 characters"),
    ],
)
def test_bad_uris_are_refused_with_the_reason(uri: str, message: str) -> None:
    with pytest.raises(InputError, match=None) as info:
        parse_mqtt_uri(uri, environ={})
    assert message in str(info.value)
    assert "s3cret" not in str(info.value)


def test_credentials_come_from_the_config_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "mqtt.json"
    config.write_text(json.dumps({"username": "file-user", "password": "file-pw", "ca": "/etc/ssl/ca.pem"}))
    config.chmod(0o600)
    assert resolve_credentials(config, {}) == {"username": "file-user", "password": "file-pw", "ca": "/etc/ssl/ca.pem"}
    env = {"LEMO_EDGE_MQTT_CONFIG": str(config), "LEMO_EDGE_MQTT_PASSWORD": "env-pw"}
    settings = parse_mqtt_uri("mqtt://h/t", environ=env)
    assert (settings.username, settings.password, settings.ca, settings.tls) == (
        "file-user",
        "env-pw",
        "/etc/ssl/ca.pem",
        True,
    )
    assert "env-pw" not in repr(settings)
    bad = tmp_path / "bad.json"
    bad.write_text('{"user": "x"}')
    with pytest.raises(InputError, match=r"unknown keys \['user'\]; valid: \['username', 'password'"):
        parse_mqtt_uri("mqtt://h/t", config_path=bad, environ={})
    with pytest.raises(InputError, match="mqtt config: expected a readable JSON file"):
        resolve_credentials(tmp_path / "missing.json", {})


def test_missing_paho_raises_with_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    with pytest.raises(MissingDependencyError, match=r"paho-mqtt is not available \(mqtt:// sinks\); install it with"):
        open_sinks([f"mqtt://127.0.0.1:1/t?queue={tmp_path}"], headless=True)


# -- the on-disk queue ------------------------------------------------------------------------------------------------


def test_queue_is_bounded_drops_the_oldest_and_survives_a_restart(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q", max_messages=3, fsync=False)
    seqs = [q.put(f"m{i}".encode()) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert len(q) == 3 and q.dropped == 2
    with pytest.raises(InputError, match="is in use by another process"):
        DiskQueue(tmp_path / "q")
    ((first, payload),) = q.take(1)
    assert payload == b"m2"
    q.ack(first)
    q.close()
    again = DiskQueue(tmp_path / "q", max_messages=3)
    assert [p for _, p in again.take(10)] == [b"m3", b"m4"]
    again.close()


# -- against a real broker --------------------------------------------------------------------------------------------


@needs_broker
def test_every_anomaly_event_is_published(broker: Broker, backend: ModuleBackend, tmp_path: Path) -> None:
    sub = Subscriber(broker.port)
    events = tmp_path / "events.jsonl"
    try:
        sinks = open_sinks([str(events), _uri(broker.port, tmp_path / "queue")], headless=True)
        assert isinstance(sinks[1], MqttSink)
        _run(backend, sinks)
        expected = _anomalies(events)
        assert len(expected) >= 20
        _wait_for(lambda: len(sub.frames()) >= len(expected), 15, f"{len(expected)} anomaly messages")
        time.sleep(0.2)  # a duplicate would arrive now
    finally:
        sub.close()
    assert sorted(sub.frames()) == [r["frame"] for r in expected]  # each exactly once
    got = {e["frame"]: e for e in sub.events}
    for want in expected:
        assert {k: got[want["frame"]].get(k) for k in COMPARED} == {k: want.get(k) for k in COMPARED}
        assert got[want["frame"]]["client_id"].startswith("lemo-edge-")
        assert got[want["frame"]]["boxes"]  # an anomaly has its regions, in the frame's pixels
    assert sub.heartbeats and sub.heartbeats[-1]["type"] == "heartbeat"
    assert {"frames", "anomalies", "last_frame", "fps", "queued", "dropped"} <= set(sub.heartbeats[-1])
    assert not list((tmp_path / "queue").glob("*.json"))  # every message acknowledged and deleted


@needs_broker
def test_no_anomaly_is_lost_while_the_broker_is_down(broker: Broker, backend: ModuleBackend, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, persistent=True)  # mosquitto keeps its session (persistence) over the restart
    events = tmp_path / "events.jsonl"
    outage: list[int] = []

    class BrokerSwitch:
        """Stops the broker at frame 100 and starts it again at frame 200 (the loop waits meanwhile)."""

        def write(self, frame: Frame, result: FrameResult) -> None:
            if frame.index == 100:
                broker.stop()
            if 100 <= frame.index < 200 and result.is_anomaly:
                outage.append(frame.index)
            if frame.index == 200:
                broker.start()

        def close(self) -> None:
            pass

    try:
        mqtt_sink = MqttSink(_uri(broker.port, tmp_path / "queue"))
        _run(backend, [BrokerSwitch(), mqtt_sink, *open_sinks([str(events)], headless=True)])
        expected = [r["frame"] for r in _anomalies(events)]
        assert outage, "no anomaly fell in the outage; the test proves nothing"
        _wait_for(lambda: set(expected) <= set(sub.frames()), 20, "every anomaly after the broker's restart")
    finally:
        sub.close()
    assert set(sub.frames()) == set(expected)  # at least once: duplicates allowed, nothing lost, nothing extra
    assert mqtt_sink.queue.dropped == 0 and not list((tmp_path / "queue").glob("*.json"))


@needs_broker
def test_username_and_password_come_from_the_config_file(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "line3", "s3cret"], check=True, capture_output=True)
    b = Broker(tmp_path / "broker", _free_port(), extra=f"allow_anonymous false\npassword_file {passwd}\n")
    b.start()
    config = tmp_path / "mqtt.json"
    config.write_text(json.dumps({"username": "line3", "password": "s3cret"}))
    config.chmod(0o600)
    try:
        sub = Subscriber(b.port, username="line3", password="s3cret")
        good = MqttSink(_uri(b.port, tmp_path / "q1", heartbeat=0), config_path=config)
        good.write(*_frame_and_result(7))
        good.write(*_frame_and_result(8, anomalous=False))
        good.close()
        _wait_for(lambda: sub.frames() == [7], 10, "the authenticated message")
        sub.close()
        anonymous = MqttSink(_uri(b.port, tmp_path / "q2", heartbeat=0, flush_timeout=0.5))
        anonymous.write(*_frame_and_result(9))
        anonymous.close()
        assert len(list((tmp_path / "q2").glob("*.json"))) == 1  # refused by the broker: kept for the next run
    finally:
        b.stop()
