"""What each LoRA preset adapts in a SAM3 architecture, without building the adapters.

``python -m sam3_lora_plugin.inventory`` builds the full-size architecture (random
init, ~17 s and ~3.5 GB on CPU; no weights needed) and prints, per preset and per
component, how many attention modules, fused-qkv Linears and plain Linears get
adapters, how many adapters (A/B pairs) that is, the modules trained fully
(``modules_to_save``) and the trainable parameter count.

Counts are computed from the selection (``select_lora_targets``) and the layer shapes,
so one model serves every preset; ``tests/cli/test_inventory.py`` checks them against real
injection.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch.nn as nn

from sam3_lora_plugin.lora.config import COMPONENTS, PRESETS, LoraConfig
from sam3_lora_plugin.lora.saved_modules import select_modules_to_save
from sam3_lora_plugin.lora.selection import LoraTarget, get_component, select_lora_targets

# Modules that pull in torch, sam3 or Hydra are imported inside the functions that need
# them, so that `--help` and a bad argument answer at once.

__all__ = ["InventoryRow", "adapter_parameter_count", "get_attention_blocks",
           "lora_inventory", "format_inventory", "main"]

KIND_LABELS = {"mha": "attention", "qkv": "vit qkv", "linear": "linear"}
#: The kind of a ``modules_to_save`` row: every parameter of the module trains, no adapter.
FULL_KIND = "full"


@dataclass
class InventoryRow:
    """Adapted modules of one kind in one component."""

    component: str
    kind: str  # "attention" (nn.MultiheadAttention), "vit qkv" (split slices), "linear",
    #            or "full" (modules_to_save: trained fully)
    modules: int
    adapters: int
    params: int


def adapter_parameter_count(module: nn.Module, target: LoraTarget) -> int:
    """Parameters of the A/B factors ``inject_lora`` would add for ``target``."""
    r = target.rank
    if target.kind == "mha":
        e = module.embed_dim
        return len(target.targets) * r * (e + e)
    if target.kind == "qkv":
        dim = module.out_features // 3
        return len(target.targets) * r * (module.in_features + dim)
    return r * (module.in_features + module.out_features)


def get_attention_blocks(model: nn.Module, components: Sequence[str]) -> list[str]:
    """Attention blocks under ``components``: every nn.MultiheadAttention, and every
    ViT ``attn`` (its ``qkv`` and ``proj`` Linears)."""
    prefixes = tuple(COMPONENTS[c] + "." for c in components)
    return [n for n, m in model.named_modules() if n.startswith(prefixes) and (
        isinstance(m, nn.MultiheadAttention)
        or (hasattr(m, "qkv") and hasattr(m, "proj") and n.endswith(".attn")))]


def lora_inventory(model: nn.Module, cfg: LoraConfig) -> list[InventoryRow]:
    """Rows (component × kind) of what ``cfg`` adapts in ``model``, and of the modules it
    trains fully (``modules_to_save``, kind ``"full"``; the neck is component ``"other"``)."""
    targets, _ = select_lora_targets(model, cfg)
    modules = dict(model.named_modules())
    rows: dict[tuple[str, str], InventoryRow] = {}
    for t in targets:
        kind = KIND_LABELS[t.kind]
        key = (t.component or get_component(t.name) or "other", kind)
        row = rows.setdefault(key, InventoryRow(key[0], kind, 0, 0, 0))
        row.modules += 1
        row.adapters += len(t.targets)
        row.params += adapter_parameter_count(modules[t.name], t)
    for name in select_modules_to_save(model, cfg.modules_to_save)[0]:
        key = (get_component(name) or "other", FULL_KIND)
        row = rows.setdefault(key, InventoryRow(key[0], FULL_KIND, 0, 0, 0))
        row.modules += 1
        row.params += sum(p.numel() for p in modules[name].parameters())
    order = list(COMPONENTS) + ["other"]
    return sorted(rows.values(), key=lambda r: (order.index(r.component), r.kind))


def format_inventory(preset: str, rows: list[InventoryRow], total_params: int) -> str:
    """A fixed-width table of one preset's rows with a total line."""
    spec = PRESETS[preset]
    saved = f" modules_to_save={spec['modules_to_save']}" if spec.get("modules_to_save") else ""
    lines = [f"preset {preset!r}: components={spec['components']} roles={spec['roles']}{saved}",
             f"  {'component':<18} {'kind':<10} {'modules':>7} {'adapters':>8} {'params':>12}"]
    for r in rows:
        lines.append(f"  {r.component:<18} {r.kind:<10} {r.modules:>7} {r.adapters:>8} "
                     f"{r.params:>12,}")
    trainable = sum(r.params for r in rows)
    lines.append(f"  {'total':<18} {'':<10} {sum(r.modules for r in rows):>7} "
                 f"{sum(r.adapters for r in rows):>8} {trainable:>12,}  "
                 f"({100.0 * trainable / total_params:.3f}% of {total_params:,})")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.inventory",
        description="Print what each LoRA preset adapts in SAM3: per component, the "
                    "attention modules, ViT fused-qkv Linears and plain Linears, their "
                    "adapter count and trainable parameters. Builds the architecture "
                    "with random weights (no checkpoint needed).",
    )
    parser.add_argument("--size", choices=["full", "tiny"], default="full",
                        help="architecture size (default: full, ~840M parameters)")
    parser.add_argument("--preset", action="append", choices=list(PRESETS),
                        help="preset(s) to list (repeatable; default: all)")
    parser.add_argument("--rank", type=int, default=LoraConfig.rank,
                        help=f"adapter rank (default {LoraConfig.rank})")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    from sam3_lora_plugin.models.arch import build_sam3_arch

    print(f"building the {args.size} SAM3 architecture ...", file=sys.stderr, flush=True)
    model = build_sam3_arch(args.size)
    total = sum(p.numel() for p in model.parameters())
    result: dict[str, list[dict]] = defaultdict(list)
    for preset in args.preset or list(PRESETS):
        rows = lora_inventory(model, LoraConfig(preset=preset, rank=args.rank))
        print(format_inventory(preset, rows, total), end="\n\n")
        result[preset] = [asdict(r) for r in rows]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "rank": args.rank, "total_params": total,
                       "presets": result}, f, indent=2)
    return 0
