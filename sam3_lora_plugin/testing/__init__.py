"""Test and benchmark support, as ``torch.testing`` is for torch: real SAM3 batches and
loss without the Trainer (``sam3_batch``) and a local process group (``distributed``).
Nothing in the product imports this package."""

from .distributed import get_free_port, single_process_group
from .sam3_batch import (NUM_IMAGES, flatten_outputs, get_optim_config, get_smoke_config,
                         load_transforms, make_batch, make_loss)

__all__ = ["NUM_IMAGES", "flatten_outputs", "get_free_port", "get_optim_config", "get_smoke_config",
           "load_transforms", "make_batch", "make_loss", "single_process_group"]
