"""Real SAM3 training batches and loss without the Trainer, for benchmarks and tests.

Everything comes from the packaged ``configs/lora/smoke_cpu.yaml`` (the config the
CPU smoke fine-tune runs), so a benchmark step sees the same data path and loss as
``python -m sam3.train.train -c configs/lora/smoke_cpu.yaml``:

* :func:`make_batch` writes the synthetic COCO dataset
  (``sam3_lora_plugin.data.make_synthetic_coco``), builds
  ``sam3.train.data.sam3_image_dataset.Sam3ImageDataset`` from the YAML's
  ``trainer.data.{train,val}.dataset`` node (same transforms, val ``coco_json_loader``)
  and collates with ``sam3.train.data.collator.collate_fn_api``, as the Trainer's
  data loader does. ``resolution`` overrides ``scratch.resolution`` (the transforms
  resize and pad to it), so the batch fits a model built at any size.
* :func:`make_loss` instantiates ``scratch.loss`` (``Sam3LossWrapper``: boxes, GIoU,
  CE, presence, mask focal + dice); ``num_queries`` sets the CE loss's
  ``pad_n_queries`` to the model's query count (the YAML's 20 is the tiny size's;
  the full model has 200, as in SAM3's own configs).
* :func:`get_optim_config` returns the YAML's ``trainer.optim`` node (AdamW, constant
  lr/weight decay, ``GradientClipper(max_norm=0.1)``, ``lora_param_groups``).
* :func:`flatten_outputs` yields every tensor of a nested SAM3 output, to compare two.

``Sam3LossWrapper`` all-reduces the box count, so the loss needs a process group:
``sam3_lora_plugin.testing.distributed.single_process_group``.

Call the model on the batch as the Trainer does: ``out = model(batch[dict_key])``,
``targets = [model.back_convert(t) for t in batch[dict_key].find_targets]``,
``loss = make_loss()(out, targets)["core_loss"]``. On a CPU-only machine call
``sam3_lora_plugin.trainer.cpu_fallbacks.enable_cpu_fallbacks()`` first (or patch ``pin_memory`` and
the triton focal loss for the duration of a test).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional

import torch

from sam3_lora_plugin.data import make_synthetic_coco
from sam3_lora_plugin.trainer.compose import compose_config

__all__ = [
    "NUM_IMAGES",
    "flatten_outputs",
    "get_optim_config",
    "get_smoke_config",
    "load_transforms",
    "make_batch",
    "make_loss",
]

#: Images per split of the synthetic dataset that :func:`make_batch` writes.
NUM_IMAGES = 4
_ANN_FILE = "_annotations.coco.json"
#: The config everything here comes from.
SMOKE_CONFIG = "configs/lora/smoke_cpu.yaml"


def get_smoke_config(resolution: Optional[int] = None):
    """``smoke_cpu.yaml`` composed as SAM3's launcher composes it (with its default
    preset, dataset and runtime blocks), ``scratch.resolution`` overridden.

    Args:
        resolution: image side in pixels (a multiple of 14); ``None`` keeps the YAML's 112.
    """
    overrides = [] if resolution is None else [f"scratch.resolution={int(resolution)}"]
    return compose_config(SMOKE_CONFIG, overrides)


def load_transforms(training: bool, resolution: Optional[int] = None) -> list:
    """Instantiate ``scratch.{train,val}_transforms`` of ``smoke_cpu.yaml``."""
    from hydra.utils import instantiate

    cfg = get_smoke_config(resolution)
    return instantiate(cfg.scratch.train_transforms if training else cfg.scratch.val_transforms)


def make_loss(num_queries: Optional[int] = None):
    """Instantiate ``scratch.loss`` of ``smoke_cpu.yaml`` (a ``Sam3LossWrapper``).

    Args:
        num_queries: the model's number of object queries, written into the CE loss's
            ``pad_n_queries`` (``None`` keeps the YAML's 20, the tiny size's).
    """
    from hydra.utils import instantiate

    node = get_smoke_config().scratch.loss
    if num_queries is not None:
        for loss_cfg in node.loss_fns_find:
            if "pad_n_queries" in loss_cfg:
                loss_cfg.pad_n_queries = int(num_queries)
    return instantiate(node)


def get_optim_config():
    """``trainer.optim`` of ``smoke_cpu.yaml``, interpolations resolved (an OmegaConf node).

    Keys: ``amp``, ``optimizer``, ``gradient_clip``, ``param_group_modifiers``,
    ``options`` (pass the last four to ``sam3.train.optim.optimizer.construct_optimizer``
    and ``hydra.utils.instantiate`` as the Trainer does).
    """
    from omegaconf import OmegaConf

    cfg = get_smoke_config()
    return OmegaConf.create(OmegaConf.to_container(cfg.trainer.optim, resolve=True))


def _dataset_node(training: bool, split_dir: Path, resolution: Optional[int]):
    """``trainer.data.{train,val}.dataset`` of ``smoke_cpu.yaml``, resolved, reading ``split_dir``."""
    from omegaconf import OmegaConf

    cfg = get_smoke_config(resolution)
    node = cfg.trainer.data["train" if training else "val"].dataset
    # img_folder/ann_file read the dataset block (the cached smoke dataset): replace them
    # before resolving, so building the batch never touches the user's cache.
    node.img_folder = str(split_dir) + os.sep
    node.ann_file = str(split_dir / _ANN_FILE)
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    node.load_segmentation = training
    return node


def make_batch(
    data_dir: os.PathLike | str,
    training: bool,
    *,
    batch_size: int = 2,
    dict_key: str = "x",
    seed: int = 0,
    resolution: Optional[int] = None,
) -> dict[str, Any]:
    """Collate ``batch_size`` datapoints of a synthetic COCO split like the Trainer.

    Args:
        data_dir: directory for the synthetic dataset (written to ``<data_dir>/coco``,
            reused when already there with the same parameters).
        training: train split + train transforms + GT masks (``load_segmentation`` and
            ``with_seg_masks``) if True; valid split + val transforms, no masks, if False.
        batch_size: number of images (datapoints), 1 to :data:`NUM_IMAGES`.
        dict_key: key of the returned dict (the collator's ``dict_key``).
        seed: seeds the random transforms (the caller's RNG states are restored).
        resolution: image side the transforms resize/pad to; ``None``: the YAML's 112.

    Returns:
        ``{dict_key: sam3.model.data_misc.BatchedDatapoint}``; pass ``batch[dict_key]``
        to ``Sam3Image.forward``.

    Raises:
        ValueError: ``batch_size`` out of range.
    """
    import torch
    from hydra.utils import instantiate
    from sam3.train.data.collator import collate_fn_api

    if not 1 <= batch_size <= NUM_IMAGES:
        raise ValueError(f"batch_size must be 1..{NUM_IMAGES}, got {batch_size}")
    root = make_synthetic_coco(
        Path(data_dir) / "coco", num_train=NUM_IMAGES, num_valid=NUM_IMAGES, num_test=0
    )
    split_dir = root / ("train" if training else "valid")
    dataset = instantiate(_dataset_node(training, split_dir, resolution))
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            datapoints = [dataset[i] for i in range(batch_size)]
    finally:
        random.setstate(py_state)
    return collate_fn_api(datapoints, dict_key=dict_key, with_seg_masks=training)


def flatten_outputs(out, prefix=""):
    """Yield ``(path, tensor)`` for every tensor in a nested SAM3 output."""
    if isinstance(out, torch.Tensor):
        yield prefix, out
    elif isinstance(out, dict):
        for k, v in out.items():
            yield from flatten_outputs(v, f"{prefix}.{k}")
    elif isinstance(out, (list, tuple)):
        for i, v in enumerate(out):
            yield from flatten_outputs(v, f"{prefix}[{i}]")
