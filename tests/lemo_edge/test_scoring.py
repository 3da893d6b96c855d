"""Scoring reference: nearest distances, top-k, anomaly map shape and smoothing."""

from __future__ import annotations

import pytest
import torch

from lemo_edge.errors import InputError
from lemo_edge.scoring import anomaly_map, gaussian_kernel1d, image_scores, nearest_memory, smallest_k


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


@pytest.mark.parametrize("cols", [7, 64, 200, 1000, 1024 + 77])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_smallest_k_is_topk(cols: int, k: int):
    """The grouped selection returns what a top-k over all columns returns (no ties in continuous data)."""
    if k > cols:
        pytest.skip("k > columns")
    g = torch.Generator().manual_seed(cols + k)
    values = torch.randn(50, cols, generator=g)
    values[3, -1] = -100.0  # a minimum in the partial last group
    values[4, :k] = -50.0 - torch.arange(k)  # all of a row's k smallest in its first group
    best, where = smallest_k(values, k, group=16)
    ref = values.topk(k, dim=1, largest=False)
    assert torch.equal(best, ref.values) and torch.equal(where, ref.indices)


def test_smallest_one_names_the_first_column_holding_the_minimum():
    """k = 1 (merges, top-1 search) answers as ``min(dim=1)``, ties included, a tie across groups too."""
    g = torch.Generator().manual_seed(2)
    values = torch.randint(0, 4, (200, 16 * 9 + 5), generator=g).float()
    values[0, 20], values[0, 100] = -1.0, -1.0  # the minimum in two groups: the first is named
    values[1, -1], values[1, -3] = -2.0, -2.0  # twice in the partial last group
    best, where = smallest_k(values, 1, group=16)
    ref = values.min(dim=1, keepdim=True)
    assert torch.equal(best, ref.values) and torch.equal(where, ref.indices)
    assert where[0, 0] == 20 and where[1, 0] == values.shape[1] - 3


def test_nearest_memory_is_the_full_topk():
    """The reference's grouped selection changes nothing: the k smallest of the full distance matrix."""
    g = torch.Generator().manual_seed(1)
    z, memory = torch.randn(300, 16, generator=g), torch.randn(3000, 16, generator=g)
    d = torch.cdist(z, memory)
    top = d.topk(3, largest=False)
    out = nearest_memory(z, memory, k=3)
    assert torch.equal(out.index, top.indices[:, 0])
    assert torch.allclose(out.score, top.values.mean(1), atol=1e-4)


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


def _interpolate_then_convolve(patch: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """The map as computed before the per-axis matrices: bilinear upsampling, then a padded 2-D blur."""
    import torch.nn.functional as F

    maps = F.interpolate(patch[:, None].float(), size=size, mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = gaussian_kernel1d(sigma)
        pad = kernel.numel() // 2
        maps = F.pad(maps, (pad, pad, pad, pad), mode="replicate")
        maps = F.conv2d(F.conv2d(maps, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return maps[:, 0]


@pytest.mark.parametrize(
    ("grid", "size", "sigma"),
    [((32, 32), (256, 256), 4.0), ((3, 2), (20, 17), 0.0), ((24, 40), (192, 320), 4.0), ((8, 5), (64, 40), 1.5)],
)
def test_anomaly_map_equals_interpolate_then_convolve(grid: tuple[int, int], size: tuple[int, int], sigma: float):
    """The per-axis matrices give the upsample-then-blur map within 1e-5 of its range (non-square too)."""
    patch = torch.rand(3, *grid, generator=torch.Generator().manual_seed(0)) * 10 - 2
    patch[1, 0, 0] = 40.0  # a sharp peak near the border, where the padding matters
    got = anomaly_map(patch, size, sigma=sigma)
    ref = _interpolate_then_convolve(patch, size, sigma)
    assert got.shape == (3, *size) and got.dtype == torch.float32
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_map_matrix_rows_sum_to_one():
    from lemo_edge.scoring import map_matrix

    a = map_matrix(32, 256, 4.0)
    assert a.shape == (256, 32)
    assert torch.allclose(a.sum(1), torch.ones(256), atol=1e-6)
