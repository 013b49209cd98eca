#!/usr/bin/env python
"""Cost of one SAM3 training step: full fine-tune vs frozen base vs LoRA.

The full-size SAM3 image model (``sam3_lora_plugin.build_sam3_arch("full")``: ViT-L/14
trunk, 24-layer text encoder, fusion encoder, DETR decoder, geometry encoder, mask
head; ~840M parameters, random init, since cost does not depend on the weights) is
trained for a few steps on a real SAM3 batch (synthetic COCO through SAM3's own
dataset, transforms and collator) with SAM3's loss, in four configurations:

``full_ft``
    (a) every parameter trainable.
``frozen_base``
    (b) no adapters; the backbone (``backbone.*``: vision trunk + neck, text encoder)
    frozen, and everything SAM3's own configs train at the transformer learning rate
    trainable: fusion encoder, decoder, geometry encoder, segmentation head and
    scoring MLP. Checkpoints use the stock ``checkpoint.skip_saving_parameters:
    ["backbone.*"]``, so the frozen backbone is not written.
``lora_default``
    (c) ``build_lora_sam3`` with ``LoraConfig(preset="default")`` (rank 8: q, k, v, out
    of the ViT trunk, fusion encoder and decoder); adapter-only checkpoints.
``lora_attention_mlp``
    (d) ``LoraConfig(preset="attention_mlp")``: every attention and feed-forward layer
    of every component but scoring, text encoder included.

Each configuration runs in its own process (this script re-invokes itself with
``--only CONFIG``), so the peak-memory figures of one are not those of another.

One step is the code path of SAM3's ``Trainer`` (``_run_step``, ``_step`` and
``train_epoch`` of ``sam3.train.trainer``), with the optimizer section of
``configs/lora/smoke_cpu.yaml``:

1. ``optim.zero_grad(set_to_none=True)``;
2. under ``torch.autocast(dtype=bfloat16, enabled=--amp)``: ``copy_data_to_device``,
   ``model(batch)``, ``back_convert`` of the targets, ``Sam3LossWrapper`` (boxes, GIoU,
   CE, presence, mask focal + dice); ``loss.item()`` finiteness check;
3. ``GradScaler.scale(loss).backward()``;
4. ``step_schedulers``; ``GradScaler.unscale_`` + ``GradientClipper(max_norm=0.1)``;
   ``GradScaler.step(AdamW)``; ``GradScaler.update()``.

The optimizer comes from SAM3's ``construct_optimizer`` (constant lr and weight decay;
``sam3_lora_plugin.trainer.param_groups.lora_param_groups`` for every configuration with frozen
parameters). The Trainer's autocast always names ``device_type="cuda"``; here it is the
model's device type, so ``--amp`` also means bf16 on CPU.

The Trainer also wraps the model in ``DistributedDataParallel`` even on one process.
That is off by default here (``--ddp`` turns it on): with the segmentation head
trainable (``full_ft``, ``frozen_base``) the 1-process DDP step fails on the second
step, because ``segmentation_head.semantic_seg_head`` produces an output that the
smoke loss (no semantic-segmentation term) never uses and DDP cannot find the output
tensors inside ``SAM3Output`` to detect that. On one process DDP adds no communication
that matters for cost.

Measured per configuration:

* **step time**: wall clock of steps 1-4 (CUDA synchronised), median and IQR over
  ``--steps`` steps after ``--warmup`` untimed steps; also split into forward+loss,
  backward and optimizer (clip + AdamW) phases. Beside it, the process CPU time of
  the step (``time.process_time``, all threads): on a machine shared with other jobs
  the wall clock of each configuration depends on the load while it ran (each runs
  minutes apart), the CPU time less so, and other jobs only ever add time, so
  ``cpu_time_vs_full`` and ``time_min_vs_full`` (fastest steps) cross-check
  ``time_vs_full``; the goal uses the median wall clock. ``others_cores`` records the
  CPU cores other processes used during each timed step (``/proc/stat``),
  ``loadavg_1min`` the load before and after the steps; ``--wait-idle`` starts each
  timed step only once the machine is idle (up to a limit).
* **peak memory**: the process's peak RSS (``VmHWM`` of ``/proc/self/status``; the
  process's ``ru_maxrss`` where there is no procfs), which includes the build; the
  RSS after building model, optimizer, loss and batch; and the peak RSS of the steps
  alone (``VmHWM`` reset through ``/proc/self/clear_refs`` after the build). With a
  GPU: ``torch.cuda.max_memory_allocated`` (weights included), which the memory goal
  uses there instead of RSS.
* **trainable parameters**.
* **checkpoint bytes**: ``torch.save`` of the dict SAM3's ``Trainer.save_checkpoint``
  writes after the steps (model ``state_dict``, optimizer state, epoch, loss, steps,
  ..., scaler with ``--amp``), counted by a byte-counting file object (nothing is
  written to disk). LoRA models' ``state_dict`` is adapter-only, and AdamW holds
  moments for trainable parameters only.

With ``--profile``, two more steps per configuration count FLOPs per phase, per aten
op and per SAM3 module (``torch.utils.flop_counter.FlopCounterMode``; into the JSON)
and run under ``torch.profiler`` (top ops, into ``train_step_profile_<config>.txt``).
FLOPs do not depend on the machine's load, so they tell where a step's compute goes,
and what LoRA saves, even where the wall clock is noisy.

Ratios are to ``full_ft``. Goals (issue, on CPU) for ``lora_default``: peak memory
<= 0.45x, step time <= 0.75x and checkpoint <= 1.5% of the full fine-tune's.

Defaults: on CPU 336 px, 3 timed steps after 1 warm-up step, fp32 (full FT at 336 px
needs ~17 GB and ~1 min a step on 2 cores); on CUDA 1008 px (SAM3's training
resolution), 20 steps after 3, bf16 autocast. Batch size 1.

Usage (from the repository root)::

    python benchmarks/train_step.py                        # writes benchmarks/results/
    python benchmarks/train_step.py --configs full_ft lora_default --steps 3
    python benchmarks/train_step.py --device cuda          # 1008 px, bf16 autocast
    python benchmarks/train_step.py --profile              # + FLOPs and torch.profiler tables
    python benchmarks/train_step.py --quick --out /tmp/b   # tiny model, for tests
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

from harness import (OtherLoad, current_rss_bytes, get_pyplot, loadavg_1min, peak_rss_bytes, report_header, reset_peak_rss, run_child, save_figure,
                     saved_bytes, summarize_seconds, wait_for_idle, write_report)
from tensor_memory import TensorMemoryTracker

CONFIGS: tuple[str, ...] = ("full_ft", "frozen_base", "lora_default", "lora_attention_mlp")
#: More configurations, run only when named in ``--configs``: the memory-tier presets.
EXTRA_CONFIGS: tuple[str, ...] = ("lora_trunk_last8", "lora_low_memory")
#: LoRA preset of each LoRA configuration.
LORA_PRESETS: dict[str, str] = {"lora_default": "default", "lora_attention_mlp": "attention_mlp",
                                "lora_trunk_last8": "trunk_last8", "lora_low_memory": "low_memory"}
#: Parameters frozen in ``frozen_base`` (and not checkpointed, via skip_saving_parameters).
FROZEN_BASE_PATTERNS: tuple[str, ...] = ("backbone.*",)
#: The configuration the goals are about, and the goals (ratios to ``full_ft``).
GOAL_CONFIG = "lora_default"
GOALS: dict[str, float] = {"peak_memory_vs_full_max": 0.45, "time_vs_full_max": 0.75,
                           "checkpoint_vs_full_max": 0.015}
PHASES: tuple[str, ...] = ("forward_loss", "backward", "optimizer")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"size": "full", "resolution": 336, "steps": 3, "warmup": 1},
    "cuda": {"size": "full", "resolution": 1008, "steps": 20, "warmup": 3},
    "quick": {"size": "tiny", "resolution": 112, "steps": 2, "warmup": 1},
}


# ------------------------------------------------------------------------ model
def build_model(config: str, size: str, resolution: int, seed: int, rank: int,
                frozen_base_dtype: Optional[str] = None, dropout: float = 0.1):
    """The SAM3 model of one configuration, trainable parameters set, in train mode.

    ``dropout`` is ``build_sam3_arch``'s (stock 0.1). On CPU, attention dropout > 0 makes
    torch's ``scaled_dot_product_attention`` take its math kernel, which keeps the whole
    attention matrix (at 1008 px 5,184 x 5,184 per head and prompt) for backward; CUDA's
    fused kernels apply dropout without it. ``--dropout 0`` lets the CPU use its fused
    flash kernel too: the CPU stand-in for the memory a GPU run needs.

    Returns:
        ``(model, skip_saving_parameters)``: the patterns the Trainer's
        ``checkpoint.skip_saving_parameters`` would hold for this configuration.
    """
    from sam3_lora_plugin.models.arch import build_sam3_arch
    from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

    model = build_sam3_arch(size, resolution, seed=seed, dropout=dropout)
    skip: list[str] = []
    if config == "frozen_base":
        import fnmatch

        for name, p in model.named_parameters():
            p.requires_grad_(not any(fnmatch.fnmatch(name, pat) for pat in FROZEN_BASE_PATTERNS))
        skip = list(FROZEN_BASE_PATTERNS)
    elif config in LORA_PRESETS:
        model = build_lora_sam3(model, {"preset": LORA_PRESETS[config], "rank": rank,
                                        "alpha": 2.0 * rank}, adapter_only_checkpoints=True,
                                frozen_base_dtype=frozen_base_dtype)
    elif config != "full_ft":
        raise ValueError(f"unknown configuration {config!r}; choose from {CONFIGS + EXTRA_CONFIGS}")
    return model.train(), skip


def build_optimizer(model, config: str):
    """SAM3's ``construct_optimizer`` with ``smoke_cpu.yaml``'s optimizer options.

    ``full_ft`` gets no param-group modifier (every parameter trains); the others get
    ``lora_param_groups`` (frozen parameters in a zero-lr group, as the Trainer requires
    every parameter in a group).
    """
    from sam3.train.optim.optimizer import construct_optimizer

    from sam3_lora_plugin.testing import get_optim_config

    optim_cfg = get_optim_config()
    modifiers = None if config == "full_ft" else optim_cfg.param_group_modifiers
    return construct_optimizer(model, optim_cfg.optimizer, optim_cfg.options, modifiers), optim_cfg


def describe_trainable(model) -> dict[str, Any]:
    """Trainable / total parameter counts, and trainable counts per top-level module."""
    per_module: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = ".".join(name.split(".")[:2]) if name.startswith("backbone.") else name.split(".")[0]
            per_module[top] = per_module.get(top, 0) + p.numel()
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_by_module": dict(sorted(per_module.items())),
    }


# ------------------------------------------------------------------------ one step
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
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
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


# ------------------------------------------------------------------------ tensor memory
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


# ------------------------------------------------------------------------ child
def run_config(args: argparse.Namespace, config: str) -> dict[str, Any]:
    """Build, train ``warmup + steps`` steps and measure one configuration (this process)."""
    import torch

    from sam3_lora_plugin.testing import make_batch, make_loss, single_process_group
    from sam3_lora_plugin.trainer.cpu_fallbacks import enable_cpu_fallbacks

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    enable_cpu_fallbacks(device.type)  # keyed to this run's device, not to the machine
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rss_start = current_rss_bytes()
    start = time.perf_counter()
    with single_process_group("nccl" if device.type == "cuda" else "gloo"):
        model, skip = build_model(config, args.size, args.resolution, args.seed, args.rank,
                                  args.frozen_base_dtype, args.dropout)
        info = describe_trainable(model)
        model = model.to(device)
        num_queries = model.transformer.decoder.num_queries
        optim, optim_cfg = build_optimizer(model, config)
        from hydra.utils import instantiate

        clipper = instantiate(optim_cfg.gradient_clip) if optim_cfg.get("gradient_clip") else None
        if args.ddp:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index or 0] if device.type == "cuda" else [],
                find_unused_parameters=True, gradient_as_bucket_view=True)
        loss_fn = make_loss(num_queries=num_queries).to(device)
        with tempfile.TemporaryDirectory() as tmp:
            batch = make_batch(tmp, training=True, batch_size=1, dict_key="all",
                               seed=args.seed, resolution=args.resolution)["all"]
        step = TrainerStep(model, batch, loss_fn, optim, clipper, device, args.amp,
                           total_steps=args.warmup + args.steps + 3)  # + 2 profiled steps
        build_s = time.perf_counter() - start
        rss_after_build = current_rss_bytes()
        peak_rss_build = peak_rss_bytes()
        steps_peak_ok = reset_peak_rss()
        if device.type == "cuda":
            cuda_after_build = torch.cuda.memory_allocated(device)
        load_start = loadavg_1min()
        torch.manual_seed(args.seed)
        for _ in range(args.warmup):
            step()
        records = []
        for _ in range(args.steps):
            waited = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else None
            meter = OtherLoad()
            record = step()
            record["others_cores"] = meter.stop()
            record["waited_s"] = waited
            records.append(record)
        peak_rss_steps = peak_rss_bytes()
        peak_rss = max(peak_rss_build, peak_rss_steps)
        tensor_memory = measure_tensor_memory(step) if args.tensor_memory else None
        if not records:  # --steps 0: the tracked step is the only one (timed with the tracker on)
            records = [{**tensor_memory["step_record"], "others_cores": None, "waited_s": None}]
        result: dict[str, Any] = {
            "config": config,
            "lora_preset": LORA_PRESETS.get(config),
            "frozen_base_dtype": args.frozen_base_dtype if config in LORA_PRESETS else None,
            "frozen_patterns": list(FROZEN_BASE_PATTERNS) if config == "frozen_base" else [],
            "skip_saving_parameters": skip,
            **info,
            **summarize_seconds([r["total_s"] for r in records]),
            "times_s": [r["total_s"] for r in records],
            "phases_median_s": {p: statistics.median(r[p] for r in records) for p in PHASES},
            "cpu_times_s": [r["cpu_s"] for r in records],
            # CPU cores other processes used during each timed step (/proc/stat), and
            # how long each step waited for an idle machine (--wait-idle).
            "others_cores": [r["others_cores"] for r in records],
            "waited_s": [r["waited_s"] for r in records],
            "cpu_median_s": statistics.median(r["cpu_s"] for r in records),
            "losses": [r["loss"] for r in records],
            "build_s": build_s,
            # 1-minute load average before / after the steps: other processes on the
            # machine inflate step times (an OpenMP region waits for its slowest thread).
            "loadavg_1min": [load_start, loadavg_1min()],
            "rss_at_start_bytes": rss_start,
            "rss_after_build_bytes": rss_after_build,
            "peak_rss_build_bytes": peak_rss_build,
            "peak_rss_steps_bytes": peak_rss_steps if steps_peak_ok else None,
            "peak_rss_bytes": peak_rss,
            "cuda_after_build_bytes": cuda_after_build if device.type == "cuda" else None,
            "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "times_include_tracker": args.steps == 0,
            "tensor_memory": tensor_memory,
            "tensor_peak_bytes": tensor_memory["peak_bytes"] if tensor_memory else None,
        }
        ckpt = step.checkpoint(skip)
        result["checkpoint_model_bytes"] = saved_bytes(ckpt["model"])
        result["checkpoint_optimizer_bytes"] = saved_bytes(ckpt["optimizer"])
        result["checkpoint_bytes"] = saved_bytes(ckpt)
        del ckpt
        if args.profile:
            result["profile"] = profile_step(step, args.out / f"train_step_profile_{config}.txt")
    return result


#: Modules whose forward FLOPs ``--profile`` reports (names under the model root).
PROFILE_MODULES: tuple[str, ...] = (
    "backbone.vision_backbone.trunk", "backbone.language_backbone", "transformer.encoder",
    "transformer.decoder", "geometry_encoder", "segmentation_head", "dot_prod_scoring")


def count_step_flops(step: TrainerStep) -> dict[str, Any]:
    """FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``).

    Returns ``total`` (per phase), ``by_op`` (per phase, per aten op) and
    ``forward_by_module`` (forward+loss phase, per :data:`PROFILE_MODULES`; ``other`` is
    the vision neck, the loss, the matcher and glue code). Backward FLOPs include the
    forward recomputation of the activation-checkpointed blocks; they are not split by
    module (the counter's module attribution is unreliable in backward). Only matmuls,
    convolutions and attention are counted: the optimizer phase (memory-bound AdamW,
    gradient clipping) counts ~0 although it takes time.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counters: dict[str, FlopCounterMode] = {}

    def phase_context(name: str) -> FlopCounterMode:
        counters[name] = FlopCounterMode(display=False, depth=None)
        return counters[name]

    step(phase_context)
    total = {name: int(c.get_total_flops()) for name, c in counters.items()}
    by_op = {name: {str(op): int(n) for op, n in sorted(c.get_flop_counts().get("Global", {}).items(),
                                                         key=lambda kv: -kv[1])}
             for name, c in counters.items()}
    counts = {k: sum(v.values()) for k, v in counters["forward_loss"].get_flop_counts().items()}
    root = next((k for k in counts if k != "Global" and "." not in k), "")
    forward_by_module = {m: int(counts.get(f"{root}.{m}", 0)) for m in PROFILE_MODULES}
    forward_by_module["other"] = total["forward_loss"] - sum(forward_by_module.values())
    return {"total": total, "by_op": by_op, "forward_by_module": forward_by_module}


def profile_step(step: TrainerStep, path: Path) -> dict[str, Any]:
    """Profile two more steps: FLOPs by phase and module, then ``torch.profiler``'s top ops.

    Writes a text report to ``path``; returns the FLOP counts and the file name.
    """
    from torch.profiler import ProfilerActivity, profile

    flops = count_step_flops(step)
    activities = [ProfilerActivity.CPU]
    if step.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=False) as prof:
        phases = step()
    sort = "self_cuda_time_total" if step.device.type == "cuda" else "self_cpu_time_total"
    lines = [f"phases of the profiled step (s): {json.dumps(phases)}", "",
             "GFLOP per phase (backward includes activation-checkpoint recompute):"]
    lines += [f"  {p:<14}{flops['total'].get(p, 0) / 1e9:>10.1f}" for p in PHASES]
    for p in PHASES:
        top = list(flops["by_op"].get(p, {}).items())[:6]
        if top:
            lines.append(f"  {p} by op: " + ", ".join(f"{op} {n / 1e9:.1f}" for op, n in top))
    lines += ["", "forward+loss GFLOP by module:"]
    lines += [f"  {m:<32}{n / 1e9:>10.1f}" for m, n in flops["forward_by_module"].items()]
    lines += ["", prof.key_averages().table(sort_by=sort, row_limit=40)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return {**flops, "file": path.name}


# ------------------------------------------------------------------------ parent
def launch(args: argparse.Namespace, config: str) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter (clean peak memory); its result."""
    return run_child(__file__, config, child_argv(args), "train_step")


def child_argv(args: argparse.Namespace) -> list[str]:
    """The settings of a run as explicit command-line arguments for a child."""
    argv = ["--size", args.size, "--resolution", str(args.resolution), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--device", args.device, "--threads", str(args.threads),
            "--seed", str(args.seed), "--rank", str(args.rank), "--out", str(args.out),
            "--dropout", str(args.dropout),
            "--wait-idle", str(args.wait_idle),
            "--amp" if args.amp else "--no-amp", "--ddp" if args.ddp else "--no-ddp",
            "--tensor-memory" if args.tensor_memory else "--no-tensor-memory"]
    if args.frozen_base_dtype:
        argv += ["--frozen-base-dtype", args.frozen_base_dtype]
    return argv + (["--profile"] if args.profile else [])


def memory_key(results: dict[str, dict[str, Any]]) -> str:
    """The peak-memory figure the goals use: live tensor bytes. ``max_memory_allocated`` on
    CUDA; on CPU the allocator-level tracker's peak (``tensor_memory.py``); peak RSS only
    for runs made with ``--no-tensor-memory`` (RSS counts malloc caching, not tensors)."""
    if all(r.get("cuda_peak_bytes") for r in results.values()):
        return "cuda_peak_bytes"
    if all(r.get("tensor_peak_bytes") for r in results.values()):
        return "tensor_peak_bytes"
    return "peak_rss_bytes"


def ratios_from(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each configuration's figures divided by ``full_ft``'s."""
    if "full_ft" not in results:
        return {}
    full, mem = results["full_ft"], memory_key(results)
    out = {}
    for name, r in results.items():
        ratios = {
            "time_vs_full": r["median_s"] / full["median_s"],
            "time_min_vs_full": r["min_s"] / full["min_s"],
            "cpu_time_vs_full": r["cpu_median_s"] / full["cpu_median_s"],
            "peak_memory_vs_full": r[mem] / full[mem],
            "peak_rss_vs_full": r["peak_rss_bytes"] / full["peak_rss_bytes"],
            "checkpoint_vs_full": r["checkpoint_bytes"] / full["checkpoint_bytes"],
            "trainable_vs_full": r["trainable_params"] / full["trainable_params"],
        }
        if r.get("peak_rss_steps_bytes") and full.get("peak_rss_steps_bytes"):
            ratios["peak_rss_steps_vs_full"] = r["peak_rss_steps_bytes"] / full["peak_rss_steps_bytes"]
        if r.get("profile") and full.get("profile"):
            ratios["flops_vs_full"] = (sum(r["profile"]["total"].values())
                                       / sum(full["profile"]["total"].values()))
        if r.get("cuda_peak_bytes") and full.get("cuda_peak_bytes"):
            ratios["cuda_peak_vs_full"] = r["cuda_peak_bytes"] / full["cuda_peak_bytes"]
        out[name] = ratios
    return out


def goals_from(ratios: dict[str, dict[str, float]]) -> dict[str, Optional[bool]]:
    """Which goals ``lora_default`` meets (None where it or ``full_ft`` was not run)."""
    r = ratios.get(GOAL_CONFIG)
    keys = {"peak_memory_vs_full_max": "peak_memory_vs_full", "time_vs_full_max": "time_vs_full",
            "checkpoint_vs_full_max": "checkpoint_vs_full"}
    return {f"{keys[g]}_le_{limit}": (None if r is None else r[keys[g]] <= limit)
            for g, limit in GOALS.items()}


def _median_or_dash(values: Optional[Sequence[Optional[float]]]) -> str:
    values = [v for v in values or [] if v is not None]
    return f"{statistics.median(values):.2f}" if values else "-"


def _gib(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def format_table(results: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]],
                 goals: dict[str, Optional[bool]]) -> str:
    """Human-readable table, ratios to full fine-tune and goal verdicts."""
    mem = memory_key(results)
    lines = [f"{'config':<20}{'median s':>9}{'min s':>8}{'IQR s':>7}{'fwd s':>7}{'bwd s':>7}{'opt s':>7}{'CPU s':>8}{'others':>7}"
             f"{'RSS0 GiB':>9}{'RSS GiB':>9}{'tensor GiB':>11}{'CUDA GiB':>9}{'trainable':>13}{'ckpt MiB':>10}"]
    for name, r in results.items():
        ph = r["phases_median_s"]
        lines.append(
            f"{name:<20}{r['median_s']:>9.2f}{r['min_s']:>8.2f}{r['iqr_s']:>7.2f}{ph['forward_loss']:>7.2f}"
            f"{ph['backward']:>7.2f}{ph['optimizer']:>7.2f}{r['cpu_median_s']:>8.2f}"
            f"{_median_or_dash(r.get('others_cores')):>7}"
            f"{_gib(r['rss_after_build_bytes']):>9}"
            f"{_gib(r['peak_rss_bytes']):>9}{_gib(r.get('tensor_peak_bytes')):>11}"
            f"{_gib(r.get('cuda_peak_bytes')):>9}"
            f"{r['trainable_params']:>13,}{r['checkpoint_bytes'] / 2**20:>10.1f}")
    if ratios:
        lines += ["", f"ratios to full_ft ({'peak memory = ' + mem})",
                  f"{'config':<20}{'time':>8}{'min time':>9}{'CPU time':>9}{'FLOPs':>8}{'memory':>8}"
                  f"{'ckpt':>9}{'trainable':>11}"]
        for name, q in ratios.items():
            flops = f"{q['flops_vs_full']:>8.3f}" if "flops_vs_full" in q else f"{'-':>8}"
            lines.append(f"{name:<20}{q['time_vs_full']:>8.3f}{q['time_min_vs_full']:>9.3f}"
                         f"{q['cpu_time_vs_full']:>9.3f}{flops}{q['peak_memory_vs_full']:>8.3f}"
                         f"{q['checkpoint_vs_full']:>9.4f}{q['trainable_vs_full']:>11.4f}")
    lines.append("")
    lines += [f"goal {GOAL_CONFIG} {k:<32}{'-' if ok is None else ('MET' if ok else 'NOT MET')}"
              for k, ok in goals.items()]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]],
         path: Path, title: str) -> None:
    """Bar charts relative to full fine-tune: step time (by phase), peak memory, checkpoint."""
    plt = get_pyplot()
    names = list(results)
    base = results.get("full_ft")
    mem = memory_key(results)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    ax_t, ax_m, ax_c = axes
    bottom = [0.0] * len(names)
    colors = {"forward_loss": "#2a7ab9", "backward": "#d9822b", "optimizer": "#5a9e4b"}
    for phase in PHASES:
        vals = [results[n]["phases_median_s"][phase] / (base["median_s"] if base else 1.0) for n in names]
        ax_t.bar(names, vals, bottom=bottom, color=colors[phase], label=phase)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, n in enumerate(names):
        ax_t.annotate(f"{results[n]['median_s']:.2f} s", (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax_t.set_ylim(0, max(bottom) * 1.3)  # room for the legend above the bars
    ax_t.legend(fontsize=7, loc="upper right", ncol=3)
    ax_t.set_ylabel("median step time" + (" / full_ft" if base else " (s)"))

    def bars(ax, key, label, fmt, goal):
        vals = [results[n][key] / (base[key] if base else 1.0) for n in names]
        ax.bar(names, vals, color="#888888")
        for i, n in enumerate(names):
            ax.annotate(fmt(results[n][key]), (i, vals[i]), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label + (" / full_ft" if base else ""))
        if base and goal is not None:
            ax.axhline(goal, color="#c0392b", linestyle="--", linewidth=1)
            ax.annotate(f"{GOAL_CONFIG} goal {goal:g}x", (len(names) - 0.5, goal), ha="right",
                        va="bottom", fontsize=7, color="#c0392b")

    if base:
        goal = GOALS["time_vs_full_max"]
        ax_t.axhline(goal, color="#c0392b", linestyle="--", linewidth=1)
        ax_t.annotate(f"{GOAL_CONFIG} goal {goal:g}x", (-0.4, goal), ha="left", va="bottom",
                      fontsize=7, color="#c0392b")
    bars(ax_m, mem, {"cuda_peak_bytes": "CUDA peak memory", "tensor_peak_bytes": "peak tensor memory"}
         .get(mem, "peak RSS"),
         lambda b: f"{b / 2**30:.2f} GiB", GOALS["peak_memory_vs_full_max"])
    bars(ax_c, "checkpoint_bytes", "checkpoint bytes", lambda b: f"{b / 2**20:.1f} MiB",
         GOALS["checkpoint_vs_full_max"])
    if base:
        ax_c.set_yscale("log")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    save_figure(fig, path, title)


# ------------------------------------------------------------------------ CLI
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line; fill device-dependent (or ``--quick``) defaults."""
    parser = argparse.ArgumentParser(
        description=(
            "Measure one SAM3 training step (forward, SAM3 loss, backward, AdamW step, "
            "through the SAM3 Trainer's code path) of the full-size SAM3 architecture "
            "(random init, batch 1) for: full_ft (all parameters), frozen_base (backbone "
            "frozen, fusion encoder/decoder/heads trained, no adapters), lora_default "
            "(preset 'default') and lora_attention_mlp (preset 'attention_mlp'). Reports "
            "median step time, peak RSS (and CUDA peak memory), trainable parameters and "
            "checkpoint bytes, with ratios to full_ft, as JSON and PNG. Goals for "
            f"lora_default: peak memory <= {GOALS['peak_memory_vs_full_max']}x, step time <= "
            f"{GOALS['time_vs_full_max']}x, checkpoint <= {GOALS['checkpoint_vs_full_max']:.1%} "
            "of full_ft. Each configuration runs in its own process."),
        epilog="See the module docstring (benchmarks/train_step.py) for what each figure is.",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny model for tests (still writes JSON/PNG): defaults become {DEFAULTS['quick']}")
    parser.add_argument("--frozen-base-dtype", choices=("bfloat16", "nf4"), default=None,
                        help="LoRA configurations: store frozen projection weights in bf16 (nf4: QLoRA) "
                             "(build_lora_sam3(frozen_base_dtype=...); needs --amp)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS + EXTRA_CONFIGS, default=list(CONFIGS),
                        help="configurations to run (default: all; ratios need full_ft)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda[:N] (default: cuda if available, else cpu)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="image side in px, multiple of 14 (default: 336 on CPU, 1008 on CUDA, 112 with --quick)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per configuration (default: 3 on CPU, 20 on CUDA, 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: 1 on CPU, 3 on CUDA, 1 with --quick)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast + GradScaler as the Trainer's optim.amp (default: on for CUDA, off on CPU)")
    parser.add_argument("--ddp", action=argparse.BooleanOptionalAction, default=False,
                        help="wrap the model in 1-process DistributedDataParallel as the Trainer does "
                             "(default: off; fails for full_ft/frozen_base with segmentation, see the docstring)")
    parser.add_argument("--size", choices=("full", "tiny"), default=None,
                        help="build_sam3_arch size (default: full; tiny with --quick)")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="dropout of the encoder/decoder layers (stock 0.1). On CPU, 0 lets "
                             "attention use torch's fused flash kernel as CUDA does with dropout; "
                             "> 0 takes the math kernel, which stores full attention matrices "
                             "(default: %(default)s)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank, alpha = 2 x rank (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each timed step, wait up to SECONDS until other processes use "
                             "< 0.2 CPU cores (for shared machines; default: %(default)s, no waiting)")
    parser.add_argument("--seed", type=int, default=0, help="weights, data and dropout seed (default: %(default)s)")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed steps, run two more per configuration: one counting FLOPs "
                             "by phase and SAM3 module (FlopCounterMode), one under torch.profiler; "
                             "writes train_step_profile_<config>.txt to --out and the FLOPs to the JSON")
    parser.add_argument("--tensor-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="after the timed steps, one more step under a tensor-memory tracker: peak "
                             "of live tensor bytes and its breakdown (default: on)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for train_step.json and train_step.png (default: benchmarks/results)")
    parser.add_argument("--tag", default="",
                        help="write train_step_<TAG>.json/.png instead of train_step.json/.png")
    parser.add_argument("--only", choices=CONFIGS + EXTRA_CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")
    for key, value in DEFAULTS[kind].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.amp is None:
        args.amp = args.device.startswith("cuda")
    if min(args.resolution, args.rank, args.threads) < 1 or min(args.warmup, args.steps) < 0:
        parser.error("--resolution/--rank/--threads must be >= 1, --steps/--warmup >= 0")
    if args.steps == 0 and not args.tensor_memory:
        parser.error("--steps 0 needs --tensor-memory (the tracked step is then the only step)")
    if args.resolution % 14:
        parser.error(f"--resolution must be a multiple of 14 (the patch size), got {args.resolution}")
    if args.frozen_base_dtype and not args.amp:
        parser.error("--frozen-base-dtype bfloat16 needs --amp (bf16 weights are only exact under bf16 autocast)")
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout {args.dropout} is not a dropout probability; pass a value in [0, 1), "
                     "e.g. 0 (the CPU stand-in for fused attention) or 0.1 (stock)")
    args.configs = [c for c in CONFIGS + EXTRA_CONFIGS if c in args.configs]
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the benchmark (or, with ``--only``, one configuration); returns the JSON dict."""
    args = parse_args(argv)
    if args.only:
        result = run_config(args, args.only)
        if args.child_out:
            args.child_out.write_text(json.dumps(result, indent=2))
        return result

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for config in args.configs:
        results[config] = r = launch(args, config)
        print(f"[train_step] {config}: median {r['median_s']:.3f} s, peak tensor memory "
              f"{_gib(r.get('tensor_peak_bytes'))} GiB (RSS {_gib(r['peak_rss_bytes'])} GiB), "
              f"trainable {r['trainable_params']:,}, "
              f"checkpoint {r['checkpoint_bytes']:,} B", flush=True)
    ratios = ratios_from(results)
    goals = goals_from(ratios)
    print(format_table(results, ratios, goals))
    report = {
        **report_header("train_step", args, args.device),
        "wall_s": time.perf_counter() - start,
        "memory_metric": memory_key(results),
        "step": ("Trainer code path: zero_grad(set_to_none) -> autocast(bf16 if amp) "
                 "[copy_data_to_device, model(batch), back_convert, Sam3LossWrapper] -> "
                 "loss.item() -> GradScaler.scale(loss).backward() -> step_schedulers -> "
                 "unscale_ + GradientClipper(0.1) -> GradScaler.step(AdamW) -> update"
                 + ("; model in 1-process DDP" if args.ddp else "")),
        "configs": results,
        "ratios_to_full_ft": ratios,
        "goals": {"config": GOAL_CONFIG, **GOALS, "met": goals},
    }
    stem = "train_step" + (f"_{args.tag}" if args.tag else "")
    write_report(args.out, stem, report)
    plot(results, ratios, args.out / f"{stem}.png",
         f"SAM3 {args.size} training step, {args.resolution} px, batch 1, "
         f"{'bf16 autocast' if args.amp else 'fp32'}, {args.device} x{args.threads} threads, "
         f"LoRA rank {args.rank}")
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.png')} "
          f"({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
