"""Every core component on CUDA gives what it gives on the CPU: memory, index, updater, inspector.

Marked ``gpu``: skipped with a reason where torch sees no CUDA device (tests/conftest.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from lemo_edge.backbone import FeatureLevel, FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.inspector import Inspector
from lemo_edge.knn import MemoryIndex
from lemo_edge.memory import CoresetMemory, LearnedMemory
from lemo_edge.model import LemoModel
from lemo_edge.scoring import anomaly_map, nearest_memory
from lemo_edge.threshold import OnlineThreshold
from lemo_edge.updater import OnlineUpdater

pytestmark = pytest.mark.gpu

SPEC = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 16, 8),))
CUDA = torch.device("cuda")


def _stream(n: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    frames = []
    for i in range(n):
        f = 0.2 * torch.randn(1, 16, 8, 8, generator=generator)
        if i % 7 == 6:
            f[0, :, 2, 5] += 3.0
        frames.append(f)
    return frames


def test_reference_scoring_and_maps_match():
    generator = torch.Generator().manual_seed(0)
    z, memory = torch.randn(1000, 152, generator=generator), torch.randn(3000, 152, generator=generator)
    for k in (1, 3, 8):
        cpu, gpu = nearest_memory(z, memory, k), nearest_memory(z.to(CUDA), memory.to(CUDA), k)
        assert torch.allclose(cpu.score, gpu.score.cpu(), atol=1e-4)
        assert (cpu.index == gpu.index.cpu()).float().mean() > 0.999  # ties only
    patch = torch.rand(2, 8, 8, generator=generator)
    assert torch.allclose(anomaly_map(patch, (64, 64)), anomaly_map(patch.to(CUDA), (64, 64)).cpu(), atol=1e-5)


@pytest.mark.parametrize("index", [False, True])
def test_coreset_memory_chooses_and_merges_the_same_items(index):
    def run(device: torch.device) -> CoresetMemory:
        library = MemoryIndex("exact") if index else None  # followed on the CPU, bypassed on the GPU
        memory = CoresetMemory(capacity=256, dim=16, insert_per_image=24, slack=0.05, index=library).to(device)
        generator = torch.Generator().manual_seed(1)
        for _ in range(40):
            z = torch.randn(64, 16, generator=generator).to(device)
            nearest = memory.search(z, 1).score if memory.size else torch.full((64,), math.inf, device=device)
            memory.insert(z, nearest)
        return memory

    cpu, gpu = run(torch.device("cpu")), run(CUDA)
    assert cpu.size == gpu.size and int(gpu.count) == gpu.size
    assert torch.allclose(cpu.items, gpu.items.cpu(), atol=1e-5)
    assert cpu.coverage_radius == pytest.approx(gpu.coverage_radius, abs=1e-4)
    probe = torch.randn(100, 16)
    a, b = cpu.search(probe, 3), gpu.search(probe.to(CUDA), 3)
    assert torch.allclose(a.score, b.score.cpu(), atol=1e-4)


def test_learned_memory_reseeds_on_cuda():
    memory = LearnedMemory(capacity=8, dim=4, seed=0).to(CUDA)
    for _ in range(4):
        memory.mark_used(torch.tensor([0], device=CUDA))
    z = torch.randn(16, 4, device=CUDA)
    assert memory.reseed(z, torch.rand(16, device=CUDA), after=2) == 7
    assert memory.search(z, 3).score.device.type == "cuda"


@pytest.mark.parametrize("method", ["coreset", "lemo"])
def test_inspector_and_updater_give_the_same_stream_on_cuda(method):
    config = ModelConfig(size=64, method=method, memory_size=128, insert_per_image=16, warmup=4)

    def run(device: torch.device) -> tuple[list[tuple[float, bool, bool]], OnlineUpdater]:
        torch.manual_seed(0)
        updater = OnlineUpdater(LemoModel(config, SPEC).to(device), OnlineThreshold(k=config.threshold_k))
        inspector = Inspector(updater)
        out = []
        for f in _stream(30):
            o = inspector.step(f.to(device))
            out.append((o.score, o.learned, o.anomalous))
        return out, updater

    (cpu, cu), (gpu, gu) = run(torch.device("cpu")), run(CUDA)
    for (s1, l1, a1), (s2, l2, a2) in zip(cpu, gpu, strict=True):
        assert s1 == pytest.approx(s2, abs=1e-4)
        assert (l1, a1) == (l2, a2)
    assert torch.allclose(cu.model.memory.items.detach(), gu.model.memory.items.detach().cpu(), atol=1e-4)
    assert cu.threshold.value == pytest.approx(gu.threshold.value, abs=1e-4)


def test_stage_timings_come_from_cuda_events():
    updater = OnlineUpdater(LemoModel(ModelConfig(size=64), SPEC).to(CUDA))
    outcome = Inspector(updater).step(_stream(1)[0].to(CUDA))
    assert outcome.timer is not None and outcome.timer.cuda
    timings = outcome.timings_ms
    assert set(timings) == {"score", "map", "update"} and all(v >= 0 for v in timings.values())
