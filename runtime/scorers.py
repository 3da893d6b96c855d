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
from lemo_edge.runtime.kernels.loader import MAX_K, KernelCompileError, KernelLaunchError, kernel_status, load_kernel
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
    """:func:`lemo_edge.scoring.nearest_memory` (the reference), on any device, any ``k``.

    A memory with fewer than ``k`` items is scored with all of them (as :meth:`LemoModel.score` does).
    """

    name = "torch"

    def __init__(self, k: int = 1) -> None:
        if k < 1:
            raise InputError(f"torch scorer: expected k >= 1, got {k}")
        self.k = k

    def __call__(self, z: torch.Tensor, memory: torch.Tensor) -> Nearest:
        """``z (N, D)``, ``memory (K, D)`` -> ``Nearest(score (N,) float32, index (N,) int64)`` on ``z``'s device."""
        return nearest_memory(z, memory, max(1, min(self.k, memory.shape[0])))


class CudaMemoryScorer:
    """The nearest-memory CUDA kernel (``kernels/nearest_memory.cu``): :func:`~lemo_edge.scoring.nearest_memory`
    for ``k`` up to 8, float32 or float16 inputs (float32 accumulation).

    The kernel is compiled (cached on disk) and loaded when the scorer is created, not on the first frame.
    Calls are asynchronous on torch's current stream; outputs are new tensors. A memory with fewer than ``k``
    items is scored with all of them, as the reference is called by :meth:`LemoModel.score`.

    Args:
        device: a CUDA device (default: torch's current one).
        k: nearest items averaged into the score (``1 <= k <= 8``).
        launcher: ``auto``/``driver`` (CUDA driver API, on torch's stream) or ``pycuda``.
        synchronize: wait for and check each call (tests and debugging; adds a host synchronisation).
    """

    name = "cuda"

    def __init__(
        self,
        device: torch.device | str | None = None,
        k: int = 1,
        *,
        launcher: str = "auto",
        synchronize: bool = False,
    ) -> None:
        if not 1 <= k <= MAX_K:
            raise InputError(f"cuda scorer: expected 1 <= k <= {MAX_K}, got k={k}")
        if not torch.cuda.is_available():
            raise BackendUnavailableError("cuda scorer: no CUDA GPU visible to torch")
        dev = torch.device(device or "cuda")
        if dev.type != "cuda":
            raise InputError(f"cuda scorer: expected a CUDA device, got {str(dev)!r}")
        self.device = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
        self.k = k
        self.synchronize = synchronize
        self._kernel = load_kernel(self.device, launcher=launcher)
        self.launcher = self._kernel.launcher

    def __call__(self, z: torch.Tensor, memory: torch.Tensor) -> Nearest:
        """Score patch embeddings.

        Args:
            z: ``(N, D)`` float32 or float16 cuda.
            memory: ``(K, D)``, same dtype and device.

        Returns:
            ``Nearest(score (N,) float32, index (N,) int64, distance (N,) float32 or None)`` on the device:
            ``distance`` is set when ``min(k, K) > 1``, like the reference.

        Raises:
            InputError: wrong shapes, dtypes or devices.
            KernelLaunchError: a launch failed (names the kernel and the shapes).
        """
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
        items = memory.shape[0]
        if items < 1 or d < 1 or max(n, items, d) > _INT32_MAX:
            raise InputError(f"cuda scorer: expected 1 <= K, D and N, K, D < 2^31, got N={n} K={items} D={d}")
        k = min(self.k, items)
        score = torch.empty(n, dtype=torch.float32, device=self.device)
        index = torch.empty(n, dtype=torch.int64, device=self.device)
        distance = torch.empty(n, dtype=torch.float32, device=self.device) if k > 1 else None
        if n:
            self._kernel(z.contiguous(), memory.contiguous(), k, score, index, distance, synchronize=self.synchronize)
        return Nearest(score, index, distance)


SCORERS: dict[str, Callable[..., Scorer]] = {"torch": TorchMemoryScorer, "cuda": CudaMemoryScorer}


def create_scorer(name: str, **kwargs: object) -> Scorer:
    """Create a scorer by registry name (``torch``: ``k=``; ``cuda``: ``device=``, ``k=``, ``launcher=``).

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

    ``auto`` takes the CUDA kernel when ``k <= 8``, ``device`` is CUDA (or unset with a GPU present) and the
    kernel compiles and loads; otherwise the torch reference, logging why. Both average ``k`` nearest items.

    Returns:
        ``(scorer, reason)``; the scorer's ``k`` attribute is ``k``.

    Raises:
        ValueError: an unknown preference (lists the valid ones), or ``cuda`` with ``k`` outside 1..8.
    """
    if preference not in PREFERENCES:
        raise InputError(f"scorer: expected one of {list(PREFERENCES)}, got {preference!r}")
    if preference == "torch":
        return TorchMemoryScorer(k), "torch requested"
    if preference == "cuda":
        if not 1 <= k <= MAX_K:
            raise InputError(f"cuda scorer: the kernel supports 1 <= k <= {MAX_K}, got k={k}")
        scorer = CudaMemoryScorer(device, k)
        return scorer, f"cuda requested ({scorer.device}, k={k})"
    why_not = None
    if not 1 <= k <= MAX_K:
        why_not = f"k={k}: the CUDA kernel supports 1 <= k <= {MAX_K}"
    elif device is not None and torch.device(device).type != "cuda":
        why_not = f"device {device} is not CUDA"
    elif not torch.cuda.is_available():
        why_not = "no CUDA GPU visible to torch"
    if why_not is None:
        try:
            scorer = CudaMemoryScorer(device, k)
        except (MissingDependencyError, BackendUnavailableError, KernelCompileError, KernelLaunchError) as err:
            why_not = str(err)
            log.warning("scorer: CUDA kernel unavailable (%s); using the torch reference", why_not)
        else:
            reason = f"CUDA kernel on {torch.cuda.get_device_name(scorer.device)} (k={k})"
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
