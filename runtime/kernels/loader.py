"""Compile the nearest-memory CUDA kernel with nvcc and launch it through pycuda on torch's tensors.

Compilation: ``nvcc -cubin -arch=sm_XY`` once per GPU architecture; the cubin is cached under
``<cache>/kernels/`` (see :mod:`lemo_edge.export.cache`) named by the sha256 over the source, the
architecture, the nvcc version and the flags, so any change recompiles and nothing stale is loaded.

Context: torch (CUDA runtime API) works in each device's *primary* context. The loader retains that
same primary context with ``pycuda.driver.Device(i).retain_primary_context()`` rather than
``Context.attach()`` (which wraps whatever context is current on the calling thread, needs torch to
have made it current first, and goes through the long-deprecated ``cuCtxAttach``). The retained
context is pushed around module loading and each launch and popped right after, so pycuda never
leaves a context on the thread's stack and any thread may call. Tensors are passed by
``data_ptr()``: no copies, no pycuda allocations.

Stream: pycuda launches only on its own ``Stream`` objects or the legacy default stream (handle 0);
it cannot wrap a foreign ``CUstream``. On torch's default stream (``cuda_stream == 0``, the usual case)
the kernel is launched there directly. Under a non-default torch stream it runs on a pycuda stream
that first waits for torch's current stream, and torch's current stream then waits for it (two
event record/wait pairs on the GPU, no host synchronisation), which orders it exactly as if it ran
on torch's current stream.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from lemo_edge.errors import BackendUnavailableError, InputError, LemoError, MissingDependencyError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("nearest_memory.cu")
NVCC_FLAGS = ("-O3", "-std=c++17")
ENTRY_POINTS = {torch.float32: "nearest_memory_f32", torch.float16: "nearest_memory_f16"}
TILE_N = 32  # patches per block (kTileN in nearest_memory.cu)
BLOCK = (16, 16, 1)  # (kThreadsX, kThreadsY) in nearest_memory.cu
DEFAULT_NVCC = Path("/usr/local/cuda/bin/nvcc")
NVCC_HINT = "install the CUDA toolkit (JetPack ships it in /usr/local/cuda), or pass nvcc=/path/to/nvcc"
PYCUDA_HINT = "pip install pycuda (builds against the CUDA toolkit; JetPack includes one)"

_ARCH = re.compile(r"^sm_\d{2,3}[af]?$")


class KernelCompileError(LemoError, RuntimeError):
    """nvcc failed; the message carries the compiler's output."""


def find_nvcc(nvcc: str | Path | None = None) -> Path:
    """Locate nvcc: ``nvcc`` if given, else ``$CUDA_HOME``/``$CUDA_PATH``, ``PATH``, ``/usr/local/cuda``.

    Raises:
        InputError: an explicit ``nvcc`` does not exist.
        MissingDependencyError: no nvcc anywhere.
    """
    if nvcc is not None:
        path = Path(nvcc)
        if not path.is_file():
            raise InputError(f"nvcc: expected an executable, got {str(path)!r} (not found)")
        return path
    candidates = [Path(os.environ[v]) / "bin" / "nvcc" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    which = shutil.which("nvcc")
    candidates += [Path(which)] if which else []
    candidates.append(DEFAULT_NVCC)
    for path in candidates:
        if path.is_file():
            return path
    raise MissingDependencyError("nvcc", NVCC_HINT, "compiling the nearest-memory kernel")


@functools.lru_cache(maxsize=8)
def nvcc_version(nvcc: str) -> str:
    """The ``release X.Y, VX.Y.Z`` line of ``nvcc --version`` (part of the cubin cache key)."""
    try:
        proc = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except OSError as err:
        raise KernelCompileError(f"nvcc: cannot run {nvcc!r} ({err})") from err
    lines = [line.strip() for line in proc.stdout.splitlines() if "release" in line]
    if proc.returncode != 0 or not lines:
        raise KernelCompileError(f"nvcc: `{nvcc} --version` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return lines[-1]


def check_arch(arch: str) -> str:
    """Return ``arch`` if it reads like ``sm_87`` / ``sm_90a``, else raise ``InputError``."""
    if not _ARCH.match(arch):
        raise InputError(f"arch: expected a real GPU architecture like 'sm_87', got {arch!r}")
    return arch


def device_arch(device: torch.device | int | None = None) -> str:
    """``sm_XY`` of a CUDA device (torch's current one by default)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def compile_kernel(
    arch: str = "sm_87",
    nvcc: str | Path | None = None,
    *,
    source: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Compile the kernel source to a cubin for ``arch`` (cached; returns at once when it already exists).

    Args:
        arch: real architecture, e.g. ``sm_87`` (Jetson Orin) or ``sm_90`` (H100).
        nvcc: the compiler (default: :func:`find_nvcc`).
        source: CUDA source text (default: ``nearest_memory.cu`` beside this module).
        cache_dir: cache root (default :func:`lemo_edge.export.cache.default_cache_dir`).

    Returns:
        Path of the cubin in ``<cache>/kernels/``.

    Raises:
        KernelCompileError: nvcc failed (the message holds its stderr).
        MissingDependencyError: no nvcc.
    """
    from lemo_edge.export.cache import cache_subdir

    check_arch(arch)
    text = source if source is not None else SOURCE.read_text(encoding="utf-8")
    exe = find_nvcc(nvcc)
    version = nvcc_version(str(exe))
    fields = {"source": hashlib.sha256(text.encode()).hexdigest(), "arch": arch, "nvcc": version, "flags": NVCC_FLAGS}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    folder = cache_subdir("kernels", cache_dir)
    out = folder / f"nearest_memory-{arch}-{key[:16]}.cubin"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="lemo-nvcc-") as tmp:
        src = Path(tmp) / "nearest_memory.cu"
        src.write_text(text, encoding="utf-8")
        target = Path(tmp) / "nearest_memory.cubin"
        cmd = [str(exe), "-cubin", f"-arch={arch}", *NVCC_FLAGS, "-o", str(target), str(src)]
        log.info("compiling %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelCompileError(f"nvcc ({arch}): could not run {exe} ({err})") from err
        if proc.returncode != 0 or not target.is_file():
            output = (proc.stderr.strip() + "\n" + proc.stdout.strip()).strip()
            raise KernelCompileError(f"nvcc ({arch}) failed with exit code {proc.returncode}:\n{output}")
        staged = folder / f".{out.name}.{os.getpid()}"
        shutil.copyfile(target, staged)
        os.replace(staged, out)
    return out


def _import_pycuda_driver() -> Any:
    try:
        import pycuda.driver as driver
    except ImportError as err:
        raise MissingDependencyError("pycuda", PYCUDA_HINT, "the CUDA nearest-memory kernel") from err
    return driver


class NearestMemoryKernel:
    """The compiled kernel loaded into the primary CUDA context of one device (shared with torch).

    Call it with contiguous CUDA tensors of that device: ``z (N, D)`` and ``memory (K, D)`` both float32
    or both float16, and the outputs ``score (N,) float32`` and ``index (N,) int64`` to write. It does
    no validation (that is :class:`lemo_edge.runtime.scorers.CudaMemoryScorer`'s job) and no allocation.
    """

    def __init__(self, device: torch.device, cubin: Path) -> None:
        driver = _import_pycuda_driver()
        driver.init()
        self.device = device
        self.cubin = cubin
        self._driver = driver
        self._context = driver.Device(device.index).retain_primary_context()
        self._context.push()
        try:
            self._module = driver.module_from_buffer(cubin.read_bytes())
            self._functions = {}
            for dtype, name in ENTRY_POINTS.items():
                function = self._module.get_function(name)
                function.prepare("PPPPiii")
                self._functions[dtype] = function
        finally:
            driver.Context.pop()
        self._bridge: tuple[Any, torch.cuda.ExternalStream] | None = None

    def _bridge_stream(self) -> tuple[Any, torch.cuda.ExternalStream]:
        if self._bridge is None:
            stream = self._driver.Stream()  # created while our context is pushed
            self._bridge = (stream, torch.cuda.ExternalStream(stream.handle, device=self.device))
        return self._bridge

    def __call__(self, z: torch.Tensor, memory: torch.Tensor, score: torch.Tensor, index: torch.Tensor) -> None:
        """Enqueue one launch on torch's current stream of :attr:`device` (asynchronous)."""
        n, d = z.shape
        k = memory.shape[0]
        function = self._functions[z.dtype]
        grid = ((n + TILE_N - 1) // TILE_N, 1, 1)
        args = (z.data_ptr(), memory.data_ptr(), score.data_ptr(), index.data_ptr(), n, k, d)
        current = torch.cuda.current_stream(self.device)
        self._context.push()
        try:
            if current.cuda_stream == 0:
                function.prepared_async_call(grid, BLOCK, None, *args)
            else:
                stream, external = self._bridge_stream()
                external.wait_stream(current)
                function.prepared_async_call(grid, BLOCK, stream, *args)
                current.wait_stream(external)
        finally:
            self._driver.Context.pop()


@functools.cache
def _load(index: int, cache_dir: str | None) -> NearestMemoryKernel:
    device = torch.device("cuda", index)
    cubin = compile_kernel(device_arch(index), cache_dir=cache_dir)
    kernel = NearestMemoryKernel(device, cubin)
    log.info(
        "nearest-memory kernel loaded on %s (%s, %s)", torch.cuda.get_device_name(index), device_arch(index), cubin
    )
    return kernel


def load_kernel(
    device: torch.device | str | int | None = None, cache_dir: str | Path | None = None
) -> NearestMemoryKernel:
    """Compile (once per architecture, cached on disk) and load the kernel for a CUDA device (once per process).

    Raises:
        BackendUnavailableError: no CUDA GPU visible to torch.
        MissingDependencyError: no pycuda or no nvcc (and no cached cubin).
        KernelCompileError: nvcc failed.
    """
    if not torch.cuda.is_available():
        raise BackendUnavailableError("CUDA kernel: no CUDA GPU visible to torch")
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
    if dev.type != "cuda":
        raise InputError(f"CUDA kernel: expected a CUDA device, got {str(dev)!r}")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    _import_pycuda_driver()
    return _load(index, str(cache_dir) if cache_dir is not None else None)


def kernel_status() -> tuple[bool, str]:
    """Whether the kernel could load here, without compiling or importing pycuda's driver module."""
    if find_spec("pycuda") is None:
        return False, f"pycuda is not installed; install it with: {PYCUDA_HINT}"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to torch"
    try:
        nvcc = find_nvcc()
    except MissingDependencyError as err:
        return False, str(err)
    return True, f"{device_arch()} on {torch.cuda.get_device_name()}, compiled with {nvcc}"
