"""``lemo-edge export onnx|tensorrt``: write the backbone to ONNX, build TensorRT engines."""

from __future__ import annotations

import argparse

from lemo_edge.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export`` and its ``onnx`` / ``tensorrt`` sub-commands."""
    from lemo_edge.backbone import DEFAULT_BACKBONE

    parser = subparsers.add_parser("export", help="export the backbone to ONNX or a TensorRT engine")
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")

    onnx = targets.add_parser("onnx", help="export the frozen backbone to ONNX and check parity with torch")
    onnx.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm backbone (default {DEFAULT_BACKBONE})")
    onnx.add_argument("--weights", default=None, help="local weights file (non-packaged backbones)")
    onnx.add_argument("--size", default="256", metavar="S|HxW", help="input SIZE or HxW, multiples of 32 (default 256)")
    onnx.add_argument("--out", required=True, help="output .onnx file")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; TensorRT 10 parses 9..20)")
    onnx.add_argument("--static-batch", action="store_true", help="fix the batch at 1 (default: dynamic)")
    onnx.add_argument(
        "--allow-non-tensorrt", action="store_true", help="only warn about operators TensorRT 10 cannot parse"
    )
    onnx.set_defaults(func=run_onnx)

    trt = targets.add_parser("tensorrt", help="build (or reuse) a TensorRT 10 engine from an exported ONNX file")
    trt.add_argument("--onnx", required=True, help="ONNX file written by `lemo-edge export onnx`")
    precision = trt.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    precision.add_argument("--int8", action="store_true", help="INT8 with calibration on --calib images")
    trt.add_argument("--calib", default=None, help="folder of normal images for INT8 calibration")
    trt.add_argument("--batch", default="1:1:8", help="batch profile MIN:OPT:MAX (default 1:1:8)")
    trt.add_argument("--cache", default=None, help="cache folder (default $LEMO_EDGE_CACHE or ~/.cache/lemo-edge)")
    trt.add_argument("--rebuild", action="store_true", help="build even if a cached engine exists, replacing it")
    trt.set_defaults(func=run_tensorrt)


def run_onnx(args: argparse.Namespace) -> int:
    """Export, check and print the report; returns 0 (errors propagate as typed exceptions)."""
    from lemo_edge.backbone import create_feature_extractor
    from lemo_edge.config import ModelConfig
    from lemo_edge.export.onnx import export_onnx

    size = ModelConfig(size=args.size).input_hw  # InputError "size: expected H and W ..." before any work
    extractor = create_feature_extractor(args.backbone, weights=args.weights)
    report = export_onnx(
        extractor,
        args.out,
        size,
        opset=args.opset,
        batch_dynamic=not args.static_batch,
        require_tensorrt=not args.allow_non_tensorrt,
    )
    print(report.summary())
    return 0


def run_tensorrt(args: argparse.Namespace) -> int:
    """Build or reuse an engine and print where it is and what it was built for."""
    import json

    from lemo_edge.export.tensorrt import build_engine, parse_batch_profile, sidecar_path

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    if args.calib is not None and precision != "int8":
        raise InputError("--calib: calibration images apply to --int8 only")
    profile = parse_batch_profile(args.batch)
    engine = build_engine(args.onnx, precision, profile, args.calib, args.cache, args.rebuild)
    fields = json.loads(sidecar_path(engine).read_text(encoding="utf-8"))["fields"]
    print(f"engine: {engine}")
    print(
        f"  {precision}, batch {':'.join(map(str, profile))}, TensorRT {fields['tensorrt_version']}, "
        f"{fields['gpu_name']} (sm {fields['compute_capability']})"
    )
    return 0
