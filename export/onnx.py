"""Export a :class:`~lemo_edge.backbone.FeatureExtractor` to ONNX and prove the file computes the same function.

The exported graph takes ``images``: ``(B, 3, H, W) uint8`` RGB (NCHW, dynamic batch, normalisation inside)
and returns ``features``: ``(B, D, H / s, W / s) float32``. Its ``metadata_props`` carry the layout, input
dtype, backbone, feature levels, mean/std, input size and lemo-edge version, so a runtime never guesses
layout or scale (:func:`read_model_info`).

Every export is checked before it replaces ``path``: ``onnx.checker``, strict shape inference, the
graph's input/output signature, the operators TensorRT 10 can parse (:func:`check_tensorrt_ops`) and
parity with torch in onnxruntime (CPU) on random uint8 images.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from lemo_edge.backbone import POOLING, POOLING_BEFORE, FeatureExtractor, FeatureLevel, FeatureSpec, check_input_size
from lemo_edge.errors import InputError, MissingDependencyError
from lemo_edge.export.cache import package_version
from lemo_edge.export.errors import ExportError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "features"
DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4
TENSORRT_OPS_FILE = Path(__file__).with_name("tensorrt_supported_ops.txt")

_OP_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_DEFAULT_DOMAINS = ("", "ai.onnx")
_ONNX_UINT8 = 2
_ONNX_FLOAT = 1


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how it was checked.

    Attributes:
        path: the ONNX file.
        backbone: backbone name.
        input_size: ``(H, W)`` of the graph input.
        dim: D, channels of the output features.
        stride: stride of the output patch grid.
        opset: ONNX opset of the default domain.
        exporter: ``"dynamo"`` or ``"torchscript"`` (the fallback).
        batch_dynamic: whether the batch dimension is symbolic.
        max_abs_diff: largest ``|onnxruntime - torch|`` over the parity images.
        tolerance: the parity bound that was enforced.
        op_types: operator types used by the graph, sorted.
        unsupported_ops: operator types outside the TensorRT 10 list (empty when the export passed).
    """

    path: Path
    backbone: str
    input_size: tuple[int, int]
    dim: int
    stride: int
    opset: int
    exporter: str
    batch_dynamic: bool
    max_abs_diff: float
    tolerance: float
    op_types: tuple[str, ...]
    unsupported_ops: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        """Return a short human-readable report (a few lines)."""
        h, w = self.input_size
        batch = "dynamic batch" if self.batch_dynamic else "static batch"
        trt = (
            f"all {len(self.op_types)} op types supported"
            if not self.unsupported_ops
            else f"UNSUPPORTED: {', '.join(self.unsupported_ops)}"
        )
        return "\n".join(
            (
                f"onnx: {self.path}",
                f"  {self.backbone}: images (B, 3, {h}, {w}) uint8 NCHW, {batch} -> "
                f"features (B, {self.dim}, {h // self.stride}, {w // self.stride}) float32",
                f"  exporter {self.exporter}, opset {self.opset}",
                f"  parity vs torch (onnxruntime CPU): max abs diff {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:.0e})",
                f"  TensorRT 10 operators: {trt}",
            )
        )


class OnnxCheck(NamedTuple):
    """Result of :func:`verify_onnx`: parity and operator support of one ONNX file."""

    max_abs_diff: float
    op_types: tuple[str, ...]
    unsupported_ops: tuple[str, ...]


@dataclass(frozen=True)
class OnnxModelInfo:
    """The contract an exported file declares in its metadata (see :func:`read_model_info`).

    Attributes:
        path: the ONNX file.
        spec: the backbone's feature spec, rebuilt from the metadata.
        input_size: ``(H, W)`` the graph was exported for.
        version: lemo-edge version that exported it.
        metadata: all ``metadata_props`` of the model.
    """

    path: Path
    spec: FeatureSpec
    input_size: tuple[int, int]
    version: str
    metadata: dict[str, str] = field(default_factory=dict)


def _import_onnx():  # noqa: ANN202 - module
    try:
        import onnx
    except ImportError as err:
        raise MissingDependencyError("onnx", "pip install onnx", "ONNX export") from err
    return onnx


def _import_onnxruntime():  # noqa: ANN202 - module
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(
            "onnxruntime", "pip install onnxruntime (or onnxruntime-gpu)", "ONNX parity check"
        ) from err
    return onnxruntime


def model_metadata(spec: FeatureSpec, size: tuple[int, int]) -> dict[str, str]:
    """Return the ``metadata_props`` written into an exported model (all values are strings, lists as JSON)."""
    return {
        "layout": "NCHW",
        "dtype": "uint8",
        "color": "RGB",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "backbone": spec.name,
        "feature_dim": str(spec.dim),
        "stride": str(spec.stride),
        "input_size": json.dumps(list(size)),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "levels": json.dumps([[lv.index, lv.channels, lv.stride] for lv in spec.levels]),
        "pooling": spec.pooling,
        "lemo_edge_version": package_version(),
    }


def spec_from_metadata(meta: Mapping[str, str], source: str = "model") -> tuple[FeatureSpec, tuple[int, int]]:
    """Rebuild ``(FeatureSpec, (H, W))`` from :func:`model_metadata` output.

    Raises:
        InputError: a key is missing or malformed, or the model is not NCHW uint8.
    """
    required = ("layout", "dtype", "backbone", "feature_dim", "input_size", "mean", "std", "levels")
    missing = [key for key in required if key not in meta]
    if missing:
        raise InputError(f"{source}: expected lemo-edge metadata {list(required)}, missing {missing}")
    if meta["layout"] != "NCHW" or meta["dtype"] != "uint8":
        raise InputError(f"{source}: expected layout NCHW and dtype uint8, got {meta['layout']} {meta['dtype']}")
    try:
        levels = tuple(FeatureLevel(int(i), int(c), int(s)) for i, c, s in json.loads(meta["levels"]))
        mean = tuple(float(v) for v in json.loads(meta["mean"]))
        std = tuple(float(v) for v in json.loads(meta["std"]))
        h, w = (int(v) for v in json.loads(meta["input_size"]))
        dim = int(meta["feature_dim"])
    except (ValueError, TypeError) as err:
        raise InputError(f"{source}: malformed lemo-edge metadata ({err})") from err
    if len(mean) != 3 or len(std) != 3:
        raise InputError(f"{source}: expected 3 mean and 3 std values, got {len(mean)} and {len(std)}")
    pooling = meta.get("pooling", POOLING_BEFORE)  # exported before the metadata recorded it
    spec = FeatureSpec(meta["backbone"], mean, std, levels, pooling)  # type: ignore[arg-type]
    if spec.dim != dim:
        raise InputError(f"{source}: feature_dim {dim} disagrees with its levels (sum {spec.dim})")
    return spec, (h, w)


def read_model_info(path: str | Path) -> OnnxModelInfo:
    """Read the lemo-edge contract of an exported ONNX file (weights are not loaded).

    Raises:
        InputError: the file does not exist or lacks lemo-edge metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"onnx: expected an ONNX file, got {str(path)!r} (not found)")
    onnx = _import_onnx()
    model = onnx.load(str(path), load_external_data=False)
    meta = {prop.key: prop.value for prop in model.metadata_props}
    spec, size = spec_from_metadata(meta, source=str(path))
    return OnnxModelInfo(path, spec, size, meta.get("lemo_edge_version", "unknown"), meta)


def load_tensorrt_ops(path: str | Path | None = None) -> frozenset[str]:
    """Read a list of ONNX operator types, one per line, ``#`` comments allowed.

    Args:
        path: the list; default: ``tensorrt_supported_ops.txt`` beside this module.

    Raises:
        ExportError: the file is missing, empty, or a line is not an ONNX operator name.
    """
    path = Path(path) if path is not None else TENSORRT_OPS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ExportError(f"TensorRT operator list: cannot read {str(path)!r} ({err})") from err
    ops = set()
    for lineno, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _OP_NAME.match(entry):
            raise ExportError(f"TensorRT operator list {path}:{lineno}: expected an ONNX operator name, got {entry!r}")
        ops.add(entry)
    if not ops:
        raise ExportError(f"TensorRT operator list {str(path)!r}: expected operator names, found none")
    return frozenset(ops)


def graph_op_types(model: onnx.ModelProto) -> set[str]:
    """Operator types a model runs, including sub-graphs and local functions (inlined by name).

    Default-domain operators are named plainly (``Conv``); others as ``domain::Op``.
    """
    attribute = _import_onnx().AttributeProto
    functions = {(f.domain, f.name): f for f in model.functions}
    found: set[str] = set()
    visited: set[tuple[str, str]] = set()

    def walk(nodes: Iterable[onnx.NodeProto]) -> None:
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in functions:
                if key not in visited:
                    visited.add(key)
                    walk(functions[key].node)
            elif node.domain in _DEFAULT_DOMAINS:
                found.add(node.op_type)
            else:
                found.add(f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.type == attribute.GRAPH:
                    walk(attr.g.node)
                elif attr.type == attribute.GRAPHS:
                    for graph in attr.graphs:
                        walk(graph.node)

    walk(model.graph.node)
    return found


def check_tensorrt_ops(model_path: str | Path | onnx.ModelProto, ops_file: str | Path | None = None) -> list[str]:
    """Return the operator types of a model that TensorRT 10's ONNX parser does not support (sorted).

    Args:
        model_path: an ONNX file or a loaded ``ModelProto``.
        ops_file: the supported-operator list; default ``tensorrt_supported_ops.txt``.
    """
    onnx = _import_onnx()
    model = (
        model_path if isinstance(model_path, onnx.ModelProto) else onnx.load(str(model_path), load_external_data=False)
    )
    supported = load_tensorrt_ops(ops_file)
    return sorted(op for op in graph_op_types(model) if op not in supported)


def _torch_export(
    model: FeatureExtractor, example: torch.Tensor, path: Path, opset: int, batch_dynamic: bool, workdir: Path
) -> str:
    """Write ``model`` to ``path`` with the dynamo exporter, or the TorchScript one if that fails."""
    try:
        dynamic_shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}} if batch_dynamic else None
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
            artifacts_dir=str(workdir),
        )
        return "dynamo"
    except Exception as err:  # noqa: BLE001 - any exporter failure falls back, and is logged
        log.warning("dynamo ONNX exporter failed (%s: %s); falling back to dynamo=False", type(err).__name__, err)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch_dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=False,
            dynamic_axes=dynamic_axes,
        )
    return "torchscript"


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    shape = value_info.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim)


def _check_signature(model: onnx.ModelProto, spec: FeatureSpec, size: tuple[int, int], batch_dynamic: bool) -> None:
    """Check the graph's input and output name, dtype and shape against the backbone's contract."""
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ExportError(
            f"exported graph: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
            f"got inputs {[i.name for i in inputs]} and outputs {[o.name for o in graph.output]}"
        )
    h, w = size
    s = spec.stride
    got_in, got_out = _dims(inputs[0]), _dims(graph.output[0])
    in_type, out_type = inputs[0].type.tensor_type.elem_type, graph.output[0].type.tensor_type.elem_type
    batch_ok = isinstance(got_in[0], str) if batch_dynamic else got_in[0] == 1
    if in_type != _ONNX_UINT8 or len(got_in) != 4 or got_in[1:] != (3, h, w) or not batch_ok:
        raise ExportError(f"exported graph: expected {INPUT_NAME} (B, 3, {h}, {w}) uint8, got {got_in} type {in_type}")
    if out_type != _ONNX_FLOAT or len(got_out) != 4 or got_out[1] != spec.dim:
        raise ExportError(
            f"exported graph: expected {OUTPUT_NAME} (B, {spec.dim}, {h // s}, {w // s}) float32, "
            f"got {got_out} type {out_type}"
        )


def verify_onnx(
    path: str | Path,
    extractor: FeatureExtractor,
    *,
    tensorrt_ops: str | Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    batch_sizes: Sequence[int] = (2, 1),
    seed: int = 0,
    require_tensorrt: bool = True,
) -> OnnxCheck:
    """Check an exported file: TensorRT operator support, then parity with torch in onnxruntime (CPU).

    Args:
        path: the ONNX file (with lemo-edge metadata).
        extractor: the torch module it was exported from (any device; a CPU copy is used).
        tensorrt_ops: supported-operator list (default: ``tensorrt_supported_ops.txt``).
        tolerance: largest accepted ``|onnxruntime - torch|``.
        batch_sizes: batches of random ``(B, 3, H, W) uint8`` images to compare on.
        seed: seed of the random images.
        require_tensorrt: fail when an operator is outside the TensorRT list (else only report it).

    Raises:
        ExportError: an unsupported operator (when required) or a parity error above ``tolerance``.
    """
    onnx = _import_onnx()
    ort = _import_onnxruntime()
    path = Path(path)
    info = read_model_info(path)
    model = onnx.load(str(path))
    op_types = tuple(sorted(graph_op_types(model)))
    unsupported = tuple(check_tensorrt_ops(model, tensorrt_ops))
    if unsupported and require_tensorrt:
        raise ExportError(
            f"exported graph {path.name}: operators outside the TensorRT 10 list "
            f"({tensorrt_ops or TENSORRT_OPS_FILE}): {list(unsupported)}"
        )
    if unsupported:
        log.warning("%s: operators TensorRT 10 cannot parse: %s", path.name, list(unsupported))

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    reference = _cpu_copy(extractor)
    generator = torch.Generator().manual_seed(seed)
    h, w = info.input_size
    worst = 0.0
    for batch in batch_sizes:
        images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=generator)
        with torch.inference_mode():
            expected = reference(images)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        if tuple(got.shape) != tuple(expected.shape):
            raise ExportError(f"parity: expected features {tuple(expected.shape)}, onnxruntime gave {got.shape}")
        worst = max(worst, float((torch.from_numpy(got) - expected).abs().max()))
    log.info("%s: max abs diff vs torch %.3g over batches %s", path.name, worst, list(batch_sizes))
    if not worst <= tolerance:  # also catches NaN
        raise ExportError(f"parity: onnxruntime differs from torch by {worst:.3g} (expected <= {tolerance:.0e})")
    return OnnxCheck(worst, op_types, unsupported)


def _cpu_copy(extractor: FeatureExtractor) -> FeatureExtractor:
    params = list(extractor.parameters())
    on_cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    model = extractor if on_cpu else copy.deepcopy(extractor).to("cpu", torch.float32)
    return model.eval()


def export_onnx(
    extractor: FeatureExtractor,
    path: str | Path,
    size: int | tuple[int, int] = (256, 256),
    opset: int = DEFAULT_OPSET,
    batch_dynamic: bool = True,
    *,
    tensorrt_ops: str | Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    require_tensorrt: bool = True,
) -> ExportReport:
    """Export a feature extractor to ONNX, check it and write it to ``path`` atomically.

    The graph maps ``images (B, 3, H, W) uint8`` (NCHW RGB) to ``features (B, D, H/s, W/s) float32``.

    Args:
        extractor: the frozen torch module (any device; exported from a CPU float32 copy).
        path: where the ``.onnx`` file goes (parent folders are created; replaced only if every check passes).
        size: ``(H, W)`` or one side; multiples of the backbone's alignment (32).
        opset: ONNX opset of the default domain (TensorRT 10 parses 9..20).
        batch_dynamic: symbolic batch dimension (else batch 1).
        tensorrt_ops: supported-operator list (default: ``tensorrt_supported_ops.txt``).
        tolerance: largest accepted ``|onnxruntime - torch|``.
        require_tensorrt: fail on operators outside the TensorRT list (else warn).

    Returns:
        :class:`ExportReport`.

    Raises:
        InputError: bad ``size`` or ``opset``.
        ExportError: the checker, shape inference, signature, operator or parity check failed.
    """
    onnx = _import_onnx()
    spec = extractor.spec
    hw = check_input_size(size, spec.alignment)
    if not 9 <= opset <= 20:
        raise InputError(f"opset: expected 9..20 (TensorRT 10 parses opset 9 to 20), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _cpu_copy(extractor)
    example = torch.randint(0, 256, (2 if batch_dynamic else 1, 3, *hw), dtype=torch.uint8)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory(prefix="lemo-onnx-") as workdir:
            exporter = _torch_export(model, example, tmp, opset, batch_dynamic, Path(workdir))
        proto = onnx.load(str(tmp))
        props = {prop.key: prop.value for prop in proto.metadata_props}
        props.update(model_metadata(spec, hw))
        onnx.helper.set_model_props(proto, props)
        try:
            onnx.checker.check_model(proto)
            proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            raise ExportError(f"exported graph fails the ONNX checker: {err}") from err
        _check_signature(proto, spec, hw, batch_dynamic)
        onnx.save(proto, str(tmp))
        check = verify_onnx(
            tmp,
            model,
            tensorrt_ops=tensorrt_ops,
            tolerance=tolerance,
            batch_sizes=(2, 1) if batch_dynamic else (1,),
            require_tensorrt=require_tensorrt,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    opset_found = next((o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS), opset)
    report = ExportReport(
        path=path,
        backbone=spec.name,
        input_size=hw,
        dim=spec.dim,
        stride=spec.stride,
        opset=opset_found,
        exporter=exporter,
        batch_dynamic=batch_dynamic,
        max_abs_diff=check.max_abs_diff,
        tolerance=tolerance,
        op_types=check.op_types,
        unsupported_ops=check.unsupported_ops,
    )
    log.info("exported %s (%s, max abs diff %.3g)", path, exporter, check.max_abs_diff)
    return report


def cached_onnx(
    backbone: str,
    size: int | tuple[int, int] = (256, 256),
    opset: int = DEFAULT_OPSET,
    cache_dir: str | Path | None = None,
) -> Path:
    """Return an exported ONNX file for ``backbone`` at ``size``, exporting it into the cache when missing.

    The file lives in ``<cache>/onnx/`` (see :mod:`lemo_edge.export.cache`), named by backbone, input
    size, opset and lemo-edge version, and is written atomically; a cached file whose features are pooled
    by another convention (its metadata's ``pooling``) is exported again.
    """
    from lemo_edge.backbone import create_feature_extractor
    from lemo_edge.export.cache import cache_subdir

    h, w = check_input_size(size)
    folder = cache_subdir("onnx", cache_dir)
    version = re.sub(r"[^A-Za-z0-9.]+", "_", package_version())
    path = folder / f"{backbone}-{h}x{w}-opset{opset}-lemo{version}.onnx"
    if path.is_file():
        pooling = read_model_info(path).spec.pooling
        if pooling == POOLING:
            log.info("using cached ONNX %s", path)
            return path
        log.info("cached ONNX %s pools its features as %r, not %r: exporting it again", path, pooling, POOLING)
    log.info("exporting %s at %dx%d into the cache: %s", backbone, h, w, path)
    export_onnx(create_feature_extractor(backbone), path, (h, w), opset, require_tensorrt=False)
    return path
