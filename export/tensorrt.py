"""Build, cache and load TensorRT 10 engines of an exported backbone (TensorRT Python API, imported lazily).

An engine is specific to the ONNX file, the TensorRT version, the GPU, the precision and the batch
profile. :func:`build_engine` names the cached engine by what the user chose (ONNX file stem,
precision, batch profile) and writes a JSON sidecar holding every field of its :class:`EngineKey`; a
cached engine is reused only when all fields match, and refused otherwise with the differing fields
named (``--rebuild`` replaces it). :func:`load_engine` applies the same check to the environment
fields before deserialising, so an engine copied from another device or TensorRT release is never
loaded. Everything but the build and load themselves is pure and testable without TensorRT.

INT8 uses TensorRT's calibrator API (``IInt8EntropyCalibrator2``, "implicit quantization"): deprecated
since TensorRT 10.1 in favour of explicit Q/DQ models, but still supported by every TensorRT 10.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from lemo_edge.errors import BackendUnavailableError, InputError, LemoError, MissingDependencyError
from lemo_edge.export.cache import cache_subdir, package_version
from lemo_edge.export.errors import EngineCacheError, ExportError
from lemo_edge.export.onnx import INPUT_NAME, OUTPUT_NAME, read_model_info
from lemo_edge.utils import write_atomic

log = logging.getLogger(__name__)

TENSORRT_HINT = "JetPack's python3-libnvinfer on Jetson; `pip install tensorrt` from NVIDIA's index elsewhere"
TENSORRT_MAJOR = 10
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PROFILE = (1, 1, 8)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Fields of the environment an engine depends on (checked again when an engine is loaded).
ENVIRONMENT_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability")

_PROFILE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialised engine depends on; its :attr:`digest` names it in the sidecar.

    Attributes:
        onnx_sha256: sha256 of the ONNX file (covers backbone, weights, input size, opset).
        tensorrt_version: ``tensorrt.__version__``.
        gpu_name: ``torch.cuda.get_device_name``.
        compute_capability: ``"8.7"`` etc.
        precision: ``fp32``, ``fp16`` or ``int8``.
        profile: ``(min, opt, max)`` batch of the optimisation profile.
        calibration: sha256 over the INT8 calibration images (``""`` for other precisions).
    """

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: tuple[int, int, int]
    calibration: str = ""

    def fields(self) -> dict[str, Any]:
        """JSON-ready fields (the profile as a list)."""
        data = asdict(self)
        data["profile"] = list(self.profile)
        return data

    @property
    def digest(self) -> str:
        """:func:`engine_cache_key` of these fields."""
        return engine_cache_key(**asdict(self))


def engine_cache_key(
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    profile: Sequence[int],
    calibration: str = "",
) -> str:
    """Return the hex sha256 over every field an engine depends on (pure; order-independent JSON)."""
    fields = {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        "profile": [int(b) for b in profile],
        "calibration": calibration,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def parse_batch_profile(text: str | Sequence[int]) -> tuple[int, int, int]:
    """Parse ``"MIN:OPT:MAX"`` (or a 3-sequence) into a batch profile.

    Raises:
        InputError: not three positive integers with ``MIN <= OPT <= MAX``.
    """
    if isinstance(text, str):
        match = _PROFILE.match(text)
        if not match:
            raise InputError(f"batch profile: expected MIN:OPT:MAX (e.g. 1:1:8), got {text!r}")
        values = tuple(int(v) for v in match.groups())
    else:
        values = tuple(text)
        if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise InputError(f"batch profile: expected three integers (min, opt, max), got {text!r}")
    lo, opt, hi = values
    if lo < 1 or not lo <= opt <= hi:
        raise InputError(f"batch profile: expected 1 <= MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
    return lo, opt, hi


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ``InputError`` listing them."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(engine_path: str | Path) -> Path:
    """The JSON sidecar beside an engine: ``model.fp16.b1-1-8.engine`` -> ``model.fp16.b1-1-8.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def engine_file_name(onnx_path: str | Path, precision: str, profile: Sequence[int]) -> str:
    """Cache file name of an engine: what the user chose (ONNX stem, precision, batch profile)."""
    lo, opt, hi = profile
    return f"{Path(onnx_path).stem}.{precision}.b{lo}-{opt}-{hi}.engine"


def key_differences(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Describe every field of ``expected`` whose value differs in ``found`` (pure).

    Returns:
        ``["gpu_name: engine has 'Orin', expected 'NVIDIA H100'", ...]``; empty when all match.
    """
    diffs = []
    for name, want in expected.items():
        have = found.get(name, "<missing>")
        if isinstance(want, tuple):
            want = list(want)
        if have != want:
            diffs.append(f"{name}: engine has {have!r}, expected {want!r}")
    return diffs


def check_engine_sidecar(engine_path: str | Path, expected: Mapping[str, Any]) -> dict[str, Any]:
    """Read an engine's sidecar and check it against ``expected`` key fields (all or some of them).

    Args:
        engine_path: the ``.engine`` file.
        expected: field name -> value, e.g. ``EngineKey.fields()`` or only the environment fields.

    Returns:
        The sidecar (``key``, ``fields``, ``input_size``, ``backbone``, ...).

    Raises:
        EngineCacheError: no or unreadable sidecar, a corrupt key, or a field differs (all are named).
    """
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    hint = "rebuild it with `lemo-edge export tensorrt --rebuild`"
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
        fields = sidecar["fields"]
        recorded = sidecar["key"]
    except FileNotFoundError as err:
        raise EngineCacheError(f"engine {engine_path.name}: no sidecar {side.name}, cannot verify it; {hint}") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EngineCacheError(f"engine {engine_path.name}: unreadable sidecar {side.name} ({err}); {hint}") from err
    try:
        actual = engine_cache_key(**fields)
    except TypeError as err:
        raise EngineCacheError(f"engine {engine_path.name}: sidecar fields malformed ({err}); {hint}") from err
    if actual != recorded:
        raise EngineCacheError(f"engine {engine_path.name}: sidecar key does not match its fields (corrupt); {hint}")
    diffs = key_differences(fields, expected)
    if diffs:
        raise EngineCacheError(f"engine {engine_path.name} was built for another setup ({'; '.join(diffs)}); {hint}")
    return sidecar


def import_tensorrt():  # noqa: ANN201 - the tensorrt module
    """Import TensorRT 10.

    Raises:
        MissingDependencyError: the ``tensorrt`` package is not importable (with the install hint).
        BackendUnavailableError: it is not TensorRT 10.
    """
    try:
        import tensorrt as trt
    except ImportError as err:
        raise MissingDependencyError("tensorrt", TENSORRT_HINT, "TensorRT engines") from err
    major = str(getattr(trt, "__version__", "0")).split(".", 1)[0]
    if major != str(TENSORRT_MAJOR):
        raise BackendUnavailableError(f"TensorRT: expected version {TENSORRT_MAJOR}.x, found {trt.__version__}")
    return trt


def gpu_environment(device: int | str | torch.device | None = None) -> dict[str, str]:
    """Return ``{"gpu_name", "compute_capability"}`` of a CUDA device.

    Raises:
        BackendUnavailableError: no CUDA device is visible to torch.
    """
    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT: no CUDA GPU visible to torch")
    major, minor = torch.cuda.get_device_capability(device)
    return {"gpu_name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def calibration_images(calib_dir: str | Path) -> list[Path]:
    """Sorted image files below ``calib_dir`` (suffixes in :data:`IMAGE_SUFFIXES`).

    Raises:
        InputError: the folder does not exist or holds no image.
    """
    folder = Path(calib_dir)
    if not folder.is_dir():
        raise InputError(f"calibration: expected a folder of normal images, got {str(folder)!r} (not a folder)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"calibration: expected images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}, found none")
    return files


def calibration_digest(files: Sequence[Path]) -> str:
    """Hex sha256 over the names and bytes of the calibration images (part of the INT8 engine key)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _read_rgb(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """``(3, H, W) uint8`` RGB of one calibration image, resized (area) to the engine's input size."""
    import cv2

    from lemo_edge.images import read_image

    try:
        image = read_image(path)  # the one image policy of eval and run (16-bit, grayscale, alpha)
    except LemoError as err:
        raise InputError(f"calibration: {err}") from err
    h, w = size
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def _calibration_batches(files: Sequence[Path], size: tuple[int, int], batch: int) -> Iterator[torch.Tensor]:
    """``(batch, 3, H, W) uint8`` CPU batches; a last partial batch is dropped."""
    for start in range(0, len(files) - batch + 1, batch):
        yield torch.stack([_read_rgb(p, size) for p in files[start : start + batch]])


def _make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards TensorRT's messages to :mod:`logging`."""
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG - 5,
    }

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            log.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    return _Logger()


def _make_calibrator(
    trt: Any, files: Sequence[Path], size: tuple[int, int], batch: int, cache_file: Path, device: torch.device
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``(batch, 3, H, W) uint8`` CUDA tensors of normal images."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = _calibration_batches(files, size, batch)
            self._current: torch.Tensor | None = None  # keeps the device buffer alive while TensorRT reads it
            self.count = 0

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if list(names) != [INPUT_NAME]:  # an exception would not cross TensorRT's callback: log and stop
                log.error("INT8 calibration: expected to feed [%r], TensorRT asked for %s", INPUT_NAME, names)
                return None
            cpu = next(self._batches, None)
            if cpu is None:
                return None
            self._current = cpu.to(device, non_blocking=False)
            torch.cuda.current_stream(device).synchronize()
            self.count += 1
            return [int(self._current.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            if cache_file.is_file():
                log.info("INT8 calibration: reusing %s", cache_file)
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            write_atomic(cache_file, bytes(cache))

    return _Calibrator()


def _parser_errors(parser: Any) -> str:
    messages = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        messages.append(f"node {err.node()} ({err.node_operator()} {err.node_name()!r}): {err.desc()}")
    return "; ".join(messages) or "no details"


def build_engine(
    onnx_path: str | Path,
    precision: str = "fp32",
    profile: tuple[int, int, int] | str = DEFAULT_PROFILE,
    calib_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
    *,
    workspace_gib: float = 2.0,
    device: int | None = None,
) -> Path:
    """Build (or reuse from the cache) a TensorRT 10 engine of an exported backbone.

    Args:
        onnx_path: an ONNX file written by :func:`lemo_edge.export.onnx.export_onnx`.
        precision: ``fp32``, ``fp16`` or ``int8`` (INT8 also enables FP16 for layers that stay unquantised).
        profile: ``(min, opt, max)`` batch of the optimisation profile for ``images (b, 3, H, W)``.
        calib_dir: folder of normal images (required for ``int8``, refused otherwise).
        cache_dir: cache root (default :func:`lemo_edge.export.cache.default_cache_dir`); engines go
            in ``<cache>/engines/`` with the timing cache and INT8 calibration caches.
        rebuild: build even if a cached engine exists, replacing it.
        workspace_gib: builder workspace memory pool limit.
        device: CUDA device index (default: torch's current device).

    Returns:
        Path of the engine; its sidecar is ``<engine>.json``.

    Raises:
        InputError: bad precision, profile or calibration folder.
        EngineCacheError: a cached engine exists for another key (fields named) and ``rebuild`` is false.
        MissingDependencyError: TensorRT is not installed.
        BackendUnavailableError: not TensorRT 10, or no CUDA GPU.
        ExportError: the parser or the builder failed.
    """
    check_precision(precision)
    profile = parse_batch_profile(profile)
    onnx_path = Path(onnx_path)
    info = read_model_info(onnx_path)
    files: list[Path] = []
    if precision == "int8":
        if calib_dir is None:
            raise InputError("int8: expected a folder of normal calibration images (--calib DIR), got none")
        files = calibration_images(calib_dir)
        if len(files) < profile[1]:
            raise InputError(f"calibration: expected at least OPT={profile[1]} images, found {len(files)}")
    elif calib_dir is not None:
        raise InputError(f"calibration images apply to int8 only, got --calib with precision {precision}")

    trt = import_tensorrt()
    env = gpu_environment(device)
    key = EngineKey(
        onnx_sha256=sha256_file(onnx_path),
        tensorrt_version=trt.__version__,
        gpu_name=env["gpu_name"],
        compute_capability=env["compute_capability"],
        precision=precision,
        profile=profile,
        calibration=calibration_digest(files) if files else "",
    )
    folder = cache_subdir("engines", cache_dir)
    engine_path = folder / engine_file_name(onnx_path, precision, profile)
    if engine_path.is_file() and not rebuild:
        check_engine_sidecar(engine_path, key.fields())
        log.info("using cached engine %s (key %s)", engine_path, key.digest[:16])
        return engine_path

    h, w = info.input_size
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ExportError(f"TensorRT could not parse {onnx_path}: {_parser_errors(parser)}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(
            f"TensorRT network: expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}], got {inputs} -> {outputs}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    lo, opt, hi = profile
    opt_profile.set_shape(INPUT_NAME, (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))
    if config.add_optimization_profile(opt_profile) < 0:
        raise ExportError(f"TensorRT: optimisation profile {profile} rejected for tensor {INPUT_NAME!r}")

    timing_file = folder / f"timing-trt{key.tensorrt_version}-sm{key.compute_capability}.cache"
    timing_cache = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        log.warning("TensorRT: timing cache %s does not match this device; starting a new one", timing_file)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    calibrator = None
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(INPUT_NAME, (opt, 3, h, w), (opt, 3, h, w), (opt, 3, h, w))
        config.set_calibration_profile(calib_profile)
        calib_file = folder / f"{onnx_path.stem}.{key.calibration[:16]}.calib"
        cuda = torch.device("cuda", torch.cuda.current_device() if device is None else device)
        calibrator = _make_calibrator(trt, files, (h, w), opt, calib_file, cuda)
        config.int8_calibrator = calibrator

    log.info("building TensorRT engine %s (%s, batch %s, %s)", engine_path.name, precision, profile, env["gpu_name"])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} ({precision}); see the log above")
    write_atomic(timing_file, bytes(config.get_timing_cache().serialize()))

    side = sidecar_path(engine_path)
    side.unlink(missing_ok=True)  # an engine without its sidecar is refused, never trusted
    write_atomic(engine_path, bytes(serialized))
    sidecar = {
        "key": key.digest,
        "fields": key.fields(),
        "onnx": str(onnx_path.resolve()),
        "backbone": info.spec.name,
        "input_size": list(info.input_size),
        "lemo_edge_version": package_version(),
        "metadata": info.metadata,
    }
    write_atomic(side, json.dumps(sidecar, indent=2).encode())
    log.info("wrote %s (key %s)", engine_path, key.digest[:16])
    return engine_path


class LoadedEngine(NamedTuple):
    """A deserialised engine and what keeps it alive."""

    runtime: Any
    engine: Any
    logger: Any
    sidecar: dict[str, Any]


def load_engine(engine_path: str | Path, device: int | None = None) -> LoadedEngine:
    """Check an engine's sidecar against this TensorRT and GPU, then deserialise it.

    Raises:
        EngineCacheError: no sidecar, or it was built with another TensorRT version or GPU (fields named).
        MissingDependencyError / BackendUnavailableError: no TensorRT 10 or no CUDA GPU.
        ExportError: TensorRT could not deserialise the file.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise InputError(f"engine: expected a TensorRT engine file, got {str(engine_path)!r} (not found)")
    trt = import_tensorrt()
    expected = {"tensorrt_version": trt.__version__, **gpu_environment(device)}
    sidecar = check_engine_sidecar(engine_path, expected)
    logger = _make_logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT could not deserialise {engine_path}; see the log above")
    return LoadedEngine(runtime, engine, logger, sidecar)
