"""``lemo-edge run`` whose second and later state saves stall mid-way, for the kill-during-save test.

Usage: ``python slow_save_run.py MARKER SECONDS run ARGS...``. ``os.fsync`` of a temporary
``.state.safetensors.*.tmp`` file (written in full, not yet renamed over the state) creates ``MARKER`` and
sleeps ``SECONDS`` from the second save on, so the test can SIGKILL the process while a save is in progress.
The save itself is the real :func:`lemo_edge.state.save_state`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    marker, seconds, argv = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    real_fsync = os.fsync
    saves = 0

    def slow_fsync(fd: int) -> None:
        nonlocal saves
        real_fsync(fd)
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if Path(name).name.startswith(".state.safetensors.") and name.endswith(".tmp"):
            saves += 1
            if saves >= 2:
                marker.write_text(name)
                time.sleep(seconds)

    os.fsync = slow_fsync  # type: ignore[assignment]
    from lemo_edge.runtime.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
