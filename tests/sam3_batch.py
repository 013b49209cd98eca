"""Build a real SAM3 training/validation batch on CPU, for tests.

``make_batch(tmp_path, training)`` goes through exactly the stock data path that
``configs/lora/smoke_cpu.yaml`` uses, minus the Trainer:

1. ``sam3_lora_plugin.data.make_synthetic_coco`` writes a small deterministic
   Roboflow-style COCO dataset (112 px images) under ``tmp_path / "coco"``
   (reused if it is already there with the same parameters).
2. ``smoke_cpu.yaml`` is loaded with ``OmegaConf.load`` and its
   ``trainer.data.{train,val}.dataset`` node is resolved against the full config
   (so ``transforms: ${scratch.train_transforms}`` / ``${scratch.val_transforms}``
   and the other ``${scratch.*}`` interpolations take the YAML's values).
3. ``sam3.train.data.sam3_image_dataset.Sam3ImageDataset`` is built from that node
   with ``hydra.utils.instantiate`` (same arguments and transforms as the YAML,
   incl. the val ``coco_json_loader``), with ``img_folder``/``ann_file`` pointed at the
   ``train`` (``training``) or ``valid`` split of the synthetic dataset and
   ``load_segmentation=training`` so that with ``training=True`` SAM3's mask
   losses can run.
4. ``sam3.train.data.collator.collate_fn_api`` collates the first ``batch_size``
   datapoints into a ``{dict_key: BatchedDatapoint}`` dict (``with_seg_masks``
   equals ``training``), as the Trainer's data loader does.

The random transforms (``RandomResizeAPI``) are drawn under a forked torch/python
RNG seeded with ``seed``, so the batch is deterministic and the caller's RNG
state is untouched.

Call the model as ``model(batch[dict_key])`` (``Sam3Image.forward`` takes the
``BatchedDatapoint``). On a CPU-only machine SAM3's geometry encoder calls
``Tensor.pin_memory()``, which needs an accelerator: patch it for the call, e.g.
``monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)``,
or use ``sam3_lora_plugin.runtime.enable_cpu_fallbacks()`` in a subprocess.

To run SAM3's loss on a ``training=True`` batch (checked by hand: all box, CE,
presence, mask and dice terms are finite and ``core_loss`` back-propagates)::

    loss_fn = make_loss()                       # scratch.loss of smoke_cpu.yaml
    out = model(batch["x"])                     # train-mode model
    targets = [model.back_convert(t) for t in batch["x"].find_targets]  # as Trainer._step
    losses = loss_fn(out, targets)              # dict; losses["core_loss"] is the total

It needs (a) a process group, because ``Sam3LossWrapper`` all-reduces the box
count: ``torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:<port>",
rank=0, world_size=1)`` (destroy it afterwards), and (b) on CPU the mask focal
loss with ``triton=False`` (``enable_cpu_fallbacks()`` does it, or monkeypatch
``sam3.train.loss.loss_fns.sigmoid_focal_loss``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE_CPU_YAML = REPO_ROOT / "hydra_configs" / "configs" / "lora" / "smoke_cpu.yaml"
ANN_FILE = "_annotations.coco.json"
NUM_IMAGES = 4  # images per split of the synthetic dataset

__all__ = ["SMOKE_CPU_YAML", "make_batch", "load_transforms", "make_loss"]


def load_transforms(training: bool) -> list:
    """Instantiate ``scratch.{train,val}_transforms`` of ``smoke_cpu.yaml``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(SMOKE_CPU_YAML)
    node = cfg.scratch.train_transforms if training else cfg.scratch.val_transforms
    return instantiate(node)


def make_loss():
    """Instantiate ``scratch.loss`` of ``smoke_cpu.yaml`` (a ``Sam3LossWrapper``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(SMOKE_CPU_YAML).scratch.loss)


def _dataset_node(training: bool, split_dir: Path):
    """``trainer.data.{train,val}.dataset`` of ``smoke_cpu.yaml``, resolved, reading ``split_dir``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(SMOKE_CPU_YAML)
    node = cfg.trainer.data["train" if training else "val"].dataset
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    node.img_folder = str(split_dir) + os.sep
    node.ann_file = str(split_dir / ANN_FILE)
    node.load_segmentation = training
    return node


def make_batch(
    tmp_path: os.PathLike | str,
    training: bool,
    *,
    batch_size: int = 2,
    dict_key: str = "x",
    seed: int = 0,
) -> dict[str, Any]:
    """Collate ``batch_size`` datapoints of a synthetic COCO split like the trainer.

    Args:
        tmp_path: directory for the synthetic dataset (``<tmp_path>/coco``).
        training: train split + train transforms + GT masks (``load_segmentation``
            and ``with_seg_masks``) if True; valid split + val transforms, no
            masks, if False.
        batch_size: number of images (datapoints) in the batch, 1 to ``NUM_IMAGES`` (4).
        dict_key: key of the returned dict (the collator's ``dict_key``).
        seed: seeds the random transforms (the caller's RNG state is restored).

    Returns:
        ``{dict_key: sam3.model.data_misc.BatchedDatapoint}``; pass
        ``batch[dict_key]`` to ``Sam3Image.forward``.
    """
    import torch
    from hydra.utils import instantiate
    from sam3.train.data.collator import collate_fn_api

    from sam3_lora_plugin.data import make_synthetic_coco

    if not 1 <= batch_size <= NUM_IMAGES:
        raise ValueError(f"batch_size must be 1..{NUM_IMAGES}, got {batch_size}")
    root = make_synthetic_coco(
        Path(tmp_path) / "coco", num_train=NUM_IMAGES, num_valid=NUM_IMAGES, num_test=0
    )
    split_dir = root / ("train" if training else "valid")
    dataset = instantiate(_dataset_node(training, split_dir))
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
