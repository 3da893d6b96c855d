"""The ``lemo-edge`` command line: one sub-command per module, registered below.

It lives in the runtime, not in the core: the core (``lemo_edge/``) imports nothing from ``lemo_edge.runtime`` or
``lemo_edge.export``, while this registry names modules of all three. ``python -m lemo_edge.runtime.main`` runs it
as the console script does.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# (sub-command, module defining ``add_parser(subparsers)`` whose parser sets ``func(args) -> int``)
COMMANDS: tuple[tuple[str, str], ...] = (
    ("eval", "lemo_edge.runtime.eval_cli"),
    ("info", "lemo_edge.runtime.info"),
    ("export", "lemo_edge.export.cli"),
    ("run", "lemo_edge.runtime.cli"),
    ("bench", "lemo_edge.runtime.bench.cli"),
    ("bundle", "lemo_edge.runtime.bundle"),
    ("health", "lemo_edge.runtime.bundle"),
)


def build_parser() -> argparse.ArgumentParser:
    """Create the top-level parser with every sub-command whose module is present."""
    parser = argparse.ArgumentParser(prog="lemo-edge", description="Online visual anomaly detection (LeMO).")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for _name, module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code (2 for bad arguments)."""
    # Idle OpenMP threads sleep instead of spinning: on a 2-core box shared with a camera thread
    # or another process, spinning threads made torch 10-100x slower (measured, see lemo_edge/runtime/cli.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from lemo_edge.errors import InputError, LemoError

    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"lemo-edge {args.command}: {err}", file=sys.stderr)
        return 2
    except LemoError as err:
        print(f"lemo-edge {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
