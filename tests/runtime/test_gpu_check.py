"""benchmarks/gpu_check.sh on a machine without a GPU: one line, exit 2; its source-tree environment works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=full, cwd=cwd, check=False
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpu_check: no NVIDIA GPU visible here (torch ") and "this check needs one" in lines[0]
    assert not out.exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="the repo's .venv would find the GPU and run the check")
def test_without_torch_it_exits_2_with_the_reason(tmp_path: Path) -> None:
    fake = tmp_path / "python-without-torch"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    path = f"{tmp_path}:/usr/bin:/bin"  # no python3 with torch on PATH (the repo's .venv may still have one)
    proc = _run(str(tmp_path / "out"), env={"PYTHON": str(fake), "PATH": path})
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("gpu_check: no ")


def test_usage_errors_exit_64() -> None:
    for args in ((), ("a", "b"), ("--bogus",), ("--env",)):
        proc = _run(*args)
        assert proc.returncode == 64 and "bash benchmarks/gpu_check.sh OUT" in proc.stderr, args


def test_source_tree_environment_maps_runtime_and_export(tmp_path: Path) -> None:
    """What the GPU machine gets: no install; ``python -S`` (no .pth files, so no editable install) with only
    the shim and the interpreter's site-packages on the path, from a folder outside the repository."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    proc = _run("--env", str(tmp_path / "env"), env={"LEMO_WHEELS": str(wheels)})
    assert proc.returncode == 0, proc.stderr
    pythonpath = proc.stdout.strip().splitlines()[-1]
    assert pythonpath == f"{tmp_path / 'env' / 'shim'}:{tmp_path / 'env' / 'site'}"
    code = (
        "import lemo_edge, lemo_edge.runtime.scorers as s, lemo_edge.export.onnx as o, lemo_edge.runtime.bench as b\n"
        "import lemo_edge.scoring\n"
        "print(lemo_edge.scoring.__file__); print(s.__file__); print(o.__file__); print(b.__file__)\n"
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{pythonpath}:{sysconfig.get_paths()['purelib']}"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    files = [Path(line).resolve() for line in done.stdout.splitlines()]
    assert files == [
        REPO / "lemo_edge" / "scoring.py",
        REPO / "runtime" / "scorers.py",
        REPO / "export" / "onnx.py",
        REPO / "runtime" / "bench" / "__init__.py",
    ]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_script_passes_shellcheck() -> None:
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout
