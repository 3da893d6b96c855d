"""How should letterbox padding be treated? Masked constant padding vs unmasked constant vs edge replication.

Usage:
    python benchmarks/letterbox_study.py [DATASET] --size 256 [--out benchmarks/results/letterbox-study]

Frames much wider than the model's input (default: synthetic 256 x 640 frames with 10-20 px defects, the
``--size 256`` model sees them letterboxed to 256 x 102 content and 154 rows of padding) run through the
online protocol (``lemo_edge.evaluate.Evaluator``, the one frame step) four ways:

- ``masked``: what ``--letterbox`` does: constant padding (lemo_edge.letterbox.PAD_VALUE), its cells neither
  scored (set to the content's lowest) nor learned;
- ``constant``: the same padding, scored and learned like content;
- ``replicate``: padding by edge replication (``cv2.BORDER_REPLICATE``), scored and learned like content;
- ``squash``: no letterbox, the frame resized to the model's square (the aspect ratio is lost).

The three letterbox variants are scored on the content only (the metrics crop the padding); reported: image and
pixel AUROC, and the share of test frames whose map maximum lies in the padding (a padded cell made the score).
The unmasked variants are the library's functions with the mask (``valid_cells``) or the padding
(``letterbox_image``) replaced inside this script only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as lemo_edge.runtime.main does; set before torch is imported

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import lemo_edge.evaluate as evaluate  # noqa: E402
from lemo_edge.config import ModelConfig  # noqa: E402
from lemo_edge.datasets import open_dataset  # noqa: E402
from lemo_edge.letterbox import Letterbox, letterbox_image  # noqa: E402
from lemo_edge.report import markdown_table  # noqa: E402
from lemo_edge.runtime.eval_cli import make_extractor  # noqa: E402

DEFAULT_DATA = (
    "synthetic://?seed=0&size=256&height=256&width=640&defect_min=10&defect_max=20"
    "&n_train=120&n_test_good=40&n_test_defect=40"
)
VARIANTS = ("masked", "constant", "replicate", "squash")


def _replicated(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """``letterbox_image`` whose padding repeats the content's last row and column (masks: zeros)."""
    out, box = letterbox_image(image, size)
    if image.ndim == 3:
        ch, cw = box.content_hw
        out = cv2.copyMakeBorder(
            np.ascontiguousarray(out[:ch, :cw]), 0, size[0] - ch, 0, size[1] - cw, cv2.BORDER_REPLICATE
        )
    return out, box


def _all_cells(box: Letterbox, grid: tuple[int, int]) -> torch.Tensor:
    return torch.ones(grid, dtype=torch.bool)


def _max_in_padding(maps: np.ndarray, content_hw: tuple[int, int] | None) -> float | None:
    """Share of maps whose maximum lies outside the content (None without letterbox)."""
    if content_hw is None:
        return None
    ch, cw = content_hw
    inside = maps[:, :ch, :cw].reshape(len(maps), -1).max(1)
    return float(np.mean(maps.reshape(len(maps), -1).max(1) > inside + 1e-6))


def run_variant(name: str, dataset: str, size: int, memory_size: int, backend: str, seed: int) -> dict[str, Any]:
    config = ModelConfig(size=size, letterbox=name != "squash", memory_size=memory_size)
    saved = evaluate.valid_cells, evaluate.letterbox_image
    try:
        if name in ("constant", "replicate"):
            evaluate.valid_cells = _all_cells  # type: ignore[assignment]
        if name == "replicate":
            evaluate.letterbox_image = _replicated  # type: ignore[assignment]
        data = open_dataset(dataset, seed=seed)
        extract, spec = make_extractor(backend, config)
        evaluator = evaluate.Evaluator(config, data, extract, spec, seed=seed, baselines=(), fewshot=False)
        t0 = time.perf_counter()
        result = evaluator.run("online")
        test = evaluator.cache[(data.name, "test", config.input_hw, config.letterbox, config.backbone)]
        inspector_maps = _rescore(evaluator, test, config)
    finally:
        evaluate.valid_cells, evaluate.letterbox_image = saved
    return {
        "variant": name,
        "image_auroc": result["image_auroc"],
        "pixel_auroc": result["pixel_auroc"],
        "aupro": result["aupro"],
        "max_in_padding": _max_in_padding(inspector_maps, test.content_hw),
        "items_used": result["items_used"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _rescore(evaluator: evaluate.Evaluator, test: evaluate.Encoded, config: ModelConfig) -> np.ndarray:
    """The test maps at the whole input (padding included) of a model trained as the protocol trains it."""
    from lemo_edge.inspector import Inspector
    from lemo_edge.model import LemoModel
    from lemo_edge.updater import OnlineUpdater

    train = evaluator.cache[(evaluator.data.name, "train", config.input_hw, config.letterbox, config.backbone)]
    inspector = Inspector(OnlineUpdater(LemoModel(config, evaluator.spec)))
    for idx in evaluator._order(len(evaluator.data.train_good)):
        inspector.step(train.features[idx : idx + 1].float(), valid=train.valid)
    maps, _ = evaluate.score_model(inspector, test.features, valid=test.valid)
    return maps


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("dataset", nargs="?", default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=256, help="the model's square input side")
    parser.add_argument("-K", "--memory-size", type=int, default=2048)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    rows = []
    for name in args.variants.split(","):
        row = run_variant(name, args.dataset, args.size, args.memory_size, args.backend, args.seed)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"dataset": args.dataset, "size": args.size, "memory_size": args.memory_size, "backend": args.backend}
        args.out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
        table = markdown_table(
            rows, ["variant", "image_auroc", "pixel_auroc", "aupro", "max_in_padding", "items_used", "seconds"], ".3f"
        )
        lines = [
            "# Letterbox padding: masked vs unmasked constant vs edge replication (benchmarks/letterbox_study.py)",
            "",
            f"Dataset `{args.dataset}`, model {args.size}x{args.size}, K={args.memory_size}, {args.backend}; online "
            "protocol, metrics on the content (padding cropped); `max_in_padding`: share of test maps whose "
            "maximum lies in the padding.",
            "",
            table,
            "",
        ]
        args.out.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
