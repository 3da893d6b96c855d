"""Feature backends: torch and onnxruntime agree on CPU; registry, status and fallback behaviour."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

from lemo_edge.backbone import PACKAGED
from lemo_edge.errors import InputError, MissingDependencyError
from lemo_edge.runtime.backends import (
    BACKENDS,
    OrtFeatureExtractor,
    TorchFeatureExtractor,
    backend_status,
    create_backend,
    physical_cores,
)
from lemo_edge.runtime.protocols import FeatureBackend


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lemo-cache")


@pytest.fixture(scope="module")
def backends(cache_dir: Path) -> dict[str, FeatureBackend]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEMO_EDGE_CACHE", str(cache_dir))
        try:
            return {"torch": create_backend("torch"), "onnxruntime": create_backend("onnxruntime", device="cpu")}
        except MissingDependencyError as err:
            pytest.skip(f"default backbone weights not installed: {err}")


def test_onnxruntime_exports_into_the_cache_not_the_cwd(backends: dict, cache_dir: Path) -> None:
    ort_backend = backends["onnxruntime"]
    assert isinstance(ort_backend, OrtFeatureExtractor)
    assert ort_backend.onnx_path.parent == cache_dir / "onnx"
    assert ort_backend.onnx_path.name.startswith("tf_efficientnet_lite0-256x256-opset18-lemo")
    assert not list(Path.cwd().glob("*.onnx"))


def test_backends_satisfy_the_protocol(backends: dict) -> None:
    spec = PACKAGED["tf_efficientnet_lite0"].spec
    for name, backend in backends.items():
        assert isinstance(backend, FeatureBackend)
        assert backend.name == name
        assert backend.spec == spec
        assert backend.device == torch.device("cpu")


def test_torch_and_onnxruntime_agree_on_cpu(backends: dict) -> None:
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    features = {name: backend(images) for name, backend in backends.items()}
    for out in features.values():
        assert out.shape == (2, 152, 32, 32) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert float((features["torch"] - features["onnxruntime"]).abs().max()) <= 1e-4


def test_onnxruntime_session_is_tuned_for_cpu(backends: dict) -> None:
    ort_backend = backends["onnxruntime"]
    assert ort_backend.providers == ["CPUExecutionProvider"]
    assert ort_backend.cpu_fallback is False
    options = ort_backend._session.get_session_options()
    assert options.intra_op_num_threads == physical_cores() >= 1
    assert options.graph_optimization_level.name == "ORT_ENABLE_ALL"


def test_cuda_request_on_a_cpu_build_falls_back_loudly(backends: dict, caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime

    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(onnxruntime.get_available_providers()):
        pytest.skip("this onnxruntime has GPU providers; the CPU fallback cannot be provoked")
    with caplog.at_level(logging.WARNING, logger="lemo_edge.runtime.backends"):
        backend = OrtFeatureExtractor(backends["onnxruntime"].onnx_path, device="cuda")
    assert backend.cpu_fallback is True
    assert backend.device == torch.device("cpu") and backend.providers == ["CPUExecutionProvider"]
    assert "features come from the CPU" in caplog.text


def test_input_validation_messages(backends: dict) -> None:
    with pytest.raises(InputError, match=r"images: expected \(B, 3, 256, 256\) uint8, got \(1, 3, 224, 224\) uint8"):
        backends["onnxruntime"](torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"images: expected \(B, 3, H, W\) uint8, got \(1, 3, 256, 256\) float32"):
        backends["torch"](torch.zeros(1, 3, 256, 256))


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"backend: expected one of \['onnxruntime', 'tensorrt', 'torch'\], got 'trt'"):
        create_backend("trt")
    assert sorted(BACKENDS) == ["onnxruntime", "tensorrt", "torch"]


def test_backend_option_errors() -> None:
    with pytest.raises(InputError, match="tensorrt: expected a CUDA device, got 'cpu'"):
        create_backend("tensorrt", device="cpu")
    with pytest.raises(InputError, match="onnx_path/engine_path apply to the onnxruntime/tensorrt backends only"):
        create_backend("torch", onnx_path="model.onnx")
    with pytest.raises(InputError, match=r"torch: precision expected one of \['fp32'\], got 'fp16'"):
        TorchFeatureExtractor(torch.nn.Identity(), "cpu", "fp16")  # type: ignore[arg-type]


def test_backend_status_lists_all_three_with_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    status = {s.name: s for s in backend_status()}
    assert list(status) == ["torch", "onnxruntime", "tensorrt"]
    assert status["torch"].available and "torch" in status["torch"].reason
    assert status["onnxruntime"].available and "CPU" in status["onnxruntime"].reason
    assert not status["tensorrt"].available
    assert (
        "tensorrt is not available" in status["tensorrt"].reason and "python3-libnvinfer" in status["tensorrt"].reason
    )


def test_backend_status_reports_missing_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    status = {s.name: s for s in backend_status()}
    assert not status["onnxruntime"].available and "pip install onnxruntime" in status["onnxruntime"].reason


def test_physical_cores_is_positive() -> None:
    assert 1 <= physical_cores() <= (torch.multiprocessing.cpu_count() or 1)


@pytest.fixture(scope="module")
def cpu_extractor():  # noqa: ANN201
    from lemo_edge.backbone import create_feature_extractor

    try:
        return create_feature_extractor()
    except MissingDependencyError as err:
        pytest.skip(f"default backbone weights not installed: {err}")


# Tolerances of the CUDA backbone against the CPU fp32 features, relative to the largest feature magnitude:
# fp32 1e-2 (cuDNN may pick TF32 convolutions, a 10-bit mantissa), fp16 5e-2 (fp16 activations through 13
# blocks). CUDA graphs replay the captured kernels: they must equal eager on the GPU up to 1e-3 of that
# magnitude (cuDNN may choose other kernels under capture).
TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_matches_cpu_and_graphs_match_eager(cpu_extractor, precision: str) -> None:  # noqa: ANN001
    import copy

    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    expected = TorchFeatureExtractor(copy.deepcopy(cpu_extractor), "cpu")(images)
    scale = float(expected.abs().max())
    eager = TorchFeatureExtractor(copy.deepcopy(cpu_extractor), "cuda", precision, cuda_graph=False)
    graphed = TorchFeatureExtractor(copy.deepcopy(cpu_extractor), "cuda", precision, cuda_graph=True)
    assert eager.device.type == "cuda" and eager.device.index is not None
    got = eager(images.cuda())
    assert got.shape == expected.shape and got.dtype == torch.float32 and got.device == eager.device
    assert float((got.cpu() - expected).abs().max()) <= TOLERANCE[precision] * scale
    first = graphed(images.cuda()).clone()  # captures
    second = graphed(images.cuda())  # replays into the same output buffer
    assert graphed._graph is not None and second.data_ptr() == graphed(images.cuda()).data_ptr()
    for out in (first, second):
        assert float((out - got).abs().max()) <= 1e-3 * scale
    other = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    replayed = graphed(other.cuda()).clone()  # new content, same shape: the graph reads the new images
    assert float((replayed - eager(other.cuda())).abs().max()) <= 1e-3 * scale
    single = graphed(images[:1].cuda())  # another shape runs eagerly
    assert float((single - got[:1]).abs().max()) <= 1e-3 * scale


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_backend_from_the_registry(cpu_extractor) -> None:  # noqa: ANN001
    backend = create_backend("torch", device="cuda", precision="fp16")
    assert isinstance(backend, FeatureBackend) and backend.device.type == "cuda"
    out = backend(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    assert out.shape == (1, 152, 32, 32) and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
