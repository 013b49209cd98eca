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
    (c) ``build_lora_sam3`` with ``LoraConfig(preset="default")`` (rank 8: every attention
    and feed-forward layer of every component but scoring, text encoder included: the
    layers of ``attention_mlp``); adapter-only checkpoints.
``lora_image_mlp``
    (d) ``LoraConfig(preset="image_mlp")``: attention and feed-forward layers of the ViT
    trunk, fusion encoder and decoder only (the default before 2026-11-30; reports written
    before then call it ``lora_default``).

Every other preset runs as ``lora_<preset>`` when named in ``--configs``.

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

The parts: ``train_step_model`` (configurations, models, optimizer), ``train_step_trainer``
(the step), ``train_step_measure`` (one configuration in its process), ``train_step_memory``
and ``train_step_profile`` (where memory and FLOPs go), ``train_step_report`` (ratios, goals,
table, PNG); ``harness`` (what every benchmark shares).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from harness import report_header, run_child, write_json, write_report
from train_step_measure import run_config
from train_step_model import CONFIGS, EXTRA_CONFIGS
from train_step_report import (GOAL_CONFIG, GOALS, format_table, gib, goals_from, memory_key, plot,
                               ratios_from)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"size": "full", "resolution": 336, "steps": 3, "warmup": 1},
    "cuda": {"size": "full", "resolution": 1008, "steps": 20, "warmup": 3},
    "quick": {"size": "tiny", "resolution": 112, "steps": 2, "warmup": 1},
}


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


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line; fill device-dependent (or ``--quick``) defaults."""
    parser = argparse.ArgumentParser(
        description=(
            "Measure one SAM3 training step (forward, SAM3 loss, backward, AdamW step, "
            "through the SAM3 Trainer's code path) of the full-size SAM3 architecture "
            "(random init, batch 1) for: full_ft (all parameters), frozen_base (backbone "
            "frozen, fusion encoder/decoder/heads trained, no adapters), lora_default "
            "(preset 'default') and lora_image_mlp (preset 'image_mlp'); lora_<preset> for any "
            "other preset. Reports "
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
            write_json(args.child_out, result)
        return result

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for config in args.configs:
        results[config] = r = launch(args, config)
        print(f"[train_step] {config}: median {r['median_s']:.3f} s, peak tensor memory "
              f"{gib(r.get('tensor_peak_bytes'))} GiB (RSS {gib(r['peak_rss_bytes'])} GiB), "
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
