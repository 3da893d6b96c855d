"""``lemo-edge info``: what this machine can run, and why not where it cannot."""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

from lemo_edge.backbone import PACKAGED
from lemo_edge.errors import MissingDependencyError
from lemo_edge.utils import versions

# Distributions whose installed version ``info`` lists (None: not installed).
PACKAGES: tuple[str, ...] = ("timm", "onnxruntime", "onnxruntime-gpu", "tensorrt", "pycuda", "opencv-python-headless")


def add_parser(sub: Any) -> None:
    """Register the ``info`` sub-command."""
    p = sub.add_parser("info", help="list backbones, backends and scorers with their availability")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def collect() -> dict[str, list[tuple[str, bool, str]]]:
    """Availability of every backbone, backend and scorer: ``{section: [(name, ok, reason)]}``."""
    import torch

    from lemo_edge.knn import backend_status as knn_status
    from lemo_edge.runtime.backends import backend_status
    from lemo_edge.runtime.scorers import scorer_status

    backbones = []
    for name, packaged in PACKAGED.items():
        try:
            path = packaged.weights()
            backbones.append((name, path.is_file(), str(path) if path.is_file() else f"missing file {path}"))
        except MissingDependencyError as err:
            backbones.append((name, False, str(err)))
    sections: dict[str, list[tuple[str, bool, str]]] = {"backbones": backbones}
    sections["backends"] = [(s.name, s.available, s.reason) for s in backend_status()]
    sections["scorers"] = [(s.name, s.available, s.reason) for s in scorer_status()]
    sections["knn"] = [(f"knn {s.name}", s.available, s.reason) for s in knn_status()]
    cuda = torch.cuda.is_available()
    gpu = f"available: {torch.cuda.get_device_name(0)}" if cuda else "not available"
    sections["environment"] = [
        ("python", True, platform.python_version()),
        ("torch", True, f"{torch.__version__}, CUDA {gpu}"),
    ] + [(pkg, version is not None, version or "not installed") for pkg, version in versions(PACKAGES).items()]
    return sections


def run(args: argparse.Namespace) -> int:
    """Entry of ``lemo-edge info``."""
    sections = collect()
    if args.json:
        print(
            json.dumps(
                {k: [{"name": n, "available": ok, "reason": r} for n, ok, r in v] for k, v in sections.items()},
                indent=2,
            )
        )
        return 0
    for section, rows in sections.items():
        print(f"{section}:")
        for name, ok, reason in rows:
            print(f"  {name:<24} {'available' if ok else 'unavailable':<12} {reason}")
    return 0
