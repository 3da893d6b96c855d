"""Ablation of the LeMO design decisions on one dataset (online protocol, features computed once).

Usage:
    python benchmarks/ablation.py ../shared/data/magnetic_tile --out benchmarks/results/ablation-magnetic_tile.json

Each row is one ModelConfig variant run through the same Evaluator as ``lemo-edge eval``; the
backbone features of the stream and the test images are encoded once and shared by every row.
Writes a JSON with every result and prints (and writes beside it) a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as lemo_edge.runtime.main does; set before torch is imported

from lemo_edge.backbone import create_feature_extractor  # noqa: E402
from lemo_edge.config import ModelConfig  # noqa: E402
from lemo_edge.datasets import open_dataset  # noqa: E402
from lemo_edge.evaluate import Evaluator  # noqa: E402
from lemo_edge.report import markdown_table  # noqa: E402
from lemo_edge.utils import json_safe  # noqa: E402

# Median norm of a tf_efficientnet_lite0 patch feature on Magnetic Tile (measured): the paper's
# orthogonal noise is scaled to it ("at the features' norm").
FEATURE_NORM = 38.0

PAPER = {
    "method": "lemo",
    "memory_size": 10,
    "score_k": 1,
    "position_norm": False,
    "loss_sign": "paper",
    "compactness": 0.0,
    "reseed_after": 0,
    "adapter": True,
    "extra": {"init_scale": FEATURE_NORM},
}

VARIANTS: dict[str, dict[str, Any]] = {
    "default (coreset K=8192, top-3 score, position norm, gate mean+3std)": {},
    "no gating": {"gate": False},
    "gate at mean + 5 std": {"threshold_k": 5.0},
    "paper as printed: learned memory K=10, loss sign as printed": PAPER,
    "learned memory K=10, sign fixed": {**PAPER, "loss_sign": "fixed"},
    "learned memory K=2048, sign fixed, + compactness + re-seeding": {
        **PAPER,
        "loss_sign": "fixed",
        "memory_size": 2048,
        "compactness": 1.0,
        "reseed_after": 8,
    },
    "same + the paper's refresh": {
        **PAPER,
        "loss_sign": "fixed",
        "memory_size": 2048,
        "compactness": 1.0,
        "reseed_after": 8,
        "refresh_every": 16,
    },
    "same without refresh, adapter frozen": {
        **PAPER,
        "loss_sign": "fixed",
        "memory_size": 2048,
        "compactness": 1.0,
        "reseed_after": 8,
        "adapter": False,
    },
    "K=4096": {"memory_size": 4096},
    "nearest-item score (k=1)": {"score_k": 1},
    "no position normalisation": {"position_norm": False},
    "adapter learned (compactness to memory)": {"adapter": True},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--out", required=True, help="JSON output; a .md table is written beside it")
    parser.add_argument("--only", action="append", default=[], help="run only variants containing this text")
    parser.add_argument("--skip", action="append", default=[], help="skip variants containing this text")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = open_dataset(args.dataset)
    extractor = create_feature_extractor()
    cache: dict[tuple[Any, ...], Any] = {}
    rows, results = [], {}
    for name, changes in VARIANTS.items():
        if args.only and not any(text in name for text in args.only):
            continue
        if any(text in name for text in args.skip):
            continue
        config = ModelConfig().replace(**changes)
        t = time.perf_counter()
        evaluator = Evaluator(config, data, extractor, extractor.spec, baselines=(), fewshot=False, cache=cache)
        result = evaluator.run("online")
        result.pop("_grid", None)
        results[name] = result
        row = {"variant": name, "K": config.memory_size, "items used": result["items_used"]}
        row.update({k: f"{result[k]:.3f}" for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")})
        row["seconds"] = f"{time.perf_counter() - t:.0f}"
        rows.append(row)
        print(row, flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(json_safe(results), indent=2))
    table = markdown_table(
        rows, ["variant", "K", "items used", "image_auroc", "pixel_auroc", "aupro", "f1_max", "seconds"]
    )
    Path(args.out).with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
