"""Inverted-file search: matches the exact search when every cell is probed, follows the memory."""

from __future__ import annotations

import math

import pytest
import torch

from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError
from lemo_edge.ivf import InvertedIndex
from lemo_edge.memory import CoresetMemory
from lemo_edge.scoring import nearest_memory


def _clusters(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.randn(16, 8, generator=g)
    return centres[torch.randint(0, 16, (n,), generator=g)] + torch.randn(n, 8, generator=g)


def test_probing_every_cell_is_exact():
    items, z = _clusters(600, 0), _clusters(200, 1)
    got = InvertedIndex(lists=8, probe=8).search(z, items, 3)
    want = nearest_memory(z, items, 3)
    assert torch.equal(got.index, want.index)
    assert torch.allclose(got.score, want.score, atol=1e-4)
    assert got.distance is not None and want.distance is not None
    assert torch.allclose(got.distance, want.distance, atol=1e-4)


def test_probing_few_cells_only_overestimates_and_is_mostly_exact():
    items, z = _clusters(2000, 2), _clusters(500, 3)
    got = InvertedIndex(lists=32, probe=4).search(z, items, 1)
    want = nearest_memory(z, items, 1)
    assert bool((got.score >= want.score - 1e-4).all())
    assert float((got.score - want.score).abs().lt(1e-4).float().mean()) > 0.9


def test_small_memories_are_searched_exactly():
    items, z = _clusters(100, 4), _clusters(10, 5)
    index = InvertedIndex(lists=8, probe=1)  # 100 < 32 * 8 items: no index yet
    assert torch.equal(index.search(z, items, 1).index, nearest_memory(z, items, 1).index)
    assert index.centroids is None


def test_index_follows_insertions_and_merges():
    torch.manual_seed(0)
    memory = CoresetMemory(300, 8, insert_per_image=40, index=InvertedIndex(lists=4, probe=4))
    for step in range(40):
        z = _clusters(120, 10 + step)
        nearest = memory.search(z, 1).score if int(memory.count) else torch.full((120,), math.inf)
        memory.insert(z, nearest)
        probe = _clusters(50, 100 + step)
        # all cells probed: must equal the exact search over the memory as it is now
        assert torch.equal(memory.search(probe, 1).index, nearest_memory(probe, memory.items, 1).index)
    assert memory.index is not None and memory.index.centroids is not None
    assert int(memory.count) <= 300


def test_bad_index_settings_name_the_fields():
    with pytest.raises(InputError, match="ivf: expected lists >= 1 and 1 <= probe <= lists"):
        InvertedIndex(lists=4, probe=5)
    with pytest.raises(InputError, match="ivf: expected ivf_lists >= 0 and 1 <= ivf_probe <= ivf_lists"):
        ModelConfig(ivf_lists=4, ivf_probe=0, admission="coverage")
