"""Nearest-memory scorers: the torch reference and the CUDA kernel, behind one :class:`Scorer` protocol.

:func:`select_scorer` picks one the way faiss picks its fast paths: the CUDA kernel when it can load
here, otherwise the torch reference, and it logs and returns why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch

from lemo_edge.errors import BackendUnavailableError, InputError, MissingDependencyError, describe
from lemo_edge.runtime.kernels.loader import KernelCompileError, kernel_status, load_kernel
from lemo_edge.runtime.protocols import Scorer
from lemo_edge.scoring import Nearest, nearest_memory

log = logging.getLogger(__name__)

PREFERENCES = ("auto", "torch", "cuda")
_INT32_MAX = 2**31 - 1


class ScorerStatus(NamedTuple):
    """One line of ``lemo-edge info``: can this scorer run here, and why (not)."""

    name: str
    available: bool
    reason: str


class TorchMemoryScorer:
    """:func:`lemo_edge.scoring.nearest_memory` (the reference), on any device, any ``k``."""

    name = "torch"

    def __init__(self, k: int = 1) -> None:
        if k < 1:
            raise InputError(f"torch scorer: expected k >= 1, got {k}")
        self.k = k

    def __call__(self, z: torch.Tensor, memory: torch.Tensor) -> Nearest:
        """``z (N, D)``, ``memory (K, D)`` -> ``Nearest(score (N,) float32, index (N,) int64)`` on ``z``'s device."""
        return nearest_memory(z, memory, self.k)


class CudaMemoryScorer:
    """The one-pass CUDA kernel (``kernels/nearest_memory.cu``): k = 1 only, float32 or float16 inputs.

    The kernel is compiled (cached on disk) and loaded when the scorer is created, not on the first
    frame. Calls are asynchronous on torch's current stream; outputs are new tensors.
    """

    name = "cuda"

    def __init__(self, device: torch.device | str | None = None) -> None:
        if not torch.cuda.is_available():
            raise BackendUnavailableError("cuda scorer: no CUDA GPU visible to torch")
        dev = torch.device(device or "cuda")
        if dev.type != "cuda":
            raise InputError(f"cuda scorer: expected a CUDA device, got {str(dev)!r}")
        self.device = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
        self._kernel = load_kernel(self.device)

    def __call__(self, z: torch.Tensor, memory: torch.Tensor) -> Nearest:
        """``z (N, D)``, ``memory (K, D)`` float32/float16 cuda -> ``Nearest(score (N,) float32, index (N,) int64)``."""
        if (
            z.ndim != 2
            or memory.ndim != 2
            or z.shape[1] != memory.shape[1]
            or z.dtype != memory.dtype
            or z.dtype not in (torch.float32, torch.float16)
        ):
            raise InputError(
                "cuda scorer: expected z (N, D) and memory (K, D), both float32 or both float16, "
                f"got {describe(z)} and {describe(memory)}"
            )
        if z.device != self.device or memory.device != self.device:
            raise InputError(f"cuda scorer: expected tensors on {self.device}, got {z.device} and {memory.device}")
        n, d = z.shape
        k = memory.shape[0]
        if k < 1 or d < 1 or max(n, k, d) > _INT32_MAX:
            raise InputError(f"cuda scorer: expected 1 <= K, D and N, K, D < 2^31, got N={n} K={k} D={d}")
        score = torch.empty(n, dtype=torch.float32, device=self.device)
        index = torch.empty(n, dtype=torch.int64, device=self.device)
        if n:
            self._kernel(z.contiguous(), memory.contiguous(), score, index)
        return Nearest(score, index)


SCORERS: dict[str, Callable[..., Scorer]] = {"torch": TorchMemoryScorer, "cuda": CudaMemoryScorer}


def create_scorer(name: str, **kwargs: object) -> Scorer:
    """Create a scorer by registry name (``torch``: ``k=``; ``cuda``: ``device=``).

    Raises:
        ValueError: an unknown name (:class:`~lemo_edge.errors.InputError`, listing the valid ones).
    """
    try:
        factory = SCORERS[name]
    except KeyError:
        raise InputError(f"scorer: expected one of {sorted(SCORERS)}, got {name!r}") from None
    return factory(**kwargs)


def select_scorer(
    preference: str = "auto", *, device: torch.device | str | None = None, k: int = 1
) -> tuple[Scorer, str]:
    """Pick a scorer: ``torch``, ``cuda`` (failing loudly if it cannot load) or ``auto``.

    ``auto`` takes the CUDA kernel when ``k == 1``, ``device`` is CUDA (or unset with a GPU present)
    and the kernel loads; otherwise the torch reference, logging why.

    Returns:
        ``(scorer, reason)``.

    Raises:
        ValueError: an unknown preference (lists the valid ones), or ``cuda`` with ``k != 1``.
    """
    if preference not in PREFERENCES:
        raise InputError(f"scorer: expected one of {list(PREFERENCES)}, got {preference!r}")
    if preference == "torch":
        return TorchMemoryScorer(k), "torch requested"
    if preference == "cuda":
        if k != 1:
            raise InputError(f"cuda scorer: the kernel supports k=1 only, got k={k}")
        scorer = CudaMemoryScorer(device)
        return scorer, f"cuda requested ({scorer.device})"
    why_not = None
    if k != 1:
        why_not = f"k={k}: the CUDA kernel supports k=1 only"
    elif device is not None and torch.device(device).type != "cuda":
        why_not = f"device {device} is not CUDA"
    elif not torch.cuda.is_available():
        why_not = "no CUDA GPU visible to torch"
    if why_not is None:
        try:
            scorer = CudaMemoryScorer(device)
        except (MissingDependencyError, BackendUnavailableError, KernelCompileError) as err:
            why_not = str(err)
            log.warning("scorer: CUDA kernel unavailable (%s); using the torch reference", why_not)
        else:
            reason = f"CUDA kernel on {torch.cuda.get_device_name(scorer.device)}"
            log.info("scorer: %s", reason)
            return scorer, reason
    else:
        log.info("scorer: torch reference (%s)", why_not)
    return TorchMemoryScorer(k), f"torch reference: {why_not}"


def scorer_status() -> list[ScorerStatus]:
    """Which scorers can run here and why not (for ``lemo-edge info``); compiles nothing."""
    available, reason = kernel_status()
    return [
        ScorerStatus("torch", True, "reference, any device, any k"),
        ScorerStatus("cuda", available, reason if available else f"unavailable: {reason}"),
    ]
