"""Typed errors of the export step."""

from __future__ import annotations

from lemo_edge.errors import LemoError


class ExportError(LemoError):
    """An export produced a model that fails a check (checker, parity, TensorRT operator support, build)."""


class EngineCacheError(ExportError):
    """A cached TensorRT engine was made for another model, library, GPU, precision or profile."""
