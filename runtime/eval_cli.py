"""``lemo-edge eval``: run a protocol on a dataset and write JSON, a markdown table and plots.

In the runtime because ``--backend`` may pick any runtime feature backend (onnxruntime, TensorRT); the protocols
themselves are the core's (``lemo_edge.evaluate``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError
from lemo_edge.runtime.cli import add_tile_arguments, tile_spec
from lemo_edge.runtime.summary import percent
from lemo_edge.utils import json_safe

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    """Register the ``eval`` sub-command."""
    p = sub.add_parser(
        "eval", help="evaluate on a dataset (MVTec folder, manifest JSON or synthetic://)", description=__doc__
    )
    p.add_argument("dataset", help="MVTec AD category folder, manifest (split.json or its folder), or synthetic://?...")
    p.add_argument("--protocol", choices=("online", "mixed", "offline"), default="online")
    p.add_argument("--backbone", default=None, help="timm backbone (default: tf_efficientnet_lite0)")
    p.add_argument("--weights", default=None, help="local weights file for a non-packaged backbone")
    p.add_argument("--backend", default="torch", help="feature backend: torch or onnxruntime")
    p.add_argument("--method", choices=("coreset", "lemo"), default=None, help="memory (default: coreset)")
    p.add_argument("--memory-size", "-K", type=int, default=None, help="K, the number of memory items")
    p.add_argument(
        "--size",
        default=None,
        metavar="S|HxW",
        help="input shape in pixels: S (square) or HxW, multiples of 32 (default 256); frames are resized to it",
    )
    p.add_argument(
        "--letterbox",
        action="store_true",
        default=None,
        help="keep the images' aspect ratio: scale them to fit inside the input shape and pad the rest "
        "(padding is neither scored nor learned)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any ModelConfig field (JSON value), e.g. --set score_k=3",
    )
    p.add_argument(
        "--baselines",
        default="patchcore,greedy,reservoir",
        help="comma-separated baselines to run beside the model, or 'none'",
    )
    p.add_argument("--no-fewshot", action="store_true", help="skip the intermediate few-shot checkpoints")
    p.add_argument("--json", dest="json_out", default=None, help="write the result JSON here")
    p.add_argument("--report", default=None, help="write a markdown report with plots into this folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream order")
    p.add_argument(
        "--defect-fraction",
        type=float,
        default=None,
        metavar="F",
        help="(mixed) share of defects in the stream, 0..0.5: a seeded subset of the even-position defects "
        "(default: all of them); the held-out set is the same for every F",
    )
    add_tile_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """Build the ModelConfig from the CLI flags and ``--set`` overrides."""
    changes: dict[str, Any] = {}
    flags = ("backbone", "method", "memory_size", "size", "letterbox")
    for key, attr in zip(flags, flags, strict=True):
        value = getattr(args, attr, None)
        if value is not None:
            changes[key] = value
    for item in args.set:
        if "=" not in item:
            raise InputError(f"--set: expected FIELD=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    return ModelConfig().replace(**changes)


def run(args: argparse.Namespace) -> int:
    """Entry of ``lemo-edge eval``."""
    from lemo_edge.datasets import open_dataset
    from lemo_edge.evaluate import Evaluator

    config = config_from_args(args)
    tiling = tile_spec(args)
    baselines = [] if args.baselines in ("", "none") else [b.strip() for b in args.baselines.split(",")]
    data = open_dataset(args.dataset, seed=args.seed)
    extract, spec = make_extractor(args.backend, config, weights=args.weights)
    try:
        evaluator = Evaluator(
            config,
            data,
            extract,
            spec,
            seed=args.seed,
            baselines=baselines,
            fewshot=not args.no_fewshot,
            defect_fraction=args.defect_fraction,
            tiling=tiling,
        )
    except ValueError as err:
        raise InputError(str(err)) from err
    result = evaluator.run(args.protocol)
    result["backend"] = args.backend
    grid = result.pop("_grid", None)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))
    if args.report:
        write_report(result, grid, Path(args.report))
    print(summary_line(result))
    return 0


def summary_line(result: dict[str, Any]) -> str:
    """One line with the headline metrics and the baselines; a metric that is not available reads ``n/a``."""
    from lemo_edge.report import format_metric as fmt

    parts = [
        f"{result['protocol']} {result['method']} K={result['memory_size']} (used {result['items_used']}): "
        f"image AUROC {fmt(result['image_auroc'])}, pixel AUROC {fmt(result.get('pixel_auroc'))}, "
        f"AUPRO {fmt(result.get('aupro'))}, F1-max {fmt(result['f1_max'])}"
    ]
    if result.get("pixel_auroc") is None:
        parts[0] += " (pixel metrics n/a: no defect masks)"
    if "defect_accept_rate" in result:
        parts.append(
            f"prequential image AUROC {fmt(result['prequential_image_auroc'])}, "
            f"defects accepted {percent(result['defect_accept_rate'])}, "
            f"defect patches learned {percent(result.get('defect_patch_learned'))}, "
            f"memory from defects {percent(result.get('memory_defect_share'))}"
        )
    for name, b in result.get("baselines", {}).items():
        parts.append(f"{name}: {fmt(b['image_auroc'])}/{fmt(b.get('pixel_auroc'))}")
    parts.append(f"{result['timings']['total_s']:.0f} s")
    return "; ".join(parts)


def write_report(result: dict[str, Any], grid: dict[str, Any] | None, out_dir: Path) -> Path:
    """Write ``README.md`` (metrics table), ``roc.png``, ``fewshot.png`` and ``grid.png`` into ``out_dir``."""
    from lemo_edge import report

    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = report.format_metric
    keys = ["image_auroc", "pixel_auroc", "aupro", "f1_max"]
    rows = [
        {
            "method": f"LeMO ({result['method']}, K={result['memory_size']})",
            "items": result["items_used"],
            **{k: fmt(result.get(k)) for k in keys},
        }
    ]
    for name, b in result.get("baselines", {}).items():
        rows.append({"method": f"{name} ({b['note']})", "items": b["items"], **{k: fmt(b.get(k)) for k in keys}})
    lines = [
        f"# lemo-edge eval: {result['dataset']}, protocol {result['protocol']}",
        "",
        report.markdown_table(rows, ["method", "items", *keys]),
        "",
    ]
    if result.get("pixel_auroc") is None:
        lines += [
            f"Pixel metrics (pixel AUROC, AUPRO): {report.NOT_AVAILABLE}, the test images have no defect masks "
            "(image-level labels only).",
            "",
        ]
    if "prequential_image_auroc" in result:
        lines += [
            f"- prequential image AUROC (scored before learning): {fmt(result['prequential_image_auroc'])}",
            f"- prequential pixel AUROC: {fmt(result.get('prequential_pixel_auroc'))}",
            f"- stream: {result.get('stream_length')} images, {result.get('stream_defects')} defects "
            f"({percent(result.get('stream_defect_fraction'))})",
            "- streamed defects accepted for an update (`defect_accept_rate`): "
            f"{percent(result['defect_accept_rate'])}",
            f"- streamed normal images accepted (`normal_accept_rate`): {percent(result['normal_accept_rate'])}",
            "- streamed defect patches (cells at least half in the mask) that became memory items "
            f"(`defect_patch_learned`): {percent(result.get('defect_patch_learned'))}",
            "- final memory items from defect patches (`memory_defect_share`): "
            f"{percent(result.get('memory_defect_share'))}"
            f"; pending rows from defect patches: {percent(result.get('pending_defect_share'))}",
            "",
        ]
    curves = {name: (np.asarray(r["fpr"]), np.asarray(r["tpr"]), r["auc"]) for name, r in result["roc"].items()}
    report.plot_roc(curves, out_dir / "roc.png")
    lines.append("![ROC curves](roc.png)")
    if len(result.get("fewshot", [])) > 1:
        points = result["fewshot"]
        report.plot_fewshot(
            [p["images"] for p in points],
            {k: [p.get(k) for p in points] for k in ("image_auroc", "pixel_auroc")},
            out_dir / "fewshot.png",
        )
        lines.append("![few-shot curve](fewshot.png)")
    if grid:
        report.plot_grid(
            grid["images"],
            grid["maps"],
            grid["masks"],
            grid["titles"],
            out_dir / "grid.png",
            vmax=result.get("threshold") if math.isfinite(result.get("threshold") or math.inf) else None,
        )
        lines.append("![images, anomaly maps and masks](grid.png)")
    lines += ["", f"Total time: {result['timings']['total_s']:.1f} s.", ""]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def make_extractor(backend: str, config: ModelConfig, weights: str | None = None) -> tuple[Any, Any]:
    """The feature backend for ``backend`` and its FeatureSpec."""
    if backend == "torch":
        from lemo_edge.backbone import create_feature_extractor

        extractor = create_feature_extractor(config.backbone, weights)
        return extractor, extractor.spec
    from lemo_edge.runtime.backends import create_backend

    try:
        created = create_backend(backend, backbone=config.backbone, size=config.input_hw)
    except ValueError as err:
        raise InputError(str(err)) from err
    return created, created.spec
