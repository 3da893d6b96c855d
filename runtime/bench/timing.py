"""Timing primitives of the benchmark: latency statistics, timed stage chains and interleaved contenders.

Every function here is pure: the clock and the device synchronisation are arguments, so the tests drive
them with fake clocks. On CUDA the synchronisation (:func:`device_sync`) runs after every stage, before
the clock is read.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from lemo_edge.errors import InputError

STAGES: tuple[str, ...] = ("preprocess", "backbone", "score", "map", "update")
"""Stages of one frame, in order; ``score``, ``map`` and ``update`` are the parts of the Inspector's step
(:attr:`lemo_edge.inspector.FrameOutcome.timings_ms`): ``score`` is the adapter and the nearest memory."""

FRAME = "frame"
"""Key of the whole frame (first stage's start to last stage's end) in timing results."""

PERCENTILES: tuple[int, ...] = (50, 90, 99)


# -- statistics -------------------------------------------------------------------------------------------------------


def summarize(values_ms: Sequence[float]) -> dict[str, float]:
    """Percentiles (linear interpolation), mean, min, max and count of latencies.

    Args:
        values_ms: ``(n,)`` latencies in milliseconds, n >= 1.

    Returns:
        ``{"p50", "p90", "p99", "mean", "min", "max", "n"}``.

    Raises:
        InputError: no values.
    """
    values = np.asarray(values_ms, dtype=np.float64).ravel()
    if values.size == 0:
        raise InputError("summarize: expected at least one latency, got none")
    pcts = np.percentile(values, PERCENTILES)
    out = {f"p{p}": float(v) for p, v in zip(PERCENTILES, pcts, strict=True)}
    out.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()), n=int(values.size))
    return out


def ratio(slow_ms: Sequence[float], fast_ms: Sequence[float]) -> dict[str, float | int]:
    """How many times slower ``slow`` is than ``fast``: ratio of their medians, and the median of paired ratios.

    Args:
        slow_ms: latencies of the contender in the numerator.
        fast_ms: latencies of the contender in the denominator (paired by iteration when of equal length).

    Returns:
        ``{"value": p50(slow) / p50(fast), "paired_median": median(slow_i / fast_i) (NaN unless paired),
        "numerator_p50_ms", "denominator_p50_ms", "n"}``.

    Raises:
        InputError: either list is empty or the denominator's median is not positive.
    """
    if not len(slow_ms) or not len(fast_ms):
        raise InputError(f"ratio: expected latencies on both sides, got {len(slow_ms)} and {len(fast_ms)}")
    num, den = statistics.median(slow_ms), statistics.median(fast_ms)
    if not den > 0:
        raise InputError(f"ratio: expected a positive denominator median, got {den}")
    paired = math.nan
    if len(slow_ms) == len(fast_ms) and all(f > 0 for f in fast_ms):
        paired = statistics.median(s / f for s, f in zip(slow_ms, fast_ms, strict=True))
    return {
        "value": num / den,
        "paired_median": paired,
        "numerator_p50_ms": num,
        "denominator_p50_ms": den,
        "n": min(len(slow_ms), len(fast_ms)),
    }


# -- timing -----------------------------------------------------------------------------------------------------------

Stage = tuple[str, Callable[[Any], Any]]
"""A named step of a pipeline: it takes the previous step's output (the first step: the iteration index)."""

Clock = Callable[[], float]
Sync = Callable[[], None] | None


class Timed(NamedTuple):
    """What a stage returns when it times its own parts (e.g. the ``timings_ms`` of an Inspector step).

    :func:`run_stages` passes :attr:`value` on to the next stage and records :attr:`parts_ms` in place of
    the stage's own name; the whole frame (:data:`FRAME`) is still read from the clock.

    Attributes:
        value: the input of the next stage.
        parts_ms: ``{part: ms}``, e.g. ``{"score": 1.2, "map": 0.3, "update": 2.0}``.
    """

    value: Any
    parts_ms: Mapping[str, float]


def run_stages(
    stages: Sequence[Stage], arg: Any, sync: Sync = None, clock: Clock = time.perf_counter
) -> dict[str, float]:
    """Run ``stages`` once as a chain and time each one.

    Args:
        stages: ``[(name, fn)]``; each ``fn`` receives the previous output, the first one ``arg``. A stage
            returning :class:`Timed` is recorded as its parts instead of its name.
        arg: input of the first stage (the iteration index in this module).
        sync: called after every stage, before the clock is read (``torch.cuda.synchronize`` on CUDA).
        clock: seconds, monotonic.

    Returns:
        ``{name: ms}`` per stage (or per part of a :class:`Timed` stage) and :data:`FRAME`: the whole chain.
    """
    times: dict[str, float] = {}
    start = last = clock()
    value = arg
    for name, fn in stages:
        value = fn(value)
        if sync is not None:
            sync()
        now = clock()
        if isinstance(value, Timed):
            for part, ms in value.parts_ms.items():
                times[part] = times.get(part, 0.0) + float(ms)
            value = value.value
        else:
            times[name] = times.get(name, 0.0) + 1e3 * (now - last)
        last = now
    times[FRAME] = 1e3 * (last - start)
    return times


def measure_stages(
    stages: Sequence[Stage],
    *,
    warmup: int,
    iters: int,
    sync: Sync = None,
    clock: Clock = time.perf_counter,
    budget_s: float | None = None,
    min_iters: int = 3,
) -> dict[str, list[float]]:
    """Time ``stages`` over ``warmup + iters`` iterations; the warm-up is run but not recorded.

    Iteration ``i`` (warm-up included, from 0) passes ``i`` to the first stage.

    Args:
        stages: the pipeline (see :func:`run_stages`).
        warmup: iterations run first and discarded (first calls allocate, compile, fill caches).
        iters: iterations recorded.
        sync: device synchronisation before each clock read.
        clock: seconds, monotonic.
        budget_s: stop recording once this many seconds were spent on recorded iterations, after at
            least ``min_iters`` of them (None: always ``iters``).
        min_iters: the fewest recorded iterations when a budget ends the measurement.

    Returns:
        ``{stage: [ms, ...]}`` and :data:`FRAME`, one entry per recorded iteration.

    Raises:
        InputError: a negative warm-up or fewer than one iteration.
    """
    if warmup < 0 or iters < 1:
        raise InputError(f"measure: expected warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    for i in range(warmup):
        run_stages(stages, i, sync, clock)
    out: dict[str, list[float]] = {}
    t0 = clock()
    for j in range(iters):
        for name, value in run_stages(stages, warmup + j, sync, clock).items():
            out.setdefault(name, []).append(value)
        if budget_s is not None and j + 1 >= min_iters and clock() - t0 > budget_s:
            break
    return out


def interleave(
    contenders: Mapping[str, Sequence[Stage]],
    *,
    warmup: int,
    iters: int,
    sync: Sync = None,
    clock: Clock = time.perf_counter,
) -> dict[str, dict[str, list[float]]]:
    """Time several pipelines side by side, alternating their order every iteration.

    Iteration ``i`` runs every contender once, starting with contender ``i mod n`` (for two: A B, B A,
    A B, ...), each receiving ``i``, so slow drift (thermal, other processes) affects all alike.

    Args:
        contenders: ``{name: stages}``.
        warmup: iterations run first and discarded.
        iters: iterations recorded.
        sync: device synchronisation before each clock read.
        clock: seconds, monotonic.

    Returns:
        ``{name: {stage: [ms, ...], FRAME: [...]}}``, lists paired by iteration.

    Raises:
        InputError: no contenders, a negative warm-up or fewer than one iteration.
    """
    if not contenders:
        raise InputError("interleave: expected at least one contender, got none")
    if warmup < 0 or iters < 1:
        raise InputError(f"interleave: expected warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    names = list(contenders)
    out: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for i in range(warmup + iters):
        r = i % len(names)
        for name in names[r:] + names[:r]:
            times = run_stages(contenders[name], i, sync, clock)
            if i >= warmup:
                for stage, value in times.items():
                    out[name].setdefault(stage, []).append(value)
    return out


def device_sync(device: torch.device) -> Sync:
    """The synchronisation to pass to the timers: ``torch.cuda.synchronize`` on CUDA, None (nothing) on CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None
