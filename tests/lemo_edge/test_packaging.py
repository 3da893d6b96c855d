"""Packaging: export/ and runtime/ install as lemo_edge.export and lemo_edge.runtime (wheel and editable)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools to build the wheel")
def test_wheel_nests_export_and_runtime_and_imports(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    wheel = next(tmp_path.glob("lemo_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for required in (
        "lemo_edge/export/onnx.py",
        "lemo_edge/export/tensorrt_supported_ops.txt",
        "lemo_edge/runtime/loop.py",
        "lemo_edge/runtime/kernels/nearest_memory.cu",
    ):
        assert required in names, required
    assert not any(n.split("/")[0] in ("export", "runtime", "tests", "benchmarks") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import lemo_edge.export.onnx, lemo_edge.runtime.loop, lemo_edge.runtime.kernels; print(lemo_edge.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().startswith(str(site))


def test_editable_install_imports_nested_packages(tmp_path):
    code = "import lemo_edge.export.onnx as o, lemo_edge.runtime.loop as l; print(o.__file__); print(l.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    onnx_file, loop_file = out.stdout.split()
    assert Path(onnx_file) == REPO / "export" / "onnx.py"
    assert Path(loop_file) == REPO / "runtime" / "loop.py"
