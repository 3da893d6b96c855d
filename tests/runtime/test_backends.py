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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("precision", "cuda_graph"), [("fp32", False), ("fp32", True), ("fp16", True)])
def test_torch_cuda_matches_cpu(backends: dict, precision: str, cuda_graph: bool) -> None:
    from lemo_edge.backbone import create_feature_extractor

    gpu = TorchFeatureExtractor(create_feature_extractor(), "cuda", precision, cuda_graph)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    expected = backends["torch"](images)
    for _ in range(2):  # second call replays the captured graph
        got = gpu(images.cuda()).float().cpu()
    # fp32 convolutions on CUDA may use TF32 (10-bit mantissa): compare relative to the feature range
    tolerance = (1e-2 if precision == "fp32" else 5e-2) * float(expected.abs().max())
    assert float((got - expected).abs().max()) <= tolerance
