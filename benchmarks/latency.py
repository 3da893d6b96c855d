"""Latency benchmark of the whole pipeline; the same as ``lemo-edge bench`` (see lemo_edge.runtime.bench).

    python benchmarks/latency.py [--quick] [--json OUT] [--out-dir benchmarks/results] [--device cpu|cuda]
                                 [--patchcore-data DIR]

Results: ``benchmarks/results/<machine>-<date>.json``, ``.md`` and PNG plots.
"""

from __future__ import annotations

import sys

from lemo_edge.runtime.main import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
