"""Shared fixtures and the skip rules for the ``gpu``, ``tensorrt``, ``slow`` and ``data`` markers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (tests start subprocesses that share the 2 cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {
        "gpu": None if _has_cuda() else "needs a CUDA GPU (none here)",
        "tensorrt": None if importlib.util.find_spec("tensorrt") else "needs TensorRT 10 (not installed)",
        "slow": None if os.environ.get("LEMO_SLOW") == "1" else "slow; set LEMO_SLOW=1 to run",
        "data": None if (SHARED_DATA / "magnetic_tile").is_dir() else f"needs {SHARED_DATA / 'magnetic_tile'}",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def extractor():
    """The default frozen feature extractor (tf_efficientnet_lite0, packaged weights)."""
    from lemo_edge.backbone import create_feature_extractor

    return create_feature_extractor()


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    return SHARED_DATA / "magnetic_tile"
