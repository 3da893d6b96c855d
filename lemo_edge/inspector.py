"""The one frame step: score -> map -> decide -> gated update, for every caller.

The inspection loop, the evaluation protocols, the benchmark and the study scripts all call
:meth:`Inspector.step` (and :meth:`Inspector.score` for batches that are only scored), so what is
measured is what runs. A frame costs one host synchronisation: the image score and the finiteness of
its features and scores are read back together, the decision is taken on the host, and the update is
queued on the device after it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from lemo_edge.errors import InputError, describe
from lemo_edge.model import LemoModel, Scores
from lemo_edge.scoring import Scorer
from lemo_edge.tiling import Tiler
from lemo_edge.timing import StageTimer
from lemo_edge.updater import REASON_NOT_FINITE, Observation, OnlineUpdater

REASON_FROZEN = "frozen"


@dataclass(frozen=True)
class FrameOutcome:
    """What one frame's step found and did.

    Attributes:
        score: the image score (maximum of the smoothed map); ``nan`` when the frame was not finite.
        threshold: the decision threshold the frame was judged against (``inf`` before it is learned).
        anomalous: the decision (``score > threshold``); false for a frame that is not finite.
        learned: whether the model learned from the frame.
        reason: why it learned or not (``warm-up``, ``below threshold``, ``above threshold``, ``gate off``,
            ``forced``, ``frozen``, ``not finite``).
        finite: whether the frame's embeddings and patch scores were all finite (never learned otherwise).
        inserted: patches that became memory items.
        patch: ``(h, w) float32`` patch scores after position normalisation, on the model's device
            (with a tiler: ``(T, h, w)``, one per tile).
        raw: ``(h, w) float32`` raw patch scores (nearest distances), on the model's device (tiles: ``(T, h, w)``).
        map: ``(H, W) float32`` smoothed anomaly map at the input size, on the model's device (with a tiler: the
            ROI's stitched map ``(roi_h, roi_w)`` in frame pixels).
        scores: the model's :class:`~lemo_edge.model.Scores` of the frame (embeddings, nearest items).
        features: the frame's features until it is committed (then ``None``).
        timer: the frame's stage marks (``score``, ``map``, ``update``); read by :attr:`timings_ms`.
    """

    score: float
    threshold: float
    anomalous: bool
    learned: bool
    reason: str
    finite: bool
    inserted: int
    patch: torch.Tensor
    raw: torch.Tensor
    map: torch.Tensor
    scores: Scores | None = None
    features: torch.Tensor | None = field(default=None, repr=False)
    timer: StageTimer | None = field(default=None, repr=False)

    @property
    def timings_ms(self) -> dict[str, float]:
        """``{"score", "map", "update"}`` milliseconds (CUDA events on CUDA: reading them waits for the
        frame's work to finish, so read them after the map has been copied to the host)."""
        return self.timer.elapsed_ms() if self.timer is not None else {}


class Inspector:
    """Runs frames through a model and its online updater.

    Args:
        updater: the model's online updater (it holds the model and the threshold).
        freeze: never learn (inference only; the threshold stays as it is).
        scorer: nearest-memory scorer used by the memory's search instead of the torch reference
            (e.g. ``lemo_edge.runtime.scorers.CudaMemoryScorer``); ``None``: the memory's own search.
        profile: synchronise the device after every stage, for exact per-stage times (slower).
        tiler: frames are cut into tiles (:class:`~lemo_edge.tiling.Tiler`, see :meth:`use_tiler`); ``None``: one
            input per frame.

    Raises:
        StateError: the model learned with another tile layout than ``tiler``'s.
    """

    def __init__(
        self,
        updater: OnlineUpdater,
        *,
        freeze: bool = False,
        scorer: Scorer | None = None,
        profile: bool = False,
        tiler: Tiler | None = None,
    ) -> None:
        self.updater = updater
        self.model: LemoModel = updater.model
        self.freeze = freeze
        self.profile = profile
        if scorer is not None:
            self.model.use_scorer(scorer)
        self.device = _module_device(self.model)
        self.tiler: Tiler | None = None
        if tiler is not None:
            self.use_tiler(tiler)

    def use_tiler(self, tiler: Tiler | None) -> None:
        """Cut frames into ``tiler``'s tiles from now on: a frame's features are then ``(T, D, h, w)``, its map the
        stitched map of the ROI in frame pixels, its score that map's maximum; learning takes all its tiles.

        Raises:
            StateError: the model learned with another layout (a fresh model adopts this one).
        """
        if tiler is not None and self.model.config.letterbox:
            raise InputError("tile: expected either tiles or letterbox (a tile is the model's input), got both")
        self.model.use_layout(tiler.layout if tiler is not None else None, fresh=self.updater.stats.seen == 0)
        self.tiler = tiler

    def check(self, features: torch.Tensor) -> None:
        """Raise InputError unless ``features`` is one frame, ``(T, D, h, w)`` float (``T`` the tiler's tiles, else
        1), for this model on its device."""
        self.model.check_features(features)
        count = self.tiler.count if self.tiler is not None else 1
        if features.shape[0] != count or features.device != self.device:
            raise InputError(
                f"features: expected one frame ({count} input{'s' if count > 1 else ''}) on {self.device}, "
                f"got {describe(features)}"
            )

    def step(
        self, features: torch.Tensor, force: bool = False, tag: int = -1, valid: torch.Tensor | None = None
    ) -> FrameOutcome:
        """Score one frame, decide, and learn from it if the gate accepts it: :meth:`assess` then :meth:`commit`.

        Args:
            features: ``(1, D, h, w) float`` backbone features on the model's device (with a tiler
                ``(T, D, h, w)``, the frame's tiles; see :meth:`check`).
            force: learn regardless of the gate (offline training); a non-finite frame is never learned.
            tag: the frame's provenance (e.g. its stream position) for contamination bookkeeping.
            valid: ``(h, w) bool`` content cells of a letterboxed frame (:func:`lemo_edge.letterbox.valid_cells`):
                padded cells are neither scored nor learned; ``None``: every cell.

        Returns:
            The :class:`FrameOutcome`.
        """
        return self.commit(self.assess(features, valid), force=force, tag=tag)

    def assess(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> FrameOutcome:
        """Score one frame and judge it, without learning (``learned`` false, ``reason`` empty).

        This ends with the frame's one host synchronisation (the image score and the finiteness flag
        are read together). A study that decides by other rules calls this, then :meth:`commit` with
        ``force=True`` for the frames it keeps.
        """
        timer = StageTimer(self.device, profile=self.profile)
        if self.updater.optimizer is not None and features.is_inference():
            features = features.clone()  # inference tensors cannot feed the gradient steps
        with torch.no_grad():
            scores = self.model.score(features, valid)
            timer.mark("score")
            maps, image = self.model.maps(scores.patch)
            if self.tiler is not None:  # one decision per frame: the maximum of the stitched map
                maps = self.tiler.stitch(maps)[None]
                image = maps.flatten(1).amax(1)
            finite = torch.isfinite(scores.embeddings).all() & ~torch.isnan(scores.raw).any()
            score, ok = torch.stack([image[0], finite.to(image.dtype)]).tolist()  # the frame's host sync
            timer.mark("map")
        is_finite = ok > 0.5
        if not is_finite:
            score = math.nan
        return FrameOutcome(
            score=score,
            threshold=self.updater.threshold.value,
            anomalous=is_finite and self.updater.threshold.is_anomalous(score),
            learned=False,
            reason="",
            finite=is_finite,
            inserted=0,
            patch=scores.patch if self.tiler is not None else scores.patch[0],
            raw=scores.raw if self.tiler is not None else scores.raw[0],
            map=maps[0],
            scores=scores,
            features=features,
            timer=timer,
        )

    def commit(self, outcome: FrameOutcome, force: bool = False, tag: int = -1) -> FrameOutcome:
        """The gated online update of an assessed frame; returns the outcome with what was learned.

        Args:
            outcome: what :meth:`assess` returned for the frame, not committed before.
            force: learn regardless of the gate; a non-finite frame is never learned.
            tag: the frame's provenance (see :meth:`step`).
        """
        if outcome.scores is None or outcome.features is None:
            raise InputError("commit: expected an outcome of assess() not committed yet")
        if self.freeze:
            observation = Observation(False, REASON_NOT_FINITE if not outcome.finite else REASON_FROZEN, 0)
        else:
            observation = self.updater.observe(
                outcome.features, outcome.scores, outcome.score, force=force, finite=outcome.finite, tag=tag
            )
        if outcome.timer is not None:
            outcome.timer.mark("update")
        return dataclasses.replace(
            outcome,
            learned=observation.learned,
            reason=observation.reason,
            inserted=observation.inserted,
            features=None,
        )

    @torch.no_grad()
    def score(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and image scores of a batch, without learning.

        Args:
            features: ``(B, D, h, w) float`` backbone features on the model's device; with a tiler ``(B * T, D, h, w)``,
                the tiles of ``B`` frames in order.
            valid: ``(h, w)`` or ``(B, h, w) bool`` content cells (letterbox), or ``None``: every cell (always with
                a tiler: tiles are never letterboxed).

        Returns:
            ``(B, H, W) float32`` maps (with a tiler: the stitched ROI maps ``(B, roi_h, roi_w)``) and ``(B,) float32``
            image scores, on the model's device.
        """
        if self.tiler is None:
            return self.model.maps(self.model.score(features, valid).patch)
        count = self.tiler.count
        if features.shape[0] % count:
            raise InputError(f"features: expected frames of {count} tiles, got {describe(features)}")
        maps = torch.stack(
            [
                self.tiler.stitch(self.model.maps(self.model.score(features[start : start + count]).patch)[0])
                for start in range(0, features.shape[0], count)
            ]
        )
        return maps, maps.flatten(1).amax(1)


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.buffers():
        return tensor.device
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
