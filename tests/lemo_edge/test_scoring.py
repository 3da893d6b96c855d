"""Scoring reference: nearest distances, top-k, anomaly map shape and smoothing."""

from __future__ import annotations

import pytest
import torch

from lemo_edge.errors import InputError
from lemo_edge.scoring import anomaly_map, gaussian_kernel1d, image_scores, nearest_memory


def test_patch_equal_to_memory_item_scores_zero():
    memory = torch.randn(16, 152)
    z = torch.cat([memory[3:4], memory[7:8] + 1.0])
    out = nearest_memory(z, memory)
    assert out.score[0].item() == pytest.approx(0.0, abs=1e-2)
    assert out.index[0].item() == 3
    assert out.score[1].item() == pytest.approx(torch.norm(torch.ones(152)).item(), rel=1e-3)


def test_matches_brute_force_and_topk_mean():
    g = torch.Generator().manual_seed(0)
    z, memory = torch.randn(100, 7, generator=g), torch.randn(30, 7, generator=g)
    d = torch.cdist(z, memory)
    out = nearest_memory(z, memory)
    assert torch.allclose(out.score, d.min(1).values, atol=1e-4)
    assert torch.equal(out.index, d.argmin(1))
    out3 = nearest_memory(z, memory, k=3)
    assert torch.allclose(out3.score, d.topk(3, largest=False).values.mean(1), atol=1e-4)


def test_nearest_memory_checks_shapes():
    with pytest.raises(
        InputError, match=r"expected z \(N, D\) and memory \(K, D\), got \(4, 3\) float32 and \(2, 5\) float32"
    ):
        nearest_memory(torch.zeros(4, 3), torch.zeros(2, 5))
    with pytest.raises(InputError, match="expected 1 <= k <= K=2, got k=3"):
        nearest_memory(torch.zeros(4, 3), torch.zeros(2, 3), k=3)


def test_anomaly_map_shape_and_smoothing():
    patch = torch.zeros(2, 8, 8)
    patch[0, 4, 4] = 1.0
    raw = anomaly_map(patch, (64, 64), sigma=0)
    smooth = anomaly_map(patch, (64, 64), sigma=4)
    assert smooth.shape == (2, 64, 64) and smooth.dtype == torch.float32
    assert smooth[0].max() < raw[0].max()  # smoothing spreads the peak
    assert smooth[0].sum() == pytest.approx(raw[0].sum().item(), rel=0.05)  # and keeps its mass
    assert smooth[1].abs().max() == 0
    assert image_scores(smooth).shape == (2,)
    assert int(smooth[0].argmax()) // 64 in range(28, 40)


def test_gaussian_kernel_is_normalised():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 33 and k.sum().item() == pytest.approx(1.0)


def test_anomaly_map_checks_shape():
    with pytest.raises(InputError, match=r"expected patch scores \(B, h, w\), got \(8, 8\) float32"):
        anomaly_map(torch.zeros(8, 8), (64, 64))
