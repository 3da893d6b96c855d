"""Online threshold: mean + k std of accepted scores, following drift, no labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lemo_edge.threshold import OnlineThreshold


def test_infinite_until_min_count_then_mean_plus_k_std():
    t = OnlineThreshold(k=2.0, window=1000, min_count=3)
    for s in (1.0, 2.0):
        t.update(s)
    assert t.value == math.inf and not t.is_anomalous(1e9)
    t.update(3.0)
    assert t.value == pytest.approx(2.0 + 2.0 * np.std([1.0, 2.0, 3.0]))


def test_matches_numpy_on_a_long_stream_within_window():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, 500)
    t = OnlineThreshold(k=3.0, window=10_000)
    for s in x:
        t.update(float(s))
    assert t.mean == pytest.approx(x.mean())
    assert t.value == pytest.approx(x.mean() + 3 * x.std())


def test_follows_a_downward_drift_and_ignores_non_finite():
    t = OnlineThreshold(k=3.0, window=32)
    for _ in range(200):
        t.update(10.0)
    for _ in range(200):
        t.update(1.0)
    t.update(math.inf)
    assert t.mean == pytest.approx(1.0, abs=0.05)
    assert t.count == 400


def test_state_round_trip():
    t = OnlineThreshold()
    for s in range(20):
        t.update(float(s))
    assert OnlineThreshold.from_state_dict(t.state_dict()) == t
