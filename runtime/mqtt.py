"""``mqtt://host:port/topic`` sink: anomaly events and heartbeats to a plant's MQTT broker, none lost while it is away.

URI (the topic is the URI's path; parameters in the query)::

    mqtt://broker.plant:1883/plant/line3/lemo?heartbeat=10&client_id=line3-box
    mqtts://broker.plant:8883/plant/line3/lemo        (TLS; the CA comes from the config file or LEMO_EDGE_MQTT_CA)

What is published, all QoS 1 (at least once):

- on ``TOPIC``, one JSON message per anomalous frame: the fields of the events file
  (:func:`~lemo_edge.runtime.events.event_record`; ``latency_ms`` covers the stages up to this sink) plus
  ``client_id`` and ``seq``, a number that increases with every message of a queue (consumers may de-duplicate on
  ``(client_id, seq)``: a message whose acknowledgement was lost is sent again);
- on ``TOPIC/heartbeat`` (``heartbeat_topic=``), every ``heartbeat`` seconds while connected: frames, anomalies, the
  last frame's time and index, recent fps, and the queue's length and drop count. Heartbeats are not queued.

Nothing is lost while the broker is away: :meth:`MqttSink.write` writes the message to a
:class:`~lemo_edge.runtime.mqtt_queue.DiskQueue` (a folder
of one JSON file per message, written atomically and fsynced) and returns; a worker thread hands queued messages to
the MQTT client while it is connected and deletes each file only when its PUBACK arrives. Messages left when a run
ends (broker down) are sent by the next run using the same queue folder. The queue is bounded by ``queue_max``
messages: when full, the oldest message is dropped, counted and logged. The client reconnects by itself with
exponential backoff (``reconnect_min`` doubling up to ``reconnect_max`` seconds).

Parameters: ``heartbeat`` (seconds, 0 = none; default 10), ``heartbeat_topic``, ``client_id`` (default
``lemo-edge-<hostname>``), ``queue`` (folder; default ``<cache>/mqtt/<client_id>-<host>-<port>-<topic>``),
``queue_max`` (10000), ``keepalive`` (30 s), ``reconnect_min`` (0.5 s), ``reconnect_max`` (30 s), ``flush_timeout``
(seconds :meth:`MqttSink.close` waits for the queue to drain; 5), ``tls`` (0/1; default 1 for ``mqtts://``) and
``config`` (path of the config file below).

Credentials and TLS never come from the command line: a URI with ``user:password@`` is refused. They come from a
JSON config file (``--mqtt-config PATH``, ``config=PATH`` or ``$LEMO_EDGE_MQTT_CONFIG``) with the keys
``username``, ``password``, ``ca``, ``certfile``, ``keyfile``, ``tls``, ``tls_insecure``, and from the environment
variables ``LEMO_EDGE_MQTT_USERNAME``, ``LEMO_EDGE_MQTT_PASSWORD`` and ``LEMO_EDGE_MQTT_CA``, which take precedence
over the file. A CA or client certificate turns TLS on.

``paho-mqtt >= 2.0`` is imported when a sink is created (``pip install 'lemo-edge[mqtt]'``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from lemo_edge.config import parse_json_object
from lemo_edge.errors import InputError, MissingDependencyError

from .events import event_record, iso_time
from .frames import Frame, FrameResult
from .mqtt_queue import DiskQueue

log = logging.getLogger(__name__)

SCHEMES: tuple[str, ...] = ("mqtt", "mqtts")
DEFAULT_PORTS: dict[str, int] = {"mqtt": 1883, "mqtts": 8883}
ENV_CONFIG = "LEMO_EDGE_MQTT_CONFIG"
ENV_USERNAME = "LEMO_EDGE_MQTT_USERNAME"
ENV_PASSWORD = "LEMO_EDGE_MQTT_PASSWORD"
ENV_CA = "LEMO_EDGE_MQTT_CA"
CONFIG_KEYS: tuple[str, ...] = ("username", "password", "ca", "certfile", "keyfile", "tls", "tls_insecure")
PAHO_HINT = "pip install 'paho-mqtt>=2.0' (or: pip install 'lemo-edge[mqtt]')"
QOS = 1
# Messages handed to the MQTT client and not yet acknowledged, at most (the rest wait on disk).
INFLIGHT_WINDOW = 100

_PARAMS: tuple[str, ...] = (
    "heartbeat",
    "heartbeat_topic",
    "client_id",
    "queue",
    "queue_max",
    "keepalive",
    "reconnect_min",
    "reconnect_max",
    "flush_timeout",
    "tls",
    "config",
)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def import_paho() -> Any:
    """Import ``paho.mqtt.client`` (2.x).

    Raises:
        MissingDependencyError: paho-mqtt is not installed, or it is 1.x (no ``CallbackAPIVersion``).
    """
    try:
        import paho.mqtt.client as mqtt
    except ImportError as err:
        raise MissingDependencyError("paho-mqtt", PAHO_HINT, "mqtt:// sinks") from err
    if not hasattr(mqtt, "CallbackAPIVersion"):
        found = getattr(getattr(mqtt, "paho", None), "__version__", "1.x")
        raise MissingDependencyError("paho-mqtt>=2.0", PAHO_HINT, f"mqtt:// sinks use the 2.x API, found {found}")
    return mqtt


# -- settings ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttSettings:
    """Where and how an :class:`MqttSink` publishes (see the module docstring for the URI).

    Attributes:
        host: broker host name or address.
        port: broker port.
        topic: topic of the anomaly messages.
        heartbeat_topic: topic of the heartbeats.
        heartbeat_s: seconds between heartbeats (0: none).
        client_id: MQTT client id (one per box).
        queue_dir: folder of the on-disk queue.
        queue_max: the queue holds at most this many messages; the oldest is dropped when full.
        keepalive_s: MQTT keepalive.
        reconnect_min_s: first reconnect delay; doubles after every failed attempt...
        reconnect_max_s: ...up to this.
        flush_timeout_s: how long :meth:`MqttSink.close` waits for the queue to drain.
        tls: connect with TLS.
        ca: CA bundle file (None: the system's CAs).
        certfile: client certificate file (mutual TLS), or None.
        keyfile: client key file, or None.
        tls_insecure: do not check the broker's host name (testing only).
        username: user name, or None.
        password: password, or None (never shown in ``repr``).
    """

    host: str
    port: int
    topic: str
    heartbeat_topic: str
    heartbeat_s: float
    client_id: str
    queue_dir: Path
    queue_max: int = 10_000
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    flush_timeout_s: float = 5.0
    tls: bool = False
    ca: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """``mqtt[s]://host:port/topic`` (no credentials)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}/{self.topic}"


def default_client_id() -> str:
    """``lemo-edge-<hostname>``, the hostname reduced to the characters every broker accepts."""
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-") or "box"
    return f"lemo-edge-{host}"[:64]


def default_queue_dir(client_id: str, host: str, port: int, topic: str) -> Path:
    """``<cache>/mqtt/<client_id>-<host>-<port>-<topic>`` (cache: ``$LEMO_EDGE_CACHE`` or ``~/.cache/lemo-edge``)."""
    from lemo_edge.utils import default_cache_dir

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{client_id}-{host}-{port}-{topic}").strip("_")
    return default_cache_dir() / "mqtt" / name[:200]


def _redacted(parts: SplitResult) -> str:
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"***@{netloc}").geturl()


def _number(name: str, text: str, uri: str, *, low: float, integer: bool = False) -> float:
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise InputError(f"{uri}: expected {name} {kind} >= {low:g}, got {text!r}") from None
    if not math.isfinite(value) or value < low:
        raise InputError(f"{uri}: expected {name} >= {low:g}, got {text!r}")
    return value


def _flag(name: str, text: str, uri: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{uri}: expected {name} 0 or 1, got {text!r}")


def load_mqtt_config(path: str | Path) -> dict[str, Any]:
    """Read an MQTT config file: a JSON object with keys from :data:`CONFIG_KEYS`.

    Raises:
        InputError: unreadable file, invalid JSON, not an object, an unknown key or a value of the wrong type.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"mqtt config: expected a readable JSON file, got {str(path)!r} ({err.strerror})") from err
    data = parse_json_object(text, f"mqtt config {path}")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(f"mqtt config {path}: unknown keys {unknown}; valid: {list(CONFIG_KEYS)}")
    for key, value in data.items():
        want: type = bool if key in ("tls", "tls_insecure") else str
        if value is not None and not isinstance(value, want):
            raise InputError(f"mqtt config {path}: expected {key} a {want.__name__}, got {type(value).__name__}")
    if data.get("password") and os.stat(path).st_mode & 0o077:
        log.warning("mqtt config %s holds a password and is readable by others: chmod 600 it", path)
    return data


def resolve_credentials(config_path: str | Path | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Credentials and TLS files: the config file (``config_path`` or ``$LEMO_EDGE_MQTT_CONFIG``), then the environment.

    Args:
        config_path: the config file, or None for ``$LEMO_EDGE_MQTT_CONFIG`` (if set).
        environ: the environment (default ``os.environ``); ``LEMO_EDGE_MQTT_USERNAME``, ``..._PASSWORD`` and
            ``..._CA`` override the file's ``username``, ``password`` and ``ca``.

    Returns:
        A dict with keys from :data:`CONFIG_KEYS` (only those given).
    """
    env = os.environ if environ is None else environ
    path = config_path if config_path is not None else env.get(ENV_CONFIG) or None
    values = load_mqtt_config(path) if path is not None else {}
    for key, name in (("username", ENV_USERNAME), ("password", ENV_PASSWORD), ("ca", ENV_CA)):
        if env.get(name):
            values[key] = env[name]
    return {k: v for k, v in values.items() if v is not None}


def parse_mqtt_uri(
    uri: str, *, config_path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> MqttSettings:
    """Parse ``mqtt[s]://host[:port]/topic[?param=value&...]`` and resolve credentials (see the module docstring).

    Args:
        uri: the sink URI.
        config_path: MQTT config file (``--mqtt-config``); a ``config=`` parameter in the URI takes precedence.
        environ: the environment (default ``os.environ``).

    Raises:
        InputError: another scheme, credentials in the URI, no host or topic, a wildcard in the topic, an unknown,
            repeated or out-of-range parameter, or a bad config file.
    """
    if not isinstance(uri, str):
        raise InputError(f"mqtt sink: expected a URI string, got {type(uri).__name__}")
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InputError(f"mqtt sink: expected mqtt://host:port/topic or mqtts://..., got {uri!r}")
    if "@" in parts.netloc:
        raise InputError(
            f"{_redacted(parts)}: credentials in the URI are refused (they would show in `ps`, shell history, logs "
            f"and the systemd unit); put username/password in the MQTT config file (--mqtt-config PATH or "
            f"${ENV_CONFIG}) or in ${ENV_USERNAME} / ${ENV_PASSWORD}"
        )
    host = parts.hostname
    if not host:
        raise InputError(f"{uri}: expected a broker host, as in mqtt://host:1883/topic")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as err:
        raise InputError(f"{uri}: expected a port 1..65535 ({err})") from None
    topic = parts.path.lstrip("/")
    if not topic or topic.endswith("/"):
        raise InputError(f"{uri}: expected a topic after the host, as in mqtt://{host}:{port}/plant/line3/lemo")
    if any(c in topic for c in "+#\x00"):
        raise InputError(f"{uri}: expected a topic without wildcards (+, #), got {topic!r}")
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _PARAMS:
            raise InputError(f"{uri}: unknown parameter {key!r}; valid: {list(_PARAMS)}")
        if key in params:
            raise InputError(f"{uri}: expected {key} once, got it twice")
        params[key] = value
    client_id = params.get("client_id") or default_client_id()
    if not _CLIENT_ID.match(client_id):
        raise InputError(f"{uri}: expected client_id of 1-128 characters A-Z a-z 0-9 . _ : -, got {client_id!r}")
    heartbeat_topic = params.get("heartbeat_topic") or f"{topic}/heartbeat"
    if any(c in heartbeat_topic for c in "+#\x00"):
        raise InputError(f"{uri}: expected heartbeat_topic without wildcards (+, #), got {heartbeat_topic!r}")
    reconnect_min = _number("reconnect_min", params.get("reconnect_min", "0.5"), uri, low=0.01)
    reconnect_max = _number("reconnect_max", params.get("reconnect_max", "30"), uri, low=reconnect_min)
    queue_dir = (
        Path(params["queue"]).expanduser() if params.get("queue") else default_queue_dir(client_id, host, port, topic)
    )
    creds = resolve_credentials(params.get("config") or config_path, environ)
    tls = _flag("tls", params["tls"], uri) if "tls" in params else scheme == "mqtts"
    tls = tls or bool(creds.get("tls")) or any(creds.get(k) for k in ("ca", "certfile"))
    return MqttSettings(
        host=host,
        port=port,
        topic=topic,
        heartbeat_topic=heartbeat_topic,
        heartbeat_s=_number("heartbeat", params.get("heartbeat", "10"), uri, low=0.0),
        client_id=client_id,
        queue_dir=queue_dir,
        queue_max=int(_number("queue_max", params.get("queue_max", "10000"), uri, low=1, integer=True)),
        keepalive_s=int(_number("keepalive", params.get("keepalive", "30"), uri, low=5, integer=True)),
        reconnect_min_s=reconnect_min,
        reconnect_max_s=reconnect_max,
        flush_timeout_s=_number("flush_timeout", params.get("flush_timeout", "5"), uri, low=0.0),
        tls=tls,
        ca=creds.get("ca"),
        certfile=creds.get("certfile"),
        keyfile=creds.get("keyfile"),
        tls_insecure=bool(creds.get("tls_insecure", False)),
        username=creds.get("username"),
        password=creds.get("password"),
    )


# -- the sink ---------------------------------------------------------------------------------------------------------


class MqttSink:
    """Publishes anomalous frames and heartbeats to an MQTT broker through a :class:`DiskQueue` (see the module).

    :meth:`write` never waits for the network: it queues the message on disk (anomalous frames only) and returns.

    Args:
        uri: ``mqtt[s]://host[:port]/topic[?...]``.
        config_path: MQTT config file (``--mqtt-config``); default ``$LEMO_EDGE_MQTT_CONFIG``.
        settings: parsed settings (instead of parsing ``uri``; ``config_path`` is then ignored).

    Raises:
        InputError: a bad URI, config file, TLS file or queue folder.
        MissingDependencyError: paho-mqtt >= 2.0 is not installed.

    Attributes:
        settings: the :class:`MqttSettings`.
        queue: the :class:`DiskQueue`.
        published: messages acknowledged by the broker (anomalies; heartbeats not counted).
        heartbeats: heartbeats published.
    """

    def __init__(
        self, uri: str = "", *, config_path: str | Path | None = None, settings: MqttSettings | None = None
    ) -> None:
        self.settings = settings if settings is not None else parse_mqtt_uri(uri, config_path=config_path)
        mqtt = import_paho()
        self._mqtt = mqtt
        self.queue = DiskQueue(self.settings.queue_dir, self.settings.queue_max)
        self.published = 0
        self.heartbeats = 0
        self._frames = 0
        self._anomalies = 0
        self._last_frame: tuple[float, int] | None = None
        self._recent: deque[float] = deque(maxlen=64)
        self._stats_lock = threading.Lock()
        self._started = time.monotonic()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> seq; owned by the worker thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._ever_connected = False
        self._warned_offline = False
        self._closed = False
        try:
            self._client = self._make_client()
        except BaseException:
            self.queue.close()
            raise
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()
        self._worker = threading.Thread(target=self._run, name="lemo-edge-mqtt", daemon=True)
        self._worker.start()
        log.info("mqtt: publishing anomalies to %s as %s", self.settings.address, self.settings.client_id)

    # -- setup ------------------------------------------------------------------------------------------------------

    def _make_client(self) -> Any:
        mqtt, s = self._mqtt, self.settings
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            import ssl

            for name, path in (("ca", s.ca), ("certfile", s.certfile), ("keyfile", s.keyfile)):
                if path is not None and not Path(path).is_file():
                    raise InputError(f"mqtt {name}: expected a readable file, got {path!r}")
            try:
                client.tls_set(
                    ca_certs=s.ca,
                    certfile=s.certfile,
                    keyfile=s.keyfile,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (ssl.SSLError, OSError, ValueError) as err:
                raise InputError(f"mqtt TLS: cannot load the CA/certificate/key ({err})") from err
            if s.tls_insecure:
                client.tls_insecure_set(True)
        client.reconnect_delay_set(min_delay=s.reconnect_min_s, max_delay=s.reconnect_max_s)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        return client

    # -- paho callbacks (network thread: never block here) ----------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._offline(f"connection refused: {reason_code}")
            return
        self._connected.set()
        self._ever_connected = True
        self._warned_offline = False
        log.info("mqtt: connected to %s (%d messages queued)", self.settings.address, len(self.queue))
        self._wake.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            self._offline(f"disconnected ({reason_code})")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._offline("cannot connect")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _offline(self, why: str) -> None:
        if self._warned_offline:
            log.debug("mqtt: %s: %s", self.settings.address, why)
            return
        self._warned_offline = True
        log.warning(
            "mqtt: %s: %s; retrying with backoff up to %g s, events are queued in %s",
            self.settings.address,
            why,
            self.settings.reconnect_max_s,
            self.queue.directory,
        )

    # -- the sink interface -----------------------------------------------------------------------------------------

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Queue the frame's event if it is anomalous (on disk, before returning); count every frame."""
        if self._closed:
            raise InputError(f"mqtt sink {self.settings.address}: expected an open sink, got a closed one")
        with self._stats_lock:
            self._frames += 1
            self._last_frame = (frame.timestamp, int(frame.index))
            self._recent.append(frame.timestamp)
            if result.is_anomaly:
                self._anomalies += 1
        if not result.is_anomaly:
            return
        record = event_record(frame, result)
        record["client_id"] = self.settings.client_id

        def payload(seq: int) -> bytes:
            record["seq"] = seq
            return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()

        self.queue.put(payload)
        self._wake.set()

    def close(self) -> None:
        """Wait up to ``flush_timeout`` for the queue to drain, then disconnect; what is left stays on disk."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.settings.flush_timeout_s
        while len(self.queue) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=5.0)
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
        self._drain_acks()
        left = len(self.queue)
        if left:
            log.warning(
                "mqtt: %d messages not acknowledged by %s stay queued in %s; the next run sends them",
                left,
                self.settings.address,
                self.queue.directory,
            )
        self.queue.close()

    def __repr__(self) -> str:
        return f"MqttSink({self.settings.address!r}, client_id={self.settings.client_id!r})"

    # -- worker thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.heartbeat_s
        next_beat = time.monotonic() + interval if interval > 0 else math.inf
        while not self._stop.is_set():
            self._wake.wait(timeout=max(0.0, min(1.0, next_beat - time.monotonic())))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._drain_acks()
                if self._connected.is_set():
                    self._send()
                if time.monotonic() >= next_beat:
                    if self._connected.is_set():
                        self._heartbeat()
                    next_beat = time.monotonic() + interval
            except Exception:  # noqa: BLE001 - the worker must survive anything and keep the queue on disk
                log.exception("mqtt: publishing failed; retrying")
                self._stop.wait(1.0)

    def _drain_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            seq = self._inflight.pop(mid, None)
            if seq is not None:
                self.queue.ack(seq)
                self.published += 1

    def _send(self) -> None:
        room = min(INFLIGHT_WINDOW, self.settings.queue_max) - len(self._inflight)
        if room <= 0:
            return
        batch = self.queue.take(room)
        for i, (seq, payload) in enumerate(batch):
            try:
                info = self._client.publish(self.settings.topic, payload, qos=QOS)
            except Exception:
                self.queue.release([s for s, _ in batch[i:]])
                raise
            if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                # NO_CONN still queues QoS 1 messages in the client, to be sent after the reconnect; others do not.
                log.warning("mqtt: the client refused a message (%s); kept on disk", self._mqtt.error_string(info.rc))
                self.queue.release([s for s, _ in batch[i:]])
                return
            self._inflight[info.mid] = seq

    def _heartbeat(self) -> None:
        with self._stats_lock:
            recent = list(self._recent)
            last = self._last_frame
            frames, anomalies = self._frames, self._anomalies
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else None
        message = {
            "type": "heartbeat",
            "client_id": self.settings.client_id,
            "time": iso_time(time.time()),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "frames": frames,
            "anomalies": anomalies,
            "last_frame": None if last is None else {"time": iso_time(last[0]), "frame": last[1]},
            "fps": None if fps is None else round(fps, 3),
            "queued": len(self.queue),
            "dropped": self.queue.dropped,
            "published": self.published,
        }
        self._client.publish(self.settings.heartbeat_topic, json.dumps(message, separators=(",", ":")), qos=QOS)
        self.heartbeats += 1
