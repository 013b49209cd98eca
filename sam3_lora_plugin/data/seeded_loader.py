"""SAM3's ``TorchDataset`` with a seeded data order.

Stock ``sam3.train.data.torch_dataset.TorchDataset`` builds its ``DistributedSampler``
without a seed, so the order of the training images is torch's default (seed 0, then
``set_epoch``) whatever ``trainer.seed_value`` is: two runs with different seeds see the
same batches. :class:`SeededTorchDataset` is the same loader with the sampler's seed as
an argument, so that a config can tie the data order to its seed::

    trainer:
      data:
        train:
          _target_: sam3_lora_plugin.data.SeededTorchDataset
          sampler_seed: ${trainer.seed_value}
          ...  # the stock TorchDataset arguments

``sampler_seed: 0`` gives stock's order exactly.
"""

from __future__ import annotations

from typing import Any

from sam3.train.data.torch_dataset import TorchDataset
from torch.utils.data import DistributedSampler

__all__ = ["SeededTorchDataset"]


class SeededTorchDataset(TorchDataset):
    """``TorchDataset`` whose ``DistributedSampler`` shuffles with ``sampler_seed``.

    Args:
        sampler_seed: the sampler's seed (each epoch adds its number, as in torch).
        **kwargs: the arguments of SAM3's ``TorchDataset``.
    """

    def __init__(self, *args: Any, sampler_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampler_seed = int(sampler_seed)
        if self.sampler is not None:
            self.sampler = DistributedSampler(self.dataset, shuffle=self.shuffle,
                                              seed=self.sampler_seed)
