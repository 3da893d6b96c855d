"""Typed errors raised at the package's public boundaries.

Every message says what was expected and what came, e.g.
``frame: expected (H, W, 3) uint8, got (480, 640) float32``.
"""

from __future__ import annotations


class LemoError(Exception):
    """Base class of every error lemo-edge raises on purpose."""


class InputError(LemoError, ValueError):
    """An argument, frame or tensor does not have the expected shape, dtype or value."""


class DatasetError(LemoError, ValueError):
    """A dataset, manifest or image file is missing, unreadable or malformed."""


class StateError(LemoError, ValueError):
    """A saved state is missing, corrupt, of another version or made for another model."""


class MissingDependencyError(LemoError, ImportError):
    """An optional library is not installed; the message carries the install hint."""

    def __init__(self, package: str, hint: str, reason: str = "") -> None:
        self.package = package
        self.hint = hint
        detail = f" ({reason})" if reason else ""
        super().__init__(f"{package} is not available{detail}; install it with: {hint}")


class BackendUnavailableError(LemoError, RuntimeError):
    """A backend or scorer exists but cannot run here (no GPU, wrong library version, ...)."""


def describe(value: object) -> str:
    """Return a short ``shape dtype`` description of an array-like for error messages."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None:
        return type(value).__name__
    return f"{tuple(shape)} {str(dtype).replace('torch.', '')}"


class SourceError(LemoError, RuntimeError):
    """A frame source (camera, stream, file, folder) cannot be opened at all or failed unrecoverably."""
