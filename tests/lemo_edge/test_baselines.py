import math

import pytest
import torch

from lemo_edge.baselines import GreedyBank
from lemo_edge.scoring import nearest_memory


def _stream(bank: GreedyBank, images: list[torch.Tensor]) -> torch.Tensor:
    for z in images:
        nearest = nearest_memory(z, bank.items).score if bank.items.shape[0] else torch.full((z.shape[0],), math.inf)
        bank.add(z, nearest)
    return bank.items


def test_greedy_bank_is_seeded_and_bounded():
    images = [torch.randn(64, 4, generator=torch.Generator().manual_seed(i)) for i in range(30)]
    torch.manual_seed(1)
    first = _stream(GreedyBank(100, 4, per_image=16, seed=7), images)
    torch.manual_seed(2)  # the global RNG must not matter
    second = _stream(GreedyBank(100, 4, per_image=16, seed=7), images)
    other = _stream(GreedyBank(100, 4, per_image=16, seed=8), images)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.shape[0] <= 100


def test_greedy_bank_adds_only_patches_beyond_the_running_level():
    bank = GreedyBank(1000, 1, per_image=8)
    bank.add(torch.zeros(8, 1), torch.full((8,), math.inf))
    z = torch.tensor([[0.1], [5.0]])
    bank.add(z, torch.tensor([0.1, 5.0]))
    assert bank.items.shape[0] == 9  # the first image's 8 patches, then only the far one
    assert float(bank.items[-1]) == 5.0


def test_patchcore_scores_reweight_the_maximum_by_its_neighbourhood():

    from lemo_edge.baselines import patchcore_scores

    bank = torch.tensor([[0.0], [1.0], [10.0]])
    features = torch.tensor([[5.0, 0.5]]).view(1, 1, 1, 2)  # patches 5 (nearest: 1, at 4) and 0.5
    maps, plain = patchcore_scores(bank, features, (4, 8), sigma=0, neighbors=1)
    assert plain.tolist() == [4.0]
    assert maps.shape == (1, 4, 8) and maps[0, :, :4].eq(4.0).all() and maps[0, :, 4:].eq(0.5).all()  # nearest
    _, weighted = patchcore_scores(bank, features, (4, 8), sigma=0, neighbors=3)
    # the maximum's nearest item (1) and its neighbours 1, 0, 10 lie at 4, 5, 5 from it
    assert weighted.item() == pytest.approx(4.0 * (1.0 - 1.0 / (1.0 + 2.0 * math.e)), rel=1e-5)


def test_baselines_never_take_a_letterbox_padding_cell_as_the_maximum():
    """Letterboxed images (``valid``: content cells): a padded cell far from the bank neither holds the image score
    nor raises the map; it takes the image's lowest content score, as the model's scores do."""
    from lemo_edge.baselines import patchcore_patch_scores, patchcore_scores
    from lemo_edge.evaluate import score_bank

    bank = torch.tensor([[0.0], [1.0]])
    features = torch.tensor([[0.5, 3.0], [100.0, 100.0]]).view(1, 1, 2, 2)  # bottom row: padding, far from all
    valid = torch.tensor([[True, True], [False, False]])
    patch, score = patchcore_patch_scores(bank, features, neighbors=1, valid=valid)
    assert patch[0].tolist() == [[0.5, 2.0], [0.5, 0.5]] and score.tolist() == [2.0]
    _, unmasked = patchcore_patch_scores(bank, features, neighbors=1)
    assert unmasked.tolist() == [99.0]  # what the padding gave before
    maps, _ = patchcore_scores(bank, features, (4, 4), sigma=0, neighbors=1, valid=valid)
    assert float(maps.max()) == 2.0
    maps, scores = score_bank(bank, features, (4, 4), sigma=0, valid=valid)
    assert float(maps.max()) <= 2.0 + 1e-6 and scores.tolist() == pytest.approx([2.0])
