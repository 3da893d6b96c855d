"""Stage timings of one frame without extra host synchronisations.

On CUDA, :class:`StageTimer` records a CUDA event at each mark, so the time of a stage is the time the
device spent between two marks, not the time the host took to enqueue it (the host runs ahead of the
device: timing with ``perf_counter`` alone bills the backbone's kernels to whichever stage first waits
on the device). The events are read by :meth:`StageTimer.elapsed_ms` after the frame's one host
synchronisation. On the CPU the marks are ``time.perf_counter`` readings.
"""

from __future__ import annotations

import time

import torch


class StageTimer:
    """Marks between the stages of one frame; durations in milliseconds.

    Args:
        device: where the stages run; CUDA events are used on a CUDA device.
        profile: synchronise the device at every mark (exact host-side stage times; slower).
    """

    def __init__(self, device: torch.device | str = "cpu", profile: bool = False) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.profile = profile
        self._names: list[str] = []
        self._marks: list[float | torch.cuda.Event] = []
        self.start()

    def start(self) -> None:
        """Forget earlier marks and start timing from now."""
        self._names = []
        self._marks = [self._now()]

    def _now(self) -> float | torch.cuda.Event:
        if self.cuda:
            if self.profile:
                torch.cuda.synchronize(self.device)
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def mark(self, name: str) -> None:
        """End the stage ``name`` (it began at the previous mark)."""
        self._names.append(name)
        self._marks.append(self._now())

    def elapsed_ms(self) -> dict[str, float]:
        """``{stage: ms}`` of every mark so far; on CUDA waits for the last mark's event."""
        out: dict[str, float] = {}
        if self.cuda:
            last = self._marks[-1]
            assert isinstance(last, torch.cuda.Event)
            last.synchronize()
        for name, begin, end in zip(self._names, self._marks[:-1], self._marks[1:], strict=True):
            if isinstance(begin, float) and isinstance(end, float):
                out[name] = out.get(name, 0.0) + 1e3 * (end - begin)
            else:
                assert isinstance(begin, torch.cuda.Event) and isinstance(end, torch.cuda.Event)
                out[name] = out.get(name, 0.0) + float(begin.elapsed_time(end))
        return out
