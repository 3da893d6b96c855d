"""The nearest-memory CUDA kernel.

Without a GPU: the source compiles with nvcc and with NVRTC (torch's CUDA wheels ship it) for sm_87 and sm_90,
with every k = 1..8 and both dtypes in the cubin; the cache, the error messages and the split plan.
On a GPU (marked ``gpu``): the kernel against :func:`lemo_edge.scoring.nearest_memory` at awkward sizes,
k = 1..8, float32 and float16, both launchers, outputs poisoned with NaN first; ties, NaN, streams, CUDA
graphs and launch errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lemo_edge.errors import InputError, MissingDependencyError
from lemo_edge.runtime.kernels.loader import (
    MAX_K,
    TILE_K,
    KernelCompileError,
    KernelLaunchError,
    check_arch,
    compile_kernel,
    entry_points,
    find_nvcc,
    find_nvrtc,
    plan_splits,
)
from lemo_edge.scoring import nearest_memory


def _missing(find) -> str | None:  # noqa: ANN001
    try:
        find()
    except MissingDependencyError as err:
        return str(err)
    return None


needs_nvcc = pytest.mark.skipif(_missing(find_nvcc) is not None, reason=f"nvcc not found: {_missing(find_nvcc)}")
needs_nvrtc = pytest.mark.skipif(_missing(find_nvrtc) is not None, reason=f"NVRTC not found: {_missing(find_nvrtc)}")
COMPILERS = [pytest.param("nvcc", marks=needs_nvcc), pytest.param("nvrtc", marks=needs_nvrtc)]
TINY = 'extern "C" __global__ void tiny(float* x) { x[threadIdx.x] = 1.0f; }\n'


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel-cache")


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_kernel_compiles_with_every_k_and_dtype(arch: str, compiler: str, kernel_cache: Path) -> None:
    cubin = compile_kernel(arch, compiler=compiler, cache_dir=kernel_cache)
    data = cubin.read_bytes()
    assert cubin.parent == kernel_cache / "kernels" and cubin.name.startswith(f"nearest_memory-{arch}-{compiler}-")
    assert data[:4] == b"\x7fELF"
    names = entry_points()
    assert len(names) == 4 * MAX_K == 32 and "nearest_partial_f16_k8" in names and "nearest_merge_f32_k1" in names
    for name in names:
        assert name.encode() + b"\x00" in data, name  # extern "C": unmangled entry points
    mtime = cubin.stat().st_mtime_ns
    assert compile_kernel(arch, compiler=compiler, cache_dir=kernel_cache) == cubin  # cached: not rebuilt
    assert cubin.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("compiler", COMPILERS)
def test_source_change_gives_a_new_cubin(compiler: str, tmp_path: Path) -> None:
    first = compile_kernel("sm_87", compiler=compiler, cache_dir=tmp_path, source=TINY)
    second = compile_kernel("sm_87", compiler=compiler, cache_dir=tmp_path, source=TINY + "// changed\n")
    third = compile_kernel("sm_90", compiler=compiler, cache_dir=tmp_path, source=TINY)
    assert len({first, second, third}) == 3 and all(p.is_file() for p in (first, second, third))


@pytest.mark.parametrize("compiler", COMPILERS)
def test_broken_source_raises_with_the_compiler_message(compiler: str, tmp_path: Path) -> None:
    broken = 'extern "C" __global__ void k(float* x) { x[0] = undefined_symbol_42; }\n'
    with pytest.raises(KernelCompileError) as info:
        compile_kernel("sm_87", compiler=compiler, cache_dir=tmp_path, source=broken)
    message = str(info.value)
    assert f"{compiler}" in message and "(sm_87) failed" in message
    assert "undefined_symbol_42" in message and "is undefined" in message
    assert not list((tmp_path / "kernels").glob("*.cubin"))


def test_bad_arch_compiler_and_nvcc_paths(tmp_path: Path) -> None:
    assert check_arch("sm_87") == "sm_87" and check_arch("sm_90a") == "sm_90a"
    with pytest.raises(InputError, match=r"arch: expected a real GPU architecture like 'sm_87', got 'compute_87'"):
        compile_kernel("compute_87", cache_dir=tmp_path)
    with pytest.raises(InputError, match=r"compiler: expected one of \['nvrtc', 'nvcc'\], got 'clang'"):
        compile_kernel("sm_87", compiler="clang", cache_dir=tmp_path)
    with pytest.raises(InputError, match="nvcc: expected an executable, got"):
        compile_kernel("sm_87", nvcc=tmp_path / "no-nvcc", cache_dir=tmp_path)


def test_missing_compilers_name_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import lemo_edge.runtime.kernels.compile as compile_module

    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(compile_module, "DEFAULT_NVCC", tmp_path / "absent" / "nvcc")
    with pytest.raises(MissingDependencyError, match=r"nvcc is not available .*install the CUDA toolkit"):
        find_nvcc()
    monkeypatch.setattr(compile_module, "nvrtc_candidates", lambda: [])
    with pytest.raises(MissingDependencyError, match=r"nvrtc is not available .*no libnvrtc.so found.*torch with CUDA"):
        find_nvrtc()
    assert compile_module.available_compilers() == []


def test_nvrtc_env_path_that_does_not_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import lemo_edge.runtime.kernels.compile as compile_module

    fake = tmp_path / "libnvrtc.so.99"
    fake.write_bytes(b"not a library")
    monkeypatch.setattr(compile_module, "nvrtc_candidates", lambda: [fake])
    with pytest.raises(MissingDependencyError, match=r"nvrtc: cannot load .*libnvrtc.so.99"):
        find_nvrtc()


@pytest.mark.parametrize(
    ("n", "k", "sms"),
    [(1024, 8192, 132), (8192, 16384, 132), (1, 1, 132), (1024, 65536, 16), (100000, 4096, 132), (64, 65, 132)],
)
def test_split_plan_covers_the_memory_without_empty_splits(n: int, k: int, sms: int) -> None:
    splits, per_split = plan_splits(n, k, sms)
    assert per_split % TILE_K == 0 and splits >= 1
    assert splits * per_split >= k > (splits - 1) * per_split  # every item once, no empty split
    blocks = math.ceil(n / 64) * splits
    tiles = math.ceil(k / TILE_K)
    assert 2 * blocks >= min(4 * sms, math.ceil(n / 64) * tiles)  # enough blocks to fill the GPU (up to rounding)


def test_scorer_rejects_k_outside_the_compiled_range() -> None:
    from lemo_edge.runtime.scorers import CudaMemoryScorer

    for k in (0, MAX_K + 1):
        with pytest.raises(InputError, match=rf"cuda scorer: expected 1 <= k <= 8, got k={k}"):
            CudaMemoryScorer("cuda", k)


# ---------------------------------------------------------------------------------------------- GPU


def _pycuda_missing() -> str | None:
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as err:
        return f"pycuda: {err}"
    return None


needs_pycuda = pytest.mark.skipif(_pycuda_missing() is not None, reason=f"needs pycuda ({_pycuda_missing()})")
LAUNCHERS = ["driver", pytest.param("pycuda", marks=needs_pycuda)]
SIZES = [  # (N, K, D): tile remainders on every axis, singletons, the largest documented K and D
    (1, 1, 1),
    (1, 4097, 152),
    (1023, 1, 7),
    (33, 65, 17),
    (65, 3, 2048),
    (1023, 4097, 2047),
    (1024, 8192, 152),
    (100, 10, 1024),
    (31, 63, 15),
    (257, 65536, 152),
]


def _kernel(launcher: str = "driver"):  # noqa: ANN202
    from lemo_edge.runtime.kernels.loader import load_kernel

    return load_kernel(torch.device("cuda", torch.cuda.current_device()), launcher=launcher)


def _run_poisoned(
    z: torch.Tensor, memory: torch.Tensor, k: int, launcher: str = "driver"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the kernel into outputs poisoned with NaN / -1, so any unwritten entry is caught."""
    n = z.shape[0]
    score = torch.full((n,), float("nan"), dtype=torch.float32, device=z.device)
    distance = torch.full((n,), float("nan"), dtype=torch.float32, device=z.device)
    index = torch.full((n,), -1, dtype=torch.int64, device=z.device)
    _kernel(launcher)(z.contiguous(), memory.contiguous(), k, score, index, distance, synchronize=True)
    torch.cuda.synchronize()
    return score, index, distance


def _exact(z: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``(N, K) float64`` squared distances of the (possibly float16) values, computed in float64."""
    z64, m64 = z.double(), memory.double()
    return ((z64 * z64).sum(1, keepdim=True) - 2.0 * z64 @ m64.T + (m64 * m64).sum(1)[None]).clamp_min(0)


def _check_against_reference(z: torch.Tensor, memory: torch.Tensor, k: int, launcher: str) -> None:
    score, index, distance = _run_poisoned(z, memory, k, launcher)
    assert not torch.isnan(score).any() and not torch.isnan(distance).any(), "unwritten (NaN-poisoned) outputs"
    assert bool(((index >= 0) & (index < memory.shape[0])).all()), "unwritten (-1) or out-of-range indices"
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true float32
    try:
        reference = nearest_memory(z, memory, k)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    assert float((score - reference.score).abs().max()) <= 1e-3
    assert float((distance - reference.nearest_distance).abs().max()) <= 1e-3
    exact = _exact(z, memory)
    chosen = exact.gather(1, index[:, None])[:, 0].sqrt()
    best = exact.min(1).values.sqrt()
    assert float((chosen - best).abs().max()) <= 1e-3, "the index is not (one of) the nearest items"
    differ = index != reference.index  # allowed on ties only: both items at the nearest distance
    ref_chosen = exact.gather(1, reference.index[:, None])[:, 0].sqrt()
    assert float((chosen[differ] - ref_chosen[differ]).abs().max(initial=0.0)) <= 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", range(1, MAX_K + 1))
@pytest.mark.parametrize(("n", "items", "d"), SIZES)
def test_kernel_matches_the_reference(n: int, items: int, d: int, k: int, dtype: torch.dtype) -> None:
    if k > items:
        pytest.skip(f"k={k} > K={items} (the scorer clamps k; see test_scorer_clamps_k_to_the_memory)")
    generator = torch.Generator(device="cuda").manual_seed(n * 7919 + items * 31 + d)
    z = torch.randn(n, d, device="cuda", generator=generator).to(dtype)
    memory = torch.randn(items, d, device="cuda", generator=generator).to(dtype)
    _check_against_reference(z, memory, k, "driver")


@pytest.mark.gpu
@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_both_launchers_match_the_reference(launcher: str, dtype: torch.dtype, k: int) -> None:
    generator = torch.Generator(device="cuda").manual_seed(k)
    z = torch.randn(1100, 152, device="cuda", generator=generator).to(dtype)
    memory = torch.randn(5000, 152, device="cuda", generator=generator).to(dtype)
    _check_against_reference(z, memory, k, launcher)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ties_pick_the_smallest_index(dtype: torch.dtype) -> None:
    memory = torch.randn(130, 40, device="cuda").to(dtype)
    memory[97] = memory[7]
    memory[128] = memory[7]
    memory[70] = memory[65]
    z = memory[[7, 97, 128, 65, 70]].clone()
    _, index, _ = _run_poisoned(z, memory, 1)
    assert index.tolist() == [7, 7, 7, 65, 65]
    same = torch.zeros(4100, 3, device="cuda", dtype=dtype)  # every item equally near: index 0
    _, index, distance = _run_poisoned(torch.ones(2, 3, device="cuda", dtype=dtype), same, 4)
    assert index.tolist() == [0, 0]
    torch.testing.assert_close(distance, torch.full_like(distance, math.sqrt(3)))


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 3])
def test_nan_gives_a_nan_score_and_a_valid_index(k: int) -> None:
    memory = torch.randn(70, 9, device="cuda")
    z = torch.randn(3, 9, device="cuda")
    z[1, 4] = float("nan")
    score, index, distance = _run_poisoned(z, memory, k)
    assert math.isnan(score[1].item()) and math.isnan(distance[1].item()) and 0 <= index[1].item() < 70
    assert not torch.isnan(score[[0, 2]]).any()
    memory[33, 0] = float("nan")  # one bad item: every score NaN (torch.min does the same for k = 1)
    score, index, _ = _run_poisoned(z, memory, k)
    assert torch.isnan(score).all() and bool(((index >= 0) & (index < 70)).all())


@pytest.mark.gpu
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_kernel_on_a_side_stream_is_ordered(launcher: str) -> None:
    from lemo_edge.runtime.scorers import CudaMemoryScorer

    scorer = CudaMemoryScorer(k=3, launcher=launcher)
    z = torch.randn(2000, 152, device="cuda")
    memory = torch.randn(3000, 152, device="cuda")
    expected = scorer(z, memory)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keep the side stream busy: an unordered launch would read z2 early
        z2 = z * 1.0  # produced on the side stream: the kernel must wait for it
        got = scorer(z2, memory)
        got_index, got_score = got.index.clone(), got.score.clone()
    torch.cuda.synchronize()
    assert torch.equal(got_index, expected.index) and torch.equal(got_score, expected.score)


@pytest.mark.gpu
def test_driver_launcher_runs_inside_a_cuda_graph() -> None:
    from lemo_edge.runtime.scorers import CudaMemoryScorer

    scorer = CudaMemoryScorer(k=3)
    z = torch.randn(1024, 152, device="cuda")
    memory = torch.randn(4096, 152, device="cuda")
    expected = scorer(z, memory)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        scorer(z, memory)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = scorer(z, memory)
    z.copy_(torch.randn_like(z))
    graph.replay()
    torch.cuda.synchronize()
    fresh = scorer(z, memory)
    assert torch.equal(captured.index, fresh.index) and torch.equal(captured.score, fresh.score)
    assert not torch.equal(captured.index, expected.index)


@pytest.mark.gpu
def test_launch_errors_name_the_kernel_and_the_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    import lemo_edge.runtime.kernels.loader as loader

    kernel = _kernel()
    monkeypatch.setattr(loader, "BLOCK", (64, 64, 1))  # 4096 threads per block: the driver refuses the launch
    z, memory = torch.randn(10, 16, device="cuda"), torch.randn(100, 16, device="cuda")
    score, index = torch.empty(10, device="cuda"), torch.empty(10, dtype=torch.int64, device="cuda")
    with pytest.raises(KernelLaunchError) as info:
        kernel(z, memory, 3, score, index, torch.empty(10, device="cuda"))
    message = str(info.value)
    assert "nearest_partial_f32_k3 (N=10 K=100 D=16 k=3 float32, grid (1, " in message
    assert "block (64, 64, 1)" in message and "cuLaunchKernel failed" in message and "CUDA_ERROR_" in message
