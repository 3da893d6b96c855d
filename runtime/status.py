"""The run's status line: rewritten in place on a terminal, plain lines every N frames elsewhere (logs, journald)."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class StatusLine:
    """One status line on a terminal, refreshed at most every ``interval_s``; plain lines every ``every`` frames else.

    Args:
        stream: where to write (the CLI passes ``sys.stderr``).
        tty: whether ``stream`` is a terminal (default: ``stream.isatty()``).
        interval_s: smallest time between refreshes on a terminal.
        every: frames between plain lines when not a terminal; 0 writes none.
    """

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, interval_s: float = 0.25, every: int = 100
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.interval_s = interval_s
        self.every = every
        self._last = -math.inf
        self._open = False

    def due(self, frames: int, now: float) -> bool:
        """Whether :meth:`write` should be called after ``frames`` frames at ``now`` (``time.monotonic()``)."""
        if self.tty:
            return now - self._last >= self.interval_s
        return self.every > 0 and frames % self.every == 0

    def write(self, text: str, now: float | None = None) -> None:
        """Replace the terminal line with ``text``, or write it as a line."""
        self._last = time.monotonic() if now is None else now
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the terminal line, if one is open."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
