"""One configuration of ``benchmarks/train_step.py`` measured in this process (the child
that ``--only CONFIG`` runs): build, warm-up, timed steps, RSS, checkpoint bytes, and the
tensor-memory and FLOP breakdowns."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from sam3_lora_plugin.lora.config import PRESETS

from harness import (OtherLoad, current_rss_bytes, loadavg_1min, peak_rss_bytes, reset_peak_rss,
                     saved_bytes, summarize_seconds, wait_for_idle)
from train_step_memory import measure_tensor_memory
from train_step_model import (FROZEN_BASE_PATTERNS, LORA_PRESETS, build_model, build_optimizer,
                              describe_trainable)
from train_step_profile import profile_step
from train_step_trainer import PHASES, TrainerStep


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
            # what the preset stood for when measured (presets can change; the name stays)
            "lora_preset_spec": PRESETS.get(LORA_PRESETS.get(config) or ""),
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
