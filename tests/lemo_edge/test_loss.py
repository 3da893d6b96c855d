"""Loss: the sign fix, compactness, and gradients reaching both memory and adapter."""

from __future__ import annotations

import pytest
import torch

from lemo_edge.backbone import FeatureLevel, FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.loss import compactness_loss, contrastive_loss, pairwise_distances
from lemo_edge.model import LemoModel
from lemo_edge.updater import OnlineUpdater

SPEC = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 6, 8),))


def _toy(**changes):
    config = ModelConfig(method="lemo", memory_size=8, size=64, adapter=True, gate=False, **changes)
    return LemoModel(config, SPEC)


def _positive_ratio(z, m, assigned):
    d = pairwise_distances(z, m)
    return (d.gather(1, assigned[:, None])[:, 0] / d.mean(1)).mean().item()


def test_fixed_sign_pulls_positives_in_and_paper_sign_pushes_them_out():
    """Relative to the other items, the fixed loss brings each patch's positive closer; the
    printed formula drives it away (the reason for the sign fix)."""
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    memory = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assigned = pairwise_distances(z, memory).argmin(1)
    for sign, expect_closer in (("fixed", True), ("paper", False)):
        m = memory.clone().requires_grad_(True)
        opt = torch.optim.SGD([m], lr=0.05)
        before = _positive_ratio(z, m.detach(), assigned)
        for _ in range(50):
            loss = contrastive_loss(pairwise_distances(z, m), q=1, tau=1.0, sign=sign)
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = _positive_ratio(z, m.detach(), assigned)
        assert (after < before) == expect_closer, (sign, before, after)


def test_contrastive_loss_rejects_unknown_sign():
    with pytest.raises(ValueError, match="sign: expected 'fixed' or 'paper', got 'up'"):
        contrastive_loss(torch.ones(2, 2), sign="up")


def test_compactness_is_clipped_mean_nearest_distance():
    d = torch.tensor([[1.0, 3.0], [4.0, 2.0]])
    assert compactness_loss(d).item() == pytest.approx(1.5)
    assert compactness_loss(d, radius=1.5).item() == pytest.approx(0.25)


def test_online_steps_decrease_the_loss_and_reach_memory_and_adapter():
    torch.manual_seed(0)
    model = _toy(lr_memory=0.05, lr_adapter=1e-2, reseed_after=0)
    updater = OnlineUpdater(model)
    features = torch.randn(1, 6, 8, 8)
    mem0 = model.memory.items.detach().clone()
    ada0 = model.adapter.conv.weight.detach().clone()
    losses = []
    for _ in range(30):
        scores = model.score(features)
        updater.observe(features, scores, image_score=0.0)
        losses.append(updater.stats.last_loss)
    assert losses[-1] < 0.7 * losses[0]
    assert not torch.equal(model.memory.items.detach(), mem0)
    assert not torch.equal(model.adapter.conv.weight.detach(), ada0)
