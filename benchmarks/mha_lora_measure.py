"""What ``benchmarks/mha_lora.py`` measures of each configuration: that the three compute
the same thing, the time of a training step (round-robin), its peak allocator bytes and
the activations autograd saves."""

from __future__ import annotations

import gc
import time

import torch
from torch import Tensor, nn

from harness import profiler_peak_bytes, synchronize
from mha_lora_variants import VARIANTS, Inputs, copy_factors, lora_modules, randomize_lora_b

#: Max abs difference allowed between the two LoRA variants' outputs.
OUTPUT_TOL = 1e-4


def reset_grads(layer: nn.Module, inputs: Inputs) -> None:
    """``zero_grad(set_to_none=True)`` on the layer and the inputs."""
    layer.zero_grad(set_to_none=True)
    for value in inputs.values():
        if isinstance(value, Tensor):
            value.grad = None


def train_step(layer: nn.Module, inputs: Inputs, autocast_dtype: torch.dtype | None) -> Tensor:
    """Forward, ``loss = out.float().square().mean()``, backward; returns the output."""
    device_type = inputs["tgt"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = layer(**inputs)
    out.float().square().mean().backward()
    return out.detach()


def _grads(layer: nn.Module, inputs: Inputs) -> dict[str, Tensor]:
    """Input gradients and adapter gradients keyed by ``<mha>.<A|B>.<target>``."""
    grads = {k: v.grad.clone() for k, v in inputs.items() if isinstance(v, Tensor) and v.grad is not None}
    for name, module in lora_modules(layer).items():
        for target in module.lora_A:
            grads[f"{name}.A.{target}"] = module.lora_A[target].weight.grad.clone()
            grads[f"{name}.B.{target}"] = module.lora_B[target].weight.grad.clone()
    return grads


def _run(layer: nn.Module, inputs: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
    """Deterministic fp32 step (eval mode: no dropout); output and gradients."""
    was_training = layer.training
    layer.eval()
    try:
        reset_grads(layer, inputs)
        out = train_step(layer, inputs, None)
        return out, _grads(layer, inputs)
    finally:
        layer.train(was_training)
        reset_grads(layer, inputs)


def _require(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def check_equivalence(variants: dict[str, nn.Module], inputs: Inputs, seed: int) -> dict[str, float]:
    """Assert the three variants compute the same thing; leaves ``B`` random.

    1. ``B = 0``: both LoRA variants equal the frozen base (output and input grads).
    2. Random ``B`` (copied into merge-in-forward): the LoRA output differs from the
       base, and activation path == merge-in-forward within :data:`OUTPUT_TOL`, with
       matching input and adapter gradients (relative 1e-3 of the largest entry).

    Returns:
        The measured max abs differences, for the report.

    Raises:
        AssertionError: On any mismatch.
    """
    base, act, merge = (variants[v] for v in VARIANTS)
    copy_factors(act, merge)
    out_base, g_base = _run(base, inputs)
    report: dict[str, float] = {}
    for name, layer in (("lora_activation", act), ("lora_merge_in_forward", merge)):
        out, grads = _run(layer, inputs)
        report[f"{name}_vs_base_b0"] = d = _max_diff(out, out_base)
        _require(d <= 1e-5, f"{name} with B=0 differs from the frozen base by {d:.3g}")
        for key, g in g_base.items():
            gd = _max_diff(grads[key], g)
            _require(gd <= 1e-5, f"{name} with B=0: grad of {key} differs from the base by {gd:.3g}")

    randomize_lora_b(act, torch.Generator().manual_seed(seed + 1))
    copy_factors(act, merge)
    out_act, g_act = _run(act, inputs)
    out_merge, g_merge = _run(merge, inputs)
    report["lora_activation_vs_base"] = delta = _max_diff(out_act, out_base)
    _require(delta > 1e-3, f"random B changed the output by only {delta:.3g}: the check would be vacuous")
    report["lora_activation_vs_merge_in_forward"] = d = _max_diff(out_act, out_merge)
    _require(d <= OUTPUT_TOL, f"activation path and merge-in-forward outputs differ by {d:.3g} > {OUTPUT_TOL}")
    worst = 0.0
    for key, g in g_act.items():
        rel = _max_diff(g, g_merge[key]) / max(g.abs().max().item(), 1e-12)
        _require(rel <= 1e-3, f"gradient of {key}: activation vs merge-in-forward relative diff {rel:.3g}")
        worst = max(worst, rel)
    report["grad_rel_diff_activation_vs_merge_in_forward"] = worst
    return report


def time_variants(
    variants: dict[str, nn.Module], inputs: Inputs, *, warmup: int, repeats: int,
    autocast_dtype: torch.dtype | None,
) -> dict[str, list[float]]:
    """Seconds per training step, variants interleaved round-robin (rotating start)."""
    device = inputs["tgt"].device
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            reset_grads(variants[name], inputs)
            train_step(variants[name], inputs, autocast_dtype)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            layer = variants[name]
            reset_grads(layer, inputs)
            synchronize(device)
            start = time.perf_counter()
            train_step(layer, inputs, autocast_dtype)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    for layer in variants.values():
        reset_grads(layer, inputs)
    return times


def peak_step_memory(layer: nn.Module, inputs: Inputs, autocast_dtype: torch.dtype | None) -> int:
    """Peak allocator bytes of one training step above the bytes live at its start."""
    device = inputs["tgt"].device
    reset_grads(layer, inputs)
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        train_step(layer, inputs, autocast_dtype)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
    else:
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            train_step(layer, inputs, autocast_dtype)
        peak = profiler_peak_bytes(prof)
    reset_grads(layer, inputs)
    return peak


def saved_activation_bytes(layer: nn.Module, inputs: Inputs, autocast_dtype: torch.dtype | None) -> int:
    """Bytes of distinct storages saved for backward (parameters and inputs excluded)."""
    own = {t.untyped_storage().data_ptr() for t in (*layer.parameters(), *layer.buffers())}
    own |= {v.untyped_storage().data_ptr() for v in inputs.values() if isinstance(v, Tensor)}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    reset_grads(layer, inputs)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_step(layer, inputs, autocast_dtype)
    reset_grads(layer, inputs)
    return sum(saved.values())
