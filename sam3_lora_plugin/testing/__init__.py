"""Test and benchmark support, as ``torch.testing`` is for torch: real SAM3 batches and
loss without the Trainer (``sam3_batch``), a local process group (``distributed``) and the
protected-files check of the bad-input tests (``protect``).
Nothing in the product imports this package."""

from .checkpoint_size import max_checkpoint_file_bytes, tensor_bytes
from .distributed import get_free_port, single_process_group
from .protect import assert_unchanged, diff_snapshots, snapshot_files
from .sam3_batch import (NUM_IMAGES, flatten_outputs, get_optim_config, get_smoke_config,
                         load_transforms, make_batch, make_loss)

__all__ = ["NUM_IMAGES", "assert_unchanged", "diff_snapshots", "flatten_outputs",
           "get_free_port", "get_optim_config", "get_smoke_config", "load_transforms",
           "make_batch", "make_loss", "max_checkpoint_file_bytes", "single_process_group",
           "snapshot_files", "tensor_bytes"]
