"""Admission to the coreset memory: the pending pool (recurrence), the surprise ceiling, and the
patch-level contamination counted from the rows' tags."""

from __future__ import annotations

import math

import numpy as np
import torch

from lemo_edge.contamination import ContaminationCounter
from lemo_edge.memory import CoresetMemory


def _memory(**kwargs: object) -> CoresetMemory:
    options: dict[str, object] = dict(
        insert_per_image=4, admission="recurrence", pending_capacity=8, confirm=2, ttl=3, admit_z=None
    )
    options.update(kwargs)
    return CoresetMemory(32, 2, **options)  # type: ignore[arg-type]


def _learn(memory: CoresetMemory, z: torch.Tensor, tag: int = -1, surprise: torch.Tensor | None = None) -> int:
    if memory.items.shape[0] == 0:
        return memory.insert(z, torch.full((z.shape[0],), math.inf), None, tag, surprise)
    nearest = memory.search(z, 1)
    return memory.insert(z, nearest.nearest_distance, nearest.index, tag, surprise)


BASE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
NEW = torch.tensor([[10.0, 10.0]])


def _seed(memory: CoresetMemory) -> None:
    """Four confirmed items (the base pattern entered directly: surprise below the ceiling)."""
    ceiling, memory.admit_z = memory.admit_z, 0.0
    _learn(memory, BASE, surprise=torch.zeros(4))
    memory.admit_z = ceiling
    assert memory.size == 4 and memory.pending == 0


def test_a_new_pattern_waits_and_is_confirmed_once_two_later_images_recur_near_it():
    memory = _memory()
    _seed(memory)
    _learn(memory, torch.cat([BASE, NEW]), tag=0)  # the only patch farther than the radius
    assert (memory.size, memory.pending) == (4, 1)
    assert memory.items.shape[0] == 5  # pending rows are searched by default
    _learn(memory, torch.cat([BASE, NEW + 0.1]), tag=1)  # first recurrence: support 1 of 2 (and a new pending row)
    assert memory.size == 4
    _learn(memory, torch.cat([BASE, NEW - 0.1]), tag=2)  # second, nearest to the first sighting: confirmed next
    _learn(memory, BASE, tag=3)
    assert memory.size == 5 and torch.allclose(memory.confirmed[4], NEW[0])
    assert memory.pop_admitted().tolist() == [0 * 5 + 4]  # tag * P + patch of the first sighting


def test_a_pattern_that_does_not_recur_expires_after_the_ttl():
    memory = _memory()
    _seed(memory)
    _learn(memory, torch.cat([BASE, NEW]))
    for _ in range(4):  # ttl = 3 learned images without evidence
        _learn(memory, BASE)
    assert (memory.size, memory.pending) == (4, 0)
    assert memory.items.shape[0] == 4


def test_patches_below_the_surprise_ceiling_enter_at_once_and_the_others_wait():
    memory = _memory(admit_z=3.0)
    _seed(memory)
    far = torch.tensor([[10.0, 10.0], [-10.0, -10.0]])
    _learn(memory, far, tag=7, surprise=torch.tensor([2.0, 5.0]))
    assert (memory.size, memory.pending) == (5, 1)
    assert torch.allclose(memory.confirmed[4], far[0]) and torch.allclose(memory.bank[5], far[1])
    assert memory.pop_admitted().tolist() == [7 * 2 + 0]


def test_a_pool_that_is_not_searched_still_collects_evidence():
    memory = _memory(pending_searched=False)
    _seed(memory)
    _learn(memory, torch.cat([BASE, NEW]))
    assert (memory.size, memory.pending) == (4, 1)
    assert memory.items.shape[0] == 4  # scoring sees the confirmed items only
    near = torch.cat([BASE, NEW + 0.1])
    _learn(memory, near)  # its nearest confirmed item is far: the pool is searched apart
    _learn(memory, near)
    _learn(memory, BASE)
    assert memory.size == 5


def test_the_memory_never_holds_more_than_k_rows():
    memory = CoresetMemory(24, 2, insert_per_image=8, admission="recurrence", pending_capacity=6, admit_z=1.0)
    generator = torch.Generator().manual_seed(0)
    for step in range(40):
        z = torch.randn(16, 2, generator=generator) * (1 + step)
        _learn(memory, z, surprise=torch.randn(16, generator=generator) * 2)
        assert memory.size <= memory.confirmed_capacity and memory.pending <= 6
        assert memory.size + memory.pending <= 24


def test_contamination_counts_defect_patches_that_became_items():
    memory = _memory(admit_z=10.0)
    _seed(memory)
    counter = ContaminationCounter(patches=2)
    frames = [  # (tag, label, defect patches, patches)
        (0, 0, np.array([False, False]), torch.tensor([[5.0, 5.0], [0.0, 0.0]])),
        (1, 1, np.array([True, False]), torch.tensor([[-5.0, 5.0], [0.0, 0.0]])),
        (2, 1, np.array([False, True]), torch.tensor([[0.0, 0.0], [0.5, 0.5]])),
    ]
    for tag, label, defect, z in frames:
        if tag != 2:  # the gate refused frame 2
            _learn(memory, z, tag=tag, surprise=torch.zeros(2))
        counter.observe(tag, label, defect, learned=tag != 2)
        counter.admit(memory.pop_admitted())
    result = counter.result(memory)
    # defect patches: frame 1 patch 0 (learned: farther than the radius) and frame 2 patch 1 (never learned)
    assert result["defect_patches"] == 2 and result["defect_patch_learned"] == 0.5
    assert result["defect_accept_rate"] == 0.5 and result["normal_accept_rate"] == 1.0
    assert result["memory_defect_share"] == 0.5  # of the two rows tagged in this stream, one is a defect's
    assert result["pending_defect_share"] is None
