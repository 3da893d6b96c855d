"""Scorer registry and selection; on a GPU, the CUDA scorer against the torch reference."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from lemo_edge.errors import BackendUnavailableError, InputError
from lemo_edge.runtime.protocols import Scorer
from lemo_edge.runtime.scorers import (
    SCORERS,
    CudaMemoryScorer,
    TorchMemoryScorer,
    create_scorer,
    scorer_status,
    select_scorer,
)
from lemo_edge.scoring import nearest_memory


def test_torch_scorer_is_the_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    z, memory = torch.randn(50, 16, generator=generator), torch.randn(30, 16, generator=generator)
    for k in (1, 3):
        scorer = create_scorer("torch", k=k)
        assert isinstance(scorer, Scorer) and scorer.name == "torch"
        got, expected = scorer(z, memory), nearest_memory(z, memory, k)
        assert torch.equal(got.score, expected.score) and torch.equal(got.index, expected.index)
    with pytest.raises(InputError, match="torch scorer: expected k >= 1, got 0"):
        TorchMemoryScorer(0)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"scorer: expected one of \['cuda', 'torch'\], got 'faiss'"):
        create_scorer("faiss")
    with pytest.raises(ValueError, match=r"scorer: expected one of \['auto', 'torch', 'cuda'\], got 'gpu'"):
        select_scorer("gpu")
    assert sorted(SCORERS) == ["cuda", "torch"]


def test_auto_falls_back_to_torch_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lemo_edge.runtime.scorers"):
        scorer, reason = select_scorer("auto", k=3)
    assert isinstance(scorer, TorchMemoryScorer) and scorer.k == 3
    assert reason == "torch reference: k=3: the CUDA kernel supports k=1 only" and "k=3" in caplog.text
    scorer, reason = select_scorer("auto", device="cpu")
    assert isinstance(scorer, TorchMemoryScorer) and reason == "torch reference: device cpu is not CUDA"
    scorer, reason = select_scorer("torch")
    assert isinstance(scorer, TorchMemoryScorer) and reason == "torch requested"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu() -> None:
    scorer, reason = select_scorer("auto")
    assert isinstance(scorer, TorchMemoryScorer) and reason == "torch reference: no CUDA GPU visible to torch"
    with pytest.raises(BackendUnavailableError, match="cuda scorer: no CUDA GPU visible to torch"):
        select_scorer("cuda")
    with pytest.raises(InputError, match="the kernel supports k=1 only, got k=2"):
        select_scorer("cuda", k=2)


def test_scorer_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycuda", None)  # find_spec then reports it missing
    status = {s.name: s for s in scorer_status()}
    assert list(status) == ["torch", "cuda"]
    assert status["torch"].available
    assert not status["cuda"].available and "pycuda" in status["cuda"].reason


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scorer_matches_torch_and_validates() -> None:
    pytest.importorskip("pycuda.driver")
    scorer, reason = select_scorer("auto")
    assert isinstance(scorer, CudaMemoryScorer), reason
    z = torch.randn(1024, 152, device="cuda")
    memory = torch.randn(256, 152, device="cuda")
    got, expected = scorer(z, memory), nearest_memory(z, memory)
    torch.testing.assert_close(got.score, expected.score, rtol=1e-4, atol=1e-3)
    assert got.index.dtype == torch.int64 and got.score.dtype == torch.float32
    assert float((got.index == expected.index).float().mean()) > 0.99
    empty = scorer(z[:0], memory)
    assert empty.score.shape == (0,) and empty.index.shape == (0,)
    with pytest.raises(InputError, match="both float32 or both float16"):
        scorer(z.half(), memory)
    with pytest.raises(InputError, match="expected tensors on cuda"):
        scorer(z.cpu(), memory.cpu())
    with pytest.raises(InputError, match="expected 1 <= K, D"):
        scorer(z, memory[:0])
