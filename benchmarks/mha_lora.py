#!/usr/bin/env python
"""Benchmark LoRA on SAM3's attention: activation path vs merge-in-forward vs frozen base.

One SAM3 fusion-encoder layer (``sam3.model.encoder.TransformerEncoderLayer`` at the
real size: d_model 256, 8 heads, FFN 2048, pre-norm, self-attention over the image
tokens then cross-attention to the text tokens) is run forward + backward in three
configurations, side by side in one process, with identical weights and inputs:

``frozen_base``
    No adapters; every parameter frozen. The input tokens require grad, so the
    backward pass runs through the layer as it does inside a network.
``lora_activation``
    This package's :func:`sam3_lora_plugin.lora.add_lora_to_mha` on both attention
    modules (targets q, k, v, out): the delta ``s·B(A x)`` is added on the activation
    path and ``F.scaled_dot_product_attention`` is kept.
``lora_merge_in_forward``
    PEFT's approach for ``nn.MultiheadAttention`` (``peft.tuners.lora.layer.
    MultiheadAttention``): on every forward the effective weights ``W + s·B A`` are
    built (q/k/v rows of ``in_proj_weight`` and ``out_proj.weight``) and the stock
    module runs with them (``F.multi_head_attention_forward``, which also uses SDPA).
    Autograd therefore produces a full ``out×in`` gradient of each merged weight and
    then back-propagates it into ``A`` and ``B``. Same factors, same targets.

The feed-forward Linears (``linear1``/``linear2``) are frozen and un-adapted in all
three variants, as with the plugin's default ``roles: [q, k, v, out]``.

Goals (from the issue): activation path <= 0.8x merge-in-forward median time, with
less peak memory; activation path <= 1.15x the frozen base median time.

What is measured:

* **time**: wall-clock of one training step (forward, ``loss =
  out.float().square().mean()``, backward; gradients reset to ``None`` outside the
  timed region), after ``--warmup`` steps per variant, ``--repeats`` rounds that run
  the variants round-robin (the start of the round rotates: ABC, BCA, CAB, ...) so
  machine noise hits all of them alike. Median and inter-quartile range are reported.
* **peak memory**: the peak number of bytes held by PyTorch's tensor allocator during
  one step, above what was allocated when the step started (weights and inputs are
  already there and are not counted; the autograd-saved activations, temporaries,
  merged weights and gradients produced by the step are). On CUDA this is
  ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` minus
  ``memory_allocated()`` at the start. On CPU, where PyTorch keeps no such counter,
  the step runs once under ``torch.profiler`` with ``profile_memory=True`` and the
  allocator's alloc/free events are replayed in time order (the running sum's
  maximum). It is deterministic, unlike process RSS (which also sees the malloc
  arena, oneDNN scratch buffers and the other engineer's processes).
* **saved activations**: bytes of the distinct tensor storages autograd saves for
  backward during the forward (``torch.autograd.graph.saved_tensors_hooks``),
  parameters and inputs excluded: the part of the peak that activation
  checkpointing trades for recomputation.

Before timing, the variants are checked against each other: with ``B = 0`` both LoRA
variants equal the frozen base; with random non-zero ``B`` the activation path and
merge-in-forward give the same output (max abs diff <= 1e-4) and the same adapter
and input gradients.

Attention dropout is 0 by default (``--dropout``): SAM3 builds the layer with 0.1,
but on CPU ``scaled_dot_product_attention`` with dropout falls back to the math
kernel, which materialises the 5184x5184 attention probabilities per head and
swamps everything else (~10x slower); on CUDA the flash kernel handles dropout.

On a shared machine, give ``--threads`` no more than the idle cores: an OpenMP
region waits for its slowest thread, so when another process holds a core every op
pays a scheduler time slice, which penalises the LoRA variants (more, smaller ops)
far beyond their real cost.

Usage (from the repository root)::

    python benchmarks/mha_lora.py              # real sizes, writes benchmarks/results/
    python benchmarks/mha_lora.py --quick --out /tmp/bench
    python benchmarks/mha_lora.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sam3_lora_plugin.models.arch import SIZES, _transformer
from harness import (get_pyplot, profiler_peak_bytes, report_header, save_figure, summarize_seconds,
                     write_report)
from sam3_lora_plugin.lora import MHA_TARGETS, add_lora_to_mha

VARIANTS: tuple[str, ...] = ("frozen_base", "lora_activation", "lora_merge_in_forward")
#: Goal: activation-path median time <= this x merge-in-forward's.
GOAL_TIME_VS_MERGE = 0.8
#: Goal: activation-path median time <= this x the frozen base's.
GOAL_TIME_VS_FROZEN = 1.15
#: Max abs difference allowed between the two LoRA variants' outputs.
OUTPUT_TOL = 1e-4
#: Attention modules of the encoder layer that get adapters.
ATTENTION_MODULES: tuple[str, ...] = ("self_attn", "cross_attn_image")
QUICK_DEFAULTS: dict[str, int] = {"tokens": 16 * 16, "text_tokens": 8, "repeats": 3, "warmup": 1}
FULL_DEFAULTS: dict[str, int] = {"tokens": 72 * 72, "text_tokens": 32, "repeats": 10, "warmup": 2}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

Inputs = dict[str, Any]


# --------------------------------------------------------------------- merge-in-forward
class MergeInForwardMHA(nn.Module):
    """PEFT-style LoRA around an ``nn.MultiheadAttention``: merge inside ``forward``.

    Every call builds ``W_in + [s B_q A_q; s B_k A_k; s B_v A_v]`` and
    ``W_out + s B_o A_o`` (differentiable in ``A``/``B``, base detached as in PEFT)
    and runs the unmodified base module with these tensors in place of
    ``in_proj_weight`` / ``out_proj.weight`` (``torch.func.functional_call``; PEFT
    deletes the parameters and assigns the merged tensors, which is the same
    computation). Self-contained on purpose (it does not reuse the package's
    adapter code); the factors are laid out like the package's (``lora_A[t]``:
    ``E -> r``, ``lora_B[t]``: ``r -> E``, one pair per target) so
    :func:`copy_factors` can copy them one-to-one. PEFT keeps one ``3E x r``
    ``B`` for the whole in-projection; per-slice factors give the same merged
    weight for the cost of two more tiny ``E x r x E`` products.
    """

    def __init__(
        self, base: nn.MultiheadAttention, *, rank: int, alpha: float,
        targets: Sequence[str] = MHA_TARGETS,
    ) -> None:
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        factory = {"device": base.in_proj_weight.device, "dtype": base.in_proj_weight.dtype}
        E = base.embed_dim
        self.lora_A = nn.ModuleDict({t: nn.Linear(E, rank, bias=False, **factory) for t in targets})
        self.lora_B = nn.ModuleDict({t: nn.Linear(rank, E, bias=False, **factory) for t in targets})
        for b in self.lora_B.values():
            nn.init.zeros_(b.weight)

    def delta(self, target: str) -> Tensor:
        """``s * B A`` of one target (``E x E``), or zeros if it has no adapter."""
        if target not in self.lora_A:
            E = self.base.embed_dim
            return self.base.in_proj_weight.new_zeros(E, E)
        return (self.lora_B[target].weight @ self.lora_A[target].weight) * self.scaling

    def merged_weights(self) -> dict[str, Tensor]:
        """The effective ``in_proj_weight`` and ``out_proj.weight`` for this forward."""
        w_in = self.base.in_proj_weight.detach() + torch.cat([self.delta(t) for t in ("q", "k", "v")])
        w_out = self.base.out_proj.weight.detach() + self.delta("out")
        return {"in_proj_weight": w_in, "out_proj.weight": w_out}

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        """Stock ``MultiheadAttention`` forward (``F.multi_head_attention_forward``)
        with the merged weights."""
        return functional_call(self.base, self.merged_weights(), args, kwargs)


# ------------------------------------------------------------------------ the layer
def build_encoder_layer(seed: int) -> nn.Module:
    """One full-size SAM3 fusion-encoder layer (frozen, train mode).

    Built with ``arch._transformer`` (the builder ``build_sam3_arch(size="full")``
    uses), so the construction arguments are exactly the real model's; the layer is
    ``transformer.encoder.layers[0]``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = _transformer(SIZES["full"], 0.1).encoder.layers[0]
    layer.requires_grad_(False)
    return layer.train()


def set_dropout(module: nn.Module, p: float) -> None:
    """Set every ``nn.Dropout`` and the attention dropout of every MHA to ``p``."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, nn.MultiheadAttention):
            m.dropout = p


def lora_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """The adapted attention modules of a LoRA variant (those with ``lora_A``), by name."""
    return {n: getattr(layer, n) for n in ATTENTION_MODULES if hasattr(getattr(layer, n), "lora_A")}


def copy_factors(src: nn.Module, dst: nn.Module) -> None:
    """Copy every ``lora_A``/``lora_B`` factor of ``src``'s adapted MHAs into ``dst``'s."""
    for name, module in lora_modules(src).items():
        target = lora_modules(dst)[name]
        target.lora_A.load_state_dict(module.lora_A.state_dict())
        target.lora_B.load_state_dict(module.lora_B.state_dict())


def build_variants(base: nn.Module, rank: int, alpha: float) -> dict[str, nn.Module]:
    """The three configurations, sharing ``base``'s weights (deep copies)."""
    activation = copy.deepcopy(base)
    merge = copy.deepcopy(base)
    for name in ATTENTION_MODULES:
        add_lora_to_mha(getattr(activation, name), rank=rank, alpha=alpha, targets=MHA_TARGETS)
        setattr(merge, name, MergeInForwardMHA(getattr(merge, name), rank=rank, alpha=alpha))
    copy_factors(activation, merge)
    return {"frozen_base": base, "lora_activation": activation, "lora_merge_in_forward": merge}


def randomize_lora_b(layer: nn.Module, generator: torch.Generator, std: float = 0.1) -> None:
    """Give every ``B`` factor random non-zero values (``B = 0`` would hide the delta)."""
    with torch.no_grad():
        for module in lora_modules(layer).values():
            for b in module.lora_B.values():
                b.weight.copy_(torch.randn(b.weight.shape, generator=generator) * std)


def make_inputs(
    batch: int, tokens: int, text_tokens: int, d_model: int, device: torch.device, seed: int
) -> Inputs:
    """Keyword arguments of ``TransformerEncoderLayer.forward``, batch-first as in SAM3.

    ``tgt``: image tokens (requires grad), ``query_pos``: their positional encoding,
    ``memory``: text tokens (requires grad), ``memory_key_padding_mask``: the second
    half of the text tokens is padding (a short prompt); no self-attention mask, as in
    ``Sam3Image._run_encoder``.
    """
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, text_tokens, dtype=torch.bool)
    mask[:, max(1, math.ceil(text_tokens / 2)):] = True
    return {
        "tgt": torch.randn(batch, tokens, d_model, generator=g).to(device).requires_grad_(),
        "memory": torch.randn(batch, text_tokens, d_model, generator=g).to(device).requires_grad_(),
        "query_pos": torch.randn(batch, tokens, d_model, generator=g).to(device),
        "memory_key_padding_mask": mask.to(device),
    }


# ------------------------------------------------------------------------ one step
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


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on CUDA; no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------- correctness
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


# ------------------------------------------------------------------------ timing
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


# ------------------------------------------------------------------------ memory
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


# ------------------------------------------------------------------------ report
def ratios_from(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Time and peak-memory ratios of the activation path against the two others."""
    act, merge, base = (results[v] for v in ("lora_activation", "lora_merge_in_forward", "frozen_base"))
    return {
        "time_activation_vs_merge": act["median_s"] / merge["median_s"],
        "memory_activation_vs_merge": act["peak_bytes"] / merge["peak_bytes"],
        "time_activation_vs_frozen": act["median_s"] / base["median_s"],
        "memory_activation_vs_frozen": act["peak_bytes"] / base["peak_bytes"],
        "time_merge_vs_frozen": merge["median_s"] / base["median_s"],
        "memory_merge_vs_frozen": merge["peak_bytes"] / base["peak_bytes"],
    }


def paired_time_ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """Median over rounds of the per-round time ratios (robust to slow drifts in load).

    Reported next to the ratios of medians, which the goals use.
    """
    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {
        "time_activation_vs_merge": paired("lora_activation", "lora_merge_in_forward"),
        "time_activation_vs_frozen": paired("lora_activation", "frozen_base"),
        "time_merge_vs_frozen": paired("lora_merge_in_forward", "frozen_base"),
    }


def goals_from(ratios: dict[str, float]) -> dict[str, bool]:
    """Which of the issue's goals the ratios meet."""
    return {
        f"time_activation_vs_merge_le_{GOAL_TIME_VS_MERGE}": ratios["time_activation_vs_merge"] <= GOAL_TIME_VS_MERGE,
        "memory_activation_lt_merge": ratios["memory_activation_vs_merge"] < 1.0,
        f"time_activation_vs_frozen_le_{GOAL_TIME_VS_FROZEN}": ratios["time_activation_vs_frozen"] <= GOAL_TIME_VS_FROZEN,
    }


def format_table(
    results: dict[str, dict[str, Any]], ratios: dict[str, float], paired: dict[str, float],
    goals: dict[str, bool],
) -> str:
    """Human-readable table, ratios (of medians; paired in brackets) and goal verdicts."""
    lines = [
        f"{'variant':<24}{'median ms':>11}{'IQR ms':>9}{'peak MiB':>10}{'saved MiB':>11}{'trainable':>11}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<24}{r['median_s'] * 1e3:>11.1f}{r['iqr_s'] * 1e3:>9.1f}"
            f"{r['peak_bytes'] / 2**20:>10.1f}{r['saved_bytes'] / 2**20:>11.1f}{r['trainable_params']:>11,}"
        )
    lines.append("")
    lines += [
        f"{k:<32}{v:.3f}" + (f"  (paired per round: {paired[k]:.3f})" if k in paired else "")
        for k, v in ratios.items()
    ]
    lines.append("")
    lines += [f"goal {k:<40}{'MET' if ok else 'NOT MET'}" for k, ok in goals.items()]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Bar chart: median step time (IQR whiskers) and peak memory per variant."""
    plt = get_pyplot()
    names = list(results)
    colors = ["#888888", "#2a7ab9", "#d9822b"][: len(names)]
    medians = [results[n]["median_s"] * 1e3 for n in names]
    errors = [
        [(results[n]["median_s"] - results[n]["q1_s"]) * 1e3 for n in names],
        [(results[n]["q3_s"] - results[n]["median_s"]) * 1e3 for n in names],
    ]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.bar(names, medians, yerr=errors, capsize=4, color=colors)
    ax_t.set_ylabel("median forward+backward (ms)")
    ax_m.bar(names, [results[n]["peak_bytes"] / 2**20 for n in names], color=colors)
    ax_m.set_ylabel("peak memory above start (MiB)")
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", labelrotation=15)
    save_figure(fig, path, title)


# ------------------------------------------------------------------------ CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``--quick`` fills the sizes not given explicitly."""
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark LoRA on one full-size SAM3 fusion-encoder layer (d_model 256, 8 heads, "
            "72x72 image tokens + text tokens): median forward+backward time and peak memory of "
            "frozen_base (no adapters), lora_activation (this package: delta on the activation "
            "path) and lora_merge_in_forward (PEFT's MHA approach: W + sBA built every forward). "
            f"Goals: activation <= {GOAL_TIME_VS_MERGE}x merge-in-forward time with less peak "
            f"memory; activation <= {GOAL_TIME_VS_FROZEN}x the frozen base time."
        ),
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny run for tests (still writes JSON/PNG): defaults become {QUICK_DEFAULTS}")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed rounds per variant (default {FULL_DEFAULTS['repeats']})")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed steps per variant first (default {FULL_DEFAULTS['warmup']})")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=None,
                        help=f"image tokens (default {FULL_DEFAULTS['tokens']} = 72x72, 1008 px / patch 14)")
    parser.add_argument("--text-tokens", type=int, default=None,
                        help=f"text tokens, second half padded (default {FULL_DEFAULTS['text_tokens']})")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout of the layer and its attention (default: %(default)s; SAM3 builds 0.1, "
                             "but on CPU SDPA with dropout falls back to the slow math kernel)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: run the step under torch.autocast, weights stay fp32 (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, factors and inputs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for mha_lora.json and mha_lora.png (default: benchmarks/results)")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.repeats, args.tokens, args.text_tokens, args.batch, args.rank, args.threads) < 1 or args.warmup < 0:
        parser.error("--repeats/--tokens/--text-tokens/--batch/--rank/--threads must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write JSON and PNG; returns the JSON dict."""
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    autocast_dtype = torch.bfloat16 if args.dtype == "bf16" else None

    base = build_encoder_layer(args.seed)
    set_dropout(base, args.dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        variants = {k: v.to(device) for k, v in build_variants(base, args.rank, args.alpha).items()}
    inputs = make_inputs(args.batch, args.tokens, args.text_tokens, SIZES["full"].d_model, device, args.seed)

    checks = check_equivalence(variants, inputs, args.seed)
    print(f"correctness checks passed: {checks}")
    times = time_variants(variants, inputs, warmup=args.warmup, repeats=args.repeats,
                          autocast_dtype=autocast_dtype)
    results: dict[str, dict[str, Any]] = {}
    for name, layer in variants.items():
        results[name] = {
            **summarize_seconds(times[name]),
            "times_s": times[name],
            "peak_bytes": peak_step_memory(layer, inputs, autocast_dtype),
            "saved_bytes": saved_activation_bytes(layer, inputs, autocast_dtype),
            "trainable_params": sum(p.numel() for p in layer.parameters() if p.requires_grad),
        }
    ratios = ratios_from(results)
    paired = paired_time_ratios(times)
    goals = goals_from(ratios)
    print(format_table(results, ratios, paired, goals))

    report = {
        **report_header("mha_lora", args, str(device), skip=()),
        "layer": "sam3.model.encoder.TransformerEncoderLayer (full size: d_model 256, 8 heads, FFN 2048, "
                 "pre-norm); LoRA on q,k,v,out of self_attn and cross_attn_image; linear1/linear2 frozen",
        "memory_metric": "peak tensor-allocator bytes during one step above the bytes live at its start "
                         + ("(torch.cuda.max_memory_allocated)" if device.type == "cuda"
                            else "(torch.profiler CPU allocator events, replayed)"),
        "checks": checks,
        "variants": results,
        "ratios": ratios,
        "paired_time_ratios": paired,
        "goals": {"time_activation_vs_merge_max": GOAL_TIME_VS_MERGE,
                  "time_activation_vs_frozen_max": GOAL_TIME_VS_FROZEN, "met": goals},
    }
    write_report(args.out, "mha_lora", report)
    plot(results, args.out / "mha_lora.png",
         f"SAM3 fusion-encoder layer, {args.tokens}+{args.text_tokens} tokens, batch {args.batch}, "
         f"rank {args.rank}, {args.dtype}, {device.type} x{args.threads} threads")
    print(f"wrote {args.out / 'mha_lora.json'} and {args.out / 'mha_lora.png'}")
    return report


if __name__ == "__main__":
    main()
