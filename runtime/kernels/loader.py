"""Build, load and launch the nearest-memory CUDA kernel (``nearest_memory.cu``) on torch's tensors.

:func:`load_kernel` compiles the source once per GPU architecture (NVRTC from torch's CUDA wheels, else nvcc;
see :mod:`.compile`), loads the cubin into the device's primary context (the one torch uses) and returns a
:class:`NearestMemoryKernel`. If the driver refuses a cubin (e.g. an nvcc newer than the driver), the next
compiler is tried. Launches go on torch's current stream (:mod:`.driver`); nothing is copied: tensors are
passed by pointer, and only a small scratch buffer ``(N, S, k)`` for the split memory is allocated, through
torch's caching allocator.
"""

from __future__ import annotations

import functools
import logging
import math
from importlib.util import find_spec
from pathlib import Path

import torch

from lemo_edge.errors import BackendUnavailableError, InputError, MissingDependencyError
from lemo_edge.runtime.kernels.compile import (
    COMPILERS,
    SOURCE,
    KernelCompileError,
    available_compilers,
    check_arch,
    compile_kernel,
    find_nvcc,
    find_nvrtc,
)
from lemo_edge.runtime.kernels.driver import LAUNCHERS, KernelLaunchError, Launcher, create_launcher

__all__ = [
    "BLOCK",
    "COMPILERS",
    "DTYPES",
    "LAUNCHERS",
    "MAX_K",
    "SOURCE",
    "KernelCompileError",
    "KernelLaunchError",
    "NearestMemoryKernel",
    "check_arch",
    "compile_kernel",
    "entry_points",
    "find_nvcc",
    "find_nvrtc",
    "kernel_status",
    "load_kernel",
    "plan_splits",
]

log = logging.getLogger(__name__)

MAX_K = 8  # nearest items per patch: kernels nearest_*_k1 .. nearest_*_k8
DTYPES = {torch.float32: "f32", torch.float16: "f16"}
TILE_N = 64  # patches per block of the partial kernel (kTileN)
TILE_K = 64  # memory items per tile (kTileK)
BLOCK = (16, 16, 1)  # (kThreadsX, kThreadsY)
MERGE_BLOCK = (256, 1, 1)  # kMergeThreads: 8 warps, one patch each
MERGE_PATCHES = MERGE_BLOCK[0] // 32
BLOCKS_PER_SM = 4  # aim for this many partial blocks per multiprocessor when splitting the memory


def entry_points() -> list[str]:
    """Every ``extern "C"`` kernel name in the cubin."""
    return [
        f"nearest_{stage}_{dt}_k{k}"
        for k in range(1, MAX_K + 1)
        for dt in DTYPES.values()
        for stage in ("partial", "merge")
    ]


def plan_splits(n: int, k: int, multiprocessors: int) -> tuple[int, int]:
    """Split the ``k`` memory items over ``S`` blocks per patch tile so the GPU has enough blocks.

    Returns:
        ``(S, items per split)``, items per split a multiple of the 64-item tile, ``S * per_split >= k``.
    """
    tiles_k = max(1, math.ceil(k / TILE_K))
    n_blocks = max(1, math.ceil(n / TILE_N))
    wanted = max(1, math.ceil(BLOCKS_PER_SM * multiprocessors / n_blocks))
    tiles_per_split = math.ceil(tiles_k / min(tiles_k, wanted))
    splits = math.ceil(tiles_k / tiles_per_split)
    return splits, tiles_per_split * TILE_K


def device_arch(device: torch.device | int | None = None) -> str:
    """``sm_XY`` of a CUDA device (torch's current one by default)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


class NearestMemoryKernel:
    """The compiled kernels loaded into the primary CUDA context of one device (shared with torch).

    :meth:`__call__` takes contiguous CUDA tensors of that device and writes the outputs; it does no
    validation (that is :class:`lemo_edge.runtime.scorers.CudaMemoryScorer`'s job).

    Attributes:
        device: the CUDA device.
        cubin: the loaded cubin.
        launcher: ``driver`` or ``pycuda``.
    """

    def __init__(self, device: torch.device, cubin: Path, launcher: str = "driver") -> None:
        self.device = device
        self.cubin = cubin
        self.launcher = launcher
        self._launcher: Launcher = create_launcher(launcher, device, cubin.read_bytes())
        self._functions = {name: self._launcher.function(name) for name in entry_points()}
        self.multiprocessors = torch.cuda.get_device_properties(device).multi_processor_count

    def __call__(
        self,
        z: torch.Tensor,
        memory: torch.Tensor,
        k: int,
        score: torch.Tensor,
        index: torch.Tensor,
        distance: torch.Tensor | None = None,
        *,
        synchronize: bool = False,
    ) -> None:
        """Enqueue the two launches on torch's current stream of :attr:`device` (asynchronous).

        Args:
            z: ``(N, D)`` float32/float16 cuda, contiguous, ``N >= 1``.
            memory: ``(K, D)``, same dtype, contiguous, ``K >= k``.
            k: nearest items averaged into the score, ``1 <= k <= 8``.
            score: ``(N,) float32`` output.
            index: ``(N,) int64`` output.
            distance: ``(N,) float32`` output (nearest distance) or ``None``.
            synchronize: wait for the stream and check it (tests, debugging): asynchronous errors then
                surface here, named.

        Raises:
            KernelLaunchError: a launch (or, with ``synchronize``, the kernel) failed; names kernel and shapes.
        """
        n, d = z.shape
        items = memory.shape[0]
        dt = DTYPES[z.dtype]
        splits, per_split = plan_splits(n, items, self.multiprocessors)
        part_val = torch.empty((n, splits, k), dtype=torch.float32, device=self.device)
        part_idx = torch.empty((n, splits, k), dtype=torch.int32, device=self.device)
        shapes = f"N={n} K={items} D={d} k={k} {z.dtype}".replace("torch.", "")
        partial = f"nearest_partial_{dt}_k{k}"
        grid = (math.ceil(n / TILE_N), splits, 1)
        args = [("ptr", z.data_ptr()), ("ptr", memory.data_ptr()), ("ptr", part_val.data_ptr())]
        args += [("ptr", part_idx.data_ptr()), ("int", n), ("int", items), ("int", d), ("int", per_split)]
        self._launch(partial, grid, BLOCK, args, shapes)
        merge = f"nearest_merge_{dt}_k{k}"
        grid = (math.ceil(n / MERGE_PATCHES), 1, 1)
        args = [("ptr", z.data_ptr()), ("ptr", part_val.data_ptr()), ("ptr", part_idx.data_ptr())]
        args += [("ptr", score.data_ptr()), ("ptr", index.data_ptr())]
        args += [("ptr", distance.data_ptr() if distance is not None else 0), ("int", n), ("int", d), ("int", splits)]
        self._launch(merge, grid, MERGE_BLOCK, args, shapes)
        if synchronize:
            try:
                self._launcher.synchronize()
            except KernelLaunchError as err:
                raise KernelLaunchError(f"{partial}/{merge} ({shapes}, S={splits}): {err}") from err

    def _launch(
        self, name: str, grid: tuple[int, int, int], block: tuple[int, int, int], args: list, shapes: str
    ) -> None:
        try:
            self._launcher.launch(self._functions[name], grid, block, args)
        except KernelLaunchError as err:
            raise KernelLaunchError(f"{name} ({shapes}, grid {grid}, block {block}): {err}") from err


def _compilers(preference: str) -> list[str]:
    if preference == "auto":
        found = available_compilers()
        if not found:
            find_nvrtc()  # raises MissingDependencyError naming what is missing
        return found
    if preference not in COMPILERS:
        raise InputError(f"compiler: expected one of {['auto', *COMPILERS]}, got {preference!r}")
    return [preference]


@functools.cache
def _load(index: int, launcher: str, compiler: str, cache_dir: str | None) -> NearestMemoryKernel:
    device = torch.device("cuda", index)
    arch = device_arch(index)
    errors = []
    for name in _compilers(compiler):
        try:
            cubin = compile_kernel(arch, compiler=name, cache_dir=cache_dir)
            kernel = NearestMemoryKernel(device, cubin, launcher)
        except (KernelCompileError, KernelLaunchError, MissingDependencyError) as err:
            log.warning("nearest-memory kernel: %s did not give a loadable kernel: %s", name, err)
            errors.append(f"{name}: {err}")
            continue
        log.info(
            "nearest-memory kernel on %s (%s, %s, %s launcher)",
            torch.cuda.get_device_name(index),
            arch,
            cubin.name,
            launcher,
        )
        return kernel
    raise KernelCompileError(
        f"nearest-memory kernel: no compiler gave a kernel that loads on {arch}: " + "; ".join(errors)
    )


def load_kernel(
    device: torch.device | str | int | None = None,
    cache_dir: str | Path | None = None,
    *,
    launcher: str = "auto",
    compiler: str = "auto",
) -> NearestMemoryKernel:
    """Compile (once per architecture, cached on disk) and load the kernel for a CUDA device (once per process).

    Args:
        device: a CUDA device (default: torch's current one).
        cache_dir: cache root for the cubin.
        launcher: ``driver`` (ctypes, on torch's stream itself), ``pycuda`` or ``auto`` (= ``driver``).
        compiler: ``nvrtc``, ``nvcc`` or ``auto`` (NVRTC first, then nvcc, the next one if a cubin will not load).

    Raises:
        BackendUnavailableError: no CUDA GPU visible to torch.
        MissingDependencyError: no compiler, or no pycuda for ``launcher="pycuda"``.
        KernelCompileError: compilation or loading failed with every compiler.
    """
    if not torch.cuda.is_available():
        raise BackendUnavailableError("CUDA kernel: no CUDA GPU visible to torch")
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
    if dev.type != "cuda":
        raise InputError(f"CUDA kernel: expected a CUDA device, got {str(dev)!r}")
    if launcher not in ("auto", *LAUNCHERS):
        raise InputError(f"launcher: expected one of {['auto', *LAUNCHERS]}, got {launcher!r}")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    chosen = "driver" if launcher == "auto" else launcher
    if chosen == "pycuda":
        from lemo_edge.runtime.kernels.driver import import_pycuda_driver

        import_pycuda_driver()
    return _load(index, chosen, compiler, str(cache_dir) if cache_dir is not None else None)


def kernel_status() -> tuple[bool, str]:
    """Whether the kernel could load here, without compiling or touching the GPU's driver."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to torch"
    compilers = available_compilers()
    if not compilers:
        return False, "no CUDA compiler: torch's CUDA wheels ship NVRTC, or install the CUDA toolkit (nvcc)"
    pycuda = "pycuda launcher available" if find_spec("pycuda") else "pycuda not installed (driver launcher only)"
    return True, f"k <= {MAX_K}, {device_arch()} on {torch.cuda.get_device_name()}, compilers {compilers}, {pycuda}"
