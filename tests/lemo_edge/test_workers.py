"""lemo_edge.workers: row slices side by side, in order, only when torch runs one thread."""

from __future__ import annotations

import threading

import pytest
import torch

from lemo_edge.workers import run_slices, slice_bounds


@pytest.fixture
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_slice_bounds_cover_the_range_in_order() -> None:
    assert slice_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert slice_bounds(2, 2) == [(0, 1), (1, 2)]


def test_slices_run_side_by_side_and_come_back_in_order(one_torch_thread: None) -> None:
    names: list[str] = []

    def part(start: int, stop: int) -> tuple[int, int, int]:
        names.append(threading.current_thread().name)
        return start, stop, torch.get_num_threads()

    out = run_slices(part, 100, workers=3, min_rows=10)
    assert [(a, b) for a, b, _ in out] == [(0, 33), (33, 66), (66, 100)]
    assert {threads for _, _, threads in out} == {1}  # each worker runs torch on one thread
    assert names.count(threading.current_thread().name) == 1 and len(set(names)) >= 2
    assert run_slices(part, 15, workers=3, min_rows=10)[0][:2] == (0, 15)  # too few rows for two slices


def test_no_split_when_torch_runs_several_threads() -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_slices(lambda a, b: (a, b), 100, workers=4) == [(0, 100)]
    finally:
        torch.set_num_threads(previous)


def test_a_failing_slice_raises_in_the_caller(one_torch_thread: None) -> None:
    def part(start: int, stop: int) -> int:
        if start > 0:
            raise ValueError(f"slice at {start}")
        return stop

    with pytest.raises(ValueError, match="slice at 50"):
        run_slices(part, 100, workers=2)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_pool(one_torch_thread: None) -> None:
    """The parent's pool threads do not exist in a forked child; slices there must still run (not wait forever)."""
    import multiprocessing

    assert run_slices(lambda a, b: b - a, 100, workers=2) == [50, 50]  # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        result = pool.apply_async(_split_in_child)
        assert result.get(timeout=60) == [50, 50]


def _split_in_child() -> list[int]:
    torch.set_num_threads(1)
    return run_slices(lambda a, b: b - a, 100, workers=2)
