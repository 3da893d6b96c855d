"""``python -m pip`` with the environment markers of an aarch64 Linux machine (for ``pip download --platform``).

pip evaluates the markers of requirements (``platform_machine == "x86_64"``) for the machine it runs on, even with
``--platform``: on an x86-64 host, ``pip download --platform manylinux_2_28_aarch64 torch`` would fetch the CUDA
wheels that torch requires on x86-64 only (3 GB). Making ``platform.machine()`` say ``aarch64`` before pip starts
makes the markers those of the target, as on a Jetson. Use it as ``python pip_aarch64.py download ...``; the other
markers (``python_version``, ``sys_platform``) are this Python's, so run it with the target's Python version.
"""

from __future__ import annotations

import platform
import sys


def main() -> int:
    """Run pip's command line (``sys.argv[1:]``) with ``platform.machine()`` returning ``aarch64``."""
    platform.machine = lambda: "aarch64"
    from pip._internal.cli.main import main as pip_main

    return int(pip_main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
