"""The online updater: warm-up, the gate (one right answer per frame), refused and non-finite frames."""

from __future__ import annotations

import math

import pytest
import torch

from lemo_edge.backbone import FeatureLevel, FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.inspector import Inspector
from lemo_edge.model import LemoModel
from lemo_edge.updater import (
    REASON_ABOVE,
    REASON_BELOW,
    REASON_FORCED,
    REASON_GATE_OFF,
    REASON_NOT_FINITE,
    REASON_WARMUP,
    OnlineUpdater,
)

SPEC = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 6, 8),))


def _updater(**changes) -> OnlineUpdater:
    config = ModelConfig(size=64, memory_size=64, insert_per_image=8, warmup=4, threshold_k=3.0).replace(**changes)
    return OnlineUpdater(LemoModel(config, SPEC))


def _normal(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(1, 6, 8, 8, generator=generator)


def _snapshot(updater: OnlineUpdater) -> tuple:
    model = updater.model
    norm = model.position_norm
    assert norm is not None
    return (
        model.memory.items.detach().clone(),
        norm.mean.clone(),
        norm.var.clone(),
        norm.seen,
        updater.threshold.state_dict(),
        updater.stats.updates,
    )


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b, strict=True))


def test_warm_up_learns_every_frame_whatever_its_score():
    updater = _updater()
    inspector = Inspector(updater)
    for i in range(4):
        outcome = inspector.step(_normal(i) + 50.0 * i)  # ever farther frames: all learned in the warm-up
        assert outcome.learned and outcome.reason == REASON_WARMUP
    assert updater.stats.updates == 4 and updater.stats.rejected == 0


def test_gate_learns_exactly_the_frames_the_threshold_judges_normal():
    updater = _updater(warmup=2)
    inspector = Inspector(updater)
    for i in range(40):
        features = _normal(i)
        if i % 5 == 4:  # every fifth frame has a patch far from everything seen before
            features[0, :, i % 8, 3] += 3.0 * (1 + i)
        outcome = inspector.step(features)
        if i < 2:
            assert outcome.learned and outcome.reason == REASON_WARMUP
            continue
        # the one right answer for every frame after the warm-up
        assert outcome.anomalous == (outcome.score > outcome.threshold)
        assert outcome.learned == (not outcome.anomalous)
        assert outcome.reason == (REASON_ABOVE if outcome.anomalous else REASON_BELOW)
    assert 0 < updater.stats.rejected < 38  # both branches were taken
    assert math.isfinite(updater.threshold.value)


def test_gate_and_decision_agree_at_the_threshold():
    updater = _updater(warmup=0)
    for value in (1.0, 2.0, 1.5, 1.2, 1.8, 1.1, 1.9, 1.4, 1.6):
        updater.threshold.update(value)
    at = updater.threshold.value
    assert updater.decide(at) == (True, REASON_BELOW)
    assert not updater.threshold.is_anomalous(at)
    above = math.nextafter(at, math.inf)
    assert updater.decide(above) == (False, REASON_ABOVE)
    assert updater.threshold.is_anomalous(above)


def test_a_refused_frame_leaves_threshold_normalisation_and_memory_unchanged():
    updater = _updater(warmup=2)
    inspector = Inspector(updater)
    for i in range(24):
        inspector.step(_normal(i))
    assert updater.model.position_norm is not None and updater.model.position_norm.ready
    before = _snapshot(updater)
    outcome = inspector.step(_normal(99) + 10.0)
    assert not outcome.learned and outcome.anomalous and outcome.reason == REASON_ABOVE
    assert _same(before, _snapshot(updater))
    assert updater.stats.rejected == 1 and updater.stats.seen == 25


@pytest.mark.parametrize("method", ["coreset", "lemo"])
def test_a_non_finite_frame_is_never_learned_even_in_the_warm_up(method):
    updater = _updater(method=method, warmup=100)
    inspector = Inspector(updater)
    inspector.step(_normal(0))
    before = _snapshot(updater)
    bad = _normal(1)
    bad[0, 2, 3, 4] = math.nan
    outcome = inspector.step(bad)
    assert not outcome.finite and not outcome.learned and outcome.reason == REASON_NOT_FINITE
    assert math.isnan(outcome.score) and not outcome.anomalous
    assert _same(before, _snapshot(updater))
    assert bool(torch.isfinite(updater.model.memory.items).all())
    # forcing does not learn it either, and the next good frame is learned as usual
    assert not inspector.step(bad, force=True).learned
    assert inspector.step(_normal(2)).learned


def test_gate_off_and_forced_frames_are_learned_with_their_reason():
    assert _updater(gate=False, warmup=0).decide(1e9) == (True, REASON_GATE_OFF)
    updater = _updater(warmup=0)
    for value in (1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0):
        updater.threshold.update(value)
    assert updater.decide(1e9, force=True) == (True, REASON_FORCED)
    assert updater.decide(1e9) == (False, REASON_ABOVE)


def test_the_first_frame_into_an_empty_memory_does_not_teach_threshold_or_normalisation():
    updater = _updater(warmup=4, position_norm=True)
    Inspector(updater).step(_normal(0))
    norm = updater.model.position_norm
    assert norm is not None and norm.seen == 0 and updater.threshold.count == 0
    assert updater.model.memory.items.shape[0] == 8  # but its patches entered the memory


def test_frozen_inspector_never_learns():
    updater = _updater()
    inspector = Inspector(updater, freeze=True)
    outcome = inspector.step(_normal(0))
    assert not outcome.learned and outcome.reason == "frozen"
    assert updater.model.memory.items.shape[0] == 0
