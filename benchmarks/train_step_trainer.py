"""One SAM3 training step along the code path of ``sam3.train.trainer.Trainer``, timed by
phase, and the checkpoint dict the Trainer would save after it (``benchmarks/train_step.py``)."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, ContextManager, Optional, Sequence

from harness import synchronize

#: The phases of a step, timed (and, with ``--profile``, FLOP-counted) apart.
PHASES: tuple[str, ...] = ("forward_loss", "backward", "optimizer")


class TrainerStep:
    """One training step along ``sam3.train.trainer.Trainer``'s code path.

    Args:
        model: the model as the Trainer holds it (DDP-wrapped or not).
        batch: one ``BatchedDatapoint`` (what ``_step`` gets after ``popitem``).
        loss_fn: ``Sam3LossWrapper``.
        optim: SAM3's ``Optimizer`` wrapper (from ``construct_optimizer``).
        clipper: ``GradientClipper`` or None.
        device: where the model is.
        amp: bf16 autocast (and an enabled ``GradScaler``, as with ``optim.amp.enabled``).
        total_steps: steps of the run, for ``step_schedulers``' ``where`` (< 1).
    """

    def __init__(self, model, batch, loss_fn, optim, clipper, device, amp: bool, total_steps: int) -> None:
        import torch

        self.model, self.batch, self.loss_fn = model, batch, loss_fn
        self.optim, self.clipper, self.device, self.amp = optim, clipper, device, amp
        self.total_steps = total_steps
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)
        self.steps = 0

    def _sync(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def __call__(self, phase_context: Optional[Callable[[str], ContextManager]] = None) -> dict[str, float]:
        """Run one step; returns the seconds of each phase, ``total_s`` and the loss.

        Args:
            phase_context: called with each phase name (:data:`PHASES`); the phase runs
                inside the context manager it returns (e.g. a FLOP counter).
        """
        import torch
        from sam3.model.utils.misc import copy_data_to_device
        from sam3.train.loss.loss_fns import CORE_LOSS_KEY
        from sam3.train.trainer import unwrap_ddp_if_wrapped

        phase = phase_context or (lambda name: contextlib.nullcontext())
        t0 = self._sync()
        c0 = time.process_time()
        with phase("forward_loss"):
            self.optim.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                batch = copy_data_to_device(self.batch, self.device, non_blocking=True)
                find_stages = self.model(batch)
                find_targets = [unwrap_ddp_if_wrapped(self.model).back_convert(x)
                                for x in batch.find_targets]
                loss = self.loss_fn(find_stages, find_targets)
                loss = loss.pop(CORE_LOSS_KEY) if isinstance(loss, dict) else loss
            value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"Loss is {value}")
        t1 = self._sync()
        with phase("backward"):
            self.scaler.scale(loss).backward()
        del loss, find_stages
        t2 = self._sync()
        with phase("optimizer"):
            where = self.steps / self.total_steps
            self.optim.step_schedulers(where, step=self.steps)
            if self.clipper is not None:
                self.scaler.unscale_(self.optim.optimizer)
                self.clipper(model=self.model)
            self.scaler.step(self.optim.optimizer)
            self.scaler.update()
        t3 = self._sync()
        self.steps += 1
        return {"forward_loss": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2,
                "total_s": t3 - t0, "cpu_s": time.process_time() - c0, "loss": value}

    def checkpoint(self, skip_patterns: Sequence[str]) -> dict[str, Any]:
        """The dict ``Trainer.save_checkpoint`` builds (``epoch`` 1, no meters)."""
        from sam3.train.trainer import unwrap_ddp_if_wrapped
        from sam3.train.utils.checkpoint_utils import (
            assert_skipped_parameters_are_frozen,
            exclude_params_matching_unix_pattern,
        )

        model = unwrap_ddp_if_wrapped(self.model)
        if skip_patterns:
            assert_skipped_parameters_are_frozen(model, list(skip_patterns))
        state_dict = exclude_params_matching_unix_pattern(
            patterns=list(skip_patterns), state_dict=model.state_dict())
        ckpt = {
            "model": state_dict,
            "optimizer": self.optim.optimizer.state_dict(),
            "epoch": 1,
            "loss": self.loss_fn.state_dict(),
            "steps": {"train": self.steps, "val": 0},
            "time_elapsed": 0.0,
            "best_meter_values": {},
        }
        if self.amp:
            ckpt["scaler"] = self.scaler.state_dict()
        return ckpt
