"""The model: adapter identity start, position normalisation, scoring through the memory's search."""

from __future__ import annotations

import math

import pytest
import torch

from lemo_edge.backbone import FeatureLevel, FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError
from lemo_edge.inspector import Inspector
from lemo_edge.model import CoordAdapter, LemoModel, PositionNorm
from lemo_edge.scoring import Nearest, nearest_memory
from lemo_edge.updater import OnlineUpdater

SPEC = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 6, 8),))


def test_adapter_starts_as_the_identity_on_the_features():
    adapter = CoordAdapter(6, 6)
    features = torch.randn(2, 6, 5, 7)
    assert torch.equal(adapter(features), features)


def test_embed_flattens_patches_row_major():
    model = LemoModel(ModelConfig(size=64), SPEC)
    features = torch.randn(1, 6, 8, 8)
    emb = model.embed(features)
    assert emb.shape == (1, 64, 6)
    assert torch.equal(emb[0, 8 * 2 + 3], features[0, :, 2, 3])


def test_an_untrained_identity_adapter_is_skipped_and_a_changed_one_is_not(monkeypatch: pytest.MonkeyPatch):
    model = LemoModel(ModelConfig(size=64), SPEC)
    features = torch.randn(2, 6, 8, 8)
    calls = []

    def count(adapter: CoordAdapter) -> None:
        monkeypatch.setattr(adapter, "forward", lambda f: calls.append(1) or CoordAdapter.forward(adapter, f))

    count(model.adapter)
    assert torch.equal(model.embed(features), model.adapter(features).flatten(2).transpose(1, 2))
    assert len(calls) == 1  # the reference call above; embed did not run the convolution
    with torch.no_grad():
        model.adapter.conv.weight[0, 6, 0, 0] = 0.5  # a state whose adapter learned something
    changed = model.embed(features)
    assert len(calls) == 2 and torch.equal(changed, model.adapter(features).flatten(2).transpose(1, 2))
    assert not torch.equal(changed, features.flatten(2).transpose(1, 2))
    trained = LemoModel(ModelConfig(size=64, method="lemo", adapter=True), SPEC)  # trained: always convolved
    count(trained.adapter)
    trained.embed(features)
    assert len(calls) == 4


def test_position_norm_passes_raw_scores_until_ready_then_z_scores():
    norm = PositionNorm((2, 2), window=64, min_count=3)
    raw = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert torch.equal(norm(raw), raw)
    for value in (1.0, 2.0, 3.0):
        norm.update(torch.full((2, 2), value))
    assert norm.ready and norm.seen == 3 and int(norm.count) == 3
    assert torch.allclose(norm.mean, torch.full((2, 2), 2.0))
    # population variance of 1, 2, 3 is 2/3
    assert torch.allclose(norm.var, torch.full((2, 2), 2.0 / 3.0), atol=1e-6)
    z = norm(torch.full((1, 2, 2), 2.0 + math.sqrt(2.0 / 3.0)))
    assert torch.allclose(z, torch.ones(1, 2, 2), atol=1e-4)


def test_position_norm_follows_each_position_separately():
    norm = PositionNorm((1, 2), window=64, min_count=1)
    for _ in range(10):
        norm.update(torch.tensor([[0.0, 10.0]]))
    assert norm.mean.tolist() == [[0.0, 10.0]]


def test_empty_memory_scores_inf_and_maps_zero():
    model = LemoModel(ModelConfig(size=64), SPEC)
    scores = model.score(torch.randn(1, 6, 8, 8))
    assert torch.isinf(scores.raw).all()
    maps, image = model.maps(scores.patch)
    assert maps.shape == (1, 64, 64) and float(image[0]) == 0.0


def test_maps_keep_nan_visible():
    model = LemoModel(ModelConfig(size=64, position_norm=False), SPEC)
    patch = torch.zeros(1, 8, 8)
    patch[0, 3, 3] = math.nan
    _, image = model.maps(patch)
    assert math.isnan(float(image[0]))


class _Shifted:
    """A scorer that is not the reference: the reference's scores plus one."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls = 0

    def __call__(self, z: torch.Tensor, memory: torch.Tensor) -> Nearest:
        self.calls += 1
        ref = nearest_memory(z, memory, self.k)
        return Nearest(ref.score + 1.0, ref.index, ref.nearest_distance)


def test_an_injected_scorer_is_what_scores():
    config = ModelConfig(size=64, position_norm=False, warmup=100)
    model = LemoModel(config, SPEC)
    inspector = Inspector(OnlineUpdater(model))
    for seed in range(3):
        inspector.step(torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(seed)))
    features = torch.randn(1, 6, 8, 8)
    reference = model.score(features).raw
    scorer = _Shifted(config.score_k)
    model.use_scorer(scorer)
    shifted = model.score(features).raw
    assert scorer.calls == 1
    assert torch.allclose(shifted, reference + 1.0)
    model.use_scorer(None)
    assert torch.equal(model.score(features).raw, reference)


def test_a_scorer_for_another_k_is_refused():
    model = LemoModel(ModelConfig(size=64, score_k=3), SPEC)
    with pytest.raises(InputError, match="scorer: expected one averaging score_k=3 nearest items, got k=1"):
        model.use_scorer(_Shifted(1))


def test_features_of_another_shape_are_refused():
    model = LemoModel(ModelConfig(size=64), SPEC)
    with pytest.raises(InputError, match=r"features: expected \(B, 6, 8, 8\) float, got \(1, 6, 4, 4\) float32"):
        model.check_features(torch.zeros(1, 6, 4, 4))


@pytest.mark.parametrize(
    ("change", "field"),
    [({"position_window": 0}, "position_window"), ({"score_k": 0}, "score_k"), ({"warmup": -1}, "warmup")],
)
def test_config_bounds_name_the_field(change, field):
    with pytest.raises(InputError, match=f"^{field}: expected"):
        ModelConfig().replace(**change)


def test_assess_then_commit_is_step():
    def run(split: bool) -> list[tuple[float, bool]]:
        inspector = Inspector(OnlineUpdater(LemoModel(ModelConfig(size=64, warmup=2), SPEC)))
        out = []
        for seed in range(12):
            features = torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(seed))
            outcome = inspector.commit(inspector.assess(features)) if split else inspector.step(features)
            out.append((outcome.score, outcome.learned))
        return out

    assert run(True) == run(False)


def test_a_committed_outcome_cannot_be_committed_again():
    inspector = Inspector(OnlineUpdater(LemoModel(ModelConfig(size=64), SPEC)))
    outcome = inspector.step(torch.randn(1, 6, 8, 8))
    assert set(outcome.timings_ms) == {"score", "map", "update"}
    with pytest.raises(InputError, match="commit: expected an outcome of assess"):
        inspector.commit(outcome)


def test_a_non_square_input_gives_an_h_by_w_grid_position_norm_and_map():
    """640x256 at stride 8 is an (80, 32) grid; a swap of H and W would refuse these features."""
    model = LemoModel(ModelConfig(size="640x256", memory_size=32), SPEC)
    assert model.grid == (80, 32)
    assert model.position_norm is not None and tuple(model.position_norm.mean.shape) == (80, 32)
    features = torch.randn(2, 6, 80, 32)
    model.memory.insert(model.embed(features[:1])[0], torch.full((80 * 32,), math.inf))
    scores = model.score(features)
    assert scores.raw.shape == scores.patch.shape == (2, 80, 32)
    maps, image = model.maps(scores.patch)
    assert maps.shape == (2, 640, 256) and image.shape == (2,)
    with pytest.raises(InputError, match=r"features: expected \(B, 6, 80, 32\) float"):
        model.check_features(torch.randn(1, 6, 32, 80))


def test_a_non_square_model_learns_and_its_position_norm_follows_the_grid():
    model = LemoModel(ModelConfig(size=(64, 128), memory_size=64, warmup=0, gate=False), SPEC)
    inspector = Inspector(OnlineUpdater(model))
    norm = model.position_norm
    assert norm is not None
    for _ in range(norm.min_count + 1):
        outcome = inspector.step(torch.randn(1, 6, 8, 16))
    assert norm.ready and outcome.patch.shape == (8, 16) and outcome.map.shape == (64, 128)
    assert bool((norm.var > 0).all())


def test_padded_cells_are_neither_scored_above_the_content_nor_learned():
    """Letterbox padding (valid false): its patch scores are the content's lowest, so it never makes the map's
    maximum, and none of its patches enters the memory, even when the padding is the most novel part."""
    config = ModelConfig(size=64, memory_size=256, insert_per_image=64, warmup=0, gate=False, admission="coverage")
    model = LemoModel(config, SPEC)
    inspector = Inspector(OnlineUpdater(model))
    valid = torch.zeros(8, 8, dtype=torch.bool)
    valid[:, :5] = True  # the right three columns are padding
    normal = torch.randn(1, 6, 8, 8)
    inspector.step(normal, valid=valid)
    assert model.memory.items.shape[0] > 0
    odd = normal.clone()
    odd[..., 5:] += 50.0  # the padding is far from everything learned
    unmasked = inspector.assess(odd)
    masked = inspector.step(odd, valid=valid)
    assert masked.patch[:, 5:].max() <= masked.patch[:, :5].min() + 1e-6
    assert masked.score < unmasked.score / 10  # without the mask, the padding is the anomaly
    far = (model.memory.items - 50.0).abs().mean(dim=1) < 40  # an item learned from the shifted padding
    assert not bool(far.any())
    with pytest.raises(InputError, match=r"valid: expected \(1, 8, 8\) bool, got .*\(8, 5\)"):
        inspector.step(normal, valid=valid[:, :5])
    with pytest.raises(InputError, match=r"valid: expected \(1, 8, 8\) bool, got .*float32"):
        inspector.step(normal, valid=valid.float())
