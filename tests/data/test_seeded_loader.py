"""SeededTorchDataset: the sampler seed sets the data order; 0 is stock TorchDataset's."""

from __future__ import annotations

from sam3.train.data.torch_dataset import TorchDataset

from sam3_lora_plugin.data import SeededTorchDataset
from sam3_lora_plugin.testing import single_process_group

KW = dict(batch_size=1, num_workers=0, shuffle=True, pin_memory=False, drop_last=False)


def _order(loader: TorchDataset, epoch: int = 0) -> list[int]:
    return [int(b) for b in loader.get_loader(epoch)]


def test_the_seed_sets_the_order_and_zero_is_stock():
    data = list(range(32))
    with single_process_group("gloo"):
        stock = _order(TorchDataset(data, **KW))
        assert _order(SeededTorchDataset(data, sampler_seed=0, **KW)) == stock
        one, two = (_order(SeededTorchDataset(data, sampler_seed=s, **KW)) for s in (1, 2))
        assert one != stock and two != one and sorted(one) == data
        assert _order(SeededTorchDataset(data, sampler_seed=1, **KW)) == one  # reproducible
        assert _order(SeededTorchDataset(data, sampler_seed=1, **KW), epoch=1) != one


def test_unshuffled_loaders_keep_the_file_order():
    data = list(range(8))
    with single_process_group("gloo"):
        assert _order(SeededTorchDataset(data, sampler_seed=5, **{**KW, "shuffle": False})) == data
