"""One phase of ``benchmarks/learning.py``: a run of SAM3's official Trainer (train or val)
on a config composed from ``configs/lora/smoke_cpu.yaml``, in its own process.

The parent writes the phase's config and :class:`PhaseSpec` into its log folder and runs
``python benchmarks/learning.py --phase-spec SPEC`` (:func:`run_phase`); the child
(:func:`run_phase_in_process`) runs the Trainer and records parameter counts, the exported
adapter's size, the disabled-adapter val and the base check; the parent then reads the
Trainer's ``val_stats.json`` and tensorboard losses.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness import read_tensorboard_scalars, run_script, write_json
from sam3_lora_plugin.trainer.recipe import PhaseSpec as RecipeSpec
from sam3_lora_plugin.trainer.recipe import build_phase_config as build_recipe_config

REPO = Path(__file__).resolve().parents[1]
#: The script whose ``--phase-spec`` runs a phase (:func:`run_phase_in_process`).
SCRIPT = Path(__file__).resolve().with_name("learning.py")
VAL_KEY = "coco"  # the val collate_fn's dict_key in smoke_cpu.yaml
METRICS = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
_SAM3_METRIC = {  # our name -> the key SAM3's COCO evaluator writes into val_stats.json
    "bbox_AP": f"Meters_train/val_{VAL_KEY}/detection/coco_eval_bbox_AP",
    "bbox_AP50": f"Meters_train/val_{VAL_KEY}/detection/coco_eval_bbox_AP_50",
    "segm_AP": f"Meters_train/val_{VAL_KEY}/segmentation/coco_eval_segm_AP",
    "segm_AP50": f"Meters_train/val_{VAL_KEY}/segmentation/coco_eval_segm_AP_50",
}
TRAIN_LOSS_TAG = "Step_Stats/train/Losses/train_all_loss"


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
    write_json(Path(spec.log_dir) / "phase_result.json", result, indent=1)


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


def run_phase(spec: PhaseSpec) -> dict[str, Any]:
    """Write the phase config and spec, run it in a subprocess, read what it left."""
    from omegaconf import OmegaConf

    log_dir = Path(spec.log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)  # a fresh Trainer run, never a resume of an old one
    log_dir.mkdir(parents=True)
    OmegaConf.save(build_phase_config(spec), log_dir / "config.yaml")
    write_json(log_dir / "phase_spec.json", asdict(spec), indent=1)
    t0 = time.perf_counter()
    result = run_script(SCRIPT, ["--phase-spec", str(log_dir / "phase_spec.json")],
                        f"phase {spec.name}", log_dir / "phase_result.json",
                        log=log_dir / "stdout.txt", cwd=REPO)
    seconds = round(time.perf_counter() - t0, 1)
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
