"""Does mutual scoring separate the mixed stream's defects better than the memory score?

Usage:
    python benchmarks/mutual_score_study.py ../shared/data/magnetic_tile --window 32

Mutual scoring (as in zero-shot detectors that score unlabeled images against each other) needs
no clean memory, which is what the mixed protocol lacks early on. Each image of the ``mixed``
stream (seeded order, as in ``lemo-edge eval --protocol mixed``) is compared with the ``--window``
images before it: per patch, the distance to the nearest patch of each of those images; the
patch score is the mean of the smallest ``alpha`` fraction of these per-image distances (alpha 0:
the minimum, i.e. a memory of all recent patches; larger alpha tolerates a defect that recurs in
a few images); the map is smoothed 3x3, the image score is its maximum. Prints one JSON line with
the image AUROC (defects vs normal images of the stream) for each alpha, and for alpha 0.2 also
with the model's per-position normalisation (lemo_edge.model.PositionNorm, window 64) fed with
every map.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as lemo_edge.runtime.main does; set before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lemo_edge import metrics  # noqa: E402
from lemo_edge.config import ModelConfig  # noqa: E402
from lemo_edge.datasets import open_dataset  # noqa: E402
from lemo_edge.evaluate import encode  # noqa: E402
from lemo_edge.model import PositionNorm  # noqa: E402
from lemo_edge.runtime.eval_cli import make_extractor  # noqa: E402
from lemo_edge.scoring import squared_distances  # noqa: E402

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--window", type=int, default=32, help="how many previous images each is compared with")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = ModelConfig()
    data = open_dataset(args.dataset)
    extract, _ = make_extractor(args.backend, config)
    defects = list(data.test_defect)
    stream = encode(list(data.train_good) + defects[0::2], extract, config.input_hw, "encode stream")
    order = torch.randperm(len(stream.labels), generator=torch.Generator().manual_seed(args.seed))
    patches = stream.features[order].float().flatten(2).transpose(1, 2).contiguous()  # (N, P, D)
    labels = stream.labels[order.numpy()]
    n, p, _ = patches.shape
    h, w = stream.features.shape[2:]

    t0 = time.perf_counter()
    scores: dict[float | str, list[float]] = {alpha: [] for alpha in ALPHAS}
    scores["0.2_position_norm"] = []
    position_norm = PositionNorm((h, w), window=64)
    for i in tqdm(range(args.window, n), desc="mutual scores"):
        ref = patches[i - args.window : i].reshape(-1, patches.shape[2])
        per_image = squared_distances(patches[i], ref).view(p, args.window, p).min(dim=2).values.sqrt()
        ranked = per_image.sort(dim=1).values
        for alpha in ALPHAS:
            m = max(1, round(alpha * args.window))
            smoothed = F.avg_pool2d(ranked[:, :m].mean(dim=1).view(1, 1, h, w), 3, 1, 1)[0, 0]
            scores[alpha].append(float(smoothed.max()))
            if alpha == 0.2:
                scores["0.2_position_norm"].append(float(position_norm(smoothed[None]).max()))
                position_norm.update(smoothed)
    y = labels[args.window :]
    result = {f"alpha_{a}": round(metrics.image_auroc(np.array(s), y), 4) for a, s in scores.items()}
    head = {"window": args.window, "images": int(len(y)), "defects": int(y.sum())}
    print(json.dumps({**head, **result, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
