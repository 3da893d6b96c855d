"""lemo_edge.utils: atomic writes, the file lock, the cache folder, json_safe and package versions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

from lemo_edge import utils
from lemo_edge.utils import (
    FileLock,
    LockHeldError,
    cache_subdir,
    default_cache_dir,
    json_safe,
    package_version,
    versions,
    write_atomic,
)

# -- write_atomic -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", [True, False])
def test_write_atomic_writes_and_replaces(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "sub" / "f.bin"  # the folder is created
    write_atomic(path, b"first", fsync=fsync)
    write_atomic(path, b"second", fsync=fsync)
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]  # no temporary file left


def test_an_interrupted_write_leaves_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"old")

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # as if the process were interrupted between the write and the rename

    monkeypatch.setattr(utils.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, b"new, never visible")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_write_that_fails_midway_leaves_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_killed_writer_never_leaves_a_partial_file(tmp_path: Path) -> None:
    """A process killed (SIGKILL) while rewriting a file in a loop leaves one complete version, never a mix."""
    path = tmp_path / "f.bin"
    code = (
        "import sys\nfrom pathlib import Path\nfrom lemo_edge.utils import write_atomic\n"
        "path = Path(sys.argv[1])\nprint('ready', flush=True)\n"
        "i = 0\nwhile True:\n    i += 1\n    write_atomic(path, bytes([i % 256]) * 1_000_000, fsync=False)\n"
    )
    write_atomic(path, b"\x00" * 1_000_000)
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for _ in range(20):
            data = path.read_bytes()
            assert len(data) == 1_000_000 and data == data[:1] * len(data)
    finally:
        proc.kill()
        proc.wait()
    data = path.read_bytes()
    assert len(data) == 1_000_000 and data == data[:1] * len(data)


# -- FileLock ---------------------------------------------------------------------------------------------------------


def test_lock_excludes_a_second_holder_in_this_process(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / ".lock")
    assert lock.held
    with pytest.raises(
        LockHeldError, match=rf"lock: expected .*\.lock to be free, got it held by .*pid {os.getpid()}\)"
    ):
        FileLock(tmp_path / ".lock")
    lock.release()
    lock.release()  # idempotent
    assert not lock.held
    with FileLock(tmp_path / ".lock") as again:
        assert again.held
    assert not again.held


def test_lock_excludes_another_process_until_it_dies(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    code = (
        "import sys, time\nfrom lemo_edge.utils import FileLock\n"
        "lock = FileLock(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeldError) as info:
            FileLock(path)
        assert info.value.holder == str(proc.pid) and info.value.path == path
    finally:
        proc.kill()  # the kernel releases the lock of a killed process
        proc.wait()
    with FileLock(path) as lock:
        assert lock.held
        assert path.read_text().strip() == str(os.getpid())


def test_lock_in_a_missing_folder_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        FileLock(tmp_path / "missing" / ".lock")


# -- cache folder -----------------------------------------------------------------------------------------------------


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LEMO_EDGE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lemo-edge"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lemo-edge"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: relative paths are ignored
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lemo-edge"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LEMO_EDGE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert not (tmp_path / "mine").exists()  # not created by asking


def test_cache_subdir_is_created_below_the_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LEMO_EDGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_subdir("onnx") == tmp_path / "xdg" / "lemo-edge" / "onnx"
    assert (tmp_path / "xdg" / "lemo-edge" / "onnx").is_dir()
    assert cache_subdir("engines", tmp_path / "explicit") == tmp_path / "explicit" / "engines"


def test_export_cache_uses_the_same_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lemo_edge.export import cache

    monkeypatch.delenv("LEMO_EDGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path / "lemo-edge"
    assert cache.package_version() == (package_version("lemo-edge") or "unknown")


# -- json_safe --------------------------------------------------------------------------------------------------------


def test_json_safe_makes_standard_json() -> None:
    value = {
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "f": 1.5,
        1: "int key",
        "np": [np.float32(0.25), np.int64(3), np.bool_(True), np.float64("nan"), np.array([[1, 2], [3, 4]])],
        "np_nan": np.array([1.0, np.inf, np.nan], np.float32),
        "path": Path("/tmp/x"),
        "pure": PurePosixPath("a/b"),
        "tuple": (1, (2, None)),
        "set": {7},
        "tensor": torch.tensor([0.5, float("nan")]),
        "scalar": torch.tensor(2),
        "nested": {"deep": [{"x": math.nan}]},
        "keep": [None, True, False, "s", 0],
    }
    safe = json_safe(value)
    assert safe == {
        "nan": None,
        "inf": None,
        "-inf": None,
        "f": 1.5,
        "1": "int key",
        "np": [0.25, 3, True, None, [[1, 2], [3, 4]]],
        "np_nan": [1.0, None, None],
        "path": "/tmp/x",
        "pure": "a/b",
        "tuple": [1, [2, None]],
        "set": [7],
        "tensor": [0.5, None],
        "scalar": 2,
        "nested": {"deep": [{"x": None}]},
        "keep": [None, True, False, "s", 0],
    }
    assert type(safe["np"][1]) is int and type(safe["np"][2]) is bool
    json.dumps(safe, allow_nan=False)  # standard JSON: would raise on NaN
    assert value["nan"] is not None and isinstance(value["np"][4], np.ndarray)  # the input is not modified


# -- versions ---------------------------------------------------------------------------------------------------------


def test_versions() -> None:
    assert package_version("numpy") == np.__version__
    assert package_version("surely-not-an-installed-package") is None
    assert versions(["numpy", "surely-not-an-installed-package"]) == {
        "numpy": np.__version__,
        "surely-not-an-installed-package": None,
    }
