"""How far an image-level gate can keep defects out of the memory (the mixed protocol).

Usage:
    python benchmarks/mixed_gate_study.py ../shared/data/magnetic_tile --gate accepted --k 5
    python benchmarks/mixed_gate_study.py ../shared/data/magnetic_tile --gate oracle --k 2

Streams the ``mixed`` protocol of ``lemo-edge eval`` (normal training images + the even-position
defects, seeded order, each scored before it may be learned) through the default model with one
of these gates after a warm-up of ``--warmup`` images:

- ``accepted``: the model's own gate, mean + k std of the accepted images' scores (the default);
- ``robust``: median + k * 1.4826 MAD of the last ``--window`` scores of *all* images;
- ``quantile``: below the k-quantile of the last ``--window`` scores of all images;
- ``oracle``: learns exactly the normal images (labels; a bound, not a method) and reports which
  images a ``robust`` gate with this k, or a ``quantile`` gate, would have accepted.

``--statistic lof`` gates on a local-density score instead of the image score: each patch's
distance to its nearest item divided by that item's distance to its own nearest other item,
z-normalised per position with running statistics of the images learned, smoothed, maximum over
the image (the nearest-other distances are recomputed whenever the memory has changed).

``--forget-every N --forget-pct P`` is a memory that forgets: every N images, the P% of the items
that lie farthest from any other item (a learned defect has no neighbours) are removed, and the
held-out scores are also reported after removing 5%, 10% and 20% of the items at the end.

``--defer N`` keeps refused images for up to N images and re-scores them every 8 images, learning
those that now pass. Prints one JSON line: held-out image/pixel AUROC (pixel on maps subsampled
by 4), prequential image AUROC, and the fractions of streamed defect and normal images learned.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as lemo_edge.runtime.main does; set before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lemo_edge import metrics  # noqa: E402
from lemo_edge.config import ModelConfig  # noqa: E402
from lemo_edge.datasets import open_dataset  # noqa: E402
from lemo_edge.evaluate import encode, score_model  # noqa: E402
from lemo_edge.inspector import FrameOutcome, Inspector  # noqa: E402
from lemo_edge.memory import nearest_other  # noqa: E402
from lemo_edge.model import LemoModel, PositionNorm  # noqa: E402
from lemo_edge.runtime.eval_cli import make_extractor  # noqa: E402
from lemo_edge.updater import OnlineUpdater  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--gate", choices=("accepted", "robust", "quantile", "oracle"), default="accepted")
    parser.add_argument("--k", type=float, default=5.0, help="std/MAD multiple, or the quantile")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--defer", type=int, default=0)
    parser.add_argument("--forget-every", type=int, default=0, help="remove isolated items every N images")
    parser.add_argument("--forget-pct", type=float, default=5.0, help="percentage of the items removed each time")
    parser.add_argument("--statistic", choices=("image", "lof"), default="image", help="what the gate compares")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge-slack", type=float, default=None, help="the model's merge_slack (default: config's)")
    parser.add_argument(
        "--online", action="store_true", help="stream the normal images only; held out: the whole test set"
    )
    args = parser.parse_args()
    if args.statistic == "lof" and args.gate == "accepted":
        parser.error("--statistic lof needs --gate robust, quantile or oracle (the model's gate uses image scores)")

    config = ModelConfig(threshold_k=args.k, warmup=args.warmup)
    if args.merge_slack is not None:
        config = config.replace(merge_slack=args.merge_slack)
    data = open_dataset(args.dataset)
    extract, spec = make_extractor(args.backend, config)
    defects = list(data.test_defect)
    if args.online:  # the online protocol's stream and test set, to see what a gate costs without defects
        stream_items, held_items = list(data.train_good), list(data.test_good) + defects
    else:
        stream_items, held_items = list(data.train_good) + defects[0::2], list(data.test_good) + defects[1::2]
    stream = encode(stream_items, extract, config.input_hw, "encode stream")
    held = encode(held_items, extract, config.input_hw, "encode held-out")
    order = torch.randperm(len(stream_items), generator=torch.Generator().manual_seed(args.seed)).tolist()

    model = LemoModel(config, spec)
    updater = OnlineUpdater(model)
    inspector = Inspector(updater)
    recent: list[float] = []
    refused: list[tuple[int, int]] = []  # (stream position, item index)
    learned = np.zeros(len(order), bool)
    would = np.zeros(len(order), bool)
    scores = np.zeros(len(order))
    labels = stream.labels[np.asarray(order)]

    lof_norm = PositionNorm(model.grid, args.window)
    nn_dist, nn_key = torch.zeros(0), None

    def refresh_nn() -> None:  # nearest-other distance of every item, whenever the memory changed
        nonlocal nn_dist, nn_key
        key = (model.memory.items.shape[0], updater.stats.inserted, updater.stats.updates)
        if key != nn_key:
            items = model.memory.items.detach()
            nn_dist = nearest_other(items)[0] if items.shape[0] >= 2 else torch.zeros(0)
            nn_key = key

    def gate_statistic(outcome: FrameOutcome) -> tuple[float, torch.Tensor | None]:
        if args.statistic == "image" or outcome.scores is None:
            return outcome.score, None
        refresh_nn()
        if nn_dist.shape[0] < 2:
            return outcome.score, None
        out = outcome.scores
        ratio = out.nearest.nearest_distance / nn_dist[out.nearest.index].clamp(min=1e-6)
        ratio = ratio.view(1, *model.grid)
        with torch.no_grad():
            _, value = model.maps(lof_norm(ratio))
        return float(value[0]), ratio[0]

    def forget(pct: float) -> None:  # remove the pct% most isolated items (largest nearest-other distance)
        items = model.memory.items.detach()
        keep = torch.ones(items.shape[0], dtype=torch.bool)
        keep[nearest_other(items)[0].argsort(descending=True)[: int(pct / 100 * items.shape[0])]] = False
        model.memory.replace_items(items[keep])

    def score(idx: int) -> tuple[FrameOutcome, float, torch.Tensor | None]:
        outcome = inspector.assess(stream.features[idx : idx + 1].float())
        statistic, ratio = gate_statistic(outcome)
        return outcome, statistic, ratio

    def learn(outcome: FrameOutcome, ratio: torch.Tensor | None) -> bool:
        if ratio is not None:
            lof_norm.update(ratio)
        return inspector.commit(outcome, force=True).learned

    def threshold() -> float:
        window = np.asarray(recent[-args.window :])
        if args.gate == "quantile":
            return float(np.quantile(window, args.k))
        median = float(np.median(window))
        return median + args.k * 1.4826 * float(np.median(np.abs(window - median)))

    t0 = time.perf_counter()
    for n, idx in enumerate(order):
        outcome, image_score, ratio = score(idx)
        scores[n] = image_score
        if args.gate == "accepted":
            learned[n] = inspector.commit(outcome).learned
        else:
            accept = n < args.warmup or image_score <= threshold()
            would[n] = accept
            if args.gate == "oracle" and labels.any():
                accept = labels[n] == 0
            recent.append(image_score)
            learned[n] = learn(outcome, ratio) if accept else False
        if args.forget_every and n % args.forget_every == args.forget_every - 1 and model.memory.items.shape[0] >= 64:
            forget(args.forget_pct)
        if args.defer and not learned[n]:
            refused.append((n, idx))
        if args.defer and n >= args.warmup and n % 8 == 0 and refused:
            limit = threshold() if args.gate != "accepted" else updater.threshold.value
            still = []
            for m, j in refused:
                o2, s2, r2 = score(j)
                if s2 <= limit:
                    learned[m] = learn(o2, r2)
                elif n - m < args.defer:
                    still.append((m, j))
            refused = still

    maps, held_scores = score_model(inspector, held.features)
    result = {
        "protocol": "online" if args.online else "mixed",
        "gate": args.gate,
        "statistic": args.statistic,
        "k": args.k,
        "window": args.window,
        "warmup": args.warmup,
        "defer": args.defer,
        "held_out_image_auroc": metrics.image_auroc(held_scores, held.labels),
        "held_out_pixel_auroc_sub4": metrics.pixel_auroc(maps[:, ::4, ::4], held.masks[:, ::4, ::4]),
        "prequential_image_auroc": metrics.image_auroc(scores, labels) if labels.any() else None,
        "defects_learned": float(learned[labels == 1].mean()) if labels.any() else None,
        "normal_learned": float(learned[labels == 0].mean()),
        "items": int(model.memory.items.shape[0]),
        "stream_s": round(time.perf_counter() - t0, 1),
    }
    if args.gate == "oracle" and labels.any():
        before = [scores[max(0, n - args.window) : n] for n in range(len(order))]
        ranks = np.array([(b < scores[n]).mean() if n else 0.0 for n, b in enumerate(before)])
        for q in (0.4, 0.5, 0.6, 0.7, 0.8):
            passed = (ranks <= q) | (np.arange(len(order)) < args.warmup)
            result[f"quantile_{q}_would_learn"] = {
                "defects": float(passed[labels == 1].mean()),
                "normal": float(passed[labels == 0].mean()),
            }
        result[f"robust_{args.k}_would_learn"] = {
            "defects": float(would[labels == 1].mean()),
            "normal": float(would[labels == 0].mean()),
        }
    if args.forget_every or args.gate in ("accepted", "oracle"):
        learned_items = model.memory.items.detach().clone()
        for pct in (5.0, 10.0, 20.0):
            model.memory.replace_items(learned_items)
            forget(pct)
            _, after = score_model(inspector, held.features)
            result[f"held_out_image_auroc_forget_{pct:g}pct_at_end"] = metrics.image_auroc(after, held.labels)
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
