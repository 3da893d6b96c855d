"""Where lemo-edge keeps derived artifacts (exported ONNX models, TensorRT engines, compiled kernels).

The root is :func:`lemo_edge.utils.default_cache_dir` (``$LEMO_EDGE_CACHE``, else ``$XDG_CACHE_HOME/lemo-edge``,
else ``~/.cache/lemo-edge``; never the current directory); the names are re-exported here for the export step
and the runtime backends. Every file below it is named by everything that invalidates it.
"""

from __future__ import annotations

from lemo_edge.utils import CACHE_ENV, cache_subdir, default_cache_dir
from lemo_edge.utils import package_version as _package_version

__all__ = ["CACHE_ENV", "cache_subdir", "default_cache_dir", "package_version"]


def package_version() -> str:
    """Return the installed lemo-edge version (``"unknown"`` when running from an uninstalled tree)."""
    return _package_version("lemo-edge") or "unknown"
