"""Clean stops: a thread- and signal-safe stop flag, and SIGINT/SIGTERM turned into a stop request.

The loop checks the flag between frames, so a stop finishes the current frame, saves the state and returns the
run's summary; a second signal aborts at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

log = logging.getLogger(__name__)


class StopFlag:
    """A thread- and signal-safe request to stop, with its reason (the first one wins)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        """Request a stop; later requests keep the first reason."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Within the block, SIGINT/SIGTERM set ``flag`` (a second one raises KeyboardInterrupt); handlers restored after.

    Outside the main thread signals cannot be handled; the block then only yields the flag.
    """
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if flag.is_set():
            raise KeyboardInterrupt(f"second stop signal ({name})")
        log.warning("%s received: stopping after the current frame (send it again to abort now)", name)
        flag.set(f"signal {name}")

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
