"""Compile ``nearest_memory.cu`` to a cubin with nvcc or NVRTC, cached on disk.

Two compilers, the same source (it has no ``#include``):

- ``nvcc`` (``-cubin -arch=sm_XY``): the CUDA toolkit's compiler (``$CUDA_HOME``, ``PATH``, ``/usr/local/cuda``).
- ``nvrtc``: the runtime compiler library through ``ctypes``. torch's CUDA wheels ship it (``nvidia/cu13/lib`` or
  ``nvidia/cuda_nvrtc/lib`` in site-packages), so a GPU machine with torch and no toolkit can still build the
  kernel, and the NVRTC of torch's own CUDA version makes cubins its driver accepts.

The cubin is cached under ``<cache>/kernels/`` named by the sha256 over the source, the architecture, the
compiler and its version and the flags, so any change recompiles and nothing stale is loaded. Compiling
needs no GPU: the CPU-only tests build for ``sm_87`` (Jetson Orin) and ``sm_90`` (H100/H200) with both.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lemo_edge.errors import InputError, LemoError, MissingDependencyError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("nearest_memory.cu")
NVCC_FLAGS = ("-O3", "-std=c++17")
NVRTC_FLAGS = ("-std=c++17",)  # NVRTC optimises (-O3 equivalent) by default
COMPILERS = ("nvrtc", "nvcc")
DEFAULT_NVCC = Path("/usr/local/cuda/bin/nvcc")
NVCC_HINT = "install the CUDA toolkit (JetPack ships it in /usr/local/cuda), or pass nvcc=/path/to/nvcc"
NVRTC_HINT = "install torch with CUDA (its wheels ship libnvrtc) or the CUDA toolkit, or set LEMO_EDGE_NVRTC=/path"
NVRTC_ENV = "LEMO_EDGE_NVRTC"

_ARCH = re.compile(r"^sm_\d{2,3}[af]?$")


class KernelCompileError(LemoError, RuntimeError):
    """nvcc or NVRTC failed; the message carries the compiler's output."""


def check_arch(arch: str) -> str:
    """Return ``arch`` if it reads like ``sm_87`` / ``sm_90a``, else raise ``InputError``."""
    if not _ARCH.match(arch):
        raise InputError(f"arch: expected a real GPU architecture like 'sm_87', got {arch!r}")
    return arch


# ------------------------------------------------------------------------------------------------------- nvcc


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


def _nvcc_compile(text: str, arch: str, exe: Path) -> bytes:
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
        return target.read_bytes()


# ------------------------------------------------------------------------------------------------------ NVRTC


def nvrtc_candidates() -> list[Path]:
    """Paths where libnvrtc may be, best first: ``$LEMO_EDGE_NVRTC``, torch's CUDA wheels, the toolkit."""
    found: list[Path] = []
    if os.environ.get(NVRTC_ENV):
        found.append(Path(os.environ[NVRTC_ENV]))
    for root in sys.path:
        for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
            found += [Path(p) for p in sorted(glob.glob(os.path.join(root or ".", pattern)), reverse=True)]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found += [Path(p) for p in sorted(glob.glob(os.path.join(os.environ[var], "lib*", "libnvrtc.so*")))]
    found += [Path(p) for p in sorted(glob.glob("/usr/local/cuda/lib*/libnvrtc.so*"))]
    found += [Path(p) for p in sorted(glob.glob("/usr/local/cuda/targets/*/lib/libnvrtc.so*"))]
    keep = [p for p in found if "builtins" not in p.name and ".alt." not in p.name and p.is_file()]
    return list(dict.fromkeys(keep))


class Nvrtc:
    """The few NVRTC entry points the kernel needs, through ``ctypes`` (no Python package needed)."""

    def __init__(self, path: Path) -> None:
        try:
            # NVRTC dlopens libnvrtc-builtins by name; pip wheels have no RPATH for it: load it first.
            for builtins in sorted(path.parent.glob("libnvrtc-builtins.so*")):
                if ".alt." not in builtins.name:
                    ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
            self._lib = ctypes.CDLL(str(path))
        except OSError as err:
            raise KernelCompileError(f"nvrtc: cannot load {path} ({err})") from err
        self.path = path
        self.version = "?"
        lib = self._lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = f"{major.value}.{minor.value}"

    def _check(self, result: int, what: str, detail: str = "") -> None:
        if result != 0:
            message = (self._lib.nvrtcGetErrorString(result) or b"unknown").decode()
            raise KernelCompileError(f"nvrtc {self.version}: {what} failed ({message}){detail}")

    def compile(self, text: str, arch: str, flags: tuple[str, ...] = NVRTC_FLAGS) -> bytes:
        """Compile CUDA source to a cubin for ``arch``; the error carries NVRTC's log."""
        lib = self._lib
        program = ctypes.c_void_p()
        self._check(
            lib.nvrtcCreateProgram(ctypes.byref(program), text.encode(), b"nearest_memory.cu", 0, None, None),
            "nvrtcCreateProgram",
        )
        try:
            options = [f"--gpu-architecture={arch}".encode(), *(f.encode() for f in flags)]
            array = (ctypes.c_char_p * len(options))(*options)
            result = lib.nvrtcCompileProgram(program, len(options), array)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log_buffer = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(program, log_buffer)
            compiler_log = log_buffer.value.decode(errors="replace").strip()
            if result != 0:
                raise KernelCompileError(
                    f"nvrtc {self.version} ({arch}) failed: "
                    f"{(lib.nvrtcGetErrorString(result) or b'').decode()}:\n{compiler_log}"
                )
            self._check(lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
            cubin = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
            return cubin.raw[: size.value]
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(program))


@functools.lru_cache(maxsize=4)
def _nvrtc_at(path: str) -> Nvrtc:
    return Nvrtc(Path(path))


def find_nvrtc() -> Nvrtc:
    """Load the first libnvrtc of :func:`nvrtc_candidates` that loads.

    Raises:
        MissingDependencyError: none found or none loads.
    """
    errors = []
    for path in nvrtc_candidates():
        try:
            return _nvrtc_at(str(path))
        except KernelCompileError as err:
            errors.append(str(err))
    detail = "; ".join(errors) if errors else "no libnvrtc.so found"
    raise MissingDependencyError("nvrtc", NVRTC_HINT, f"compiling the nearest-memory kernel: {detail}")


# ------------------------------------------------------------------------------------------------------ cache


def available_compilers() -> list[str]:
    """The compilers of :data:`COMPILERS` found here, in preference order (nothing is compiled)."""
    names = []
    for name, find in (("nvrtc", find_nvrtc), ("nvcc", find_nvcc)):
        try:
            find()
        except MissingDependencyError:
            continue
        names.append(name)
    return names


def compile_kernel(
    arch: str = "sm_87",
    nvcc: str | Path | None = None,
    *,
    compiler: str = "nvcc",
    source: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Compile the kernel source to a cubin for ``arch`` (cached; returns at once when it already exists).

    Args:
        arch: real architecture, e.g. ``sm_87`` (Jetson Orin) or ``sm_90`` (H100/H200).
        nvcc: the nvcc executable (default: :func:`find_nvcc`); only for ``compiler="nvcc"``.
        compiler: ``nvcc`` or ``nvrtc``.
        source: CUDA source text (default: ``nearest_memory.cu`` beside this module).
        cache_dir: cache root (default :func:`lemo_edge.utils.default_cache_dir`).

    Returns:
        Path of the cubin in ``<cache>/kernels/``.

    Raises:
        KernelCompileError: the compiler failed (the message holds its output).
        MissingDependencyError: that compiler is not installed.
        InputError: a bad ``arch``, ``compiler`` or ``nvcc`` path.
    """
    from lemo_edge.export.cache import cache_subdir

    check_arch(arch)
    if compiler not in COMPILERS:
        raise InputError(f"compiler: expected one of {list(COMPILERS)}, got {compiler!r}")
    text = source if source is not None else SOURCE.read_text(encoding="utf-8")
    flags: tuple[str, ...]
    if compiler == "nvcc":
        exe = find_nvcc(nvcc)
        version, flags = nvcc_version(str(exe)), NVCC_FLAGS
    else:
        nvrtc = find_nvrtc()
        version, flags = f"nvrtc {nvrtc.version}", NVRTC_FLAGS
    fields = {"source": hashlib.sha256(text.encode()).hexdigest(), "arch": arch, "compiler": version, "flags": flags}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    folder = cache_subdir("kernels", cache_dir)
    out = folder / f"nearest_memory-{arch}-{compiler}-{key[:16]}.cubin"
    if out.is_file():
        return out
    data = _nvcc_compile(text, arch, exe) if compiler == "nvcc" else nvrtc.compile(text, arch)
    staged = folder / f".{out.name}.{os.getpid()}"
    staged.write_bytes(data)
    os.replace(staged, out)
    log.info("nearest-memory kernel compiled with %s for %s: %s", version, arch, out)
    return out
