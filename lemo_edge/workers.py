"""Worker threads for the CPU hot path: independent slices of one computation run side by side.

Torch runs one intra-op thread in ``lemo-edge run`` (the capture thread needs the other core, and OpenMP teams
busy-wait under load, ``lemo_edge.runtime.cli.default_threads``). The large products of a frame's search and of
the memory's merges still split into independent row slices; :func:`run_slices` runs them on a small pool of
Python threads, each running its torch ops on one core (the ops release the GIL). Measured on the reference 2-core
machine: a frame's search 0.6 of its one-thread time when the machine is quiet, 1.05 when another process holds
one core (docs/method.md section 7).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


@functools.cache
def physical_cores() -> int:
    """Physical CPU cores usable by this process (hyper-threads not counted; CPU affinity at the first call
    respected). Read once: the merges ask for it on the hot path."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        physical = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(usable, len(cores))) if cores else max(1, usable)


def default_workers() -> int:
    """Slices run side by side by default: the physical cores, at most 4."""
    return min(4, physical_cores())


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads, each running torch ops on one intra-op thread (a forked child gets
    its own: it inherits the parent's pool object but not its threads)."""
    return _pool_of(workers, os.getpid())


@functools.lru_cache(maxsize=4)
def _pool_of(workers: int, pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="lemo", initializer=torch.set_num_threads, initargs=(1,))


def slice_bounds(count: int, slices: int) -> list[tuple[int, int]]:
    """``slices`` contiguous ``(start, stop)`` ranges of nearly equal size covering ``range(count)``."""
    return [(count * i // slices, count * (i + 1) // slices) for i in range(slices)]


def run_slices(fn: Callable[[int, int], T], count: int, workers: int, min_rows: int = 1) -> list[T]:
    """``[fn(start, stop)]`` over up to ``workers`` slices of ``range(count)``, in order.

    The first slice runs on the calling thread, the others on the pool. It splits only when torch runs one
    intra-op thread (otherwise torch's own threads already share the cores) and each slice gets at least
    ``min_rows`` rows; ``fn`` must only read shared tensors (each slice returns its own results).
    """
    slices = min(workers, count // max(1, min_rows)) if torch.get_num_threads() == 1 else 1
    if slices <= 1:
        return [fn(0, count)]
    bounds = slice_bounds(count, slices)
    pending = [_pool(slices - 1).submit(fn, start, stop) for start, stop in bounds[1:]]
    first = fn(*bounds[0])
    return [first] + [future.result() for future in pending]
