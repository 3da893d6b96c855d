"""lemo_edge.knn: the memory index follows appends and merges, and matches the torch reference."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lemo_edge import knn, workers
from lemo_edge.errors import InputError, MissingDependencyError
from lemo_edge.knn import (
    BACKENDS,
    HINTS,
    SHORTLISTS,
    MemoryIndex,
    _exact_topk,
    available_backends,
    backend_status,
    shortlist_in_hardware,
)
from lemo_edge.scoring import nearest_memory

APPROX = [b for b in BACKENDS if b != "exact"]
LIBRARIES = [b for b in BACKENDS if b in HINTS]  # backends that need a library
SHORT = [pytest.param(b, marks=pytest.mark.skipif(not shortlist_in_hardware(b), reason=f"no {b} dot products in this "
         f"CPU (the {b} backend searches exactly)")) for b in SHORTLISTS]  # fmt: skip


def _clustered(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    """Points around 64 centres (structure like real embeddings, unlike isotropic noise)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(64, d, generator=g) * 3
    return centres[torch.randint(0, 64, (n,), generator=g)] + torch.randn(n, d, generator=g)


def _index(backend: str, **kw: object) -> MemoryIndex:
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    return MemoryIndex(backend, min_items=kw.pop("min_items", 256), **kw)  # type: ignore[arg-type]


def test_exact_mode_is_the_reference() -> None:
    items, z = _clustered(3000), _clustered(700, seed=1)
    index = MemoryIndex("exact")
    index.reset(items[:2000])
    index.add(items[2000:])
    for k in (1, 3):
        got, ref = index.search(z, k), nearest_memory(z, items, k)
        assert torch.equal(got.index, ref.index)
        assert torch.allclose(got.score, ref.score, atol=1e-5)
        assert (got.distance is None) == (ref.distance is None)
    assert index.recall_at_k(z, items, 3) == 1.0


def test_exact_topk_matches_reference() -> None:
    items, z = _clustered(1500), _clustered(300, seed=2)
    index = MemoryIndex("exact")
    index.reset(items)
    dist, rows = index.search_topk(z, 3)
    ref = nearest_memory(z, items, 3)
    assert torch.equal(rows[:, 0], ref.index)
    assert torch.allclose(dist.mean(1), ref.score, atol=1e-5)
    assert torch.allclose(dist[:, 0], ref.nearest_distance, atol=1e-5)


def _append_and_remove(
    index: MemoryIndex, items: torch.Tensor, steps: int, seed: int, drops: int, generator: torch.Generator
) -> torch.Tensor:
    """What a memory does to its index: ``steps`` rounds of 64 appended items then ``drops`` random removals;
    returns the items the index should now hold, in order."""
    for step in range(steps):
        new = _clustered(64, seed=seed + step)
        index.add(new)
        items = torch.cat([items, new])
        drop = torch.randperm(items.shape[0], generator=generator)[:drops]
        index.remove(drop)
        keep = torch.ones(items.shape[0], dtype=torch.bool)
        keep[drop] = False
        items = items[keep]
    return items


@pytest.mark.parametrize("backend", ["exact", *APPROX])
def test_rows_follow_appends_and_merges(backend: str) -> None:
    """After adds and removals, ``index`` is the row in the current items (checked on the items themselves)."""
    index = _index(backend, ef=64, probe=64)
    items = _clustered(1200)
    index.reset(items)
    assert not index.exact or backend == "exact" or (backend in SHORTLISTS and not shortlist_in_hardware(backend))
    g = torch.Generator().manual_seed(3)
    items = _append_and_remove(index, items, steps=6, seed=10, drops=40, generator=g)
    assert torch.equal(index.items, items)
    # queries that are items: their nearest row must be themselves
    rows = torch.randperm(items.shape[0], generator=g)[:200]
    found = index.search(items[rows], 1)
    assert (found.index == rows).float().mean() >= 0.98
    assert index.recall_at_k(_clustered(300, seed=99), items, 3) >= 0.9


@pytest.mark.parametrize("backend", APPROX)
def test_approximate_scores_are_close_and_never_below_exact(backend: str) -> None:
    index = _index(backend, ef=64, probe=16)
    items, z = _clustered(4000), _clustered(1024, seed=5)
    index.reset(items)
    got, ref = index.search(z, 3), nearest_memory(z, items, 3)
    assert got.score.shape == (1024,) and got.index.dtype == torch.int64 and got.distance is not None
    assert bool((got.score >= ref.score - 1e-4).all())
    assert index.recall_at_k(z, items, 3) >= 0.9
    assert float((got.score - ref.score).abs().mean()) < 0.05 * float(ref.score.mean())


def test_small_memory_is_exact_until_min_items() -> None:
    backend = APPROX[0] if APPROX[0] in available_backends() else "exact"
    index = MemoryIndex(backend, min_items=500)
    index.add(_clustered(300))
    assert index.exact
    index.add(_clustered(300, seed=1))
    assert index.exact == (backend == "exact")


def test_label_reuse_keeps_rows_right() -> None:
    """Labels of removed rows are reused; the mapping stays a bijection onto the rows."""
    index = MemoryIndex("exact")
    index.reset(_clustered(10))
    index.remove([0, 5])
    index.add(_clustered(3, seed=4))
    assert len(index) == 11
    assert sorted(index._rows[index._labels].tolist()) == list(range(11))


def test_boundary_errors() -> None:
    index = MemoryIndex("exact")
    index.reset(_clustered(20))
    with pytest.raises(InputError, match=r"remove: expected distinct row indices in \[0, 20\)"):
        index.remove([3, 3])
    with pytest.raises(InputError, match=r"add: expected \(m, 32\) float cpu rows, got \(4, 8\)"):
        index.add(torch.zeros(4, 8))
    with pytest.raises(InputError, match=r"expected 1 <= k <= n=20, got k=21"):
        index.search(_clustered(2), 21)
    with pytest.raises(InputError, match=r"knn backend: expected one of"):
        MemoryIndex("annoy")
    with pytest.raises(InputError, match=r"knn ef: expected >= 1, got 0"):
        MemoryIndex("exact", ef=0)


@pytest.mark.parametrize("backend", LIBRARIES)
def test_missing_library_raises_with_hint(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def blocked(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] in ("usearch", "faiss"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(MissingDependencyError, match="install it with: pip install"):
        MemoryIndex(backend)
    status = {s.name: s for s in backend_status()}
    assert not status[backend].available and "pip install" in status[backend].reason
    assert status["exact"].available


def test_status_lists_installed_versions() -> None:
    for s in backend_status():
        module = {"usearch": "usearch", "faiss-ivf": "faiss", "exact": "torch", "bf16": "torch", "int8": "torch"}[
            s.name
        ]
        assert s.available == (importlib.util.find_spec(module) is not None)


def test_ivf_retrains_when_items_doubled() -> None:
    index = _index("faiss-ivf", min_items=256, probe=64)
    index.add(_clustered(300))
    first = index._library
    assert first is not None and not index.exact
    index.add(_clustered(200, seed=1))
    assert index._library is first  # 500 < 2 x 300: rows added to the trained cells
    index.add(_clustered(200, seed=2))
    assert index._library is not first and index._built_at == 700  # doubled: cells trained again
    assert index.recall_at_k(_clustered(200, seed=3), k=3) >= 0.9


@pytest.mark.parametrize("backend", SHORT)
def test_shortlist_recall_and_exact_distances(backend: str) -> None:
    """A shortlist backend's distances are exact float32 distances of real rows; recall@3 is reported."""
    items, z = _clustered(5000, d=152), _clustered(1024, d=152, seed=7)
    index = MemoryIndex(backend, min_items=256)
    index.reset(items)
    assert not index.exact
    dist, rows = index.search_topk(z, 3)
    assert torch.allclose(dist, (items[rows] - z[:, None, :]).norm(dim=2), atol=1e-4)  # exact distances of rows
    ref = nearest_memory(z, items, 3)
    recall = index.recall_at_k(z, items, 3)
    print(f"{backend} shortlist {index.shortlist}: recall@3 {recall:.4f}")
    assert recall >= 0.98  # 0.9922 (int8) / 0.9993 (bf16) on these tight clusters; 0.998 on a Magnetic Tile memory
    assert bool((index.search(z, 3).score >= ref.score - 1e-3).all())
    assert float((index.search(z, 3).score - ref.score).abs().max()) < 0.01 * float(ref.score.mean())


@pytest.mark.parametrize("backend", SHORT)
def test_shortlist_copy_follows_appends_and_merges(backend: str) -> None:
    index = MemoryIndex(backend, min_items=256)
    items = _clustered(300)
    index.add(items)
    centre = index._centre.clone()
    assert torch.allclose(centre, items.mean(0))
    g = torch.Generator().manual_seed(5)
    items = _append_and_remove(index, items, steps=5, seed=20, drops=50, generator=g)
    n = items.shape[0]
    assert torch.equal(index.items, items) and torch.equal(index._centre, centre)  # the centre stays
    if backend == "int8":
        low = ((items - centre) / index._scale).round().clamp(-127, 127).to(torch.int8)
    else:
        low = (items - centre).to(torch.bfloat16)
    assert torch.equal(index._low[:n, : items.shape[1]], low)  # int8 rows also hold the folded bias after them
    assert torch.allclose(index._low_sq[:n], ((items - centre) ** 2).sum(1))
    found = index.search(items[:100], 1)
    assert torch.equal(found.index, torch.arange(100))


@pytest.mark.parametrize("backend", list(SHORTLISTS))
def test_shortlist_without_hardware_searches_exactly(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import lemo_edge.knn as knn

    monkeypatch.setattr(knn, "cpu_flags", lambda: set())
    items, z = _clustered(600), _clustered(100, seed=1)
    index = knn.MemoryIndex(backend, min_items=256)
    index.reset(items)
    assert index.exact
    got, ref = index.search(z, 3), nearest_memory(z, items, 3)
    assert torch.equal(got.index, ref.index) and torch.equal(got.score, ref.score)
    assert "searches exactly" in {s.name: s for s in knn.backend_status()}[backend].reason


@pytest.mark.skipif(not shortlist_in_hardware("int8"), reason="no int8 dot products in this CPU")
def test_int8_bias_folded_into_the_product_ranks_exactly_as_a_separate_subtraction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The int8 search adds each item's bias through extra product columns; the shortlist, and so the result, is the
    one of the separate subtraction it replaces (bit for bit), and biases beyond the folded span take that path."""
    g = torch.Generator().manual_seed(11)
    span = knn.FOLD_SPAN
    items = torch.randn(3000, 24, generator=g) * torch.linspace(0.2, 3.0, 3000)[:, None]  # wide spread of norms
    z = torch.randn(300, 24, generator=g) * 1.5
    index = MemoryIndex("int8", min_items=1, shortlist=8)
    index.reset(items)
    folded = index.search_topk(z, 3)
    extra = index._low[: len(index), items.shape[1] :]
    assert extra.shape == (3000, knn.FOLD) and bool((extra != 0).any())  # the bias is in the product
    monkeypatch.setattr(knn, "FOLD_SPAN", -1)  # every bias beyond it: the separate subtraction
    separate = index.search_topk(z, 3)
    assert torch.equal(folded[0], separate[0]) and torch.equal(folded[1], separate[1])
    truth = _exact_topk(z, items, 3)
    assert float((folded[1] == truth[1]).float().mean()) > 0.99
    # the folding itself, on biases up to its span: the extra columns' product with [1, 127, 127, ...] is the bias
    bias = torch.cat([torch.tensor([0, 1, 126, 127, 128, 16128, 16129, span - 1, span])] * 3)
    bias = torch.cat([bias, torch.randint(0, span + 1, (3000 - bias.numel(),), generator=g)]).to(torch.int32)
    index._fold_bias(bias)
    side = torch.tensor([1] + [127] * (knn.FOLD - 1), dtype=torch.int32)
    assert torch.equal(index._low[: len(index), items.shape[1] :].int() @ side, bias)


@pytest.mark.parametrize("backend", SHORT)
def test_shortlist_search_split_among_threads_gives_the_same_result(backend: str) -> None:
    """The query blocks searched side by side on worker threads: bit for bit what one thread finds, and the workers
    run torch on one core each (no team of OpenMP threads per worker)."""
    items, z = _clustered(4000, d=64), _clustered(1000, d=64, seed=9)  # 8 blocks of 128 queries, the last short
    index = MemoryIndex(backend, min_items=256, threads=1)
    index.reset(items)
    alone = index.search_topk(z, 3)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # split only when torch runs one intra-op thread (as lemo-edge run does)
    try:
        for threads in (2, 3):
            index.threads = threads
            split = index.search_topk(z, 3)
            assert torch.equal(split[0], alone[0]) and torch.equal(split[1], alone[1])
        assert workers._pool(2).submit(torch.get_num_threads).result() == 1
    finally:
        torch.set_num_threads(previous)


def test_threads_default_and_bad_value() -> None:
    assert MemoryIndex("int8").threads == min(4, workers.physical_cores())
    assert MemoryIndex("int8", threads=1).threads == 1
    assert MemoryIndex("exact").threads == 1
    with pytest.raises(InputError, match="knn threads: expected >= 0 or None, got -1"):
        MemoryIndex("int8", threads=-1)


@pytest.mark.parametrize("backend", SHORT)
def test_info_names_the_worker_threads(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knn, "default_workers", lambda: 3)
    assert "split among 3 worker threads" in {s.name: s for s in backend_status()}[backend].reason
    monkeypatch.setattr(knn, "default_workers", lambda: 1)
    assert "worker" not in {s.name: s for s in backend_status()}[backend].reason


@pytest.mark.parametrize("backend", SHORT)
def test_search_threads_are_the_worker_slices_only_when_torch_runs_one_thread(backend: str) -> None:
    index = MemoryIndex(backend, min_items=16, threads=3)
    index.reset(_clustered(64))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert index.search_threads == 3
        torch.set_num_threads(2)
        assert index.search_threads == 2  # torch's own threads: the search does not split
    finally:
        torch.set_num_threads(previous)
    assert MemoryIndex("exact").search_threads == torch.get_num_threads()
