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

The parts: ``mha_lora_variants`` (the layer, the three configurations, the inputs),
``mha_lora_measure`` (equivalence checks, timing, memory), ``mha_lora_report`` (ratios,
goals, table, PNG); ``harness`` (what every benchmark shares).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from harness import report_header, summarize_seconds, write_report
from mha_lora_measure import (check_equivalence, peak_step_memory, saved_activation_bytes,
                              time_variants)
from mha_lora_report import (GOAL_TIME_VS_FROZEN, GOAL_TIME_VS_MERGE, format_table, goals_from,
                             paired_time_ratios, plot, ratios_from)
from mha_lora_variants import build_encoder_layer, build_variants, make_inputs, set_dropout
from sam3_lora_plugin.models.arch import SIZES

QUICK_DEFAULTS: dict[str, int] = {"tokens": 16 * 16, "text_tokens": 8, "repeats": 3, "warmup": 1}
FULL_DEFAULTS: dict[str, int] = {"tokens": 72 * 72, "text_tokens": 32, "repeats": 10, "warmup": 2}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


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
