"""Launchers for the compiled kernel: the CUDA driver API through ``ctypes`` (default) and pycuda.

Both load the cubin into the device's *primary* context, the one torch (CUDA runtime API) works in, retained
with ``cuDevicePrimaryCtxRetain`` and pushed only around module loading and each launch, so any thread may
call and no context is left on the thread's stack. Tensors are passed by ``data_ptr()``: no copies.

- :class:`DriverLauncher` calls ``cuLaunchKernel`` from ``libcuda.so.1`` (present wherever torch runs on CUDA)
  with torch's current stream handle itself: the launch is ordered on that stream exactly, also under a
  non-default stream or CUDA-graph capture.
- :class:`PycudaLauncher` uses pycuda (``pip install pycuda``). pycuda launches only on its own ``Stream``
  objects or the legacy default stream: its ``_launch_kernel`` takes the handle from a ``pycuda.driver.Stream``
  (``PYCUDA_PARSE_STREAM_PY`` in pycuda's ``src/cpp/cuda.hpp``) and cannot wrap a foreign ``CUstream``. On
  torch's default stream it launches there; under another torch stream it launches on a pycuda stream that
  first waits for torch's current stream, which then waits for it (event record/wait on the GPU, no host
  synchronisation): ordered as if it ran on torch's stream.

Every status is checked; :class:`KernelLaunchError` names the call (the caller adds kernel and shapes).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Protocol

import torch

from lemo_edge.errors import BackendUnavailableError, LemoError, MissingDependencyError

PYCUDA_HINT = "pip install pycuda (builds against the CUDA toolkit; JetPack includes one)"
LAUNCHERS = ("driver", "pycuda")


class KernelLaunchError(LemoError, RuntimeError):
    """A CUDA driver call for the kernel failed; the message names the kernel, the shapes and the CUDA error."""


# An argument of a launch: ("ptr", address) or ("int", value).
Arg = tuple[str, int]


class Launcher(Protocol):
    """Loads one cubin into a device's primary context and launches its functions."""

    name: str

    def function(self, name: str) -> Any:
        """The kernel ``name`` of the loaded module."""
        ...

    def launch(self, function: Any, grid: tuple[int, int, int], block: tuple[int, int, int], args: list[Arg]) -> None:
        """Enqueue one launch on torch's current stream (asynchronous); raises ``KernelLaunchError``."""
        ...

    def synchronize(self) -> None:
        """Wait for torch's current stream and raise ``KernelLaunchError`` on an asynchronous CUDA error."""
        ...


@functools.cache
def _libcuda() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        raise BackendUnavailableError(f"CUDA driver: cannot load libcuda.so.1 ({err})") from err
    lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuDeviceGet.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    lib.cuCtxPushCurrent_v2.argtypes = [ctypes.c_void_p]
    lib.cuCtxPopCurrent_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.cuCtxGetCurrent.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.cuModuleLoadData.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p]
    lib.cuLaunchKernel.argtypes = [
        ctypes.c_void_p,
        *([ctypes.c_uint] * 6),
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
    return lib


def cuda_error(result: int) -> str:
    """``CUDA_ERROR_NAME: description`` of a driver status."""
    lib = _libcuda()
    name, text = ctypes.c_char_p(), ctypes.c_char_p()
    lib.cuGetErrorName(result, ctypes.byref(name))
    lib.cuGetErrorString(result, ctypes.byref(text))
    return f"{(name.value or b'CUDA error %d' % result).decode()}: {(text.value or b'').decode()}"


class DriverLauncher:
    """The CUDA driver API through ``ctypes``, launching on torch's current stream handle."""

    name = "driver"

    def __init__(self, device: torch.device, cubin: bytes) -> None:
        self.device = device
        lib = self._lib = _libcuda()
        self._check(lib.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        self._check(lib.cuDeviceGet(ctypes.byref(dev), device.index), f"cuDeviceGet({device.index})")
        self._context = ctypes.c_void_p()
        self._check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(self._context), dev), "cuDevicePrimaryCtxRetain")
        self._image = ctypes.create_string_buffer(cubin, len(cubin))  # kept alive with the module
        self._module = ctypes.c_void_p()
        with self._pushed():
            image = ctypes.cast(self._image, ctypes.c_void_p)
            self._check(lib.cuModuleLoadData(ctypes.byref(self._module), image), "cuModuleLoadData")

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            raise KernelLaunchError(f"{what} failed on {self.device} ({cuda_error(result)})")

    def _pushed(self) -> _Pushed:
        return _Pushed(self)

    def function(self, name: str) -> ctypes.c_void_p:
        function = ctypes.c_void_p()
        with self._pushed():
            self._check(
                self._lib.cuModuleGetFunction(ctypes.byref(function), self._module, name.encode()),
                f"cuModuleGetFunction({name!r})",
            )
        return function

    def launch(
        self, function: ctypes.c_void_p, grid: tuple[int, int, int], block: tuple[int, int, int], args: list[Arg]
    ) -> None:
        values = [ctypes.c_void_p(v) if kind == "ptr" else ctypes.c_int(v) for kind, v in args]
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
        with self._pushed():
            result = self._lib.cuLaunchKernel(function, *grid, *block, 0, stream, params, None)
        self._check(result, "cuLaunchKernel")

    def synchronize(self) -> None:
        stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
        with self._pushed():
            result = self._lib.cuStreamSynchronize(stream)
        self._check(result, "cuStreamSynchronize (an earlier launch failed)")


class _Pushed:
    """``with``: the launcher's primary context is current inside, the previous one after (nothing is pushed
    when it is current already, as on a thread where torch used the device)."""

    def __init__(self, launcher: DriverLauncher) -> None:
        self.launcher = launcher
        self.pushed = False

    def __enter__(self) -> None:
        launcher = self.launcher
        current = ctypes.c_void_p()
        launcher._check(launcher._lib.cuCtxGetCurrent(ctypes.byref(current)), "cuCtxGetCurrent")
        self.pushed = current.value != launcher._context.value
        if self.pushed:
            launcher._check(launcher._lib.cuCtxPushCurrent_v2(launcher._context), "cuCtxPushCurrent")

    def __exit__(self, *exc: object) -> None:
        if self.pushed:
            popped = ctypes.c_void_p()
            self.launcher._check(self.launcher._lib.cuCtxPopCurrent_v2(ctypes.byref(popped)), "cuCtxPopCurrent")


def import_pycuda_driver() -> Any:
    """``pycuda.driver``, or ``MissingDependencyError`` with the install hint."""
    try:
        import pycuda.driver as driver
    except ImportError as err:
        raise MissingDependencyError("pycuda", PYCUDA_HINT, "the pycuda launcher of the CUDA kernel") from err
    return driver


class _PycudaFunction:
    """A pycuda ``Function`` and the argument signature it was prepared with."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.signature: str | None = None


class PycudaLauncher:
    """pycuda: ``module_from_buffer`` and ``prepared_async_call`` (see the module docstring for streams)."""

    name = "pycuda"

    def __init__(self, device: torch.device, cubin: bytes) -> None:
        driver = self._driver = import_pycuda_driver()
        driver.init()
        self.device = device
        self._context = driver.Device(device.index).retain_primary_context()
        self._context.push()
        try:
            self._module = driver.module_from_buffer(cubin)
        except driver.Error as err:
            raise KernelLaunchError(f"pycuda module_from_buffer failed on {device} ({err})") from err
        finally:
            driver.Context.pop()
        self._bridge: tuple[Any, torch.cuda.ExternalStream] | None = None

    def function(self, name: str) -> _PycudaFunction:
        try:
            return _PycudaFunction(self._module.get_function(name))
        except self._driver.Error as err:
            raise KernelLaunchError(f"pycuda get_function({name!r}) failed on {self.device} ({err})") from err

    def _bridge_stream(self) -> tuple[Any, torch.cuda.ExternalStream]:
        if self._bridge is None:
            self._context.push()
            try:
                stream = self._driver.Stream()
            finally:
                self._driver.Context.pop()
            self._bridge = (stream, torch.cuda.ExternalStream(stream.handle, device=self.device))
        return self._bridge

    def launch(
        self, function: _PycudaFunction, grid: tuple[int, int, int], block: tuple[int, int, int], args: list[Arg]
    ) -> None:
        signature = "".join("P" if kind == "ptr" else "i" for kind, _ in args)
        if function.signature != signature:
            function.function.prepare(signature)
            function.signature = signature
        fn, values = function.function, [v for _, v in args]
        current = torch.cuda.current_stream(self.device)
        self._context.push()
        try:
            if current.cuda_stream == 0:
                fn.prepared_async_call(grid, block, None, *values)
            else:
                stream, external = self._bridge_stream()
                external.wait_stream(current)
                fn.prepared_async_call(grid, block, stream, *values)
                current.wait_stream(external)
        except self._driver.Error as err:
            raise KernelLaunchError(f"pycuda launch failed on {self.device} ({err})") from err
        finally:
            self._driver.Context.pop()

    def synchronize(self) -> None:
        self._context.push()
        try:
            torch.cuda.current_stream(self.device).synchronize()
            self._driver.Context.synchronize()
        except (self._driver.Error, RuntimeError) as err:
            raise KernelLaunchError(f"synchronize failed on {self.device} (an earlier launch failed: {err})") from err
        finally:
            self._driver.Context.pop()


def create_launcher(name: str, device: torch.device, cubin: bytes) -> Launcher:
    """``driver`` or ``pycuda`` (see :data:`LAUNCHERS`)."""
    if name == "driver":
        return DriverLauncher(device, cubin)
    if name == "pycuda":
        return PycudaLauncher(device, cubin)
    raise ValueError(f"launcher: expected one of {list(LAUNCHERS)}, got {name!r}")
