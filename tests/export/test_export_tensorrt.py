"""TensorRT engine building: pure parts (cache key, sidecar check, batch profile) without TensorRT, and
an end-to-end build + run marked ``tensorrt`` (skipped without TensorRT 10 and a GPU)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch

from lemo_edge.backbone import PACKAGED
from lemo_edge.errors import BackendUnavailableError, InputError, MissingDependencyError
from lemo_edge.export import EngineCacheError
from lemo_edge.export import tensorrt as trt_export
from lemo_edge.export.onnx import model_metadata
from lemo_edge.export.tensorrt import (
    EngineKey,
    build_engine,
    check_engine_sidecar,
    engine_cache_key,
    engine_file_name,
    import_tensorrt,
    parse_batch_profile,
    sha256_file,
    sidecar_path,
)

KEY = EngineKey(
    onnx_sha256="a" * 64,
    tensorrt_version="10.3.0",
    gpu_name="Orin",
    compute_capability="8.7",
    precision="fp16",
    profile=(1, 1, 8),
)


def tiny_onnx(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    """A one-node model (uint8 -> float Cast) carrying lemo-edge metadata; enough for the engine cache logic."""
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Cast", ["images"], ["features"], to=onnx.TensorProto.FLOAT)],
        "tiny",
        [h.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["batch", 3, *size])],
        [h.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", 3, *size])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    h.set_model_props(model, model_metadata(PACKAGED["tf_efficientnet_lite0"].spec, size))
    onnx.save(model, str(path))
    return path


def write_cached_engine(path: Path, key: EngineKey) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really an engine")
    sidecar = {"key": key.digest, "fields": key.fields(), "metadata": {}}
    sidecar_path(path).write_text(json.dumps(sidecar), encoding="utf-8")
    return path


def test_cache_key_changes_with_every_field() -> None:
    base = KEY.digest
    assert base == engine_cache_key(**KEY.fields()) and len(base) == 64
    assert EngineKey(**{**KEY.fields(), "profile": (1, 1, 8)}).digest == base  # same fields, same key
    changed = {
        "onnx_sha256": "b" * 64,
        "tensorrt_version": "10.4.0",
        "gpu_name": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp32",
        "profile": (1, 2, 8),
        "calibration": "c" * 64,
    }
    digests = {replace(KEY, **{name: value}).digest for name, value in changed.items()}
    assert len(digests) == len(changed) and base not in digests


def test_sidecar_match_is_loaded(tmp_path: Path) -> None:
    engine = write_cached_engine(tmp_path / "m.fp16.b1-1-8.engine", KEY)
    assert check_engine_sidecar(engine, KEY.fields())["key"] == KEY.digest
    env_only = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}
    assert check_engine_sidecar(engine, env_only)["fields"]["precision"] == "fp16"


@pytest.mark.parametrize(
    ("field", "value"),
    [("gpu_name", "NVIDIA H100"), ("tensorrt_version", "10.7.0"), ("profile", (1, 4, 16)), ("onnx_sha256", "f" * 64)],
)
def test_sidecar_mismatch_is_refused_naming_the_field(tmp_path: Path, field: str, value: object) -> None:
    engine = write_cached_engine(tmp_path / "m.fp16.b1-1-8.engine", KEY)
    expected = replace(KEY, **{field: value}).fields()
    with pytest.raises(EngineCacheError, match=rf"{field}: engine has .*, expected .*rebuild it with .*--rebuild"):
        check_engine_sidecar(engine, expected)


def test_sidecar_missing_or_corrupt_is_refused(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(EngineCacheError, match=r"no sidecar m.engine.json, cannot verify it; rebuild"):
        check_engine_sidecar(engine, KEY.fields())
    sidecar_path(engine).write_text(json.dumps({"key": "0" * 64, "fields": KEY.fields()}), encoding="utf-8")
    with pytest.raises(EngineCacheError, match="sidecar key does not match its fields"):
        check_engine_sidecar(engine, KEY.fields())
    sidecar_path(engine).write_text("{not json", encoding="utf-8")
    with pytest.raises(EngineCacheError, match="unreadable sidecar"):
        check_engine_sidecar(engine, KEY.fields())


@pytest.mark.parametrize(
    ("text", "expected"), [("1:1:8", (1, 1, 8)), (" 2 : 4 : 8 ", (2, 4, 8)), ((3, 3, 3), (3, 3, 3))]
)
def test_parse_batch_profile(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_batch_profile(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1:8", r"expected MIN:OPT:MAX \(e.g. 1:1:8\), got '1:8'"),
        ("1:1:8:9", "expected MIN:OPT:MAX"),
        ("a:b:c", "expected MIN:OPT:MAX"),
        ("-1:1:8", "expected MIN:OPT:MAX"),
        ("0:1:8", r"expected 1 <= MIN <= OPT <= MAX, got 0:1:8"),
        ("4:2:8", r"expected 1 <= MIN <= OPT <= MAX, got 4:2:8"),
        ("1:9:8", r"expected 1 <= MIN <= OPT <= MAX, got 1:9:8"),
        ((1, 2), "expected three integers"),
    ],
)
def test_parse_batch_profile_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=rf"batch profile: {message}"):
        parse_batch_profile(text)


def test_missing_tensorrt_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependencyError) as info:
        import_tensorrt()
    message = str(info.value)
    assert message.startswith("tensorrt is not available")
    assert (
        "JetPack's python3-libnvinfer on Jetson" in message and "`pip install tensorrt` from NVIDIA's index" in message
    )


def test_wrong_tensorrt_major_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailableError, match=r"expected version 10.x, found 8.6.1"):
        import_tensorrt()


def test_build_engine_validates_before_touching_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model = tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(InputError, match=r"precision: expected one of \['fp32', 'fp16', 'int8'\], got 'bf16'"):
        build_engine(model, "bf16")
    with pytest.raises(InputError, match=r"int8: expected a folder of normal calibration images \(--calib DIR\)"):
        build_engine(model, "int8")
    with pytest.raises(InputError, match="calibration: expected a folder of normal images"):
        build_engine(model, "int8", calib_dir=tmp_path / "nope")
    with pytest.raises(InputError, match="calibration images apply to int8 only"):
        build_engine(model, "fp16", calib_dir=tmp_path)
    with pytest.raises(MissingDependencyError, match="tensorrt is not available"):
        build_engine(model, "fp16", cache_dir=tmp_path / "cache")


def test_build_engine_refuses_a_mismatching_cached_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real cache logic of build_engine, with TensorRT and the GPU query replaced by fixed answers."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    monkeypatch.setattr(trt_export, "import_tensorrt", lambda: SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(
        trt_export, "gpu_environment", lambda device=None: {"gpu_name": "Orin", "compute_capability": "8.7"}
    )
    cache = tmp_path / "cache"
    engine = cache / "engines" / engine_file_name(model, "fp16", (1, 1, 8))
    here = replace(KEY, onnx_sha256=sha256_file(model))

    write_cached_engine(engine, replace(here, gpu_name="NVIDIA H100", compute_capability="9.0"))
    with pytest.raises(EngineCacheError) as info:
        build_engine(model, "fp16", "1:1:8", cache_dir=cache)
    message = str(info.value)
    assert "gpu_name: engine has 'NVIDIA H100', expected 'Orin'" in message
    assert "compute_capability: engine has '9.0', expected '8.7'" in message and "--rebuild" in message
    assert "precision" not in message

    write_cached_engine(engine, here)  # matching: returned without building anything
    assert build_engine(model, "fp16", "1:1:8", cache_dir=cache) == engine


def test_cli_tensorrt_without_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from lemo_edge.runtime.main import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model = tiny_onnx(tmp_path / "tiny.onnx")
    assert main(["export", "tensorrt", "--onnx", str(model), "--batch", "8:1:1"]) == 2
    assert "batch profile: expected 1 <= MIN <= OPT <= MAX, got 8:1:1" in capsys.readouterr().err
    assert main(["export", "tensorrt", "--onnx", str(model), "--fp16", "--cache", str(tmp_path / "c")]) == 1
    assert "python3-libnvinfer" in capsys.readouterr().err


def _tensorrt_ready() -> str | None:
    try:
        import_tensorrt()
    except (MissingDependencyError, BackendUnavailableError) as err:
        return str(err)
    return None if torch.cuda.is_available() else "no CUDA GPU"


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(_tensorrt_ready() is not None, reason=f"needs TensorRT 10 and a GPU: {_tensorrt_ready()}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_run_engine_matches_torch(tmp_path: Path, precision: str) -> None:
    from lemo_edge.backbone import create_feature_extractor
    from lemo_edge.export.onnx import export_onnx
    from lemo_edge.runtime.backends import TrtFeatureExtractor

    extractor = create_feature_extractor()
    report = export_onnx(extractor, tmp_path / "model.onnx")
    engine = build_engine(report.path, precision, (1, 2, 4), cache_dir=tmp_path / "cache")
    assert build_engine(report.path, precision, (1, 2, 4), cache_dir=tmp_path / "cache") == engine  # cached
    backend = TrtFeatureExtractor(engine, "cuda")
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, device="cuda")
    with torch.inference_mode():
        expected = extractor.cuda()(images)
    got = backend(images).clone()
    torch.cuda.synchronize()
    # TensorRT fp32 may use TF32 tactics (10-bit mantissa): compare relative to the feature range
    tolerance = (1e-2 if precision == "fp32" else 5e-2) * float(expected.abs().max())
    assert got.shape == expected.shape and float((got - expected).abs().max()) <= tolerance
    with pytest.raises(InputError, match="outside the engine profile 1..4"):
        backend(torch.zeros(5, 3, 256, 256, dtype=torch.uint8, device="cuda"))


class FakeTensorRT:
    """The TensorRT 10 builder calls :func:`build_engine` makes, recording the optimisation profiles it sets.

    Not TensorRT: it checks what build_engine asks TensorRT for (the profile's input shapes), which is real code.
    """

    __version__ = "10.3.0"

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    BuilderFlag = SimpleNamespace(FP16="fp16", INT8="int8")

    def __init__(self) -> None:
        self.shapes: list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []
        self.flags: list[str] = []
        fake = self

        class Profile:
            def set_shape(self, name: str, lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...]) -> None:
                fake.shapes.append((name, tuple(lo), tuple(opt), tuple(hi)))

        class Config:
            def set_memory_pool_limit(self, _pool: str, _size: int) -> None:
                pass

            def add_optimization_profile(self, _profile: Profile) -> int:
                return 0

            def create_timing_cache(self, _data: bytes) -> SimpleNamespace:
                return SimpleNamespace(serialize=lambda: b"timing")

            def set_timing_cache(self, _cache: object, ignore_mismatch: bool) -> bool:
                return True

            def get_timing_cache(self) -> SimpleNamespace:
                return SimpleNamespace(serialize=lambda: b"timing")

            def set_flag(self, flag: str) -> None:
                fake.flags.append(flag)

        tensor = SimpleNamespace
        network = SimpleNamespace(
            num_inputs=1,
            num_outputs=1,
            get_input=lambda _i: tensor(name="images"),
            get_output=lambda _i: tensor(name="features"),
        )
        self.Builder = lambda _logger: SimpleNamespace(
            create_network=lambda _flags: network,
            create_builder_config=Config,
            create_optimization_profile=Profile,
            build_serialized_network=lambda _network, _config: b"serialized engine",
        )
        self.OnnxParser = lambda _network, _logger: SimpleNamespace(parse_from_file=lambda _path: True)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engine_sets_the_profile_at_the_onnx_files_height_and_width(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, precision: str
) -> None:
    fake = FakeTensorRT()
    monkeypatch.setattr(trt_export, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(
        trt_export, "gpu_environment", lambda device=None: {"gpu_name": "Orin", "compute_capability": "8.7"}
    )
    model = tiny_onnx(tmp_path / "wide.onnx", size=(32, 96))  # H 32, W 96: a swap would read (.., 96, 32)
    engine = build_engine(model, precision, "1:2:4", cache_dir=tmp_path / "cache")
    assert fake.shapes == [("images", (1, 3, 32, 96), (2, 3, 32, 96), (4, 3, 32, 96))]
    assert fake.flags == ([] if precision == "fp32" else ["fp16"])
    sidecar = json.loads(sidecar_path(engine).read_text(encoding="utf-8"))
    assert sidecar["input_size"] == [32, 96] and engine.read_bytes() == b"serialized engine"
