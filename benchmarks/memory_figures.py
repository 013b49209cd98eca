#!/usr/bin/env python
"""Per-preset memory figures for ``sam3_lora_plugin.trainer.memory_estimate.MEASURED``.

Reads the 1008 px tensor-memory runs of ``benchmarks/train_step.py``
(``benchmarks/results/train_step_1008_bf16base_<config>.json``, and the frozen NF4 weights
of ``train_step_1008_nf4base_<config>.json``) and prints the dict to
paste into ``MEASURED``; ``tests/trainer/test_memory_estimate.py`` checks the two agree.

    python benchmarks/memory_figures.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: Reports whose ``lora_default`` was another preset than today's default, read through this
#: table: ``(written before, renames)``, the first that applies. Before 2026-11-30 the default
#: was image_mlp's layers; the runs of 2026-11-30 before 05:30 measured attention_mlp_heads
#: under that name, while it was meant to become the default.
RENAMED_BEFORE = (("2026-11-30", {"default": "image_mlp"}),
                  ("2026-11-30T05:30", {"default": "attention_mlp_heads"}))
#: The weights, gradients and optimizer state at the peak; the rest is activations.
STATE = ("weights (frozen)", "weights (trainable)", "gradients", "optimizer state")


def preset_of(report: dict[str, Any], run: dict[str, Any]) -> str:
    """The preset a report's run measured, by today's names: for ``default``, the named preset
    whose spec equals the run's recorded ``lora_preset_spec`` (so that a rerun of
    ``lora_default`` is filed under the preset ``default`` stands for), else through
    ``RENAMED_BEFORE``."""
    from sam3_lora_plugin.lora.config import PRESETS

    name = run["lora_preset"]
    spec = run.get("lora_preset_spec")
    if name == "default" and spec is not None:
        for other, other_spec in PRESETS.items():
            if other != "default" and other_spec == spec:
                return other
    for before, renames in RENAMED_BEFORE:
        if report["date"] < before:
            return renames.get(name, name)
    return name


def figures_from(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """``{preset: figures}`` from one train_step report (see memory_estimate's docstring)."""
    out = {}
    for r in report["configs"].values():
        tm = r["tensor_memory"]
        at_peak = tm["at_peak"]
        out[preset_of(report, r)] = {
            "total_params": r["total_params"], "trainable_params": r["trainable_params"],
            "frozen_bf16_bytes": tm["baseline_bytes"]["weights (frozen)"],
            "measured_peak_bytes": tm["peak_bytes"],
            "activation_bytes": tm["peak_bytes"] - sum(at_peak.get(k, 0) for k in STATE),
            "segmentation_bytes": sum(v for k, v in at_peak.items() if k.endswith("/segmentation_head")),
        }
    return out


def nf4_figures_from(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """``{preset: {frozen_nf4_bytes, measured_nf4_peak_bytes}}`` from one NF4-base report."""
    return {preset_of(report, r): {"frozen_nf4_bytes": r["tensor_memory"]["baseline_bytes"]["weights (frozen)"],
                               "measured_nf4_peak_bytes": r["tensor_memory"]["peak_bytes"]}
            for r in report["configs"].values()}


def load_all(results: Path = RESULTS) -> dict[str, dict[str, int]]:
    """Figures of every ``train_step_1008_bf16base_*.json`` in ``results``, with the NF4
    weights of every ``train_step_1008_nf4base_*.json`` added to the presets both hold."""
    figures: dict[str, dict[str, int]] = {}
    for path in sorted(results.glob("train_step_1008_bf16base_*.json")):
        figures.update(figures_from(json.loads(path.read_text())))
    for path in sorted(results.glob("train_step_1008_nf4base_*.json")):
        for preset, nf4 in nf4_figures_from(json.loads(path.read_text())).items():
            if preset in figures:
                figures[preset].update(nf4)
    return figures


if __name__ == "__main__":
    print("MEASURED = " + json.dumps(load_all(), indent=4))
