"""ONNX export of the default backbone: checker, metadata, TensorRT operator list, parity, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from lemo_edge.backbone import PACKAGED, FeatureExtractor, create_feature_extractor
from lemo_edge.errors import InputError, MissingDependencyError
from lemo_edge.export import ExportError
from lemo_edge.export.onnx import (
    TENSORRT_OPS_FILE,
    ExportReport,
    check_tensorrt_ops,
    export_onnx,
    load_tensorrt_ops,
    read_model_info,
    verify_onnx,
)


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    try:
        return create_feature_extractor()
    except MissingDependencyError as err:
        pytest.skip(f"default backbone weights not installed: {err}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, extractor: FeatureExtractor) -> ExportReport:
    return export_onnx(extractor, tmp_path_factory.mktemp("onnx") / "model.onnx", size=(256, 256))


def test_export_report(exported: ExportReport) -> None:
    assert exported.path.is_file()
    assert exported.exporter == "dynamo"
    assert exported.opset == 18
    assert (exported.backbone, exported.input_size, exported.dim, exported.stride) == (
        "tf_efficientnet_lite0",
        (256, 256),
        152,
        8,
    )
    assert 0.0 <= exported.max_abs_diff <= 1e-4
    assert exported.unsupported_ops == ()
    assert "max abs diff" in exported.summary()
    assert not list(exported.path.parent.glob(".model-*")), "temporary export files left behind"


def test_onnxruntime_matches_torch(exported: ExportReport, extractor: FeatureExtractor) -> None:
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = extractor(images)
    (got,) = session.run(["features"], {"images": images.numpy()})
    assert got.shape == (3, 152, 32, 32) and got.dtype.name == "float32"
    assert float((torch.from_numpy(got) - expected).abs().max()) <= 1e-4


def test_graph_signature_and_metadata(exported: ExportReport) -> None:
    model = onnx.load(str(exported.path))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert out.name == "features" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str) and in_dims[1:] == [3, 256, 256]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["layout"] == "NCHW" and meta["dtype"] == "uint8"
    assert meta["backbone"] == "tf_efficientnet_lite0"
    assert meta["feature_dim"] == "152" and meta["stride"] == "8"
    assert json.loads(meta["input_size"]) == [256, 256]
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert meta["lemo_edge_version"] and meta["pooling"] == "avg3-zero-pad"
    info = read_model_info(exported.path)
    assert info.spec == PACKAGED["tf_efficientnet_lite0"].spec
    assert info.input_size == (256, 256)


def test_cached_file_pooled_the_old_way_is_exported_again(exported: ExportReport, tmp_path: Path) -> None:
    """A cached export of an earlier version (no ``pooling`` metadata: the 3x3 average over valid cells) is
    replaced; one with today's pooling is reused as it is."""
    from lemo_edge.export.onnx import cached_onnx

    first = cached_onnx("tf_efficientnet_lite0", (64, 64), cache_dir=tmp_path)
    assert read_model_info(first).spec.pooling == "avg3-zero-pad"
    stamp = first.stat().st_mtime_ns
    assert cached_onnx("tf_efficientnet_lite0", (64, 64), cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # reused
    old = onnx.load(str(first))
    kept = [p for p in old.metadata_props if p.key != "pooling"]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    onnx.save(old, str(first))
    assert read_model_info(first).spec.pooling == "avg3-valid"
    assert cached_onnx("tf_efficientnet_lite0", (64, 64), cache_dir=tmp_path) == first
    assert read_model_info(first).spec.pooling == "avg3-zero-pad"


def test_graph_uses_only_tensorrt_ops(exported: ExportReport) -> None:
    assert check_tensorrt_ops(exported.path) == []
    supported = load_tensorrt_ops()
    assert {"Conv", "Resize", "AveragePool", "Concat", "Cast"} <= supported
    assert set(exported.op_types) <= supported


def test_broken_op_list_fails_the_export_check(
    exported: ExportReport, extractor: FeatureExtractor, tmp_path: Path
) -> None:
    text = TENSORRT_OPS_FILE.read_text(encoding="utf-8").replace("\nConv\n", "\nCnov\n")
    broken = tmp_path / "ops.txt"
    broken.write_text(text, encoding="utf-8")
    assert check_tensorrt_ops(exported.path, broken) == ["Conv"]
    with pytest.raises(ExportError, match=r"outside the TensorRT 10 list .*\['Conv'\]"):
        verify_onnx(exported.path, extractor, tensorrt_ops=broken)


def test_malformed_op_list_entry_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ops.txt"
    bad.write_text("# header\nConv\nConv2d(\n", encoding="utf-8")
    with pytest.raises(ExportError, match=r"ops.txt:3: expected an ONNX operator name, got 'Conv2d\('"):
        load_tensorrt_ops(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ExportError, match="found none"):
        load_tensorrt_ops(empty)


def test_parity_failure_raises(exported: ExportReport, extractor: FeatureExtractor) -> None:
    with pytest.raises(ExportError, match=r"parity: onnxruntime differs from torch by .* \(expected <= 0e\+00\)"):
        verify_onnx(exported.path, extractor, tolerance=0.0, batch_sizes=(1,))


def test_foreign_domain_and_subgraph_ops_are_reported() -> None:
    h = onnx.helper
    then_graph = h.make_graph(
        [h.make_node("Unique", ["x"], ["u"])], "then", [], [h.make_tensor_value_info("u", onnx.TensorProto.FLOAT, [2])]
    )
    else_graph = h.make_graph(
        [h.make_node("Identity", ["x"], ["v"])],
        "else",
        [],
        [h.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [2])],
    )
    graph = h.make_graph(
        [
            h.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft"),
            h.make_node("If", ["c"], ["z"], then_branch=then_graph, else_branch=else_graph),
        ],
        "g",
        [
            h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
            h.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
        ],
        [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2])],
    )
    model = h.make_model(graph)
    assert check_tensorrt_ops(model) == ["Unique", "com.microsoft::FusedConv"]


def test_bad_arguments_raise_input_error(extractor: FeatureExtractor, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input size: expected positive multiples of 32, got 250"):
        export_onnx(extractor, tmp_path / "m.onnx", size=250)
    with pytest.raises(InputError, match="opset: expected 9..20"):
        export_onnx(extractor, tmp_path / "m.onnx", opset=21)
    with pytest.raises(InputError, match="expected an ONNX file, got"):
        read_model_info(tmp_path / "missing.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_onnx_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lemo_edge.runtime.main import main

    out = tmp_path / "sub" / "model.onnx"
    code = main(["export", "onnx", "--backbone", "tf_efficientnet_lite0", "--size", "256", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert out.is_file()
    assert f"onnx: {out}" in printed
    assert "max abs diff" in printed
    assert "op types supported" in printed and "UNSUPPORTED" not in printed
    assert read_model_info(out).input_size == (256, 256)


def test_cli_export_onnx_bad_size_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lemo_edge.runtime.main import main

    code = main(["export", "onnx", "--size", "250", "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "size: expected H and W positive multiples of 32, got 250\n" in capsys.readouterr().err
    code = main(["export", "onnx", "--size", "250x256", "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "size: expected H and W positive multiples of 32, got 250x256\n" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_onnx_non_square_matches_torch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extractor: FeatureExtractor
) -> None:
    """``--size 64x128`` is H x W: the graph takes (B, 3, 64, 128) and gives (B, 152, 8, 16), as torch does."""
    from lemo_edge.runtime.main import main

    out = tmp_path / "wide.onnx"
    assert main(["export", "onnx", "--size", "64x128", "--out", str(out)]) == 0
    assert "images (B, 3, 64, 128) uint8" in capsys.readouterr().out
    assert read_model_info(out).input_size == (64, 128)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randint(0, 256, (2, 3, 64, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = extractor(images)
    (got,) = session.run(["features"], {"images": images.numpy()})
    assert got.shape == tuple(expected.shape) == (2, 152, 8, 16)
    assert float((torch.from_numpy(got) - expected).abs().max()) <= 1e-4
    with pytest.raises(Exception, match="images"):  # the transposed shape is refused, not silently accepted
        session.run(["features"], {"images": images.transpose(2, 3).contiguous().numpy()})


def test_cached_onnx_is_keyed_by_height_and_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's own naming and lookup; the export itself (tested above) is replaced by a recorder."""
    import lemo_edge.export.onnx as onnx_export

    exported: list[tuple[str, tuple[int, int]]] = []

    def record(extractor: FeatureExtractor, path: Path, size: tuple[int, int], *_args: object, **_kw: object) -> None:
        exported.append((Path(path).name, size))
        stub = onnx.helper.make_model(onnx.helper.make_graph([], "stub", [], []))  # no graph, the metadata only
        onnx.helper.set_model_props(stub, onnx_export.model_metadata(extractor.spec, size))
        onnx.save(stub, str(path))

    monkeypatch.setattr(onnx_export, "export_onnx", record)
    wide = onnx_export.cached_onnx("tf_efficientnet_lite0", (64, 128), cache_dir=tmp_path)
    tall = onnx_export.cached_onnx("tf_efficientnet_lite0", (128, 64), cache_dir=tmp_path)
    assert "-64x128-" in wide.name and "-128x64-" in tall.name and wide.parent == tall.parent == tmp_path / "onnx"
    assert exported == [(wide.name, (64, 128)), (tall.name, (128, 64))]
    assert onnx_export.cached_onnx("tf_efficientnet_lite0", (64, 128), cache_dir=tmp_path) == wide
    assert len(exported) == 2  # found in the cache under its own key: not exported again
