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


def test_torch_scorer_clamps_k_to_the_memory() -> None:
    z, memory = torch.randn(5, 4), torch.randn(2, 4)
    got, expected = TorchMemoryScorer(3)(z, memory), nearest_memory(z, memory, 2)
    assert torch.equal(got.score, expected.score) and got.distance is not None
    assert TorchMemoryScorer(3)(z, memory[:1]).distance is None


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"scorer: expected one of \['cuda', 'torch'\], got 'faiss'"):
        create_scorer("faiss")
    with pytest.raises(ValueError, match=r"scorer: expected one of \['auto', 'torch', 'cuda'\], got 'gpu'"):
        select_scorer("gpu")
    assert sorted(SCORERS) == ["cuda", "torch"]


def test_auto_falls_back_to_torch_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lemo_edge.runtime.scorers"):
        scorer, reason = select_scorer("auto", k=9)
    assert isinstance(scorer, TorchMemoryScorer) and scorer.k == 9
    assert reason == "torch reference: k=9: the CUDA kernel supports 1 <= k <= 8" and "k=9" in caplog.text
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
    scorer, reason = select_scorer("auto", k=3)  # the default configuration
    assert isinstance(scorer, TorchMemoryScorer) and reason == "torch reference: no CUDA GPU visible to torch"
    with pytest.raises(InputError, match=r"the kernel supports 1 <= k <= 8, got k=9"):
        select_scorer("cuda", k=9)
    with pytest.raises(BackendUnavailableError, match="cuda scorer: no CUDA GPU visible to torch"):
        select_scorer("cuda", k=8)


def test_scorer_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycuda", None)  # find_spec then reports it missing
    status = {s.name: s for s in scorer_status()}
    assert list(status) == ["torch", "cuda"]
    assert status["torch"].available
    assert status["cuda"].available == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert status["cuda"].reason == "unavailable: no CUDA GPU visible to torch"
    else:
        assert "pycuda not installed (driver launcher only)" in status["cuda"].reason


def _toy_model(device: torch.device):  # noqa: ANN202
    from lemo_edge.backbone import FeatureLevel, FeatureSpec
    from lemo_edge.config import ModelConfig
    from lemo_edge.model import LemoModel

    spec = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 16, 8),))
    config = ModelConfig(size=64, memory_size=256, insert_per_image=16, warmup=4)
    torch.manual_seed(0)
    return LemoModel(config, spec).to(device)


@pytest.mark.gpu
def test_auto_picks_the_kernel_for_the_default_config_and_the_stream_is_unchanged() -> None:
    """The default score_k = 3 on CUDA: ``auto`` gives the kernel, and the Inspector's stream (scores,
    decisions, learned memory) is the one the torch reference gives on CUDA."""
    from lemo_edge.config import ModelConfig
    from lemo_edge.inspector import Inspector
    from lemo_edge.threshold import OnlineThreshold
    from lemo_edge.updater import OnlineUpdater

    assert ModelConfig().score_k == 3
    cuda = torch.device("cuda")
    scorer, reason = select_scorer("auto", device=cuda, k=ModelConfig().score_k)
    assert isinstance(scorer, CudaMemoryScorer) and scorer.k == 3, reason
    generator = torch.Generator().manual_seed(0)
    frames = [0.2 * torch.randn(1, 16, 8, 8, generator=generator) for _ in range(30)]
    for i in range(6, 30, 7):
        frames[i][0, :, 2, 5] += 3.0
    runs = []
    for use_kernel in (False, True):
        model = _toy_model(cuda)
        updater = OnlineUpdater(model, OnlineThreshold(k=model.config.threshold_k))
        inspector = Inspector(updater, scorer=scorer if use_kernel else None)
        runs.append([inspector.step(f.to(cuda)) for f in frames])
        runs[-1].append(model.memory.items.detach().clone())  # type: ignore[arg-type]
    (*ref, ref_items), (*got, got_items) = runs
    for a, b in zip(ref, got, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-3) and (a.learned, a.anomalous) == (b.learned, b.anomalous)
    assert ref_items.shape == got_items.shape and torch.allclose(ref_items, got_items, atol=1e-4)


@pytest.mark.gpu
def test_use_scorer_checks_k() -> None:
    model = _toy_model(torch.device("cuda"))
    with pytest.raises(InputError, match="expected one averaging score_k=3 nearest items, got k=1"):
        model.use_scorer(CudaMemoryScorer(k=1))
    model.use_scorer(CudaMemoryScorer(k=3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scorer_matches_torch_and_validates() -> None:
    scorer, reason = select_scorer("auto", k=3)
    assert isinstance(scorer, CudaMemoryScorer) and scorer.launcher == "driver", reason
    z = torch.randn(1024, 152, device="cuda")
    memory = torch.randn(256, 152, device="cuda")
    got, expected = scorer(z, memory), nearest_memory(z, memory, 3)
    torch.testing.assert_close(got.score, expected.score, rtol=1e-4, atol=1e-3)
    assert got.distance is not None and expected.distance is not None
    torch.testing.assert_close(got.distance, expected.distance, rtol=1e-4, atol=1e-3)
    assert got.index.dtype == torch.int64 and got.score.dtype == torch.float32
    assert float((got.index == expected.index).float().mean()) > 0.99
    small = scorer(z, memory[:2])  # fewer items than k: all of them, like LemoModel.score
    torch.testing.assert_close(small.score, nearest_memory(z, memory[:2], 2).score, rtol=1e-4, atol=1e-3)
    one = scorer(z, memory[:1])
    assert one.distance is None
    empty = scorer(z[:0], memory)
    assert empty.score.shape == (0,) and empty.index.shape == (0,)
    with pytest.raises(InputError, match="both float32 or both float16"):
        scorer(z.half(), memory)
    with pytest.raises(InputError, match="expected tensors on cuda"):
        scorer(z.cpu(), memory.cpu())
    with pytest.raises(InputError, match="expected 1 <= K, D"):
        scorer(z, memory[:0])
