#!/usr/bin/env python
"""Does LoRA learn, and what does it forget? Pretrain, then adapt to shifted domains, several seeds.

Every training and evaluation is a run of SAM3's official Trainer on a config composed from
``configs/lora/smoke_cpu.yaml`` as SAM3's launcher composes it, each in its own process.

Phases
    1. ``pretrain`` the tiny SAM3 (``build_sam3_arch(size="tiny")``) fully on the ``base``
       synthetic style and write it as a stock-layout ``sam3.pt`` (or take
       ``--base-checkpoint``); ``base_own``: the base on the base domain's held-out split.
    2. per ``--shift-style`` (any key of ``sam3_lora_plugin.data.synthetic.STYLES``):
       ``base@<shift>``, the base on that shift's held-out split.
    3. per seed, shift and row (``--rows``, see ``ROWS``): adapt with the same step budget,
       evaluate on the shift's held-out split, then evaluate the adapted model on the base
       domain's held-out split (retention). For LoRA rows the retention run is repeated with
       the adapters disabled, which must give the base's own AP exactly, and the frozen
       weights are compared bit for bit with the base file. The seed sets the Trainer's seed:
       the LoRA init and the data order; the base stays the same.

Outputs (``--out``): ``learning.json`` (rewritten after every row, ``complete`` false until
the end) and ``learning.png``; working files under ``--work-dir``.

Usage (from the repository root)::

    python benchmarks/learning.py --jobs 2                      # the study
    python benchmarks/learning.py --jobs 2 \\
        --base-checkpoint sam3_lora_plugin/models/assets/tiny_base.safetensors  # shipped base
    python benchmarks/learning.py --base-checkpoint experiments/learning/base_sam3.pt \\
        --rows full_ft,attention_mlp --seeds 0,1,2 --shift-style shifted
    python benchmarks/learning.py --jobs 2 --reuse benchmarks/results/learning.json ...
        # only the runs the earlier report does not already hold with the same settings
    python benchmarks/learning.py --quick --out /tmp/learning   # the test suite's run
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from harness import machine_info, mean_std, read_tensorboard_scalars, write_json
from sam3_lora_plugin.trainer.recipe import CONFIG_NAME, PhaseSpec as RecipeSpec
from sam3_lora_plugin.trainer.recipe import build_phase_config as build_recipe_config

REPO = Path(__file__).resolve().parents[1]
VAL_KEY = "coco"  # the val collate_fn's dict_key in smoke_cpu.yaml
METRICS = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
_SAM3_METRIC = {  # our name -> the key SAM3's COCO evaluator writes into val_stats.json
    "bbox_AP": f"Meters_train/val_{VAL_KEY}/detection/coco_eval_bbox_AP",
    "bbox_AP50": f"Meters_train/val_{VAL_KEY}/detection/coco_eval_bbox_AP_50",
    "segm_AP": f"Meters_train/val_{VAL_KEY}/segmentation/coco_eval_segm_AP",
    "segm_AP50": f"Meters_train/val_{VAL_KEY}/segmentation/coco_eval_segm_AP_50",
}
TRAIN_LOSS_TAG = "Step_Stats/train/Losses/train_all_loss"

_IMAGE_PATH = ["vision_trunk", "fusion_encoder", "decoder"]
_ALL_BUT_SCORING = ["vision_trunk", "text_encoder", "fusion_encoder", "decoder",
                    "geometry_encoder", "segmentation_head"]
_ATTN = ["q", "k", "v", "out"]
#: The rows of the study: ``lora`` (``LoraConfig`` fields; absent: full fine-tune), ``lr``
#: (default ``--lora-lr`` / ``--full-lr``), ``loraplus_lr_ratio``. Targets are spelled out,
#: not preset names, so a row means the same thing when presets change.
ROWS: dict[str, dict[str, Any]] = {
    "full_ft": {},
    "attn_image": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN}},  # the old default
    "attn_mlp_image": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"]}},
    "attention_mlp": {"lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"]}},
    # LoRA+: B at 4x A's lr; A at half the tuned lr (the geometric mean stays 1e-2)
    "attn_mlp_image_loraplus": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"]},
                                "lr": 5e-3, "loraplus_lr_ratio": 4.0},
    "attention_mlp_loraplus": {"lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"]},
                               "lr": 5e-3, "loraplus_lr_ratio": 4.0},
    "attn_mlp_image_dora": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"],
                                     "use_dora": True}},
    "attention_mlp_dora": {"lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"],
                                    "use_dora": True}},
}
DEFAULT_ROWS = "full_ft,attn_mlp_image,attention_mlp,attn_mlp_image_loraplus,attn_image"


@dataclass
class PhaseSpec:
    """Everything one Trainer run needs; serialised to JSON for the phase subprocess."""

    name: str
    data_root: str
    eval_split: str
    log_dir: str
    mode: str = "train"                     # "train" or "val"
    epochs: int = 1
    steps_per_epoch: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0                   # linear warm-up, then cosine to lr/100
    batch_size: int = 2
    base_checkpoint: Optional[str] = None   # stock-layout file to start from
    lora: Optional[dict[str, Any]] = None   # None: plain model (full fine-tune)
    loraplus_lr_ratio: Optional[float] = None
    adapter_path: Optional[str] = None      # val of a trained adapter
    check_disabled: bool = False            # val again with the adapters disabled
    dropout: float = 0.0
    seed: int = 123
    sampler_seed: Optional[int] = None      # the data order's seed (None: stock, seed 0)
    resolution: int = 112
    threads: int = 1
    backbone_lr_mult: float = 1.0           # lr factor for backbone.* and transformer.encoder.*
    save_base_to: Optional[str] = None      # write the trained model as a stock checkpoint
    check_base: bool = False                # compare frozen weights with base_checkpoint
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (``--help``)."""
    from sam3_lora_plugin.data.synthetic import STYLES

    p = argparse.ArgumentParser(
        prog="python benchmarks/learning.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Pretrain a tiny SAM3 on a synthetic domain, then compare LoRA variants and "
        "full fine-tuning (same step budget, several seeds) on shifted domains, with retention "
        "on the base domain; all through SAM3's Trainer. Writes learning.json and learning.png.")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work-dir", default=None, help="datasets, Trainer logs, checkpoints "
                   "(default: experiments/learning; a temporary directory with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one epoch (test suite)")
    p.add_argument("--seed", type=int, default=0, help="dataset and pretrain seed (fixed base)")
    p.add_argument("--seeds", default=None,
                   help="adaptation seeds: LoRA init and data order (default 0,1,2; 0,1 with --quick)")
    p.add_argument("--shift-style", action="append", default=None, metavar="NAME",
                   help="a shifted domain, repeatable; any key of "
                   "sam3_lora_plugin.data.synthetic.STYLES (default: shifted, small_clutter; "
                   "small_clutter with --quick)")
    p.add_argument("--rows", default=None, help=f"comma-separated rows of ROWS ({', '.join(ROWS)}); "
                   f"default {DEFAULT_ROWS}")
    p.add_argument("--base-checkpoint", default=None,
                   help="a pretrained base (a stock-layout sam3.pt or .safetensors, e.g. the "
                        "shipped sam3_lora_plugin/models/assets/tiny_base.safetensors) "
                        "instead of pretraining one")
    p.add_argument("--jobs", type=int, default=1, help="rows run in parallel")
    p.add_argument("--resolution", type=int, default=112, help="image side (multiple of 14)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per phase process")
    p.add_argument("--base-train", type=int, default=2048)
    p.add_argument("--base-test", type=int, default=48)
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--pretrain-lr", type=float, default=4e-3)
    p.add_argument("--pretrain-batch", type=int, default=8)
    p.add_argument("--backbone-lr-mult", type=float, default=0.1,
                   help="lr factor of backbone.* and transformer.encoder.* for full-model phases")
    p.add_argument("--shift-train", type=int, default=256)
    p.add_argument("--shift-test", type=int, default=48)
    p.add_argument("--adapt-epochs", type=int, default=8)
    p.add_argument("--adapt-batch", type=int, default=8)
    p.add_argument("--full-lr", type=float, default=1e-2)
    p.add_argument("--lora-lr", type=float, default=1e-2)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--keep-work", action="store_true", help="keep --quick's temporary work dir")
    p.add_argument("--reuse", default=None, metavar="LEARNING_JSON",
                   help="take the records of (row, shift, seed) runs that an earlier "
                        "learning.json already holds with the same settings, row, base and "
                        "data order, instead of running them again")
    p.add_argument("--phase-spec", default=None, help=argparse.SUPPRESS)  # internal
    args = p.parse_args(argv)
    if args.resolution % 14:
        p.error(f"--resolution must be a multiple of 14, got {args.resolution}")
    args.shift_style = args.shift_style or (
        ["small_clutter"] if args.quick else ["shifted", "small_clutter"])
    args.seeds = args.seeds or ("0,1" if args.quick else "0,1,2")
    unknown = [s for s in args.shift_style if s not in STYLES or s == "base"]
    if unknown:
        p.error(f"unknown --shift-style {unknown}; choose from "
                f"{sorted(s for s in STYLES if s != 'base')} (or add one to STYLES)")
    args.rows = args.rows or (("full_ft,attn_mlp_image" if args.quick else DEFAULT_ROWS))
    bad = [r for r in _split(args.rows) if r not in ROWS]
    if bad:
        p.error(f"unknown --rows {bad}; choose from {list(ROWS)}")
    try:
        args.seed_list = [int(s) for s in _split(args.seeds)]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.base_checkpoint and not Path(args.base_checkpoint).is_file():
        p.error(f"--base-checkpoint {args.base_checkpoint} is not a file; pass a stock sam3.pt "
                "or .safetensors (e.g. sam3_lora_plugin/models/assets/tiny_base.safetensors, "
                "the shipped base) or omit it")
    if args.reuse and not Path(args.reuse).is_file():
        p.error(f"--reuse {args.reuse} is not a file; pass an earlier learning.json "
                "(e.g. benchmarks/results/learning.json) or omit it")
    if args.quick:
        args.base_train, args.base_test, args.shift_train, args.shift_test = 4, 2, 4, 2
        args.pretrain_epochs = args.adapt_epochs = 1
        args.pretrain_batch = args.adapt_batch = 2
    return args


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


# --------------------------------------------------------------------------- configs


def build_phase_config(spec: PhaseSpec):
    """The phase's config: the package's recipe (``trainer.recipe``: the composed smoke
    config with this phase's data, schedule and model), validated once, at the end."""
    extra: dict[str, Any] = {"trainer.skip_first_val": True}
    if spec.adapter_path is not None:
        extra["trainer.model.adapter_path"] = spec.adapter_path
    if spec.lora is not None and spec.loraplus_lr_ratio is not None:
        extra["trainer.optim.param_group_modifiers.0.loraplus_lr_ratio"] = spec.loraplus_lr_ratio
    return build_recipe_config(RecipeSpec(
        data_root=spec.data_root, eval_split=spec.eval_split, log_dir=spec.log_dir,
        mode=spec.mode, epochs=spec.epochs, lr=spec.lr, weight_decay=spec.weight_decay,
        schedule="cosine", warmup_steps=spec.warmup_steps, batch_size=spec.batch_size,
        val_batch_size=8, steps_per_epoch=spec.steps_per_epoch,
        base_checkpoint=spec.base_checkpoint, lora=spec.lora, dropout=spec.dropout,
        drop_path_rate=spec.dropout, seed=spec.seed, sampler_seed=spec.sampler_seed,
        resolution=spec.resolution,
        backbone_lr_mult=spec.backbone_lr_mult, val_epoch_freq=spec.epochs + 1, extra=extra))


# --------------------------------------------------------------------------- phase process


def run_phase_in_process(spec_path: str) -> None:
    """Child side: run one Trainer as ``sam3.train.train.single_proc_run`` does, then record
    parameter counts, the exported adapter's size, the disabled-adapter val, the base check."""
    from omegaconf import OmegaConf

    from sam3_lora_plugin.trainer.recipe import build_trainer_in_process, close_trainer_logs

    spec = PhaseSpec(**json.loads(Path(spec_path).read_text()))
    cfg = OmegaConf.load(Path(spec.log_dir) / "config.yaml")
    trainer = build_trainer_in_process(cfg, threads=spec.threads)
    trainer.run()
    model = getattr(trainer.model, "module", trainer.model)
    result: dict[str, Any] = {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "optimizer_steps": int(trainer.steps["train"]),
    }
    if spec.lora is not None and spec.mode == "train":
        from sam3_lora_plugin.adapters.io import ADAPTER_WEIGHTS, export_adapter

        out = export_adapter(str(Path(spec.log_dir) / "checkpoints" / "checkpoint.pt"),
                             str(Path(spec.log_dir) / "adapter"))
        result["adapter_bytes"] = (Path(out) / ADAPTER_WEIGHTS).stat().st_size
    if spec.check_disabled:
        from sam3_lora_plugin.lora.inject import set_adapters_enabled

        set_adapters_enabled(model, False)
        trainer.run_val()  # a second line in val_stats.json
    close_trainer_logs(trainer)
    if spec.save_base_to:
        from sam3_lora_plugin.models.base_checkpoint import write_stock_checkpoint

        # The study's own file in its work directory: a rerun replaces it.
        write_stock_checkpoint(model.eval(), spec.save_base_to, overwrite=True)
        result["model_bytes"] = Path(spec.save_base_to).stat().st_size
    if spec.check_base:
        result["base_check"] = check_base_unchanged(model, spec)
    Path(spec.log_dir, "phase_result.json").write_text(json.dumps(result, indent=1))


def check_base_unchanged(model: Any, spec: PhaseSpec) -> dict[str, Any]:
    """Every frozen parameter and buffer of the trained LoRA model equals the base file's
    tensor (``torch.equal``), and the base fingerprint in the Trainer's adapter-only
    ``checkpoint.pt`` equals the base file's."""
    import torch

    from sam3_lora_plugin.adapters.metadata import (
        METADATA_KEY, decode_metadata, describe_targets, fingerprint_tensors, get_base_param_keys)
    from sam3_lora_plugin.adapters.state import get_state_keys
    from sam3_lora_plugin.models.base_checkpoint import read_base_state_dict, read_checkpoint

    base = read_base_state_dict(spec.base_checkpoint)
    params = dict(model.named_parameters())
    base = {k: v.to(params[k].dtype) if k in params else v for k, v in base.items()}  # fp16 file
    buffers = dict(model.named_buffers())
    frozen = [k for k in get_state_keys(model)
              if k in base and not (k in params and params[k].requires_grad)]
    mismatched = [k for k in frozen if not torch.equal(
        (params.get(k) if k in params else buffers[k]).detach(), base[k])]
    ckpt = read_checkpoint(str(Path(spec.log_dir) / "checkpoints" / "checkpoint.pt"),
                           weights_only=False)
    meta = decode_metadata(ckpt["model"][METADATA_KEY])
    file_fp = fingerprint_tensors((k, base[k]) for k in get_base_param_keys(describe_targets(model)))
    return {"frozen_tensors_compared": len(frozen), "mismatched": mismatched[:20],
            "fingerprint_match": meta["base_fingerprint"] == file_fp,
            "bit_identical": not mismatched and meta["base_fingerprint"] == file_fp
            and len(frozen) > 0}


# --------------------------------------------------------------------------- parent side


def run_phase(spec: PhaseSpec) -> dict[str, Any]:
    """Write the phase config and spec, run it in a subprocess, read what it left."""
    from omegaconf import OmegaConf

    log_dir = Path(spec.log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)  # a fresh Trainer run, never a resume of an old one
    log_dir.mkdir(parents=True)
    OmegaConf.save(build_phase_config(spec), log_dir / "config.yaml")
    (log_dir / "phase_spec.json").write_text(json.dumps(asdict(spec), indent=1))
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase-spec",
           str(log_dir / "phase_spec.json")]
    with open(log_dir / "stdout.txt", "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    seconds = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        tail = (log_dir / "stdout.txt").read_text()[-4000:]
        raise RuntimeError(f"phase {spec.name} failed (exit {proc.returncode}); "
                           f"log {log_dir / 'stdout.txt'}:\n{tail}")
    result = json.loads((log_dir / "phase_result.json").read_text())
    vals = read_val_stats(log_dir)
    losses = read_tensorboard_scalars(str(log_dir / "tensorboard"), [TRAIN_LOSS_TAG])
    result.update(seconds=seconds, final=vals[0] if vals else None,
                  disabled=vals[1] if spec.check_disabled and len(vals) > 1 else None,
                  loss=[v for _, v in losses.get(TRAIN_LOSS_TAG, [])])
    print(f"[learning] {spec.name}: {seconds:.0f} s, {_fmt(result['final'])}", flush=True)
    return result


def read_val_stats(log_dir: Path) -> list[dict[str, float]]:
    """Our metrics from each line of the Trainer's ``logs/val_stats.json``."""
    path = log_dir / "logs" / "val_stats.json"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: float(r.get(key, float("nan"))) for k, key in _SAM3_METRIC.items()} for r in rows]


def _fmt(metrics: Optional[dict[str, float]]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in (metrics or {}).items()) or "-"


def make_datasets(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The base domain and each shifted style (fixed by ``--seed``, reused when present)."""
    from sam3_lora_plugin.data import make_synthetic_coco

    common = {"image_size": args.resolution, "seed": args.seed, "num_valid": 0}
    data = {"base": make_synthetic_coco(work / "data" / "base", num_train=args.base_train,
                                        num_test=args.base_test, style="base", **common)}
    for style in args.shift_style:
        data[style] = make_synthetic_coco(work / "data" / style, num_train=args.shift_train,
                                          num_test=args.shift_test, style=style, **common)
    return data


def plan_row(args: argparse.Namespace, work: Path, data: dict[str, Path], base_ckpt: str,
             row: str, shift: str, seed: int) -> tuple[PhaseSpec, PhaseSpec]:
    """The adaptation phase of one (row, shift, seed) and its retention phase."""
    spec = ROWS[row]
    steps = max(args.shift_train // args.adapt_batch, 1)
    name = f"{row}@{shift}@s{seed}"
    log = work / "runs" / shift / row / f"seed{seed}"
    # The seed sets the LoRA init (the Trainer's seed) and the data order (the sampler's);
    # seed 0 keeps stock's order.
    common = {"resolution": args.resolution, "seed": 1000 + seed, "threads": args.threads}
    lora = None
    if "lora" in spec:
        lora = {"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": 0.0, **spec["lora"]}
    adapt = PhaseSpec(
        name=name, data_root=str(data[shift]), eval_split="test", log_dir=str(log / "adapt"),
        epochs=args.adapt_epochs, steps_per_epoch=steps, batch_size=args.adapt_batch,
        warmup_steps=min(20, steps), base_checkpoint=base_ckpt, lora=lora, sampler_seed=seed,
        lr=spec.get("lr", args.lora_lr if lora else args.full_lr),
        loraplus_lr_ratio=spec.get("loraplus_lr_ratio"), check_base=lora is not None,
        backbone_lr_mult=1.0 if lora else args.backbone_lr_mult,
        save_base_to=None if lora else str(log / "adapt" / "model_sam3.pt"), **common)
    retain = PhaseSpec(
        name=f"{name}:retention", data_root=str(data["base"]), eval_split="test", mode="val",
        log_dir=str(log / "retention"), lora=lora, check_disabled=lora is not None,
        adapter_path=str(log / "adapt" / "adapter") if lora else None,
        base_checkpoint=base_ckpt if lora else adapt.save_base_to, **common)
    return adapt, retain


def run_row(adapt: PhaseSpec, retain: PhaseSpec) -> dict[str, Any]:
    """Adapt, then evaluate on the base domain; one record of the row's numbers."""
    a = run_phase(adapt)
    r = run_phase(retain)
    return {"shift": a["final"], "retention": r["final"], "adapter_disabled": r["disabled"],
            "trainable_params": a["trainable_params"], "total_params": a["total_params"],
            "adapter_bytes": a.get("adapter_bytes", a.get("model_bytes")),
            "optimizer_steps": a["optimizer_steps"], "wall_s": a["seconds"],
            "sampler_seed": adapt.sampler_seed,
            "base_bit_identical": a.get("base_check", {}).get("bit_identical"), "loss": a["loss"]}


def summarize(runs: dict[str, dict[str, Any]], base_own: dict[str, float],
              base_shift: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per shift and row: mean ± std over seeds of each metric, retention, cost."""
    table: dict[str, dict[str, Any]] = {}
    for key, rec in runs.items():
        row, shift, _ = key.split("@")
        table.setdefault(shift, {}).setdefault(row, []).append(rec)
    out: dict[str, Any] = {}
    for shift, rows in table.items():
        out[shift] = {"base": base_shift.get(shift)}
        for row, recs in rows.items():
            out[shift][row] = {
                "seeds": len(recs),
                **{m: mean_std([r["shift"][m] for r in recs]) for m in METRICS},
                **{f"retention_{m}": mean_std([r["retention"][m] for r in recs])
                   for m in ("bbox_AP", "segm_AP")},
                "trainable_params": recs[0]["trainable_params"],
                "adapter_bytes": recs[0]["adapter_bytes"],
                "wall_s": mean_std([r["wall_s"] for r in recs]),
                "adapter_disabled_equals_base": (
                    all(r["adapter_disabled"] == base_own for r in recs)
                    if recs[0]["adapter_disabled"] is not None else None),
                "base_bit_identical": (all(r["base_bit_identical"] for r in recs)
                                       if recs[0]["base_bit_identical"] is not None else None),
            }
    return out


def _previous_base_sha256(previous: dict[str, Any]) -> Optional[str]:
    """The SHA-256 of an earlier study's base: recorded, or hashed from its file if present."""
    if previous.get("base_sha256"):
        return previous["base_sha256"]
    for path in (previous.get("base_checkpoint"), previous.get("args", {}).get("base_checkpoint")):
        if path and (REPO / path).is_file():  # an absolute path stays absolute
            return hashlib.sha256((REPO / path).read_bytes()).hexdigest()
    return None


#: The arguments that change a (row, shift, seed) result; --reuse needs them all equal.
RESULT_ARGS = ("seed", "resolution", "base_train", "base_test", "pretrain_epochs", "pretrain_lr",
               "pretrain_batch", "backbone_lr_mult", "shift_train", "shift_test", "adapt_epochs",
               "adapt_batch", "full_lr", "lora_lr", "lora_rank", "lora_alpha")


def reusable_runs(previous: dict[str, Any], args: argparse.Namespace, base_sha256: str,
                  jobs: dict[str, tuple[PhaseSpec, PhaseSpec]]) -> dict[str, dict[str, Any]]:
    """The records of ``previous`` (an earlier ``learning.json``) that a new run would repeat.

    A record is taken only when every argument in ``RESULT_ARGS`` is equal, the base file has
    the same SHA-256, the row's definition in ``ROWS`` is the same, and its data order is the
    same: records written before ``sampler_seed`` was recorded ran SAM3's stock sampler,
    whose order is sampler seed 0's.
    """
    prev_args = previous.get("args", {})
    if any(prev_args.get(k) != getattr(args, k) for k in RESULT_ARGS):
        return {}
    if _previous_base_sha256(previous) != base_sha256:
        return {}
    taken = {}
    for key, rec in previous.get("runs", {}).items():
        if key not in jobs:
            continue
        row = key.split("@")[0]
        if previous.get("rows", {}).get(row) != json.loads(json.dumps(ROWS[row])):
            continue
        if rec.get("sampler_seed", 0) != jobs[key][0].sampler_seed:
            continue
        loss = previous.get("losses", {}).get(key)
        taken[key] = {**rec, "sampler_seed": jobs[key][0].sampler_seed,
                      "loss": loss if loss is not None else [], "reused_from": previous["date"]}
    return taken


# --------------------------------------------------------------------------- plot


def plot(report: dict[str, Any], path: Path) -> None:
    """Per shift: bbox AP on the shift and retained bbox AP on the base domain, mean ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report["results"]
    fig, axes = plt.subplots(1, max(len(table), 1), figsize=(7 * max(len(table), 1), 5),
                             squeeze=False)
    for ax, (shift, rows) in zip(axes[0], table.items()):
        names = [r for r in rows if r != "base"]
        xs = range(len(names))
        for off, key, label in ((-0.2, "bbox_AP", f"bbox AP on {shift}"),
                                (0.2, "retention_bbox_AP", "bbox AP on base (retention)")):
            ax.bar([x + off for x in xs], [rows[n][key]["mean"] or 0 for n in names], 0.4,
                   yerr=[rows[n][key]["std"] or 0 for n in names], capsize=3, label=label)
        if rows.get("base"):
            ax.axhline(rows["base"]["bbox_AP"], color="grey", ls="--", label="base on shift")
        ax.axhline(report["base_own_domain"]["bbox_AP"], color="black", ls=":",
                   label="base on base")
        ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=8)
        ax.set(ylim=(0, 1), title=f"shift: {shift} (mean ± std over seeds)")
        ax.legend(fontsize=8)
    fig.suptitle(f"tiny SAM3 through SAM3's Trainer ({report['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the study and write ``learning.json`` and ``learning.png``; return the report."""
    args = parse_args(argv)
    if args.phase_spec:
        run_phase_in_process(args.phase_spec)
        return {}
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if args.work_dir:
        work, temporary = Path(args.work_dir).absolute(), False
    elif args.quick:
        work = Path(tempfile.mkdtemp(prefix="learning_work_", dir=out))
        temporary = not args.keep_work
    else:
        work, temporary = REPO / "experiments" / "learning", False
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "learning", "complete": False,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_avg_at_start": list(os.getloadavg())},
        "command": "python benchmarks/learning.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items() if k != "phase_spec"},
        "config": CONFIG_NAME, "rows": {r: ROWS[r] for r in _split(args.rows)},
    }
    try:
        data = make_datasets(args, work)
        base_ckpt = str(Path(args.base_checkpoint).absolute()) if args.base_checkpoint else str(
            work / "base_sam3.pt")
        common = {"resolution": args.resolution, "seed": 123 + args.seed, "threads": args.threads}
        if not args.base_checkpoint:
            steps = max(args.base_train // args.pretrain_batch, 1)
            pre = run_phase(PhaseSpec(
                name="pretrain", data_root=str(data["base"]), eval_split="test",
                log_dir=str(work / "runs" / "pretrain"), epochs=args.pretrain_epochs,
                steps_per_epoch=steps, lr=args.pretrain_lr, batch_size=args.pretrain_batch,
                warmup_steps=min(50, steps), backbone_lr_mult=args.backbone_lr_mult,
                save_base_to=base_ckpt, **common))
            report["pretrain"] = {"wall_s": pre["seconds"], "final": pre["final"],
                                  "trainable_params": pre["trainable_params"]}
        report["base_checkpoint"] = base_ckpt
        report["base_sha256"] = hashlib.sha256(Path(base_ckpt).read_bytes()).hexdigest()

        def evaluate(name: str, domain: str) -> dict[str, float]:
            return run_phase(PhaseSpec(name=name, data_root=str(data[domain]), eval_split="test",
                                       mode="val", base_checkpoint=base_ckpt,
                                       log_dir=str(work / "runs" / name), **common))["final"]

        report["base_own_domain"] = evaluate("base_own", "base")
        base_shift = {s: evaluate(f"base_on_{s}", s) for s in args.shift_style}
        jobs = {f"{row}@{shift}@s{seed}": plan_row(args, work, data, base_ckpt, row, shift, seed)
                for seed in args.seed_list for shift in args.shift_style
                for row in _split(args.rows)}
        runs: dict[str, dict[str, Any]] = {}
        if args.reuse:
            runs.update(reusable_runs(json.loads(Path(args.reuse).read_text()), args,
                                      report["base_sha256"], jobs))
            print(f"[learning] --reuse: {len(runs)} of {len(jobs)} runs taken from "
                  f"{args.reuse}: {', '.join(sorted(runs)) or 'none'}", flush=True)

        def finished(key: str, rec: dict[str, Any]) -> None:
            runs[key] = rec
            report.update(runs={k: {kk: vv for kk, vv in v.items() if kk != "loss"}
                                for k, v in runs.items()},
                          results=summarize(runs, report["base_own_domain"], base_shift),
                          wall_s=round(time.perf_counter() - started, 1))
            write_json(out / "learning.json", report, indent=1)

        for key in list(runs):
            finished(key, runs[key])

        with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
            futures = {k: pool.submit(run_row, *specs) for k, specs in jobs.items()
                       if k not in runs}
            for key, fut in futures.items():
                finished(key, fut.result())
        report["complete"] = True
        report["losses"] = {k: v["loss"] for k, v in runs.items()}
        report["wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    report = json.loads(json.dumps(report))
    write_json(out / "learning.json", report, indent=1)
    plot(report, out / "learning.png")
    print(json.dumps({"results": report["results"], "base_own_domain": report["base_own_domain"],
                      "wall_s": report["wall_s"]}, indent=1, default=str)[:6000])
    return report


if __name__ == "__main__":
    main()
