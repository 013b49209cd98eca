"""``python -m sam3_lora_plugin.pretrain_base``: rebuild the shipped pretrained tiny SAM3 base.

Trains ``build_sam3_arch(size="tiny")`` fully (no LoRA) on the synthetic *base* domain
through SAM3's own Trainer (``trainer.recipe``: the packaged smoke config, edited), then
writes the model as float16 ``detector.*`` tensors with the recipe in the metadata
(``models.base_checkpoint.write_stock_safetensors``). The defaults are the recipe of the
shipped ``sam3_lora_plugin/models/assets/tiny_base.safetensors`` (the one of
``benchmarks/learning.py``'s pretrain phase): 2,048 images, 8 epochs of batch 8 (2,048
optimizer steps), peak lr 4e-3 with 50 warm-up steps and a cosine decay, backbone and
encoder at 0.1x, no dropout, one torch thread. About 13 minutes on one CPU core.

Rebuild the shipped file (same bits with the same torch build on the same kind of CPU)::

    python -m sam3_lora_plugin.pretrain_base --out sam3_lora_plugin/models/assets/tiny_base.safetensors --overwrite
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

__all__ = ["TinyBaseRecipe", "build_parser", "main", "pretrain_tiny_base"]

REBUILD_COMMAND = ("python -m sam3_lora_plugin.pretrain_base --out "
                   "sam3_lora_plugin/models/assets/tiny_base.safetensors --overwrite")


@dataclass(frozen=True)
class TinyBaseRecipe:
    """The pretraining recipe; the defaults made the shipped file."""

    num_train: int = 2048
    num_test: int = 48
    image_size: int = 112
    data_seed: int = 0
    epochs: int = 8
    batch_size: int = 8
    lr: float = 4e-3
    warmup_steps: int = 50
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.01
    seed: int = 123
    threads: int = 1


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--help``)."""
    d = TinyBaseRecipe()
    p = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.pretrain_base",
        description="Pretrain the tiny SAM3 on the synthetic base domain through SAM3's Trainer "
                    "and write it as a float16 stock-layout safetensors file (the shipped base of "
                    "configs/lora/first_run_cpu.yaml). Defaults = the shipped file's recipe.",
        epilog=f"Rebuild the shipped file:\n  {REBUILD_COMMAND}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--work-dir", default=None,
                   help="datasets and Trainer logs (default: a temporary directory, removed after)")
    for name, value in asdict(d).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value,
                       help=f"(default {value})")
    return p


def pretrain_tiny_base(recipe: TinyBaseRecipe, out: str, work_dir: str, *,
                       overwrite: bool = False) -> dict[str, Any]:
    """Run the recipe and write ``out`` (an existing file only with ``overwrite``); return
    what went into the file's metadata."""
    import torch

    from sam3_lora_plugin.data import make_synthetic_coco
    from sam3_lora_plugin.models.base_checkpoint import write_stock_safetensors
    from sam3_lora_plugin.trainer.recipe import PhaseSpec, build_phase_config, run_trainer_in_process

    data = make_synthetic_coco(os.path.join(work_dir, "data", "base"), num_train=recipe.num_train,
                               num_valid=0, num_test=recipe.num_test, image_size=recipe.image_size,
                               seed=recipe.data_seed, style="base")
    steps = recipe.num_train // recipe.batch_size
    spec = PhaseSpec(
        data_root=str(data), eval_split="test", log_dir=os.path.join(work_dir, "runs", "pretrain"),
        epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay, schedule="cosine",
        warmup_steps=min(recipe.warmup_steps, steps), batch_size=recipe.batch_size,
        steps_per_epoch=steps, seed=recipe.seed, resolution=recipe.image_size,
        backbone_lr_mult=recipe.backbone_lr_mult, val_epoch_freq=1)
    t0 = time.perf_counter()
    trainer = run_trainer_in_process(build_phase_config(spec), threads=recipe.threads)
    model = getattr(trainer.model, "module", trainer.model).eval()
    stats = _last_val_stats(os.path.join(spec.log_dir, "logs", "val_stats.json"))
    meta = {"recipe": json.dumps(asdict(recipe), sort_keys=True), "command": REBUILD_COMMAND,
            "format": "sam3 stock layout (detector.*), float16",
            "torch": torch.__version__, "train_seconds": f"{time.perf_counter() - t0:.0f}",
            "heldout_base_domain": json.dumps(stats, sort_keys=True)}
    write_stock_safetensors(model, out, metadata=meta, overwrite=overwrite)
    return meta


def _last_val_stats(path: str) -> dict[str, float]:
    """bbox/segm AP and AP50 of the last validation (SAM3's COCO evaluator)."""
    with open(path) as f:
        row = json.loads([line for line in f if line.strip()][-1])
    keep = {"bbox_AP": "detection/coco_eval_bbox_AP", "bbox_AP50": "detection/coco_eval_bbox_AP_50",
            "segm_AP": "segmentation/coco_eval_segm_AP", "segm_AP50": "segmentation/coco_eval_segm_AP_50"}
    out = {}
    for name, suffix in keep.items():
        vals = [v for k, v in row.items() if k.endswith(suffix)]
        if vals:
            out[name] = round(float(vals[0]), 4)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    out = os.path.abspath(args.out)
    if not out.endswith(".safetensors"):
        print(f"error: --out {args.out} must end in .safetensors", file=sys.stderr)
        return 2
    if os.path.exists(out) and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it, or another --out",
              file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fields = TinyBaseRecipe.__dataclass_fields__
    recipe = TinyBaseRecipe(**{k: getattr(args, k) for k in fields})
    work = args.work_dir or tempfile.mkdtemp(prefix="sam3_lora_pretrain_")
    try:
        meta = pretrain_tiny_base(recipe, out, work, overwrite=args.overwrite)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"Wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB) in {meta['train_seconds']} s; "
          f"held-out AP on the base domain: {meta['heldout_base_domain']}")
    return 0
