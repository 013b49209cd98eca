#!/usr/bin/env python
"""Benchmark the Trainer's checkpoint save with LoRA: base fingerprint cached vs rehashed.

The Trainer saves ``unwrap_ddp(model).state_dict()`` at every checkpoint. With
``build_lora_sam3`` that state dict is adapter-only plus a metadata entry holding a
SHA-256 fingerprint of the base weights the adapters modify (~142M parameters for
the ``default`` preset on full-size SAM3). Until issue 18 every ``state_dict()``
recomputed that hash (a device-to-host copy and SHA-256 of ~570 MB); now it is computed
once when the adapters are injected or loaded and only re-checked through the weights'
version counters (``sam3_lora_plugin.adapters.metadata.get_base_fingerprint``).

Both variants run in one process on the same model, interleaved round by round:

``cached``
    what the code does now: ``state_dict()`` then ``torch.save`` to a temporary file.
``rehash``
    the same, with the fingerprint cache dropped before each ``state_dict()``: exactly
    the old per-checkpoint work (the old code called ``fingerprint_tensors`` inside
    every ``state_dict()``).

Also reported: the one-time hash at build, and the time of ``state_dict()`` alone.

Usage (from the repository root)::

    python benchmarks/checkpoint_save.py                 # full SAM3 (~4 GB RAM, ~17 s build)
    python benchmarks/checkpoint_save.py --size tiny --repeats 2 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from harness import report_header, summarize_seconds, write_report

VARIANTS: tuple[str, ...] = ("cached", "rehash")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _drop_cache(model: torch.nn.Module) -> None:
    from sam3_lora_plugin.adapters.metadata import _FINGERPRINT_CACHE

    model.__dict__.pop(_FINGERPRINT_CACHE, None)


def _save_once(model: torch.nn.Module, path: str, rehash: bool) -> tuple[float, float]:
    """One checkpoint save; returns (state_dict seconds, state_dict + torch.save seconds)."""
    if rehash:
        _drop_cache(model)
    start = time.perf_counter()
    state = model.state_dict()
    mid = time.perf_counter()
    torch.save({"model": state}, path)
    end = time.perf_counter()
    return mid - start, end - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, time the saves, return the report."""
    from sam3_lora_plugin.adapters.metadata import (describe_targets, get_base_fingerprint,
                                                    get_base_param_keys)
    from sam3_lora_plugin.models.arch import build_sam3_arch
    from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = build_sam3_arch(args.size, seed=0)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    model = build_lora_sam3(model, {"preset": args.preset, "rank": args.rank})
    inject_s = time.perf_counter() - start
    _drop_cache(model)
    start = time.perf_counter()
    get_base_fingerprint(model)
    hash_s = time.perf_counter() - start
    keys = get_base_param_keys(describe_targets(model))
    hashed = sum(model.get_parameter(k).numel() for k in keys)

    times: dict[str, dict[str, list[float]]] = {v: {"state_dict": [], "save": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "checkpoint.pt")
        for round_ in range(args.warmup + args.repeats):
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                sd_s, save_s = _save_once(model, path, rehash=variant == "rehash")
                if round_ >= args.warmup:
                    times[variant]["state_dict"].append(sd_s)
                    times[variant]["save"].append(save_s)
        checkpoint_bytes = os.path.getsize(path)
    variants = {v: {"save": summarize_seconds(t["save"]), "state_dict": summarize_seconds(t["state_dict"]),
                    "save_times_s": t["save"]} for v, t in times.items()}
    return {
        **report_header("checkpoint_save", args, skip=()),
        "model": {"size": args.size, "params": sum(p.numel() for p in model.parameters()),
                  "adapted_base_params_hashed": hashed, "adapted_base_tensors": len(keys),
                  "checkpoint_bytes": checkpoint_bytes},
        "build_s": build_s, "inject_and_first_hash_s": inject_s, "one_fingerprint_s": hash_s,
        "variants": variants,
        "ratio_save_cached_vs_rehash": variants["cached"]["save"]["median_s"]
        / variants["rehash"]["save"]["median_s"],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full",
                        help="SAM3 architecture (default: %(default)s)")
    parser.add_argument("--preset", default="default", help="LoRA preset (default: %(default)s)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed saves per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for checkpoint_save.json (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if min(args.repeats, args.threads, args.rank) < 1 or args.warmup < 0:
        parser.error("--repeats/--threads/--rank must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``<out>/checkpoint_save.json``, print a summary."""
    args = parse_args(argv)
    report = run(args)
    write_report(args.out, "checkpoint_save", report)
    for name, v in report["variants"].items():
        print(f"{name:7s} save median {v['save']['median_s']:.3f} s (IQR {v['save']['iqr_s']:.3f}), "
              f"state_dict {v['state_dict']['median_s']:.3f} s")
    print(f"one fingerprint of {report['model']['adapted_base_params_hashed']:,} base params: "
          f"{report['one_fingerprint_s']:.2f} s; cached/rehash save: "
          f"{report['ratio_save_cached_vs_rehash']:.3f}x; wrote {args.out / 'checkpoint_save.json'}")
    return report


if __name__ == "__main__":
    main()
