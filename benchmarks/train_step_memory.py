"""Where a training step's memory goes (``benchmarks/train_step.py --tensor-memory``): one
more step under :class:`tensor_memory.TensorMemoryTracker`, weights, optimizer state and
batch registered first, activations split by SAM3 component."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

from tensor_memory import TensorMemoryTracker
from train_step_trainer import TrainerStep

#: Components whose activations the tensor-memory breakdown separates (module paths under
#: the model; the innermost running one gets an allocation). ``loss`` is the loss module.
MEMORY_COMPONENTS: dict[str, str] = {
    "vision_trunk": "backbone.vision_backbone.trunk", "vision_neck": "backbone.vision_backbone",
    "text_encoder": "backbone.language_backbone", "fusion_encoder": "transformer.encoder",
    "decoder": "transformer.decoder", "geometry_encoder": "geometry_encoder",
    "segmentation_head": "segmentation_head", "scoring": "dot_prod_scoring"}


def _batch_tensors(obj: Any, seen: Optional[set] = None) -> list:
    """Every tensor in a (nested dataclass / list / dict) batch."""
    import dataclasses

    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _batch_tensors(getattr(obj, f.name), seen)]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _batch_tensors(x, seen)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _batch_tensors(x, seen)]
    return []


def measure_tensor_memory(step: TrainerStep) -> dict[str, Any]:
    """One more step under :class:`TensorMemoryTracker`: the peak of live tensor bytes
    (allocator-level, no RSS, no caching) and what is live at that peak.

    Before the step are counted: weights (trainable / frozen), buffers, existing
    optimizer state and the batch. On CUDA ``max_memory_allocated`` of this step is
    recorded beside it.
    """
    import torch
    from sam3.train.trainer import unwrap_ddp_if_wrapped

    model = unwrap_ddp_if_wrapped(step.model)
    modules = dict(model.named_modules())
    tracker = TensorMemoryTracker({**{k: modules[v] for k, v in MEMORY_COMPONENTS.items() if v in modules},
                                   "loss": step.loss_fn})
    params = list(model.parameters())
    tracker.register_existing([p for p in params if p.requires_grad], "weights (trainable)")
    tracker.register_existing([p for p in params if not p.requires_grad], "weights (frozen)")
    tracker.register_existing(list(model.buffers()) + list(step.loss_fn.buffers()), "buffers")
    tracker.register_existing([t for s in step.optim.optimizer.state.values() for t in s.values()
                               if isinstance(t, torch.Tensor)], "optimizer state")
    tracker.register_existing(_batch_tensors(step.batch), "batch")
    tracker.track_gradients(model)
    names = {"forward_loss": "forward", "backward": "backward", "optimizer": "optimizer"}

    @contextlib.contextmanager
    def phase(name: str):
        tracker.phase = names[name]
        yield

    if step.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(step.device)
    start = time.perf_counter()
    try:
        with tracker:
            record = step(phase)
    finally:
        tracker.close()
    report = tracker.report()
    report["step_s"] = time.perf_counter() - start
    report["step_record"] = record
    if step.device.type == "cuda":
        report["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(step.device)
    return report
