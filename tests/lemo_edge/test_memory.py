"""Memories: orthogonal init, bounded coreset insertion/merging, re-seeding and refresh."""

from __future__ import annotations

import math

import pytest
import torch

from lemo_edge import memory as memory_module
from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError
from lemo_edge.knn import MemoryIndex, available_backends
from lemo_edge.memory import CoresetMemory, LearnedMemory, nearest_other, orthogonal_noise, two_means
from lemo_edge.scoring import nearest_memory
from lemo_edge.workers import default_workers, run_slices


def test_orthogonal_noise_rows_are_orthonormal():
    q = orthogonal_noise(10, 32, scale=3.0, generator=torch.Generator().manual_seed(0))
    assert q.shape == (10, 32)
    assert torch.allclose(q @ q.T, 9.0 * torch.eye(10), atol=1e-4)


def test_orthogonal_noise_beyond_dimension_is_blockwise_orthonormal():
    q = orthogonal_noise(70, 32)
    assert q.shape == (70, 32)
    for start in (0, 32, 64):
        block = q[start : start + 32]
        assert torch.allclose(block @ block.T, torch.eye(block.shape[0]), atol=1e-4)


def test_coreset_never_grows_past_capacity_and_covers():
    torch.manual_seed(0)
    mem = CoresetMemory(capacity=50, dim=8, insert_per_image=16)
    for _ in range(40):
        z = torch.randn(64, 8)
        nearest = nearest_memory(z, mem.items).score if int(mem.count) else torch.full((64,), math.inf)
        mem.insert(z, nearest)
        assert int(mem.count) <= 50
    assert int(mem.count) > 25
    assert float(mem.radius) > 0
    # every item is farther than the merge radius from its nearest other item, except newly inserted ones
    probe = torch.randn(256, 8)
    assert nearest_memory(probe, mem.items).score.median() < 3.0


def test_coreset_inserts_farthest_first_and_respects_radius():
    mem = CoresetMemory(capacity=10, dim=1, insert_per_image=2)
    z = torch.tensor([[0.0], [0.1], [5.0], [10.0]])
    # empty memory: first the patch farthest from the mean (3.775), i.e. 10; then the one farthest from it
    assert mem.insert(z, torch.full((4,), math.inf)) == 2
    assert mem.items.flatten().tolist() == [10.0, 0.0]
    # now 5.0 is 5 from both items and 0.1 only 0.1 from 0: with room for one, 5.0 is the one right answer
    mem.insert_per_image = 1
    assert mem.insert(torch.tensor([[0.1], [5.0]]), torch.tensor([0.1, 5.0])) == 1
    assert mem.items.flatten().tolist() == [10.0, 0.0, 5.0]
    # farther than the radius only: a patch at 4.0 from the memory stays out under a radius of 4.5
    mem.coverage_radius = 4.5
    mem.insert_per_image = 4
    assert mem.insert(torch.tensor([[50.0], [14.0]]), torch.tensor([40.0, 4.0])) == 1
    assert mem.items.flatten().tolist() == [10.0, 0.0, 5.0, 50.0]
    assert int(mem.count) == mem.size == 4


def test_coreset_stops_farthest_first_at_the_radius():
    # all three are candidates; 0 is farthest and enters, then 0.3 (0.3 from 0, > 0.25) enters, and 0.1
    # (0.1 from 0) does not
    mem = CoresetMemory(capacity=10, dim=1, insert_per_image=8)
    assert mem.insert(torch.tensor([[5.0]]), torch.tensor([math.inf])) == 1
    mem.coverage_radius = 0.25
    z = torch.tensor([[0.0], [0.1], [0.3]])
    assert mem.insert(z, torch.tensor([5.0, 4.9, 4.7])) == 2
    assert mem.items.flatten().tolist() == pytest.approx([5.0, 0.0, 0.3])


def test_merge_drops_the_newer_of_the_closest_pairs_and_raises_the_radius():
    mem = CoresetMemory(capacity=4, dim=1, insert_per_image=8, slack=0.25)  # merges down to 3 items
    assert mem.insert(torch.tensor([[0.0], [10.0], [20.0]]), torch.full((3,), math.inf)) == 3
    # two new items: 10.5 (0.5 from 10) and 20.1 (0.1 from 20); the pair (20, 20.1) merges first, then
    # (10, 10.5): the newer member of each goes, the radius becomes the larger pair distance
    assert mem.insert(torch.tensor([[10.5], [20.1]]), torch.tensor([0.5, 0.1])) == 2
    assert sorted(mem.items.flatten().tolist()) == [0.0, 10.0, 20.0]
    assert mem.coverage_radius == pytest.approx(0.5) and float(mem.radius) == pytest.approx(0.5)
    assert mem.size == int(mem.count) == 3


def test_coreset_insert_checks_shapes():
    mem = CoresetMemory(capacity=4, dim=3)
    with pytest.raises(
        InputError, match=r"insert: expected z \(P, D\) and nearest \(P,\), got \(5, 3\) float32 and \(4,\)"
    ):
        mem.insert(torch.zeros(5, 3), torch.zeros(4))


def test_nearest_other_excludes_self():
    d, i = nearest_other(torch.tensor([[0.0], [1.0], [5.0]]))
    assert i.tolist() == [1, 0, 1]
    assert d.tolist() == [1.0, 1.0, 4.0]


def test_learned_memory_reseeds_stale_items_on_least_covered_patches():
    mem = LearnedMemory(capacity=4, dim=2, seed=0)
    mem.mark_used(torch.tensor([0]))
    for _ in range(3):
        mem.mark_used(torch.tensor([0]))
    z = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    nearest = torch.tensor([0.1, 9.0, 8.0])
    n = mem.reseed(z, nearest, after=2)
    assert n == 3
    rows = {tuple(r) for r in mem.items.detach().tolist()}
    assert (10.0, 0.0) in rows and (0.0, 10.0) in rows


def test_refresh_dissolves_empty_items_and_splits_the_largest():
    mem = LearnedMemory(capacity=2, dim=1)
    with torch.no_grad():
        mem.weight.copy_(torch.tensor([[0.0], [100.0]]))
    z = torch.tensor([[-1.0], [-0.9], [1.0], [1.1]])
    assert mem.refresh(z, min_patches=1) == 1
    assert sorted(round(v, 2) for v in mem.items.detach().flatten().tolist()) == [-0.95, 1.05]


def test_two_means_separates_clusters():
    x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2) * 4])
    a, b = two_means(x)
    assert {tuple(a.tolist()), tuple(b.tolist())} == {(0.0, 0.0), (4.0, 4.0)}


@pytest.mark.parametrize("torch_threads", [1, 2])
def test_merge_with_kept_nearest_others_equals_full_recomputation(
    torch_threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with one torch thread, where the merge's distances are split into row slices on worker threads."""
    split: list[int] = []

    def spy(fn, count, workers, min_rows=1):  # type: ignore[no-untyped-def]
        out = run_slices(fn, count, workers, min_rows)
        split.append(len(out))
        return out

    monkeypatch.setattr(memory_module, "run_slices", spy)
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        _merge_with_kept_nearest_others_equals_full_recomputation()
    finally:
        torch.set_num_threads(previous)
    assert (max(split) > 1) == (torch_threads == 1 and default_workers() > 1)


def _merge_with_kept_nearest_others_equals_full_recomputation() -> None:
    torch.manual_seed(3)
    cached, full = CoresetMemory(capacity=400, dim=6, insert_per_image=80), CoresetMemory(400, 6, 80)
    merges = bounds = 0
    for _ in range(100):
        z = torch.randn(160, 6)
        for mem in (cached, full):
            nearest = nearest_memory(z, mem.items).score if int(mem.count) else torch.full((160,), math.inf)
            before = int(mem.count)
            if mem is full:
                mem._nn = None  # forces nearest_other over all items, as before the cache existed
            mem.insert(z, nearest)
        merges += int(cached.count) < before
        assert torch.equal(cached.items, full.items)
        assert math.isclose(float(cached.radius), float(full.radius), rel_tol=1e-6)
        # the kept nearest others, extended by new rows, are those of a full recomputation; an orphan not
        # searched again keeps a lower bound of its distance
        extended = torch.cat([cached.items, 0.5 * torch.randn(80, 6)])
        (dist, index, bound), want = cached._nearest_others(extended), nearest_other(extended)
        assert torch.equal(index[~bound], want[1][~bound])
        assert torch.allclose(dist[~bound], want[0][~bound])
        assert bool((dist[bound] <= want[0][bound] + 1e-6).all())
        bounds += int(bound.sum())
    assert merges >= 5
    assert bounds > 0  # some orphans were never searched again, and the memory is the same


def test_replace_items_drops_what_was_derived_from_the_old_items():
    torch.manual_seed(4)
    memory = CoresetMemory(capacity=120, dim=6, insert_per_image=24, index=MemoryIndex("exact"))
    for _ in range(30):  # full, merged, with a nearest-other cache and a built index
        z = torch.randn(64, 6)
        memory.insert(z, memory.search(z, 1).score if int(memory.count) else torch.full((64,), math.inf))
    assert memory._nn is not None and memory.index is not None and len(memory.index) == memory.size
    kept = memory.items[::2].clone()
    memory.replace_items(kept)
    assert torch.equal(memory.items, kept) and int(memory.count) == kept.shape[0]
    assert memory._nn is None and memory._index_stale
    z = torch.randn(40, 6)
    assert torch.equal(memory.search(z, 1).index, nearest_memory(z, kept, 1).index)
    assert torch.equal(memory.index.items, kept)  # rebuilt from the new items when next searched
    with pytest.raises(InputError, match="items: expected"):
        memory.replace_items(torch.randn(121, 6))
    with pytest.raises(InputError, match="items: expected"):
        memory.replace_items(torch.randn(10, 5))


def test_nearest_other_of_some_rows():
    items = torch.tensor([[0.0], [1.0], [5.0], [5.5]])
    d, i = nearest_other(items, torch.tensor([2, 0]))
    assert i.tolist() == [3, 1]
    assert torch.allclose(d, torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"merge_slack": 0.0}, "merge_slack: expected a fraction in \\(0, 1\\), got 0.0"),
        ({"memory_size": 0}, "memory_size: expected 1..65536, got 0"),
    ],
)
def test_config_names_a_bad_memory_setting(change, message):
    with pytest.raises(InputError, match=message):
        ModelConfig().replace(**change)


def test_model_passes_the_merge_slack_to_its_memory():
    from lemo_edge.backbone import resolve_spec
    from lemo_edge.model import LemoModel

    model = LemoModel(ModelConfig(size=64, merge_slack=0.25), resolve_spec("tf_efficientnet_lite0"))
    assert isinstance(model.memory, CoresetMemory)
    assert model.memory.slack == 0.25


@pytest.mark.parametrize("backend", ["exact", "faiss-ivf", "usearch"])
def test_an_index_follows_the_confirmed_items_through_appends_and_merges(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend}: library not installed")
    generator = torch.Generator().manual_seed(5)
    index = MemoryIndex(backend, min_items=64)
    memory = CoresetMemory(capacity=400, dim=8, insert_per_image=48, slack=0.05, index=index)
    merges = 0
    for _ in range(40):
        z = torch.randn(96, 8, generator=generator)
        before = memory.size
        nearest = memory.search(z, 1) if memory.size else None
        memory.insert(z, nearest.score if nearest else torch.full((96,), math.inf))
        merges += int(memory.size < before)
        assert torch.equal(index.items, memory.confirmed)  # same rows, same order
    assert merges >= 3
    queries = torch.randn(200, 8, generator=generator)
    got, want = memory.search(queries, 3), nearest_memory(queries, memory.items, 3)
    if backend == "exact":
        assert torch.equal(got.index, want.index) and torch.allclose(got.score, want.score)
    else:  # approximate: never nearer than the truth, and nearly always the same
        assert bool((got.score >= want.score - 1e-5).all())
        assert index.recall_at_k(queries, memory.items, 3) > 0.8


def test_a_subset_of_a_frames_patches_is_tagged_by_its_positions_in_the_frame():
    """Letterbox content (a subset of the frame's P patches): tags are ``tag * P + position``, as for a whole frame."""
    mem = CoresetMemory(capacity=50, dim=2, insert_per_image=4, admission="coverage")
    z = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    positions = torch.tensor([1, 3, 8, 9])  # of a 12-patch frame
    assert mem.insert(z, torch.full((4,), math.inf), tag=2, positions=positions, frame_patches=12) == 4
    assert sorted(mem.tags[: mem.size].tolist()) == [2 * 12 + p for p in (1, 3, 8, 9)]


@pytest.mark.parametrize("merging", [False, True])
def test_pending_rows_survive_patches_that_enter_at_once(merging: bool) -> None:
    """The pending rows follow the confirmed ones in the bank: confirming an image's unsurprising patches (appended, or
    merged when the memory is full) must move them, not overwrite them (they used to be overwritten, and the pool then
    held the stale rows behind it with the metadata of others)."""
    torch.manual_seed(0)
    memory = CoresetMemory(
        120, 4, insert_per_image=8, slack=0.1, admission="recurrence", pending_capacity=20, admit_z=4.0,
        pending_searched=False,
    )  # fmt: skip
    for _ in range(60):  # merging: stop just below the confirmed capacity (100), after merges
        z = torch.randn(32, 4) * 10
        near = torch.cdist(z, memory.items).min(1).values if memory.size else torch.full((32,), math.inf)
        memory.insert(z, near)
        if not merging or (memory.coverage_radius > 0 and memory.size > 92):
            break
    assert (memory.size > 92) == merging
    surprising = torch.randn(32, 4) * 40 + 500.0  # far from everything: its chosen patches wait
    memory.insert(surprising, torch.cdist(surprising, memory.items).min(1).values, surprise=torch.full((32,), 10.0))
    waiting, pending = memory.bank[memory.size : memory.size + memory.pending].clone(), memory.pending
    assert pending >= 4 and bool(((waiting - 500.0).abs() < 250).all())
    size = memory.size
    calm = torch.randn(32, 4) * 40 - 500.0  # new to the memory, but unsurprising: its chosen patches enter at once
    memory.insert(calm, torch.cdist(calm, memory.items).min(1).values, surprise=torch.zeros(32))
    assert memory.size > size or merging
    assert (memory.size < size + 4) == merging  # full: the confirmation merged
    assert memory.pending == pending
    assert torch.equal(memory.bank[memory.size : memory.size + memory.pending], waiting)
