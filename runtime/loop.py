"""The inspection loop: one object holding a run's state, from captured frames to decisions and sinks.

Per frame, in one thread (the source captures in its own)::

    capture -> preprocess -> backbone -> Inspector.step (score -> map -> decision -> gated update) -> sinks

A frame larger than the model input may be cut into tiles (``tiling``, :mod:`lemo_edge.tiling`): the tiles are one
batch through the backbone and one decision in the step, and the sinks get the frame as captured with the stitched
map and the anomalous regions' boxes in its pixels. Without tiles the frame is resized to the model input (by the
source, in its capture thread, when it was opened with the model's ``size``), and the map is resized back to the frame
as captured for the sinks: their overlays and the events' boxes are in the frame's own pixels either way.

The math lives in the core: :meth:`lemo_edge.inspector.Inspector.step` scores, decides and learns, as it does for
the evaluation and the benchmark. This module feeds it, times the stages around it, keeps the counters, hands the
results to the sinks and makes the run durable:

- a :class:`~lemo_edge.runtime.state_store.StateStore` (optional) is saved every ``save_every`` updates and at
  exit, so a crash or ``kill -9`` loses at most the updates since the last save;
- a :class:`~lemo_edge.runtime.stopping.StopFlag` (set by SIGINT/SIGTERM through
  :func:`~lemo_edge.runtime.stopping.stop_on_signals`) ends the run after the current frame, saved;
- bad input never stops the loop: the source skips undecodable frames itself, and a frame that fails
  preprocessing is skipped, counted and logged once per kind;
- a failing sink never stops it either: each sink is wrapped in a :class:`~lemo_edge.runtime.sinks.SinkGuard`
  (logged once, counted, retried with exponential backoff on the loop's clock, reported in the events'
  ``failing_sinks`` and the summary's ``sink_failures``).

One host synchronisation per frame outside the profiling mode: the one inside the step; the anomaly map is
copied to the host for the sinks after it.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from lemo_edge.contamination import ContaminationCounter, defect_patches
from lemo_edge.errors import InputError, StateError, describe
from lemo_edge.inspector import FrameOutcome, Inspector
from lemo_edge.letterbox import Letterbox, letterbox_geometry, letterbox_image, unletterbox_map, valid_cells
from lemo_edge.memory import CoresetMemory
from lemo_edge.model import LemoModel
from lemo_edge.scoring import Scorer
from lemo_edge.tiling import TileLayout, Tiler, TileSpec, region_boxes
from lemo_edge.timing import StageTimer
from lemo_edge.updater import OnlineUpdater

from .frames import STAGES, Frame, FrameResult
from .sinks import EventsSink, Sink, SinkGuard, sink_names
from .sources import Source
from .state_store import StateStore
from .status import StatusLine
from .stopping import StopFlag
from .summary import RunSummary, prequential_auroc

log = logging.getLogger(__name__)

__all__ = ["Backend", "InspectionLoop", "LoopOptions"]

Backend = Callable[[torch.Tensor], torch.Tensor]
"""``(1, 3, H, W) uint8`` cpu -> ``(1, D, H / s, W / s) float32`` on the backend's device."""


@dataclass(frozen=True)
class LoopOptions:
    """How a run proceeds.

    Attributes:
        max_frames: stop after this many processed frames (None: at the end of the input or on a stop request).
        freeze: never update the model (inference only; the threshold stays as loaded).
        save_every: save the state after this many updates (>= 1).
        read_timeout_s: how long one read waits for a frame before the stop flag is checked again.
        latency_window: latency percentiles of the summary cover at most this many last frames.
        sink_retry_min_s: a failed sink is left out this long after its first failure in a row (> 0)...
        sink_retry_max_s: ...the delay doubling with every further failure up to this (>= ``sink_retry_min_s``).
        profile: synchronise the device after every stage, for exact per-stage times (slower).
    """

    max_frames: int | None = None
    freeze: bool = False
    save_every: int = 50
    read_timeout_s: float = 0.25
    latency_window: int = 10_000
    sink_retry_min_s: float = 1.0
    sink_retry_max_s: float = 60.0
    profile: bool = False

    def __post_init__(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"frames: expected >= 1, got {self.max_frames}")
        if self.save_every < 1:
            raise InputError(f"save_every: expected >= 1, got {self.save_every}")
        if not self.read_timeout_s > 0:
            raise InputError(f"read_timeout_s: expected > 0, got {self.read_timeout_s}")
        if self.latency_window < 1:
            raise InputError(f"latency_window: expected >= 1, got {self.latency_window}")
        if not self.sink_retry_min_s > 0:
            raise InputError(f"sink_retry_min_s: expected > 0, got {self.sink_retry_min_s}")
        if not self.sink_retry_max_s >= self.sink_retry_min_s:
            raise InputError(
                f"sink_retry_max_s: expected >= sink_retry_min_s ({self.sink_retry_min_s}), got {self.sink_retry_max_s}"
            )


class InspectionLoop:
    """Runs a model over a source: per-frame decisions, gated online learning, sinks, durable state.

    Args:
        source: an opened :class:`~lemo_edge.runtime.sources.Source`, best opened with the model's ``size``
            (``config.input_hw``) so that its capture thread resizes the frames (``Frame.resized``); frames without
            that copy are resized here, letterboxed (``config.letterbox``) or cut into tiles. The sinks get every
            frame as captured, with the map and the boxes at its pixels.
        backend: feature backend, ``(1, 3, H, W) uint8`` cpu -> ``(1, D, H/s, W/s) float32`` (any device).
        updater: the model's online updater; the model must be on the device the features are moved to.
        sinks: result sinks; :class:`~lemo_edge.runtime.sinks.EventsSink` ones are written last, so their
            records carry the frame's complete latencies (``sinks`` then covers the other sinks) and the state
            of the other sinks after this frame.
        store: state folder to save into (None: nothing is saved).
        options: frame limit, freeze, save cadence, sink retries, profiling.
        scorer: nearest-memory scorer the :class:`~lemo_edge.inspector.Inspector` searches the memory with
            instead of the reference (``None``: the reference); it stays set on the model.
        status: status line (None: none).
        stop: stop flag (e.g. set by :func:`~lemo_edge.runtime.stopping.stop_on_signals`); a new one if None.
        backend_name: description of the backend, for the summary.
        scorer_name: description of the scorer, for the summary.
        clock: monotonic seconds for the sinks' retry backoff and the status line (``time.monotonic``).
        tiling: tiles and region of interest (:class:`~lemo_edge.tiling.TileSpec`); the layout is fixed by the first
            frame's size (a frame of another size is then skipped); ``None``: the whole frame, resized.

    Raises:
        InputError: the scorer averages another number of nearest items than the model.
        StateError: the model learned with tiles or a region of interest other than ``tiling``'s (also raised by
            :meth:`run` at the first frame when its size gives another layout).
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
        scorer: Scorer | None = None,
        status: StatusLine | None = None,
        stop: StopFlag | None = None,
        backend_name: str = "",
        scorer_name: str = "",
        clock: Callable[[], float] = time.monotonic,
        tiling: TileSpec | None = None,
    ) -> None:
        self.source = source
        self.backend = backend
        self.updater = updater
        self.model: LemoModel = updater.model
        self.options = options or LoopOptions()
        self.inspector = Inspector(updater, freeze=self.options.freeze, scorer=scorer, profile=self.options.profile)
        events: list[Sink] = [s for s in sinks if isinstance(s, EventsSink)]
        self.sinks: list[Sink] = [s for s in sinks if not isinstance(s, EventsSink)] + events
        self._first_events = len(self.sinks) - len(events)
        self.clock = clock
        self.guards = [
            SinkGuard(
                sink,
                name,
                clock=clock,
                backoff_min_s=self.options.sink_retry_min_s,
                backoff_max_s=self.options.sink_retry_max_s,
            )
            for sink, name in zip(self.sinks, sink_names(self.sinks), strict=True)
        ]
        self.store = store
        self.status = status
        self.stop_flag = stop or StopFlag()
        self.backend_name = backend_name
        self.scorer_name = scorer_name
        self.input_hw = self.model.config.input_hw
        self.letterbox = self.model.config.letterbox
        self._box: Letterbox | None = None  # the last frame's letterbox geometry and its content cells
        self._valid: torch.Tensor | None = None
        self.device = self.inspector.device
        self.tiling = tiling if tiling is not None and tiling.active else None
        if updater.stats.seen > 0:  # a fresh model takes the layout of the first frame
            _check_layout(self.model.layout, self.tiling)
        self.resumed_updates = store.saved_updates if store is not None else None
        self._input: torch.Tensor | None = None
        self._skipped: dict[str, int] = {}
        self._latency: dict[str, deque[float]] = {stage: deque(maxlen=self.options.latency_window) for stage in STAGES}
        self._recent_total: deque[float] = deque(maxlen=64)
        self._recent_end: deque[float] = deque(maxlen=64)
        self._scores = array("d")
        self._labels = array("b")
        self._after_warmup = array("b")
        # patch-level contamination, counted while frames carry masks (synthetic://); rows of a loaded
        # state are of another run: their provenance is forgotten so that tags (this run's frame numbers) are unique
        self._memory = self.model.memory if isinstance(self.model.memory, CoresetMemory) else None
        self._contamination: ContaminationCounter | None = None
        if self._memory is not None:
            self._memory.tags.fill_(-1)
            self._memory.pop_admitted()
        self.frames = 0
        self.anomalies = 0
        self.updates = 0
        self.nonfinite = 0
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
            The :class:`~lemo_edge.runtime.summary.RunSummary`.

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
            prequential_auroc=prequential_auroc(self._scores, self._labels),
            prequential_auroc_after_warmup=prequential_auroc(self._scores, self._labels, after),
            nonfinite=self.nonfinite,
            sink_failures={g.name: g.failures for g in self.guards if g.failures},
            saves=self.store.saves if self.store is not None else 0,
            state=str(self.store.path) if self.store is not None else None,
            stopped=self.stopped,
            backend=self.backend_name,
            scorer=self.scorer_name,
            contamination=self._contamination.result(self._memory) if self._contamination is not None else None,
        )

    def failing_sinks(self) -> list[dict[str, object]]:
        """``[{"sink", "error", "since", "failures"}]`` of the sinks failing now (empty when all is well)."""
        return [status for status in (g.status() for g in self.guards) if status is not None]

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
            if any(guard.quit_requested for guard in self.guards):
                self.stop("quit")

    # -- per frame ----------------------------------------------------------------------------------------------------

    def _skip(self, kind: str, detail: str) -> None:
        first = kind not in self._skipped
        self._skipped[kind] = self._skipped.get(kind, 0) + 1
        if first:
            log.warning("skipped a frame (%s): %s; further '%s' skips are only counted", kind, detail, kind)
        else:
            log.debug("skipped a frame (%s): %s", kind, detail)

    def _start_tiles(self, image: object) -> None:
        """Fix the tile layout by the first good frame's size (a fresh model adopts it, a loaded one must have it).

        Raises:
            InputError: the region of interest does not lie inside the frame.
            StateError: the model learned with another layout.
        """
        if self.tiling is None or self.inspector.tiler is not None or not _is_rgb(image):
            return
        assert isinstance(image, np.ndarray)
        layout = self.tiling.layout(image.shape[:2])
        self.inspector.use_tiler(Tiler(layout, self.model.config.input_hw))
        log.info("tiles: %s", layout.describe())

    def _preprocess(self, frame: Frame) -> tuple[torch.Tensor, np.ndarray | None]:
        """``image (H, W, 3) uint8`` -> the model's input and the frame's mask at it (the frame is not changed).

        Without letterbox or tiles the image is resized to the model's ``H x W``; with letterbox it is scaled into
        ``H x W`` and padded (:attr:`_box` records how); with tiles it is cut into the tiler's tiles.

        Returns:
            ``(1, 3, H, W) uint8`` cpu (the frame resized or letterboxed; reused), or with tiles ``(T, 3, H, W)`` (its
            tiles), and the mask ``(1 or T, H, W) uint8`` at the same pixels, or None without one.
        """
        image = frame.image
        if not _is_rgb(image):
            raise InputError(f"frame: expected (H, W, 3) uint8, got {describe(image)}")
        tiler = self.inspector.tiler
        if tiler is not None:
            batch = tiler.cut(image, pin=self.device.type == "cuda")
            return batch, tiler.cut_mask(frame.mask) if frame.mask is not None else None
        h, w = self.input_hw
        mask = frame.mask
        if self.letterbox:
            if self._box is None or self._box.frame_hw != image.shape[:2]:
                self._box = letterbox_geometry(image.shape[:2], self.input_hw)
                self._valid = valid_cells(self._box, self.model.grid).to(self.device)
            image = letterbox_image(image, self.input_hw)[0]
            if mask is not None:
                mask = letterbox_image(mask, self.input_hw)[0]
        elif frame.resized is not None and frame.resized.shape[:2] == (h, w):  # resized by the source already
            image = frame.resized
        elif image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)  # cv2 takes (width, height)
        if mask is not None and not self.letterbox and mask.shape[:2] != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        if self._input is None:
            pin = self.device.type == "cuda"
            self._input = torch.empty((1, 3, h, w), dtype=torch.uint8, pin_memory=pin)
        self._input[0].copy_(torch.from_numpy(image).permute(2, 0, 1))
        return self._input, mask[None] if mask is not None else None

    def _frame_map(self, frame: Frame, outcome: FrameOutcome) -> tuple[np.ndarray, list[list[float]]]:
        """The outcome's map in the frame's pixels ``(H, W) float32`` and its anomalous regions' boxes."""
        tiler = self.inspector.tiler
        if tiler is not None:
            model_map = outcome.map.float().cpu().numpy()  # already computed: no wait
            boxes = tiler.boxes(model_map, outcome.threshold) if outcome.anomalous else []
            return tiler.frame_map(model_map), boxes
        amap = outcome.map if not self.letterbox or self._box is None else unletterbox_map(outcome.map, self._box)
        model_map = amap.float().cpu().numpy()  # already computed: no wait
        h, w = frame.image.shape[:2]
        if model_map.shape != (h, w):
            model_map = cv2.resize(model_map, (w, h), interpolation=cv2.INTER_LINEAR)
        return model_map, region_boxes(model_map, outcome.threshold) if outcome.anomalous else []

    def _process(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        timer = StageTimer(self.device, profile=self.options.profile)
        self._start_tiles(frame.image)  # a region of interest outside the frame or another layout ends the run
        try:
            images, mask = self._preprocess(frame)
        except Exception as err:  # bad input never stops the loop
            self._skip(f"preprocess:{type(err).__name__}", f"frame {frame.index}: {err}")
            return
        timer.mark("preprocess")
        features = self.backend(images)
        if features.device != self.device:
            features = features.to(self.device, non_blocking=True)
        timer.mark("backbone")
        seen_before = self.updater.stats.seen
        if not self.options.freeze:
            self._consistent = False
        masked = mask is not None and self._memory is not None
        valid = self._valid if self.letterbox else None
        outcome = self.inspector.step(features, tag=self.frames if masked else -1, valid=valid)  # host sync
        if not self.options.freeze:
            self._consistent = True
            self._dirty = True
        timer.mark("step")
        anomaly_map, boxes = self._frame_map(frame, outcome) if self.guards else (None, [])
        latency = {"preprocess": 0.0, "backbone": 0.0, **outcome.timings_ms}
        result = FrameResult(
            outcome.score,
            anomaly_map,
            outcome.anomalous,
            outcome.threshold,
            outcome.learned,
            latency,
            reason=outcome.reason,
            finite=outcome.finite,
            failing_sinks=self.failing_sinks(),
            boxes=boxes,
        )
        for guard in self.guards[: self._first_events]:
            guard.write(frame, result)
        timer.mark("sinks")
        elapsed = timer.elapsed_ms()
        latency["preprocess"], latency["backbone"], latency["sinks"] = (
            elapsed["preprocess"],
            elapsed["backbone"],
            elapsed["sinks"],
        )
        latency["total"] = 1e3 * (time.perf_counter() - t0)
        if self._first_events < len(self.guards):
            result.failing_sinks = self.failing_sinks()
            for guard in self.guards[self._first_events :]:
                guard.write(frame, result)
            timer.mark("sinks")
            latency["sinks"] = timer.elapsed_ms()["sinks"]
            latency["total"] = 1e3 * (time.perf_counter() - t0)

        self.frames += 1
        self.anomalies += int(outcome.anomalous)
        self.nonfinite += int(not outcome.finite)
        if frame.label is not None:
            self._scores.append(outcome.score)
            self._labels.append(1 if frame.label else 0)
            self._after_warmup.append(int(seen_before >= self.model.config.warmup))
        if masked and mask is not None and self._memory is not None:
            if self._contamination is None:
                self._contamination = ContaminationCounter(mask.shape[0] * self.model.grid[0] * self.model.grid[1])
            cells = defect_patches(mask, self.model.grid).reshape(-1)  # the frame's tiles' patches, in memory order
            self._contamination.observe(self.frames, frame.label, cells, outcome.learned)
            self._contamination.admit(self._memory.pop_admitted())
        for stage in STAGES:
            self._latency[stage].append(latency.get(stage, 0.0))
        self._recent_total.append(latency["total"])
        if outcome.learned:
            self.updates += 1
            self._updates_since_save += 1
            if self.store is not None and self._updates_since_save >= self.options.save_every:
                self._save()
        if self.status is not None:
            now = self.clock()
            self._recent_end.append(now)
            if self.status.due(self.frames, now):
                self.status.write(self._status_text(), now)

    def _status_text(self) -> str:
        ends = self._recent_end
        fps = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else 0.0
        p50 = float(np.median(np.fromiter(self._recent_total, dtype=np.float64))) if self._recent_total else 0.0
        failing = sum(g.failing for g in self.guards)
        return (
            f"frame {self.frames}  {fps:.1f} fps  p50 {p50:.1f} ms  threshold {self.updater.threshold.value:.4g}  "
            f"anomalies {self.anomalies}  updates {self.updates}" + (f"  failing sinks {failing}" if failing else "")
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


def _is_rgb(image: object) -> bool:
    return isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _check_layout(learned: TileLayout | None, requested: TileSpec | None) -> None:
    """Raise StateError when a model learned with tiles or a ROI is run with other ones (the frame size is checked
    at the first frame)."""
    if learned is None and requested is None:
        return
    if learned is None or requested is None:
        was = learned.describe() if learned is not None else "no tiles and no roi"
        raise StateError(
            f"tile layout: expected {was} (the model learned with it), got "
            + ("no tiles and no roi" if requested is None else _describe_spec(requested))
        )
    roi_ok = requested.roi is None or requested.roi == learned.roi
    if requested.tile != learned.tile or requested.overlap != learned.overlap or not roi_ok:
        raise StateError(
            f"tile layout: expected {learned.describe()} (the model learned with it), got {_describe_spec(requested)}"
        )


def _describe_spec(spec: TileSpec) -> str:
    tile = f"tiles {spec.tile[0]}x{spec.tile[1]} overlap {spec.overlap}" if spec.tile else "no tiles"
    roi = f" over roi {','.join(map(str, spec.roi))}" if spec.roi else ""
    return tile + roi
