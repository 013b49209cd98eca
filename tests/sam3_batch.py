"""Real SAM3 batches and loss for tests: ``sam3_lora_plugin.bench_utils`` (the same data
path and loss as ``configs/lora/smoke_cpu.yaml``, minus the Trainer; its docstring says
how to call the model and the loss on CPU), plus ``flatten_outputs`` to compare outputs.
"""

from __future__ import annotations

import torch

from sam3_lora_plugin.bench_utils import NUM_IMAGES, load_transforms, make_batch, make_loss

__all__ = ["NUM_IMAGES", "flatten_outputs", "load_transforms", "make_batch", "make_loss"]


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
