"""``lemo-edge info``: what this machine can run, and why not where it cannot."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
from typing import Any

from lemo_edge.backbone import PACKAGED
from lemo_edge.errors import MissingDependencyError


def add_parser(sub: Any) -> None:
    """Register the ``info`` sub-command."""
    p = sub.add_parser("info", help="list backbones, backends and scorers with their availability")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Availability of every backbone, backend and scorer: ``{section: [(name, ok, reason)]}``."""
    import torch

    backbones = []
    for name, packaged in PACKAGED.items():
        try:
            path = packaged.weights()
            backbones.append((name, path.is_file(), str(path) if path.is_file() else f"missing file {path}"))
        except MissingDependencyError as err:
            backbones.append((name, False, str(err)))
    sections: dict[str, Any] = {"backbones": backbones}
    for section, module, func in (
        ("backends", "lemo_edge.runtime.backends", "backend_status"),
        ("scorers", "lemo_edge.runtime.scorers", "scorer_status"),
    ):
        try:
            status = getattr(importlib.import_module(module), func)()
            sections[section] = [tuple(s) for s in status]
        except ImportError as err:
            sections[section] = [("torch", True, f"reference only ({module} unavailable: {err})")]
    cuda = torch.cuda.is_available()
    sections["environment"] = [
        ("python", True, platform.python_version()),
        (
            "torch",
            True,
            f"{torch.__version__}, CUDA {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available'}",
        ),
    ] + [
        (pkg, _version(pkg) is not None, _version(pkg) or "not installed")
        for pkg in ("timm", "onnxruntime", "onnxruntime-gpu", "tensorrt", "pycuda", "opencv-python-headless")
    ]
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
