import math

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
