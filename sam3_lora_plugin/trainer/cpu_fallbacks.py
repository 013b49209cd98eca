"""Opt-in fallbacks that let SAM3's training stack run on a machine without CUDA.

sam3 0.1.4 assumes CUDA in places that a CPU run reaches. ``enable_cpu_fallbacks``
handles each one when the run's accelerator is the CPU, whether or not the machine has
a GPU: a CPU rehearsal on a GPU box must not send CPU tensors into sam3's Triton focal
loss. It runs only when called (from config: ``cpu_fallbacks: true`` in
``build_lora_sam3``, which the ``runtime=cpu`` block sets beside ``trainer.accelerator:
cpu``); importing this package patches nothing. Every fallback is logged once:

1. ``SequenceGeometryEncoder._encode_boxes`` calls ``tensor.pin_memory()``, which
   needs an accelerator. Fallback: ``Tensor.pin_memory`` returns the tensor itself.
   Pinning only speeds up host-to-GPU copies, so in a run on the CPU it changes no
   value.
2. ``loss_fns.sigmoid_focal_loss`` defaults to ``triton=True`` (a GPU kernel).
   Fallback: the same function with ``triton=False``, sam3's own PyTorch reference
   implementation of the same loss.
3. ``train_utils.MemMeter.update`` reads ``torch.cuda.max_memory_allocated()``.
   Fallback: it records the process's peak RSS in GB (``resource.getrusage``).
4. The eval all-gather uses CUDA tensors unless ``MDETR_CPU_REDUCE=1``. Fallback: the
   variable is set (unless already set).
5. ``DummyLoss(device="cuda")`` is a default argument, not code: configs for CPU pass
   ``device: cpu`` (our configs do). Nothing is patched for it.

The stock builder also allocates on CUDA while building (position-encoding
precompute, decoder coordinate cache); ``sam3_lora_plugin.models.arch.build_sam3_arch``
avoids both, so no fallback is needed there.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import sys

import torch

__all__ = ["enable_cpu_fallbacks"]

log = logging.getLogger(__name__)
_APPLIED: list[str] = []


def _pin_memory_noop(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return self


def _peak_rss_gb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and bytes on macOS.
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)


def _mem_meter_update(self, n: int = 1, reset_peak_usage: bool = True) -> None:
    self.val = _peak_rss_gb()
    self.sum += self.val * n
    self.count += n
    self.avg = self.sum / self.count
    self.peak = max(self.peak, self.val)


def enable_cpu_fallbacks(accelerator: str = "cpu") -> list[str]:
    """Apply the CPU fallbacks listed in this module's docstring to a run on ``accelerator``.

    Keyed to where the run executes, not to what the machine has: with
    ``accelerator="cpu"`` they apply even where ``torch.cuda.is_available()``; with a
    CUDA accelerator nothing is patched and ``[]`` is returned. Idempotent: a second
    call applies nothing new.

    Args:
        accelerator: the run's device (``trainer.accelerator``: ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ...).

    Returns:
        Names of the fallbacks that are active.
    """
    if torch.device(accelerator).type != "cpu":
        return list(_APPLIED)
    if _APPLIED:
        return list(_APPLIED)
    from sam3.train.loss import loss_fns
    from sam3.train.utils import train_utils

    torch.Tensor.pin_memory = _pin_memory_noop
    _APPLIED.append("pin_memory")

    original = loss_fns.sigmoid_focal_loss
    loss_fns.sigmoid_focal_loss = functools.partial(original, triton=False)
    _APPLIED.append("focal_loss_triton_off")

    train_utils.MemMeter.update = _mem_meter_update
    _APPLIED.append("mem_meter_rss")

    os.environ.setdefault("MDETR_CPU_REDUCE", "1")
    _APPLIED.append("cpu_reduce")
    log.info("sam3_lora_plugin: run on CPU, CPU fallbacks enabled: %s", ", ".join(_APPLIED))
    return list(_APPLIED)
