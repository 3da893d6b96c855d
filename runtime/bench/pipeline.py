"""What the benchmark times: JPEG camera frames, the LeMO frame pipeline split into stages, PatchCore's frame.

:class:`FramePipeline` runs one model per feature backend and scorer as the timed
:data:`~lemo_edge.runtime.bench.timing.STAGES`; :func:`build_patchcore_bank` and :func:`lemo_vs_patchcore`
build the PatchCore peer and time its frame beside LeMO's, interleaved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lemo_edge.config import ModelConfig, size_hw
from lemo_edge.errors import BackendUnavailableError, InputError
from lemo_edge.runtime.bench.config import BenchConfig
from lemo_edge.runtime.bench.timing import FRAME, Stage, Sync, Timed, interleave, ratio
from lemo_edge.scoring import Scorer

if TYPE_CHECKING:
    from lemo_edge.inspector import FrameOutcome, Inspector

# -- input frames -----------------------------------------------------------------------------------------------------


class JpegFrames:
    """Synthetic camera frames kept JPEG-encoded (``cv2.imencode``); :meth:`decode` is the preprocess stage.

    Args:
        count: distinct frames (cycled by index).
        source_hw: ``(H, W)`` of the encoded frames (a crop of a square synthetic frame).
        seed: synthetic stream seed.
        start: index of the first synthetic frame.
        quality: JPEG quality.
    """

    def __init__(
        self, count: int, source_hw: tuple[int, int] = (480, 640), seed: int = 0, start: int = 0, quality: int = 90
    ) -> None:
        import cv2

        from lemo_edge.synthetic import synthetic_sample

        if count < 1 or min(source_hw) < 32:
            raise InputError(f"frames: expected count >= 1 and sides >= 32, got {count} frames of {source_hw}")
        h, w = source_hw
        self.source_hw = (int(h), int(w))
        self.quality = quality
        self.encoded: list[np.ndarray] = []
        for i in range(count):
            rgb = synthetic_sample(seed, start + i, max(h, w)).image[:h, :w]
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise BackendUnavailableError("frames: cv2.imencode could not encode a JPEG")
            self.encoded.append(buf)

    def __len__(self) -> int:
        return len(self.encoded)

    def decode(self, index: int, size: int | tuple[int, int]) -> np.ndarray:
        """Frame ``index mod count``: decoded, RGB, resized to ``(H, W, 3) uint8`` (INTER_AREA); ``size``: a
        side (square) or ``(H, W)``."""
        import cv2

        bgr = cv2.imdecode(self.encoded[index % len(self.encoded)], cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"frames: expected a decodable JPEG, got frame {index % len(self.encoded)} corrupt")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = size_hw(size)
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)  # cv2 takes (width, height)


# -- the pipeline -----------------------------------------------------------------------------------------------------


class FramePipeline:
    """One LeMO model fed by one feature backend and one scorer, split into the timed :data:`STAGES`.

    The stages do what :class:`lemo_edge.runtime.loop.InspectionLoop` does per frame, without sinks:
    ``preprocess`` and ``backbone``, then one :meth:`Inspector.step <lemo_edge.inspector.Inspector.step>`
    per frame, recorded as its parts ``score`` (adapter + nearest memory), ``map`` (anomaly map, image
    score read back: the frame's host synchronisation) and ``update`` (decision and gated online update),
    timed by the step itself (:class:`lemo_edge.timing.StageTimer`). Without the update the step is the
    frozen one (``Inspector(freeze=True)``, as ``lemo-edge run --freeze``). ``batch > 1`` runs preprocess
    per frame, the backbone on the batch and one step per frame (the model learns from one frame at a
    time, each scored against the memory the previous one left); the parts are summed over the batch.

    Args:
        backend: ``(B, 3, H, W) uint8`` -> ``(B, D, H/s, W/s) float32`` features.
        config: model config (its ``size`` is S).
        scorer: nearest-memory scorer (``runtime.scorers``) the memory searches with
            (:meth:`~lemo_edge.model.LemoModel.use_scorer`); ``None``: the memory's own search (the
            reference, or the library index of a config with ``knn``).
        frames: the JPEG frames decoded by the preprocess stage.
        device: where the model lives (the backend's features are moved there).
        batch: frames per call.

    Raises:
        InputError: ``batch < 1``, or a scorer whose ``k`` is not ``config.score_k``.
    """

    def __init__(
        self,
        backend: Any,
        config: ModelConfig,
        scorer: Scorer | None,
        frames: JpegFrames,
        device: torch.device,
        batch: int = 1,
    ) -> None:
        from lemo_edge.inspector import Inspector
        from lemo_edge.model import LemoModel
        from lemo_edge.updater import OnlineUpdater

        if batch < 1:
            raise InputError(f"batch: expected >= 1, got {batch}")
        self.backend = backend
        self.config = config
        self.scorer = scorer
        self.frames = frames
        self.device = device
        self.batch = batch
        self.model = LemoModel(config, backend.spec).to(device)
        self.updater = OnlineUpdater(self.model)
        self.inspector = Inspector(self.updater, scorer=scorer)
        self.frozen = Inspector(self.updater, freeze=True)  # same model, memory and scorer; never learns
        h, w = config.input_hw
        self.images = torch.empty((batch, 3, h, w), dtype=torch.uint8, pin_memory=device.type == "cuda")
        self.updates = 0
        self.observed = 0
        self.last: FrameOutcome | None = None

    # stages
    def preprocess(self, index: int) -> torch.Tensor:
        """Decode, convert and resize ``batch`` JPEG frames into the reused ``(B, 3, H, W) uint8`` cpu tensor."""
        for b in range(self.batch):
            image = self.frames.decode(index * self.batch + b, self.config.input_hw)
            self.images[b].copy_(torch.from_numpy(image).permute(2, 0, 1))
        return self.images

    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) uint8`` -> ``(B, D, h, w) float32`` on the model's device."""
        features = self.backend(images)
        if features.device != self.device:
            features = features.to(self.device)
        return features

    def step(self, features: torch.Tensor) -> Timed:
        """One Inspector step per frame of the batch; its parts (score, map, update ms) summed over the batch."""
        return self._steps(self.inspector, features)

    def step_frozen(self, features: torch.Tensor) -> Timed:
        """:meth:`step` without learning (the frozen Inspector): parts score and map (update ~ 0)."""
        return self._steps(self.frozen, features)

    def _steps(self, inspector: Inspector, features: torch.Tensor, force: bool = False) -> Timed:
        parts: dict[str, float] = {}
        learned = 0
        for i in range(features.shape[0]):
            outcome = inspector.step(features[i : i + 1], force=force)
            for name, ms in outcome.timings_ms.items():
                parts[name] = parts.get(name, 0.0) + ms
            learned += int(outcome.learned)
            self.last = outcome
        if inspector is self.inspector:
            self.updates += learned
            self.observed += features.shape[0]
        return Timed(learned, parts)

    def stages(self, update: bool = True) -> list[Stage]:
        """The pipeline as ``[(name, fn)]``, with or without the online update (the frozen step)."""
        return [
            ("preprocess", self.preprocess),
            ("backbone", self.backbone),
            ("step", self.step if update else self.step_frozen),
        ]

    # state
    def embeddings(self, frames: JpegFrames) -> torch.Tensor:
        """``(n * h * w, D') float32`` embeddings of every frame of ``frames`` (for priming a memory)."""
        out = []
        for i in range(len(frames)):
            image = torch.from_numpy(frames.decode(i, self.config.input_hw)).permute(2, 0, 1)[None].contiguous()
            features = self.backbone(image)
            with torch.no_grad():
                out.append(self.model.embed(features)[0].detach().clone())
        return torch.cat(out)

    def prime(self, pool: torch.Tensor, seed: int = 0) -> None:
        """Bring a coreset memory to its steady state: full, then one real insertion merges it down.

        The memory is filled with K rows (its confirmed capacity) of ``pool`` (real patch embeddings; with
        slight noise when the pool is smaller than K), then one batch is stepped with a forced update (with
        recurrence admission ``confirm + 1`` times, so that its patches are confirmed): inserting beyond K runs
        the memory's merge, which leaves it at (1 - merge_slack) K with the coverage radius of the merges,
        as after a long stream. A learned memory (``method="lemo"``) is always full: nothing to do.
        """
        from lemo_edge.memory import CoresetMemory

        memory = self.model.memory
        if not isinstance(memory, CoresetMemory):
            return
        k = memory.confirmed_capacity
        gen = torch.Generator().manual_seed(seed)
        pool = pool.to(self.device)
        index = torch.randperm(pool.shape[0], generator=gen)[:k].to(self.device)
        rows = pool[index]
        if rows.shape[0] < k:
            extra = torch.randint(0, pool.shape[0], (k - rows.shape[0],), generator=gen).to(self.device)
            noise = 0.05 * pool.std() * torch.randn(extra.numel(), pool.shape[1], generator=gen).to(self.device)
            rows = torch.cat([rows, pool[extra] + noise])
        memory.replace_items(rows)
        features = self.backbone(self.preprocess(0))
        # with recurrence the frame's patches wait as pending items until ``confirm`` later frames saw
        # them again: the same frame that many more times confirms them, which merges the full memory
        for _ in range(1 + (memory.confirm if memory.admission == "recurrence" else 0)):
            self._steps(self.inspector, features, force=True)
        self.updates = self.observed = 0


def bound_stage(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[Any], Any]:
    """A stage calling ``fn(x)`` whatever it receives (the same input every iteration)."""

    def call(_arg: Any) -> Any:
        return fn(x)

    return call


@dataclass(frozen=True)
class MatrixScorer:
    """A scorer column of the matrix: what the pipeline's memory searches with.

    Attributes:
        name: ``torch``, ``knn`` or ``cuda``.
        scorer: handed to :class:`FramePipeline` (``None``: the memory's own search).
        k: nearest items averaged per patch score.
        description: for the results' ``scorers``.
        config_changes: model config changes of its pipelines (``knn``: the library index).
    """

    name: str
    scorer: Scorer | None
    k: int
    description: str
    config_changes: dict[str, Any] = field(default_factory=dict)


def index_search(k: int, backend: str = "faiss-ivf") -> MatrixScorer:
    """The ``knn`` column: the model's own search through a library index (lemo_edge.knn, ``backend``).

    Its pipelines are built with ``knn=backend`` and no scorer, so ``memory.search`` answers through the
    index, which follows the memory's insertions and merges.
    """
    return MatrixScorer("knn", None, k, f"knn={backend} (lemo_edge.knn), k={k}", {"knn": backend})


def build_patchcore_bank(config: BenchConfig, pipe: FramePipeline) -> tuple[torch.Tensor, dict[str, Any]]:
    """PatchCore's bank from the training images' raw patch features (same backend and size as ``pipe``).

    Args:
        config: the run's config (``patchcore_*`` fields and ``seed``).
        pipe: the pipeline whose backbone stage extracts the features.

    Returns:
        ``(bank, info)``: the ``(M, D) float32`` bank on ``pipe``'s device and what it was built from; with
        ``config.patchcore_full_bank``, ``info["_all_patches_sample"](n)`` draws ``n`` of all training patches
        (the caller pops it before the info goes into the results).

    Raises:
        DatasetError: ``config.patchcore_data`` cannot be read.
    """
    from lemo_edge.baselines import patchcore_bank

    size = pipe.config.input_hw
    t0 = time.perf_counter()
    data = config.patchcore_data
    if data is not None:
        from lemo_edge.datasets import open_dataset, resize_sample

        splits = open_dataset(data)
        items = splits.train_good[: config.patchcore_images] if config.patchcore_images else splits.train_good
        source = f"{splits.name} train_good ({data})"
        loader: Any = ((resize_sample(item.load(), size).image) for item in items)
        count = len(items)
    else:
        from lemo_edge.synthetic import synthetic_sample

        count = config.patchcore_synthetic_images
        source = f"synthetic frames (seed {config.seed + 1}): no --patchcore-data and no ../shared/data/magnetic_tile"
        side = min(size)
        loader = (synthetic_sample(config.seed + 1, i, side, shape=size).image for i in range(count))
    gen = torch.Generator().manual_seed(config.seed)
    per_image = max(1, math.ceil(config.patchcore_subsample / max(1, count)))
    sampled, patches_total = [], 0
    reservoir: list[torch.Tensor] = []  # a uniform sample of every patch, for the full-size bank
    reservoir_per_image = 0
    for image in loader:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].contiguous()
        with torch.no_grad():
            feats = pipe.backbone(tensor)[0]
        z = feats.flatten(1).T.float()  # (P, D)
        patches_total += z.shape[0]
        pick = torch.randperm(z.shape[0], generator=gen)[: min(per_image, z.shape[0])].to(z.device)
        sampled.append(z[pick].cpu())
        if config.patchcore_full_bank:
            reservoir_per_image = max(1, math.ceil(z.shape[0] * config.patchcore_fraction))
            pick = torch.randperm(z.shape[0], generator=gen)[:reservoir_per_image].to(z.device)
            reservoir.append(z[pick].cpu())
    pool = torch.cat(sampled)[: config.patchcore_subsample]
    bank_size = max(1, int(round(pool.shape[0] * config.patchcore_fraction)))
    if config.patchcore_selection == "kcenter":
        bank = patchcore_bank(pool, bank_size, subsample=pool.shape[0], seed=config.seed)
        selection = "greedy k-center coreset (lemo_edge.baselines.patchcore_bank, projection 128)"
    else:
        bank = pool[torch.randperm(pool.shape[0], generator=gen)[:bank_size]]
        selection = (
            "random (--quick: the k-center selection is skipped; "
            "the nearest-neighbour cost depends only on the bank size)"
        )
    info: dict[str, Any] = {
        "source": source,
        "images": count,
        "patches_total": patches_total,
        "subsample": int(pool.shape[0]),
        "fraction": config.patchcore_fraction,
        "bank_size": int(bank.shape[0]),
        "selection": selection,
        "scoring": "as PatchCore: nearest neighbour (k=1) on raw backbone patch features, image score re-weighted "
        "over 9 bank neighbours (lemo_edge.baselines.patchcore_patch_scores)",
        "build_s": time.perf_counter() - t0,
    }
    if reservoir:
        all_sample = torch.cat(reservoir)

        def sample(n: int) -> torch.Tensor:
            return all_sample[torch.randperm(all_sample.shape[0], generator=gen)[:n]].to(pipe.device)

        info["_all_patches_sample"] = sample
    return bank.to(pipe.device), info


def search_threads(model: Any) -> int:
    """Threads a LeMO frame's nearest-memory search runs on (:attr:`lemo_edge.knn.MemoryIndex.search_threads`;
    torch's threads without an index)."""
    index = getattr(model.memory, "index", None)
    return index.search_threads if index is not None else torch.get_num_threads()


def lemo_vs_patchcore(
    pipe: FramePipeline, bank: torch.Tensor, warmup: int, iters: int, sync: Sync = None
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Interleave LeMO's frame (the frozen step: no online update) and PatchCore's frame, same backend and input.

    PatchCore's frame scores as PatchCore does (:mod:`lemo_edge.baselines`): ``score`` (nearest neighbour over
    the bank, the image score re-weighted over the 9 nearest bank items of the maximum's nearest item),
    ``map`` (nearest upsampling, Gaussian, image score read back), both timed by a
    :class:`lemo_edge.timing.StageTimer` as the step times its own. PatchCore's scoring runs on as many
    torch threads as LeMO's search uses (:func:`search_threads`), so that neither gets more cores.

    Args:
        pipe: the LeMO pipeline; its preprocess and backbone stages feed PatchCore too.
        bank: ``(M, D) float32`` PatchCore bank of raw backbone patch features on ``pipe``'s device.
        warmup, iters: interleaved iterations discarded and recorded.
        sync: device synchronisation before each clock read.

    Returns:
        ``(lemo_memory_items, {"frame": ratio, "score": ratio})`` (see :func:`~.timing.ratio`): PatchCore's
        p50 over LeMO's, for the whole frame and for scoring only (LeMO's score part: adapter + memory).
    """
    from lemo_edge.baselines import patchcore_maps, patchcore_patch_scores
    from lemo_edge.timing import StageTimer

    model = pipe.model
    size = pipe.config.input_hw
    sigma = pipe.config.sigma

    threads = search_threads(model)

    def pc_step(features: torch.Tensor) -> Timed:
        timer = StageTimer(pipe.device)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                patch, score = patchcore_patch_scores(bank, features)
        finally:
            torch.set_num_threads(previous)
        timer.mark("score")
        with torch.no_grad():
            patchcore_maps(patch, size, sigma)
            values = score.tolist()  # the frame's host synchronisation, as in the step
            timer.mark("map")
        return Timed(values, timer.elapsed_ms())

    patchcore: list[Stage] = [("preprocess", pipe.preprocess), ("backbone", pipe.backbone), ("step", pc_step)]
    times = interleave(
        {"lemo": pipe.stages(update=False), "patchcore": patchcore},
        warmup=warmup,
        iters=iters,
        sync=sync,
    )
    out = {
        "frame": ratio(times["patchcore"][FRAME], times["lemo"][FRAME]),
        "score": ratio(times["patchcore"]["score"], times["lemo"]["score"]),
    }
    return int(model.memory.items.shape[0]), out
