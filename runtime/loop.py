"""The inspection loop: one object holding a run's state, from captured frames to decisions and sinks.

Per frame, in one thread (the source captures in its own)::

    capture -> preprocess -> backbone -> score -> map -> decision -> (gated) online update -> sinks

The math lives elsewhere (:class:`~lemo_edge.model.LemoModel`, :class:`~lemo_edge.updater.OnlineUpdater`);
this module sequences it, times every stage, keeps the counters and makes the run durable:

- :class:`StateStore` holds a state folder for one run (an exclusive lock, so two runs never write the
  same state), loads it at start and saves it atomically (``lemo_edge.state``) every ``save_every``
  updates and at exit, so a crash or ``kill -9`` loses at most the updates since the last save.
- :class:`StopFlag` and :func:`stop_on_signals` turn SIGINT/SIGTERM into a clean stop: the loop
  finishes the current frame, saves and returns its :class:`RunSummary`.
- Bad input never stops the loop: the source skips undecodable frames itself, and a frame that fails
  preprocessing is skipped, counted and logged once per kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import signal
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import cv2
import numpy as np
import torch

from lemo_edge import metrics
from lemo_edge.backbone import FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError, StateError, describe
from lemo_edge.model import LemoModel, Scores
from lemo_edge.scoring import Nearest
from lemo_edge.state import STATE_FILE, load_state, read_state, save_state
from lemo_edge.updater import OnlineUpdater

from .frames import Frame, FrameResult
from .sinks import EventsSink, Sink
from .sources import Source

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("preprocess", "backbone", "score", "map", "update", "sinks", "total")
"""Keys of :attr:`FrameResult.latency_ms` (milliseconds)."""

Backend = Callable[[torch.Tensor], torch.Tensor]
"""``(1, 3, S, S) uint8`` cpu -> ``(1, D, S / s, S / s) float32`` on the backend's device."""

ScorerFn = Callable[[torch.Tensor, torch.Tensor], Nearest]
"""``z (N, D)``, ``memory (K, D)`` -> :class:`~lemo_edge.scoring.Nearest` (``runtime.protocols.Scorer``)."""

LOCK_FILE = ".lock"


# -- stopping ---------------------------------------------------------------------------------------------------------


class StopFlag:
    """A thread- and signal-safe request to stop, with its reason (the first one wins)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        """Request a stop; later requests keep the first reason."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Within the block, SIGINT/SIGTERM set ``flag`` (a second one raises KeyboardInterrupt); handlers restored after.

    Outside the main thread signals cannot be handled; the block then only yields the flag.
    """
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if flag.is_set():
            raise KeyboardInterrupt(f"second stop signal ({name})")
        log.warning("%s received: stopping after the current frame (send it again to abort now)", name)
        flag.set(f"signal {name}")

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- state ------------------------------------------------------------------------------------------------------------


class StateStore:
    """A state folder held by one run: exclusive lock, load at start, atomic saves.

    The lock (``fcntl.flock`` on ``DIR/.lock``) is released by the kernel when the process dies, so a
    killed run never blocks the next one. Temporary files left by a save that was killed are removed.

    Args:
        directory: the state folder; created if missing.

    Raises:
        StateError: another process holds the folder, or it cannot be created.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd: int | None = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StateError(f"state: expected a writable folder, got {str(self.directory)!r} ({err})") from err
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StateError(
                f"state: {self.directory} is in use by another lemo-edge run (pid {holder}); "
                "expected one run per state folder"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        for stale in self.directory.glob(".state.*.tmp"):
            log.info("state: removing %s left by an interrupted save", stale.name)
            stale.unlink(missing_ok=True)
        self.saves = 0
        self.save_seconds = 0.0
        self.saved_updates: int | None = None

    @property
    def path(self) -> Path:
        """``DIR/state.safetensors``."""
        return self.directory / STATE_FILE

    def exists(self) -> bool:
        """Whether a saved state is there."""
        return self.path.is_file()

    def saved_config(self) -> ModelConfig | None:
        """The config of the saved state, or None without one.

        Raises:
            StateError: the file is corrupt or of another version.
        """
        if not self.exists():
            return None
        meta, _ = read_state(self.directory)
        return ModelConfig.from_dict(meta["config"])

    def load(self, spec: FeatureSpec, config: ModelConfig | None = None) -> OnlineUpdater:
        """Load the saved model and updater (``config``, if given, must equal the saved one).

        Raises:
            StateError: missing, corrupt, another version, or made for another backbone or config.
        """
        updater = load_state(self.directory, spec, config)
        self.saved_updates = updater.stats.updates
        return updater

    def save(self, updater: OnlineUpdater) -> float:
        """Atomically save ``updater`` (model, threshold, counters); returns the seconds it took."""
        t0 = time.perf_counter()
        save_state(self.directory, updater)
        seconds = time.perf_counter() - t0
        self.saves += 1
        self.save_seconds += seconds
        self.saved_updates = updater.stats.updates
        log.info("state: saved %s (%d updates) in %.0f ms", self.path, updater.stats.updates, 1e3 * seconds)
        return seconds

    def close(self) -> None:
        """Release the lock; idempotent."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def move_updater(updater: OnlineUpdater, device: torch.device) -> None:
    """Move the model, and any optimiser moments, to ``device`` in place."""
    updater.model.to(device)
    if updater.optimizer is not None:
        for slots in updater.optimizer.state.values():
            for name, value in slots.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0:
                    slots[name] = value.to(device)


# -- options, status and summary --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopOptions:
    """How a run proceeds.

    Attributes:
        max_frames: stop after this many processed frames (None: at the end of the input or on a stop request).
        freeze: never update the model (inference only; the threshold stays as loaded).
        save_every: save the state after this many updates (>= 1).
        read_timeout_s: how long one read waits for a frame before the stop flag is checked again.
        latency_window: latency percentiles of the summary cover at most this many last frames.
    """

    max_frames: int | None = None
    freeze: bool = False
    save_every: int = 50
    read_timeout_s: float = 0.25
    latency_window: int = 10_000

    def __post_init__(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"frames: expected >= 1, got {self.max_frames}")
        if self.save_every < 1:
            raise InputError(f"save_every: expected >= 1, got {self.save_every}")
        if not self.read_timeout_s > 0:
            raise InputError(f"read_timeout_s: expected > 0, got {self.read_timeout_s}")
        if self.latency_window < 1:
            raise InputError(f"latency_window: expected >= 1, got {self.latency_window}")


class StatusLine:
    """One status line on a terminal, refreshed at most every ``interval_s``; plain lines every ``every`` frames else.

    Args:
        stream: where to write (the CLI passes ``sys.stderr``).
        tty: whether ``stream`` is a terminal (default: ``stream.isatty()``).
        interval_s: smallest time between refreshes on a terminal.
        every: frames between plain lines when not a terminal; 0 writes none.
    """

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, interval_s: float = 0.25, every: int = 100
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.interval_s = interval_s
        self.every = every
        self._last = -math.inf
        self._open = False

    def due(self, frames: int, now: float) -> bool:
        """Whether :meth:`write` should be called after ``frames`` frames at ``now`` (``time.monotonic()``)."""
        if self.tty:
            return now - self._last >= self.interval_s
        return self.every > 0 and frames % self.every == 0

    def write(self, text: str, now: float | None = None) -> None:
        """Replace the terminal line with ``text``, or write it as a line."""
        self._last = time.monotonic() if now is None else now
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the terminal line, if one is open."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        frames: frames processed (skipped ones excluded).
        seconds: wall time of the run.
        fps: ``frames / seconds``.
        dropped: frames a live source discarded because the loop fell behind.
        skipped: frames skipped, by kind (the source's kinds and ``preprocess:<error>``).
        reconnects: reopen attempts of a live source.
        anomalies: frames judged anomalous.
        updates: online updates in this run.
        total_updates: updates of the model since it was created (loaded ones included).
        resumed_updates: updates in the state loaded at start, or None for a new model.
        threshold: the decision threshold at the end (``inf`` before it is learned).
        latency_ms: ``{stage: {"p50": ms, "p95": ms}}`` over the last ``latency_window`` frames.
        labelled: frames that carried a ground-truth label.
        prequential_auroc: image AUROC of the scores each labelled frame had before the model learned from it,
            or None without both labels among the labelled frames.
        prequential_auroc_after_warmup: the same over frames after the warm-up.
        saves: state saves in this run.
        state: path of the state file, or None without a state folder.
        stopped: why the run ended (``end of input``, ``frames limit``, ``signal SIGTERM``, ``quit``, ...).
        backend: the feature backend and why it was chosen.
        scorer: the nearest-memory scorer and why it was chosen.
    """

    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    dropped: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    anomalies: int = 0
    updates: int = 0
    total_updates: int = 0
    resumed_updates: int | None = None
    threshold: float = math.inf
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    labelled: int = 0
    prequential_auroc: float | None = None
    prequential_auroc_after_warmup: float | None = None
    saves: int = 0
    state: str | None = None
    stopped: str = ""
    backend: str = ""
    scorer: str = ""

    @property
    def skipped_total(self) -> int:
        """Frames skipped, all kinds together."""
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become None)."""
        out = dataclasses.asdict(self)
        out["threshold"] = _finite(self.threshold)
        out["skipped_total"] = self.skipped_total
        return out

    def format(self) -> str:
        """Human-readable summary, a few lines."""

        def p50(stage: str) -> str:
            value = self.latency_ms.get(stage, {}).get("p50")
            return "-" if value is None else f"{value:.1f}"

        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
        lines = [
            f"frames {self.frames} in {self.seconds:.1f} s ({self.fps:.2f} fps); dropped {self.dropped}; "
            f"skipped {self.skipped_total}" + (f" ({skipped})" if skipped else "") + f"; stopped: {self.stopped}",
            f"anomalies {self.anomalies}; updates {self.updates} (model total {self.total_updates}); "
            f"threshold {self.threshold:.4g}" + (f"; reconnects {self.reconnects}" if self.reconnects else ""),
            "latency p50 ms: " + ", ".join(f"{stage} {p50(stage)}" for stage in STAGES),
        ]
        if self.prequential_auroc is not None:
            after = self.prequential_auroc_after_warmup
            lines.append(
                f"prequential image AUROC {self.prequential_auroc:.4f} on {self.labelled} labelled frames"
                + (f" (after warm-up {after:.4f})" if after is not None else "")
            )
        elif self.labelled:
            lines.append(f"prequential image AUROC: n/a ({self.labelled} labelled frames, one class only)")
        if self.state is not None:
            resumed = (
                f"; resumed from {self.resumed_updates} updates" if self.resumed_updates is not None else "; new model"
            )
            lines.append(f"state {self.state} ({self.saves} saves{resumed})")
        if self.backend or self.scorer:
            lines.append(f"backend {self.backend}; scorer {self.scorer}")
        return "\n".join(lines)


def _prequential_auroc(scores: array, labels: array, mask: np.ndarray | None = None) -> float | None:
    s = np.frombuffer(scores, dtype=np.float64) if len(scores) else np.zeros(0)
    y = np.frombuffer(labels, dtype=np.int8) if len(labels) else np.zeros(0, np.int8)
    keep = np.isfinite(s) if mask is None else np.isfinite(s) & mask
    s, y = s[keep], y[keep]
    if s.size == 0 or y.all() or not y.any():
        return None
    return metrics.image_auroc(s, y)


# -- the loop ---------------------------------------------------------------------------------------------------------


class InspectionLoop:
    """Runs a model over a source: per-frame decisions, gated online learning, sinks, durable state.

    Args:
        source: an opened :class:`~lemo_edge.runtime.sources.Source` (its frames should already be ``S x S``;
            other sizes are resized here).
        backend: feature backend, ``(1, 3, S, S) uint8`` cpu -> ``(1, D, S/s, S/s) float32`` (any device).
        updater: the model's online updater; the model must be on the device the features are moved to.
        sinks: result sinks; :class:`~lemo_edge.runtime.sinks.EventsSink` ones are written last, so their
            records carry the frame's complete latencies (``sinks`` then covers the other sinks).
        store: state folder to save into (None: nothing is saved).
        options: frame limit, freeze, save cadence, ...
        scorer: nearest-memory scorer used instead of the model's reference (``None``: the reference).
        status: status line (None: none).
        stop: stop flag (e.g. set by :func:`stop_on_signals`); a new one if None.
        backend_name: description of the backend, for the summary.
        scorer_name: description of the scorer, for the summary.
    """

    def __init__(
        self,
        source: Source,
        backend: Backend,
        updater: OnlineUpdater,
        sinks: Sequence[Sink] = (),
        *,
        store: StateStore | None = None,
        options: LoopOptions | None = None,
        scorer: ScorerFn | None = None,
        status: StatusLine | None = None,
        stop: StopFlag | None = None,
        backend_name: str = "",
        scorer_name: str = "",
    ) -> None:
        self.source = source
        self.backend = backend
        self.updater = updater
        self.model: LemoModel = updater.model
        events: list[Sink] = [s for s in sinks if isinstance(s, EventsSink)]
        self.sinks: list[Sink] = [s for s in sinks if not isinstance(s, EventsSink)] + events
        self._first_events = len(self.sinks) - len(events)
        self.store = store
        self.options = options or LoopOptions()
        self.scorer = scorer
        self.status = status
        self.stop_flag = stop or StopFlag()
        self.backend_name = backend_name
        self.scorer_name = scorer_name
        self.size = self.model.config.size
        self.device = _module_device(self.model)
        self.resumed_updates = store.saved_updates if store is not None else None
        self._clone_features = updater.optimizer is not None
        self._input: torch.Tensor | None = None
        self._skipped: dict[str, int] = {}
        self._latency: dict[str, deque[float]] = {stage: deque(maxlen=self.options.latency_window) for stage in STAGES}
        self._recent_total: deque[float] = deque(maxlen=64)
        self._recent_end: deque[float] = deque(maxlen=64)
        self._scores = array("d")
        self._labels = array("b")
        self._after_warmup = array("b")
        self.frames = 0
        self.anomalies = 0
        self.updates = 0
        self._updates_since_save = 0
        self._dirty = False
        self._consistent = True
        self.seconds = 0.0
        self.stopped = ""

    # -- public -----------------------------------------------------------------------------------------------------

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop after the current frame (thread-safe)."""
        self.stop_flag.set(reason)

    def run(self) -> RunSummary:
        """Process frames until the input ends, ``max_frames`` were processed or a stop is requested.

        The state is saved every ``save_every`` updates and at the end if anything changed since, also when a
        stop signal ended the run or an error escaped it, unless the error interrupted an update (the last save
        is then kept).

        Returns:
            The :class:`RunSummary`.

        Raises:
            SourceError: the source's capture thread failed (after saving).
        """
        t_start = time.perf_counter()
        self.stopped = ""
        error: BaseException | None = None
        if self.options.freeze and self.updater.threshold.count == 0:
            log.warning("frozen run of a model without a learned threshold: every frame will be judged normal")
        try:
            self.stopped = self._loop()
        except BaseException as err:
            error = err
            self.stopped = f"error: {err!r}"
            raise
        finally:
            self.seconds = time.perf_counter() - t_start
            if self.status is not None:
                self.status.close()
            try:
                self._final_save()
            except Exception:
                if error is None:
                    raise
                log.exception("state: the final save failed too")
        return self.summary()

    def summary(self) -> RunSummary:
        """The summary of the run so far."""
        stats = self.source.stats
        skipped = dict(stats.skipped)
        for kind, count in self._skipped.items():
            skipped[kind] = skipped.get(kind, 0) + count
        seconds = self.seconds
        latency: dict[str, dict[str, float]] = {}
        for stage, values in self._latency.items():
            if values:
                p50, p95 = np.percentile(np.fromiter(values, dtype=np.float64), [50, 95])
                latency[stage] = {"p50": float(p50), "p95": float(p95)}
        after = np.frombuffer(self._after_warmup, dtype=np.int8).astype(bool) if len(self._after_warmup) else None
        return RunSummary(
            frames=self.frames,
            seconds=seconds,
            fps=self.frames / seconds if seconds > 0 else 0.0,
            dropped=stats.dropped,
            skipped=skipped,
            reconnects=stats.reconnects,
            anomalies=self.anomalies,
            updates=self.updates,
            total_updates=self.updater.stats.updates,
            resumed_updates=self.resumed_updates,
            threshold=self.updater.threshold.value,
            latency_ms=latency,
            labelled=len(self._labels),
            prequential_auroc=_prequential_auroc(self._scores, self._labels),
            prequential_auroc_after_warmup=_prequential_auroc(self._scores, self._labels, after),
            saves=self.store.saves if self.store is not None else 0,
            state=str(self.store.path) if self.store is not None else None,
            stopped=self.stopped,
            backend=self.backend_name,
            scorer=self.scorer_name,
        )

    def _loop(self) -> str:
        """Read and process frames; returns why it stopped."""
        while True:
            if self.stop_flag.is_set():
                return self.stop_flag.reason
            if self.options.max_frames is not None and self.frames >= self.options.max_frames:
                return "frames limit"
            frame = self.source.read(timeout=self.options.read_timeout_s)
            if frame is None:
                if self.source.exhausted:
                    return "end of input"
                continue
            self._process(frame)
            if any(getattr(sink, "quit_requested", False) for sink in self.sinks):
                self.stop("quit")

    # -- per frame ----------------------------------------------------------------------------------------------------

    def _skip(self, kind: str, detail: str) -> None:
        first = kind not in self._skipped
        self._skipped[kind] = self._skipped.get(kind, 0) + 1
        if first:
            log.warning("skipped a frame (%s): %s; further '%s' skips are only counted", kind, detail, kind)
        else:
            log.debug("skipped a frame (%s): %s", kind, detail)

    def _preprocess(self, frame: Frame) -> tuple[Frame, torch.Tensor]:
        """``image (H, W, 3) uint8`` -> the frame at ``S x S`` and its ``(1, 3, S, S) uint8`` cpu tensor (reused)."""
        image = frame.image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"frame: expected (H, W, 3) uint8, got {describe(image)}")
        s = self.size
        if image.shape[:2] != (s, s):
            image = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA)
            mask = frame.mask
            if mask is not None:
                mask = cv2.resize(mask, (s, s), interpolation=cv2.INTER_NEAREST)
            frame = dataclasses.replace(frame, image=image, mask=mask)
        if self._input is None:
            pin = self.device.type == "cuda"
            self._input = torch.empty((1, 3, s, s), dtype=torch.uint8, pin_memory=pin)
        self._input[0].copy_(torch.from_numpy(image).permute(2, 0, 1))
        return frame, self._input

    def _score(self, features: torch.Tensor) -> Scores:
        """The model's :meth:`~lemo_edge.model.LemoModel.score`, with :attr:`scorer` in place of the reference."""
        return self.model.score(features, self.scorer)

    def _process(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        try:
            frame, images = self._preprocess(frame)
        except Exception as err:  # bad input never stops the loop
            self._skip(f"preprocess:{type(err).__name__}", f"frame {frame.index}: {err}")
            return
        t1 = time.perf_counter()
        features = self.backend(images)
        if features.device != self.device:
            features = features.to(self.device)
        if self._clone_features:  # inference tensors / reused buffers cannot feed the gradient steps
            features = features.clone()
        t2 = time.perf_counter()
        with torch.no_grad():
            scores = self._score(features)
            t3 = time.perf_counter()
            maps, image_scores = self.model.maps(scores.patch)
            score = float(image_scores[0])  # the frame's one host synchronisation
            anomaly_map = maps[0].float().cpu().numpy()
        t4 = time.perf_counter()
        threshold = self.updater.threshold.value
        is_anomaly = self.updater.threshold.is_anomalous(score)
        seen_before = self.updater.stats.seen
        updated = False
        if not self.options.freeze:
            self._consistent = False
            updated = self.updater.observe(features, scores, score)
            self._consistent = True
            self._dirty = True
        t5 = time.perf_counter()
        latency = {
            "preprocess": 1e3 * (t1 - t0),
            "backbone": 1e3 * (t2 - t1),
            "score": 1e3 * (t3 - t2),
            "map": 1e3 * (t4 - t3),
            "update": 1e3 * (t5 - t4),
        }
        result = FrameResult(score, anomaly_map, is_anomaly, threshold, updated, latency)
        for sink in self.sinks[: self._first_events]:
            sink.write(frame, result)
        t6 = time.perf_counter()
        latency["sinks"] = 1e3 * (t6 - t5)
        latency["total"] = 1e3 * (t6 - t0)
        for sink in self.sinks[self._first_events :]:
            sink.write(frame, result)
        t7 = time.perf_counter()

        self.frames += 1
        self.anomalies += int(is_anomaly)
        if frame.label is not None:
            self._scores.append(score)
            self._labels.append(1 if frame.label else 0)
            self._after_warmup.append(int(seen_before >= self.model.config.warmup))
        latency["sinks"] = 1e3 * (t7 - t5)
        latency["total"] = 1e3 * (t7 - t0)
        for stage, value in latency.items():
            self._latency[stage].append(value)
        self._recent_total.append(latency["total"])
        if updated:
            self.updates += 1
            self._updates_since_save += 1
            if self.store is not None and self._updates_since_save >= self.options.save_every:
                self._save()
        if self.status is not None:
            now = time.monotonic()
            self._recent_end.append(now)
            if self.status.due(self.frames, now):
                self.status.write(self._status_text(), now)

    def _status_text(self) -> str:
        ends = self._recent_end
        fps = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else 0.0
        p50 = float(np.median(np.fromiter(self._recent_total, dtype=np.float64))) if self._recent_total else 0.0
        return (
            f"frame {self.frames}  {fps:.1f} fps  p50 {p50:.1f} ms  threshold {self.updater.threshold.value:.4g}  "
            f"anomalies {self.anomalies}  updates {self.updates}"
        )

    def _save(self) -> None:
        assert self.store is not None
        self.store.save(self.updater)
        self._updates_since_save = 0
        self._dirty = False

    def _final_save(self) -> None:
        if self.store is None:
            return
        if not self._consistent:
            log.error(
                "state: not saved, the run stopped inside an update; %s keeps the last save (%s updates)",
                self.store.path,
                self.store.saved_updates,
            )
            return
        if self._dirty:
            self._save()


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.buffers():
        return tensor.device
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
