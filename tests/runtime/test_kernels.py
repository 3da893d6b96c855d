"""The nearest-memory CUDA kernel: nvcc compilation (CPU-only machines too) and, on a GPU, exact
agreement with a float64 reference and with lemo_edge.scoring.nearest_memory on awkward sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lemo_edge.errors import InputError, MissingDependencyError
from lemo_edge.runtime.kernels.loader import (
    ENTRY_POINTS,
    SOURCE,
    KernelCompileError,
    check_arch,
    compile_kernel,
    find_nvcc,
)
from lemo_edge.scoring import nearest_memory


def _nvcc_missing() -> str | None:
    try:
        find_nvcc()
    except MissingDependencyError as err:
        return str(err)
    return None


needs_nvcc = pytest.mark.skipif(_nvcc_missing() is not None, reason=f"nvcc not found: {_nvcc_missing()}")


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_kernel_compiles_to_a_cached_cubin(arch: str, tmp_path: Path) -> None:
    cubin = compile_kernel(arch, cache_dir=tmp_path)
    data = cubin.read_bytes()
    assert cubin.parent == tmp_path / "kernels" and cubin.name.startswith(f"nearest_memory-{arch}-")
    assert data[:4] == b"\x7fELF"
    for name in ENTRY_POINTS.values():
        assert name.encode() in data  # extern "C": unmangled entry points
    mtime = cubin.stat().st_mtime_ns
    assert compile_kernel(arch, cache_dir=tmp_path) == cubin and cubin.stat().st_mtime_ns == mtime


@needs_nvcc
def test_source_change_gives_a_new_cubin(tmp_path: Path) -> None:
    source = SOURCE.read_text(encoding="utf-8")
    first = compile_kernel("sm_87", cache_dir=tmp_path, source=source)
    second = compile_kernel("sm_87", cache_dir=tmp_path, source=source + "\n// changed\n")
    assert first != second and first.is_file() and second.is_file()


@needs_nvcc
def test_broken_source_raises_with_the_compiler_message(tmp_path: Path) -> None:
    broken = 'extern "C" __global__ void k(float* x) { x[0] = undefined_symbol_42; }\n'
    with pytest.raises(KernelCompileError) as info:
        compile_kernel("sm_87", cache_dir=tmp_path, source=broken)
    message = str(info.value)
    assert "nvcc (sm_87) failed with exit code" in message
    assert "undefined_symbol_42" in message and "is undefined" in message
    assert not list((tmp_path / "kernels").glob("*.cubin"))


def test_bad_arch_and_nvcc_paths(tmp_path: Path) -> None:
    assert check_arch("sm_87") == "sm_87" and check_arch("sm_90a") == "sm_90a"
    with pytest.raises(InputError, match=r"arch: expected a real GPU architecture like 'sm_87', got 'compute_87'"):
        compile_kernel("compute_87", cache_dir=tmp_path)
    with pytest.raises(InputError, match="nvcc: expected an executable, got"):
        compile_kernel("sm_87", nvcc=tmp_path / "no-nvcc", cache_dir=tmp_path)


def test_missing_nvcc_names_the_toolkit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import lemo_edge.runtime.kernels.loader as loader

    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(loader, "DEFAULT_NVCC", tmp_path / "absent" / "nvcc")
    with pytest.raises(MissingDependencyError, match=r"nvcc is not available .*install the CUDA toolkit"):
        find_nvcc()


# ---------------------------------------------------------------------------------------------- GPU


def _pycuda_missing() -> str | None:
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as err:
        return f"pycuda: {err}"
    return None


def gpu_test(test):  # noqa: ANN001, ANN201
    """Mark a test ``gpu`` and skip it, with the reason, without a GPU, pycuda or nvcc."""
    for mark in (
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        pytest.mark.skipif(_pycuda_missing() is not None, reason=f"needs pycuda ({_pycuda_missing()})"),
        needs_nvcc,
    ):
        test = mark(test)
    return test


SIZES = [  # (N, K, D): tile remainders on every axis, singletons, and the largest documented sizes
    (1, 1, 1),
    (1, 4097, 152),
    (1023, 1, 7),
    (33, 65, 17),
    (1023, 4097, 2047),
    (4096, 256, 152),
    (100, 10, 1024),
    (5, 3, 2048),
    (31, 63, 15),
]


def _kernel():  # noqa: ANN202
    from lemo_edge.runtime.kernels.loader import load_kernel

    return load_kernel(torch.device("cuda", torch.cuda.current_device()))


def _run_poisoned(z: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel into outputs poisoned with NaN / -1, so any unwritten entry is caught."""
    n = z.shape[0]
    score = torch.full((n,), float("nan"), dtype=torch.float32, device=z.device)
    index = torch.full((n,), -1, dtype=torch.int64, device=z.device)
    _kernel()(z.contiguous(), memory.contiguous(), score, index)
    torch.cuda.synchronize()
    return score, index


def _exact(z: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``(N, K) float64`` squared distances of the (possibly float16) values, computed in float64."""
    z64, m64 = z.double(), memory.double()
    return ((z64 * z64).sum(1, keepdim=True) - 2.0 * z64 @ m64.T + (m64 * m64).sum(1)[None]).clamp_min(0)


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("n", "k", "d"), SIZES)
def test_kernel_matches_the_reference(n: int, k: int, d: int, dtype: torch.dtype) -> None:
    generator = torch.Generator(device="cuda").manual_seed(n * 7919 + k * 31 + d)
    z = torch.randn(n, d, device="cuda", generator=generator).to(dtype)
    memory = torch.randn(k, d, device="cuda", generator=generator).to(dtype)
    score, index = _run_poisoned(z, memory)
    assert not torch.isnan(score).any(), "unwritten (NaN-poisoned) scores"
    assert bool(((index >= 0) & (index < k)).all()), "unwritten (-1) or out-of-range indices"

    exact = _exact(z, memory)
    best = exact.min(1).values
    tol = 1e-5 * d + 1e-4 * best  # float32 accumulation over D terms
    chosen = exact.gather(1, index[:, None])[:, 0]
    assert bool((chosen <= best + tol).all()), "kernel picked an item that is not (one of) the nearest"
    torch.testing.assert_close(score.double(), best.sqrt(), rtol=1e-4, atol=1e-4 * math.sqrt(d))

    reference = nearest_memory(z, memory)
    torch.testing.assert_close(score, reference.score, rtol=1e-4, atol=2e-3)
    if k > 1:
        second = exact.topk(2, dim=1, largest=False).values[:, 1]
        clear = (second - best) > 10 * tol  # the reference's expanded form may swap near-ties
        assert torch.equal(index[clear], reference.index[clear])


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ties_pick_the_smallest_index(dtype: torch.dtype) -> None:
    memory = torch.randn(130, 40, device="cuda").to(dtype)
    memory[97] = memory[7]
    memory[128] = memory[7]
    memory[70] = memory[65]
    z = memory[[7, 97, 128, 65, 70]].clone()
    score, index = _run_poisoned(z, memory)
    assert index.tolist() == [7, 7, 7, 65, 65]
    assert score.tolist() == [0.0] * 5
    same = torch.zeros(4100, 3, device="cuda", dtype=dtype)  # every item equally near: index 0
    _, index = _run_poisoned(torch.ones(2, 3, device="cuda", dtype=dtype), same)
    assert index.tolist() == [0, 0]


@gpu_test
def test_nan_rows_propagate_like_torch_min() -> None:
    memory = torch.randn(70, 9, device="cuda")
    z = torch.randn(3, 9, device="cuda")
    z[1, 4] = float("nan")
    score, index = _run_poisoned(z, memory)
    assert math.isnan(score[1].item()) and index[1].item() == 0
    assert not torch.isnan(score[[0, 2]]).any()


@gpu_test
def test_kernel_on_a_side_stream_is_ordered() -> None:
    from lemo_edge.runtime.scorers import CudaMemoryScorer

    scorer = CudaMemoryScorer()
    z = torch.randn(2000, 152, device="cuda")
    memory = torch.randn(3000, 152, device="cuda")
    expected = scorer(z, memory)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        z2 = z * 1.0  # produced on the side stream: the kernel must wait for it
        got = scorer(z2, memory)
        got_index = got.index.clone()
    torch.cuda.synchronize()
    assert torch.equal(got_index, expected.index)
