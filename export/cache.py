"""Where lemo-edge keeps derived artifacts (exported ONNX models, TensorRT engines, compiled kernels).

The root is ``$LEMO_EDGE_CACHE`` when set, else ``~/.cache/lemo-edge``; never the current directory.
Every file below it is named by everything that invalidates it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LEMO_EDGE_CACHE"


def default_cache_dir() -> Path:
    """Return the cache root (not created here): ``$LEMO_EDGE_CACHE`` or ``~/.cache/lemo-edge``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lemo-edge"


def cache_subdir(name: str, root: str | Path | None = None) -> Path:
    """Return (and create) ``<root>/<name>``, ``root`` defaulting to :func:`default_cache_dir`."""
    path = (Path(root).expanduser() if root is not None else default_cache_dir()) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_version() -> str:
    """Return the installed lemo-edge version (``"unknown"`` when running from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lemo-edge")
    except PackageNotFoundError:
        return "unknown"
