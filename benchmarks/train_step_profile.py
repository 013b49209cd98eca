"""Where a training step's compute goes (``benchmarks/train_step.py --profile``): FLOPs by
phase, aten op and SAM3 module, and ``torch.profiler``'s table of the top ops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train_step_trainer import PHASES, TrainerStep

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
