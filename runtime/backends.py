"""Feature backends: the frozen backbone run by torch, onnxruntime or TensorRT 10.

All three compute the same function (the exported graph is checked against torch, see
:mod:`lemo_edge.export.onnx`): ``images (B, 3, H, W) uint8`` RGB -> ``features (B, D, H/s, W/s) float32``.
They satisfy :class:`lemo_edge.runtime.protocols.FeatureBackend`; :func:`create_backend` builds one by
name and :func:`backend_status` says which can run here and why not.

Optional libraries (onnxruntime, tensorrt) are imported inside their backend. Loaders are lazy in the
Polygraphy sense: nothing is exported, built or deserialised until a backend is created; the call
path then only checks dtype/shape, reuses buffers per shape and never synchronises the host except
where a library forces it (onnxruntime on CUDA, see :class:`OrtFeatureExtractor`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from lemo_edge.backbone import DEFAULT_BACKBONE, FeatureExtractor, FeatureSpec, check_input_size
from lemo_edge.errors import BackendUnavailableError, InputError, LemoError, MissingDependencyError, describe
from lemo_edge.export.onnx import INPUT_NAME, OUTPUT_NAME
from lemo_edge.runtime.protocols import FeatureBackend
from lemo_edge.workers import physical_cores

log = logging.getLogger(__name__)

ORT_HINT = "pip install onnxruntime (CPU), or onnxruntime-gpu for CUDA/TensorRT (uninstall onnxruntime first)"
ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class InferenceError(LemoError, RuntimeError):
    """A backend failed while running (a TensorRT status was false); the message names the tensor."""


class BackendStatus(NamedTuple):
    """One line of ``lemo-edge info``: can this backend run here, and why (not)."""

    name: str
    available: bool
    reason: str


def _check_images(images: torch.Tensor, size: tuple[int, int] | None = None) -> None:
    ok = images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3
    if ok and size is not None:
        ok = tuple(images.shape[2:]) == size
    if not ok:
        want = f"(B, 3, {size[0]}, {size[1]})" if size is not None else "(B, 3, H, W)"
        raise InputError(f"images: expected {want} uint8, got {describe(images)}")


def _check_precision(backend: str, precision: str, allowed: Sequence[str]) -> None:
    if precision not in allowed:
        raise InputError(f"{backend}: precision expected one of {list(allowed)}, got {precision!r}")


def _check_metadata(
    spec: FeatureSpec, size: tuple[int, int], backbone: str, wanted: tuple[int, int], src: Path
) -> None:
    if spec.name != backbone or size != wanted:
        raise InputError(
            f"{src.name}: expected backbone {backbone} at {wanted[0]}x{wanted[1]}, "
            f"the file holds {spec.name} at {size[0]}x{size[1]}"
        )


class TorchFeatureExtractor:
    """The backbone in torch eager mode, on CPU or CUDA.

    On CUDA the model and input are ``channels_last``; ``precision="fp16"`` runs it under fp16 autocast
    (features are returned as float32); ``cuda_graph=True`` captures a CUDA graph for the first input
    shape with static input/output buffers (other shapes run eagerly), and then returns the same
    output buffer on every call of that shape.
    """

    name = "torch"

    def __init__(
        self,
        extractor: FeatureExtractor,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cuda_graph: bool = False,
    ) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise BackendUnavailableError("torch: device cuda requested, but no CUDA GPU is visible to torch")
        _check_precision("torch", precision, ("fp32", "fp16") if cuda else ("fp32",))
        if cuda_graph and not cuda:
            raise InputError(f"torch: CUDA graphs need a CUDA device, got {self.device}")
        if cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.spec = extractor.spec
        self.precision = precision
        self.cuda_graph = cuda_graph
        self._memory_format = torch.channels_last if cuda else torch.contiguous_format
        self._model = extractor.to(self.device).to(memory_format=self._memory_format).eval()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None

    @classmethod
    def create(
        cls,
        *,
        backbone: str,
        size: tuple[int, int],
        device: str | torch.device,
        onnx_path: str | Path | None,
        engine_path: str | Path | None,
        precision: str,
    ) -> TorchFeatureExtractor:
        """Registry constructor (see :func:`create_backend`)."""
        from lemo_edge.backbone import create_feature_extractor

        if onnx_path is not None or engine_path is not None:
            raise InputError("torch: onnx_path/engine_path apply to the onnxruntime/tensorrt backends only")
        check_input_size(size)
        return cls(create_feature_extractor(backbone), device, precision)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp16":
            with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
                return self._model(images).float()
        return self._model(images)

    def _capture(self, images: torch.Tensor) -> None:
        """Record one forward pass for ``images``' shape into a CUDA graph (after warm-up on a side stream)."""
        static_in = torch.empty_like(images, memory_format=self._memory_format).copy_(images)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                self._forward(static_in)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self._forward(static_in).contiguous()
        self._graph, self._static_in, self._static_out = graph, static_in, static_out
        log.info("torch: captured a CUDA graph for images %s", tuple(images.shape))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) uint8`` -> ``(B, D, H/s, W/s) float32`` on :attr:`device`."""
        _check_images(images)
        images = images.to(self.device, non_blocking=True)
        if self.cuda_graph:
            if self._graph is None:
                self._capture(images)
            if self._static_in is not None and images.shape == self._static_in.shape:
                self._static_in.copy_(images)
                self._graph.replay()  # type: ignore[union-attr]
                return self._static_out  # type: ignore[return-value]
        with torch.inference_mode():
            return self._forward(images.contiguous(memory_format=self._memory_format)).contiguous()


class OrtFeatureExtractor:
    """The exported ONNX graph in onnxruntime.

    Providers are requested among TensorRT, CUDA and CPU (default: CPU for ``device="cpu"``, all three
    for CUDA); the ones in use are read back from the session and logged. A CUDA request that ends on
    CPU only is logged as a warning, :attr:`cpu_fallback` is set and :attr:`device` becomes CPU.

    CPU sessions use graph optimisation level ALL, intra-op threads = physical cores and no spinning
    worker threads (the pipeline runs torch work on the same cores between backbone calls; spinning
    ORT workers slow it down). On CUDA, inputs and outputs are torch tensors bound by pointer (I/O
    binding, output buffer reused per shape); onnxruntime runs on its own stream, so torch's current
    stream is synchronised before each run.

    Attributes:
        providers: execution providers in use, in priority order.
        requested_providers: providers asked for (after dropping unavailable ones).
        cpu_fallback: a CUDA device was asked for but only the CPU provider is in use.
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        device: str | torch.device = "cpu",
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
        threads: int | None = None,
        spin: bool = False,
    ) -> None:
        from lemo_edge.export.cache import cache_subdir
        from lemo_edge.export.onnx import read_model_info

        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError as err:
            raise MissingDependencyError("onnxruntime", ORT_HINT, "onnxruntime backend") from err
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        _check_precision("onnxruntime", precision, ("fp32", "fp16") if cuda else ("fp32",))
        info = read_model_info(onnx_path)
        self.spec = info.spec
        self.input_size = info.input_size
        self.onnx_path = Path(onnx_path)

        wanted = list(providers) if providers is not None else list(ORT_PROVIDERS if cuda else ORT_PROVIDERS[-1:])
        unknown = [p for p in wanted if p not in ORT_PROVIDERS]
        if unknown:
            raise InputError(f"onnxruntime: providers expected among {list(ORT_PROVIDERS)}, got {unknown}")
        available = set(ort.get_available_providers())
        missing = [p for p in wanted if p not in available]
        if missing:
            log.info("onnxruntime: providers not in this build: %s (available: %s)", missing, sorted(available))
        self.requested_providers = [p for p in wanted if p in available]
        if not self.requested_providers:
            raise BackendUnavailableError(f"onnxruntime: none of the providers {wanted} is available here")
        device_id = self.device.index or 0
        options: dict[str, dict[str, Any]] = {
            "CUDAExecutionProvider": {"device_id": device_id},
            "CPUExecutionProvider": {},
        }
        if "TensorrtExecutionProvider" in self.requested_providers:  # its engines go to <cache>/ort-trt
            options["TensorrtExecutionProvider"] = {
                "device_id": device_id,
                "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache_subdir("ort-trt")),
            }

        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.intra_op_num_threads = threads or physical_cores()
        session_options.inter_op_num_threads = 1
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self._session = ort.InferenceSession(
            str(onnx_path),
            session_options,
            providers=[(p, options[p]) for p in self.requested_providers],
        )
        self.providers: list[str] = list(self._session.get_providers())
        self.cpu_fallback = cuda and not any(p in self.providers for p in ORT_PROVIDERS[:2])
        log.info("onnxruntime: %s on providers %s", self.onnx_path.name, self.providers)
        if self.cpu_fallback:
            log.warning(
                "onnxruntime: asked for %s on %s, but the session runs on %s only; features come from the CPU",
                self.requested_providers,
                self.device,
                self.providers,
            )
            self.device = torch.device("cpu")
        if precision == "fp16" and "TensorrtExecutionProvider" not in self.providers:
            log.warning("onnxruntime: fp16 applies to the TensorRT provider only, which is not in use; running fp32")
        self._np_uint8: Any = None
        self._out: torch.Tensor | None = None
        if self.device.type == "cuda":
            import numpy as np

            self._np_uint8, self._np_float32 = np.uint8, np.float32
            self._binding = self._session.io_binding()

    @classmethod
    def create(
        cls,
        *,
        backbone: str,
        size: tuple[int, int],
        device: str | torch.device,
        onnx_path: str | Path | None,
        engine_path: str | Path | None,
        precision: str,
    ) -> OrtFeatureExtractor:
        """Registry constructor: uses ``onnx_path`` or exports the backbone into the cache (see ``cached_onnx``)."""
        from lemo_edge.export.onnx import cached_onnx

        if engine_path is not None:
            raise InputError("onnxruntime: engine_path applies to the tensorrt backend only")
        size = check_input_size(size)
        path = Path(onnx_path) if onnx_path is not None else cached_onnx(backbone, size)
        backend = cls(path, device, precision=precision)
        _check_metadata(backend.spec, backend.input_size, backbone, size, path)
        return backend

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) uint8`` -> ``(B, D, H/s, W/s) float32`` on :attr:`device`."""
        _check_images(images, self.input_size)
        if self.device.type == "cpu":
            (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: images.cpu().contiguous().numpy()})
            return torch.from_numpy(out)
        return self._run_cuda(images)

    def _run_cuda(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).contiguous()
        b = images.shape[0]
        h, w = self.input_size
        s = self.spec.stride
        shape = (b, self.spec.dim, h // s, w // s)
        if self._out is None or tuple(self._out.shape) != shape:
            self._out = torch.empty(shape, dtype=torch.float32, device=self.device)
        index = self.device.index or 0
        binding = self._binding
        binding.bind_input(INPUT_NAME, "cuda", index, self._np_uint8, tuple(images.shape), images.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, self._np_float32, shape, self._out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # onnxruntime reads on its own stream
        self._session.run_with_iobinding(binding)
        return self._out


class TrtFeatureExtractor:
    """A TensorRT 10 engine run through named tensors on torch's current CUDA stream.

    Torch tensors are the device buffers (``set_tensor_address``); the output buffer is allocated once
    per input shape and reused; every TensorRT status is checked and errors name the tensor.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: str | torch.device = "cuda") -> None:
        from lemo_edge.export.onnx import spec_from_metadata
        from lemo_edge.export.tensorrt import import_tensorrt, load_engine

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise InputError(f"tensorrt: expected a CUDA device, got {str(self.device)!r}")
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailableError("tensorrt: no CUDA GPU visible to torch")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._input, self._output_name = INPUT_NAME, OUTPUT_NAME
        with torch.cuda.device(self.device):
            self._loaded = load_engine(engine_path, self.device.index)
            engine = self._loaded.engine
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            if sorted(names) != sorted([INPUT_NAME, OUTPUT_NAME]):
                raise InferenceError(f"tensorrt: expected tensors {[INPUT_NAME, OUTPUT_NAME]}, engine has {names}")
            for tensor, mode, dtype in (
                (INPUT_NAME, trt.TensorIOMode.INPUT, trt.DataType.UINT8),
                (OUTPUT_NAME, trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT),
            ):
                if engine.get_tensor_mode(tensor) != mode or engine.get_tensor_dtype(tensor) != dtype:
                    raise InferenceError(
                        f"tensorrt: tensor {tensor!r} expected {mode} {dtype}, engine has "
                        f"{engine.get_tensor_mode(tensor)} {engine.get_tensor_dtype(tensor)}"
                    )
            lo, _, hi = engine.get_tensor_profile_shape(INPUT_NAME, 0)
            self._batch_range = (int(lo[0]), int(hi[0]))
            self._context = engine.create_execution_context()
            if self._context is None:
                raise InferenceError(f"tensorrt: cannot create an execution context for {engine_path}")
        self.spec, self.input_size = spec_from_metadata(self._loaded.sidecar["metadata"], str(engine_path))
        self.engine_path = Path(engine_path)
        self._shape: tuple[int, ...] | None = None
        self._out: torch.Tensor | None = None

    @classmethod
    def create(
        cls,
        *,
        backbone: str,
        size: tuple[int, int],
        device: str | torch.device,
        onnx_path: str | Path | None,
        engine_path: str | Path | None,
        precision: str,
    ) -> TrtFeatureExtractor:
        """Registry constructor: loads ``engine_path``, or builds/reuses a cached engine of the ONNX file."""
        from lemo_edge.export.onnx import cached_onnx
        from lemo_edge.export.tensorrt import build_engine, check_precision

        size = check_input_size(size)
        check_precision(precision)
        if torch.device(device).type != "cuda":
            raise InputError(f"tensorrt: expected a CUDA device, got {str(device)!r}")
        if engine_path is None:
            onnx = Path(onnx_path) if onnx_path is not None else cached_onnx(backbone, size)
            engine_path = build_engine(onnx, precision, device=torch.device(device).index)
        backend = cls(engine_path, device)
        _check_metadata(backend.spec, backend.input_size, backbone, size, Path(engine_path))
        return backend

    def _configure(self, shape: tuple[int, ...]) -> None:
        """Set the input shape and (re)allocate the output buffer for it."""
        lo, hi = self._batch_range
        if not lo <= shape[0] <= hi:
            raise InputError(f"tensorrt: tensor {self._input!r} batch {shape[0]} outside the engine profile {lo}..{hi}")
        if not self._context.set_input_shape(self._input, shape):
            raise InferenceError(f"tensorrt: set_input_shape failed for tensor {self._input!r} {shape}")
        out_shape = tuple(self._context.get_tensor_shape(self._output_name))
        if any(d < 0 for d in out_shape):
            raise InferenceError(f"tensorrt: tensor {self._output_name!r} shape unresolved: {out_shape}")
        out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        if not self._context.set_tensor_address(self._output_name, out.data_ptr()):
            raise InferenceError(f"tensorrt: set_tensor_address failed for tensor {self._output_name!r}")
        self._out, self._shape = out, shape

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) uint8`` -> ``(B, D, H/s, W/s) float32`` cuda (a buffer reused for the next call)."""
        _check_images(images, self.input_size)
        images = images.to(self.device, non_blocking=True).contiguous()
        shape = tuple(images.shape)
        if shape != self._shape:
            self._configure(shape)
        if not self._context.set_tensor_address(self._input, images.data_ptr()):
            raise InferenceError(f"tensorrt: set_tensor_address failed for tensor {self._input!r}")
        if not self._context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise InferenceError(f"tensorrt: execute_async_v3 failed for tensor {self._input!r} {shape}")
        return self._out  # type: ignore[return-value]


BACKENDS: dict[str, Callable[..., FeatureBackend]] = {
    "torch": TorchFeatureExtractor.create,
    "onnxruntime": OrtFeatureExtractor.create,
    "tensorrt": TrtFeatureExtractor.create,
}


def create_backend(
    name: str,
    *,
    backbone: str = DEFAULT_BACKBONE,
    size: tuple[int, int] = (256, 256),
    device: str | torch.device = "cpu",
    onnx_path: str | Path | None = None,
    engine_path: str | Path | None = None,
    precision: str = "fp32",
) -> FeatureBackend:
    """Create a feature backend by name.

    Args:
        name: one of :data:`BACKENDS` (``torch``, ``onnxruntime``, ``tensorrt``).
        backbone: backbone name (checked against the file's metadata when a file is given).
        size: ``(H, W)`` input size.
        device: ``cpu`` or ``cuda[:i]`` (``tensorrt`` needs CUDA).
        onnx_path: ONNX file (onnxruntime/tensorrt); default: exported into the cache.
        engine_path: TensorRT engine (tensorrt); default: built from the ONNX file into the cache.
        precision: ``fp32``; ``fp16`` on CUDA; ``int8`` for TensorRT engines (needs a prebuilt engine).

    Raises:
        ValueError: an unknown name (:class:`~lemo_edge.errors.InputError`, listing the valid ones).
    """
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise InputError(f"backend: expected one of {sorted(BACKENDS)}, got {name!r}") from None
    return factory(
        backbone=backbone,
        size=size,
        device=device,
        onnx_path=onnx_path,
        engine_path=engine_path,
        precision=precision,
    )


def backend_status() -> list[BackendStatus]:
    """Which backends can run here, and why not (for ``lemo-edge info``); imports optional libraries."""
    from lemo_edge.export.tensorrt import import_tensorrt

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name() if cuda else ""
    status = [BackendStatus("torch", True, f"torch {torch.__version__}: CPU" + (f" and CUDA ({gpu})" if cuda else ""))]
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        status.append(BackendStatus("onnxruntime", False, f"onnxruntime is not installed; install it with: {ORT_HINT}"))
    else:
        providers = [p.removesuffix("ExecutionProvider") for p in ort.get_available_providers() if p in ORT_PROVIDERS]
        status.append(BackendStatus("onnxruntime", True, f"onnxruntime {ort.__version__}: providers {providers}"))
    try:
        trt = import_tensorrt()
    except (MissingDependencyError, BackendUnavailableError) as err:
        status.append(BackendStatus("tensorrt", False, str(err)))
    else:
        if cuda:
            status.append(BackendStatus("tensorrt", True, f"TensorRT {trt.__version__} on {gpu}"))
        else:
            status.append(BackendStatus("tensorrt", False, f"TensorRT {trt.__version__} found, but no CUDA GPU"))
    return status
