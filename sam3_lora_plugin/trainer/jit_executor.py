"""Run sam3's TorchScript functions unoptimized, so a resumed run is bit-exact.

sam3 0.1.4 compiles a few loss helpers with ``@torch.jit.script`` (the box loss's
``box_ops.fast_diag_generalized_box_iou`` among them). TorchScript's profiling executor
runs such a function as plain ops for its first calls, then swaps in an optimized graph
whose backward comes from TorchScript's own autodiff formulas (``ProdBackward`` written
another way, fused kernels on a GPU). Both are correct, but their gradients differ in the
last bit (2.4e-7 on a box coordinate of magnitude 7, measured on the tiny model). A run
resumed from ``checkpoint_N.pt`` starts a new process, so its first steps take the plain
path where the uninterrupted run took the optimized one: on the tiny model, a resumed epoch
ended ~2e-9 away from the uninterrupted run, on every tensor the box loss reaches.

``keep_torchscript_unoptimized`` switches the graph executor's optimization off for the
calling thread, the one SAM3's Trainer builds the model in and trains in, so every call
of a scripted function takes the same plain path, in the first run and in any resumed
one. The functions concerned are a handful of element-wise box ops; the optimized path
saves nothing measurable next to a SAM3 step.

Why the private ``torch._C`` setter: the public form, ``torch.jit.optimized_execution``,
is a context manager, and the Trainer's steps do not run inside any ``with`` of ours.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["keep_torchscript_unoptimized"]

log = logging.getLogger(__name__)


def keep_torchscript_unoptimized() -> None:
    """Run TorchScript functions unoptimized in this thread (idempotent).

    Call it before the first training step: a scripted function that already ran twice
    keeps the optimized plan it compiled.
    """
    if torch._C._get_graph_executor_optimize():
        torch._C._set_graph_executor_optimize(False)
        log.info("TorchScript functions run unoptimized in this thread, so that a resumed "
                 "run computes the same gradients as an uninterrupted one "
                 "(sam3_lora_plugin.trainer.jit_executor)")
