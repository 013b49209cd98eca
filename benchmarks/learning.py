#!/usr/bin/env python
"""Evidence that the whole pipeline learns: pretrain, then LoRA vs full fine-tuning on a shifted domain.

Every training and evaluation below is a run of SAM3's official Trainer
(``sam3.train.trainer.Trainer``) on a config composed from the packaged
``configs/lora/smoke_cpu.yaml`` with Hydra's compose API, as SAM3's launcher does; the
script only edits the composed tree (dataset paths, epochs, learning rate, model node)
and runs each phase in its own process (each Trainer initialises torch.distributed).

Phases
    1. ``pretrain``: full training of the tiny SAM3 (``sam3_lora_plugin.build_sam3_arch``,
       no LoRA) on the synthetic ``base`` domain (red circle / blue square / green triangle
       on grey). The result is written as a stock-layout ``sam3.pt``-style checkpoint
       (``detector.*`` keys, ``sam3_lora_plugin.models.base_checkpoint.write_stock_checkpoint``).
    2. ``base_eval``: ``trainer.mode=val`` of that checkpoint on the held-out split of
       the ``shifted`` domain (orange hexagon / purple diamond / yellow star on a striped
       background: new colours, shapes, category names and background).
    3. ``lora``: ``build_lora_sam3`` around ``build_sam3_arch(checkpoint_path=<base>)``,
       trained on the shifted domain, evaluated on its held-out split after every epoch.
       After training, every frozen parameter and buffer of the trained model (still in
       the Trainer's memory) is compared bit for bit with the base file, and the base
       fingerprint the Trainer's adapter-only ``checkpoint.pt`` carries is compared with
       the fingerprint of the base file.
    4. ``full_ft``: the plain model from the same base checkpoint, same data, epochs,
       batch size and so the same number of optimizer steps.
    5. optional ``--sweep``: more LoRA variants (rank, learning rate, preset,
       ``modules_to_save``), same step budget.

Outputs (``--out``, default ``benchmarks/results``): ``learning.json`` (date, machine,
arguments, per-phase durations, the AP table, parameter counts, the bit-identity
check, loss and AP curves) and ``learning.png`` (loss and AP curves). Working files
(datasets, Trainer log dirs, checkpoints) go to ``--work-dir``.

Usage (from the repository root)::

    python benchmarks/learning.py                     # the real run, ~20 min on 2 CPU cores
    python benchmarks/learning.py --quick --out /tmp/learning
    python benchmarks/learning.py --sweep rank16,lr3e-3,attention_mlp,scoring
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from harness import machine_info
from sam3_lora_plugin.testing import get_free_port
from sam3_lora_plugin.trainer.compose import compose_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_NAME = "configs/lora/smoke_cpu.yaml"
ANN_FILE = "_annotations.coco.json"
VAL_KEY = "smoke"  # the val collate_fn's dict_key in smoke_cpu.yaml
METRICS = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
_SAM3_METRIC = {  # our name -> the key SAM3's COCO evaluator writes into val_stats.json
    "bbox_AP": f"Meters_train/val_{VAL_KEY}/detection/coco_eval_bbox_AP",
    "bbox_AP50": f"Meters_train/val_{VAL_KEY}/detection/coco_eval_bbox_AP_50",
    "segm_AP": f"Meters_train/val_{VAL_KEY}/segmentation/coco_eval_segm_AP",
    "segm_AP50": f"Meters_train/val_{VAL_KEY}/segmentation/coco_eval_segm_AP_50",
}
TRAIN_LOSS_TAG = "Step_Stats/train/Losses/train_all_loss"

#: Named LoRA variants for ``--sweep``: changes applied on top of the main LoRA run.
SWEEP_VARIANTS: dict[str, dict[str, Any]] = {
    # rank (alpha = 2 * rank, as the defaults)
    "rank4": {"rank": 4, "alpha": 8},
    "rank16": {"rank": 16, "alpha": 32},
    "rank32": {"rank": 32, "alpha": 64},
    # learning rate
    "lr3e-3": {"lr": 3e-3},
    "lr3e-2": {"lr": 3e-2},
    # targets: presets, and the scoring head trained fully
    "qv": {"preset": "qv"},
    "attention": {"preset": "attention"},
    "attention_mlp": {"preset": "attention_mlp"},
    "all_linear": {"preset": "all_linear"},
    "scoring": {"modules_to_save": ["dot_prod_scoring"]},
    "attention_mlp_scoring": {"preset": "attention_mlp", "modules_to_save": ["dot_prod_scoring"]},
    # which MLPs matter: the default preset's components with their MLPs, and
    # attention_mlp without the text encoder
    "mlp": {"roles": ["q", "k", "v", "out", "mlp"]},
    "attention_mlp_no_text": {"preset": "attention_mlp", "components": [
        "vision_trunk", "fusion_encoder", "decoder", "geometry_encoder", "segmentation_head"]},
    # the text encoder's token embedding trained fully: the shifted domain's category names
    # use words the tiny base never saw in pretraining (their embeddings are still random)
    "token_embedding": {"modules_to_save": ["backbone.language_backbone.encoder.token_embedding"]},
    "attention_mlp_token_embedding": {
        "preset": "attention_mlp",
        "modules_to_save": ["backbone.language_backbone.encoder.token_embedding"]},
}
#: What ``--sweep`` runs unless told otherwise: one variant per suspect (lr, rank, targets).
DEFAULT_SWEEP = "rank16,lr3e-3,attention,mlp,attention_mlp"


# --------------------------------------------------------------------------- settings


@dataclass
class DataSizes:
    """Images per split of one synthetic domain."""

    train: int
    valid: int
    test: int


@dataclass
class PhaseSpec:
    """Everything one Trainer run needs; serialised to JSON for the phase subprocess."""

    name: str
    data_root: str
    eval_split: str
    mode: str = "train"                     # "train" or "val"
    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "constant"              # "constant" or "cosine" (to lr/100)
    warmup_steps: int = 0
    batch_size: int = 2
    multiplier: int = 1                      # dataset repeats per epoch
    base_checkpoint: Optional[str] = None   # stock-layout file to start from
    lora: Optional[dict[str, Any]] = None   # None: plain model (full fine-tune)
    dropout: float = 0.1
    drop_path_rate: float = 0.1
    seed: int = 123
    resolution: int = 112
    threads: int = 0                        # torch intra-op threads (0: torch's default)
    backbone_lr_mult: float = 1.0           # lr factor for backbone.* and transformer.encoder.*
    save_base_to: Optional[str] = None      # write the trained model as a stock checkpoint
    check_base: bool = False                # compare frozen weights with base_checkpoint
    log_dir: str = ""
    steps_per_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (``--help``)."""
    p = argparse.ArgumentParser(
        prog="python benchmarks/learning.py",
        description="Pretrain a tiny SAM3 on a synthetic domain, then compare the base, LoRA "
        "and full fine-tuning (same step budget) on a shifted domain; all through SAM3's "
        "official Trainer. Writes learning.json and learning.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                   help="directory for learning.json and learning.png")
    p.add_argument("--work-dir", default=None,
                   help="datasets, Trainer logs and checkpoints (default: experiments/learning, "
                   "or a temporary directory under --out with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny datasets and one epoch per phase (for the test suite)")
    p.add_argument("--seed", type=int, default=0, help="dataset and model seed")
    p.add_argument("--resolution", type=int, default=112, help="image side (multiple of 14)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per phase process (0: torch's default). 1 is the most "
                   "robust on a shared machine, where a busy core stalls every OpenMP region")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout and drop-path of the model in every phase (stock: 0.1)")
    p.add_argument("--base-train", type=int, default=2048, help="base-domain train images")
    p.add_argument("--base-test", type=int, default=48, help="base-domain held-out images")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--pretrain-lr", type=float, default=4e-3,
                   help="peak lr (linear warm-up, then cosine to lr/100)")
    p.add_argument("--pretrain-batch", type=int, default=8)
    p.add_argument("--backbone-lr-mult", type=float, default=0.1,
                   help="lr factor for backbone.* and transformer.encoder.* in the full-model "
                   "phases (pretrain, full fine-tune); 1 disables it")
    p.add_argument("--shift-train", type=int, default=256, help="shifted-domain train images")
    p.add_argument("--shift-test", type=int, default=48, help="shifted-domain held-out images")
    p.add_argument("--adapt-epochs", type=int, default=8)
    p.add_argument("--adapt-batch", type=int, default=8)
    p.add_argument("--full-lr", type=float, default=1e-2,
                   help="full fine-tune peak lr (best of 3e-3, 1e-2, 3e-2 in this project's runs)")
    p.add_argument("--lora-lr", type=float, default=1e-2, help="LoRA peak lr")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-preset", default="default", help="a sam3_lora_plugin LoRA preset")
    p.add_argument("--lora-modules-to-save", default="",
                   help="comma-separated modules trained fully beside LoRA (e.g. dot_prod_scoring)")
    p.add_argument("--sweep", default=None,
                   help="comma-separated extra LoRA runs, each the main LoRA run with one change, "
                   f"same step budget; 'none' for none (default: {DEFAULT_SWEEP}; none with "
                   "--quick). Variants: " + ", ".join(SWEEP_VARIANTS))
    p.add_argument("--reuse-base", action="store_true",
                   help="skip the pretrain phase when --work-dir already holds its result with the "
                   "same settings (base_sam3.pt and runs/pretrain); for sweeps over the adaptation")
    p.add_argument("--keep-work", action="store_true",
                   help="with --quick, keep the temporary work directory")
    p.add_argument("--phase-spec", default=None, help=argparse.SUPPRESS)  # internal: run one phase
    args = p.parse_args(argv)
    if args.resolution % 14:
        p.error(f"--resolution must be a multiple of 14, got {args.resolution}")
    if args.sweep is None:
        args.sweep = "" if args.quick else DEFAULT_SWEEP
    elif args.sweep.strip().lower() == "none":
        args.sweep = ""
    unknown = [v for v in _split_list(args.sweep) if v not in SWEEP_VARIANTS]
    if unknown:
        p.error(f"unknown --sweep variants {unknown}; choose from {list(SWEEP_VARIANTS)}")
    if args.quick:
        _apply_quick(args)
    return args


def _apply_quick(args: argparse.Namespace) -> None:
    """Tiny sizes: a few images, one epoch per phase."""
    args.base_train, args.base_test = 4, 2
    args.shift_train, args.shift_test = 4, 2
    args.pretrain_epochs = args.adapt_epochs = 1
    args.pretrain_batch = args.adapt_batch = 2


def _split_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


# --------------------------------------------------------------------------- configs


#: Parameters that get ``backbone_lr_mult`` (SAM3's own configs give the backbones a lower
#: learning rate the same way, through ``param_names`` in ``optim.options.lr``).
SLOW_PARAMS = ["backbone.*", "transformer.encoder.*"]


def _lr_options(spec: PhaseSpec) -> list[dict[str, Any]]:
    """``optim.options.lr``: one scheduler, or two when the backbone/encoder lr differs."""
    main = {"scheduler": _lr_scheduler(spec, spec.lr)}
    if spec.backbone_lr_mult == 1.0:
        return [main]
    return [main, {"scheduler": _lr_scheduler(spec, spec.lr * spec.backbone_lr_mult),
                   "param_names": list(SLOW_PARAMS)}]


def _lr_scheduler(spec: PhaseSpec, lr: float) -> dict[str, Any]:
    """An fvcore scheduler node: constant, or linear warm-up then cosine to lr/100."""
    if spec.schedule == "constant":
        return {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler", "value": lr}
    total = max(spec.epochs * spec.steps_per_epoch, 1)
    cosine = {"_target_": "fvcore.common.param_scheduler.CosineParamScheduler",
              "start_value": lr, "end_value": lr / 100}
    if spec.warmup_steps <= 0:
        return cosine
    w = min(spec.warmup_steps / total, 0.5)
    warm = {"_target_": "fvcore.common.param_scheduler.LinearParamScheduler",
            "start_value": lr / 100, "end_value": lr}
    return {"_target_": "fvcore.common.param_scheduler.CompositeParamScheduler",
            "schedulers": [warm, cosine], "lengths": [w, 1 - w],
            "interval_scaling": ["rescaled", "rescaled"]}


def _model_node(spec: PhaseSpec, arch_node: Any) -> dict[str, Any]:
    """``trainer.model``: the tiny builder, wrapped by ``build_lora_sam3`` for LoRA phases."""
    from omegaconf import OmegaConf

    arch = OmegaConf.to_container(arch_node, resolve=False)
    arch.update(checkpoint_path=spec.base_checkpoint, dropout=spec.dropout,
                drop_path_rate=spec.drop_path_rate)
    if spec.lora is None:
        return arch
    return {"_target_": "sam3_lora_plugin.build_lora_sam3", "cpu_fallbacks": True,
            "checkpoint_dir": "${trainer.checkpoint.save_dir}", "adapter_path": None,
            "model": arch, "lora": dict(spec.lora)}


def build_phase_config(spec: PhaseSpec):
    """The composed smoke config, edited for one phase (paths, sizes, optimiser, model)."""
    from omegaconf import OmegaConf

    cfg = compose_config(CONFIG_NAME)
    OmegaConf.set_struct(cfg, False)  # new keys (logging.log_scalar_frequency, model args)
    root = Path(spec.data_root)
    train_dir, eval_dir = root / "train", root / spec.eval_split
    cfg.paths.experiment_log_dir = spec.log_dir
    s = cfg.scratch
    s.resolution = spec.resolution
    s.train_batch_size, s.val_batch_size = spec.batch_size, 8
    s.lr, s.wd = spec.lr, spec.weight_decay
    t = cfg.trainer
    t.mode, t.max_epochs, t.seed_value = spec.mode, spec.epochs, spec.seed
    t.skip_first_val, t.val_epoch_freq = False, 1
    t.data.train.dataset.img_folder = str(train_dir) + os.sep
    t.data.train.dataset.ann_file = str(train_dir / ANN_FILE)
    t.data.train.dataset.multiplier = spec.multiplier
    t.data.val.dataset.img_folder = str(eval_dir) + os.sep
    t.data.val.dataset.ann_file = str(eval_dir / ANN_FILE)
    for meter in t.meters.val[VAL_KEY].values():
        meter.pred_file_evaluators[0].gt_path = str(eval_dir / ANN_FILE)
    t.model = _model_node(spec, t.model.model)
    t.optim.options.lr = _lr_options(spec)
    if spec.lora is None:
        t.optim.param_group_modifiers = []  # nothing is frozen: every param in the user's groups
        # segmentation_head.semantic_seg_head gets no gradient (no semantic-seg loss), and
        # DDP cannot find SAM3's outputs to mark it unused: a static graph records the
        # unused parameters in the first step instead.
        t.distributed.static_graph = True
    t.checkpoint.save_freq = 0              # only checkpoint.pt
    t.logging.log_freq = 50
    t.logging.log_scalar_frequency = 1      # per-step losses in tensorboard
    return cfg


# --------------------------------------------------------------------------- phase process


def run_phase_in_process(spec_path: str) -> None:
    """Child side: run one Trainer as ``sam3.train.train.single_proc_run`` does, then check.

    ``single_proc_run`` sets the torch.distributed environment, instantiates
    ``cfg.trainer`` and calls ``run()``; the same three steps are done here so the
    trained model can be inspected afterwards (parameter counts, base bit-identity,
    export of the pretrained base).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sam3_lora_plugin.trainer.cpu_fallbacks import enable_cpu_fallbacks

    spec = PhaseSpec(**json.loads(Path(spec_path).read_text()))
    cfg = OmegaConf.load(Path(spec.log_dir) / "config.yaml")
    from sam3.train.utils.train_utils import register_omegaconf_resolvers

    register_omegaconf_resolvers()
    enable_cpu_fallbacks()  # the plain model has no build_lora_sam3(cpu_fallbacks=True)
    if spec.threads > 0:
        import torch

        torch.set_num_threads(spec.threads)
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(get_free_port()), RANK="0",
                      LOCAL_RANK="0", WORLD_SIZE="1")
    trainer = instantiate(cfg.trainer, _recursive_=False)
    trainer.run()
    if trainer.logger.tb_logger is not None:
        trainer.logger.tb_logger.close()
    model = getattr(trainer.model, "module", trainer.model)
    result: dict[str, Any] = {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "optimizer_steps": int(trainer.steps["train"]),
    }
    if spec.lora is not None:
        from sam3_lora_plugin.lora.inject import get_lora_report

        report = get_lora_report(model)
        result["lora_trainable_params"] = result["trainable_params"]
        result["adapted_modules"] = len(report.targets) if report is not None else None
        result["base_params"] = report.total_params if report is not None else None
    if spec.save_base_to:
        from sam3_lora_plugin.models.base_checkpoint import write_stock_checkpoint

        write_stock_checkpoint(model.eval(), spec.save_base_to)
    if spec.check_base:
        result["base_check"] = check_base_unchanged(model, spec)
    Path(spec.log_dir, "phase_result.json").write_text(json.dumps(result, indent=1))


def check_base_unchanged(model: Any, spec: PhaseSpec) -> dict[str, Any]:
    """Compare the trained LoRA model's frozen weights with the base file, bit for bit.

    Checks: (1) every frozen parameter and every buffer of the model whose key is in
    the base file equals the file's tensor exactly (``torch.equal``, same dtype);
    (2) the base fingerprint in the Trainer's final adapter-only ``checkpoint.pt``
    (computed at save time from the weights in memory) equals the fingerprint of the
    base file's adapted weights.
    """
    import torch

    from sam3_lora_plugin.adapters.metadata import (
        METADATA_KEY, decode_metadata, describe_targets, fingerprint_tensors, get_base_param_keys)
    from sam3_lora_plugin.models.base_checkpoint import read_checkpoint
    from sam3_lora_plugin.adapters.state import get_state_keys

    base = read_checkpoint(spec.base_checkpoint)["model"]
    base = {k[len("detector."):]: v for k, v in base.items()}
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    frozen = [k for k in get_state_keys(model)
              if k in base and not (k in params and params[k].requires_grad)]
    mismatched = [k for k in frozen if not torch.equal(
        (params.get(k) if k in params else buffers[k]).detach(), base[k])]
    trainable_in_base = [k for k, p in params.items() if p.requires_grad and k in base]
    missing = sorted(set(base) - set(params) - set(buffers))
    ckpt = read_checkpoint(str(Path(spec.log_dir) / "checkpoints" / "checkpoint.pt"),
                           weights_only=False)
    meta = decode_metadata(ckpt["model"][METADATA_KEY])
    keys = get_base_param_keys(describe_targets(model))
    file_fp = fingerprint_tensors((k, base[k]) for k in keys)
    return {
        "frozen_tensors_compared": len(frozen),
        "frozen_values_compared": int(sum(base[k].numel() for k in frozen)),
        "mismatched": mismatched[:20],
        "base_keys_not_in_model": missing[:20],
        "trainable_keys_from_base": trainable_in_base[:20],  # modules_to_save, if any
        "checkpoint_fingerprint": meta["base_fingerprint"],
        "base_file_fingerprint": file_fp,
        "fingerprint_match": meta["base_fingerprint"] == file_fp,
        "bit_identical": not mismatched and meta["base_fingerprint"] == file_fp
        and len(frozen) > 0,
    }


# --------------------------------------------------------------------------- parent side


def run_phase(spec: PhaseSpec) -> dict[str, Any]:
    """Write the phase config and spec, run it in a subprocess, read what it left."""
    from omegaconf import OmegaConf

    log_dir = Path(spec.log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)  # a fresh Trainer run, never a resume of an old one
    log_dir.mkdir(parents=True)
    cfg = build_phase_config(spec)
    OmegaConf.save(cfg, log_dir / "config.yaml")
    (log_dir / "phase_spec.json").write_text(json.dumps(asdict(spec), indent=1))
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase-spec",
           str(log_dir / "phase_spec.json")]
    with open(log_dir / "stdout.txt", "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (log_dir / "stdout.txt").read_text()[-4000:]
        raise RuntimeError(f"phase {spec.name} failed (exit {proc.returncode}); "
                           f"log {log_dir / 'stdout.txt'}:\n{tail}")
    result = json.loads((log_dir / "phase_result.json").read_text())
    (log_dir / "phase_seconds.json").write_text(json.dumps({"seconds": round(seconds, 1)}))
    result.update(seconds=round(seconds, 1), curves=read_curves(log_dir, spec))
    result["final"] = result["curves"]["ap"][-1]["metrics"] if result["curves"]["ap"] else None
    print(f"[learning] {spec.name}: {seconds:.0f} s, final {_fmt(result['final'])}", flush=True)
    return result


def reuse_phase(spec: PhaseSpec) -> Optional[dict[str, Any]]:
    """The result of an earlier run of ``spec`` in the same log dir, or None when there is
    none, it was run with other settings, or its output (``save_base_to``) is gone."""
    log_dir = Path(spec.log_dir)
    try:
        earlier = json.loads((log_dir / "phase_spec.json").read_text())
        result = json.loads((log_dir / "phase_result.json").read_text())
        seconds = json.loads((log_dir / "phase_seconds.json").read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        return None
    if earlier != json.loads(json.dumps(asdict(spec))) or (
            spec.save_base_to and not Path(spec.save_base_to).is_file()):
        return None
    result.update(seconds=seconds, reused=True, curves=read_curves(log_dir, spec))
    result["final"] = result["curves"]["ap"][-1]["metrics"] if result["curves"]["ap"] else None
    print(f"[learning] {spec.name}: reused {log_dir} ({seconds:.0f} s when it ran)", flush=True)
    return result


def _fmt(metrics: Optional[dict[str, float]]) -> str:
    if not metrics:
        return "-"
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items())


def read_val_stats(log_dir: Path) -> list[dict[str, Any]]:
    """The Trainer's ``logs/val_stats.json`` (one JSON object per validation)."""
    path = log_dir / "logs" / "val_stats.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_tags(log_dir: Path, tags: Optional[Sequence[str]] = None,
               prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` from the Trainer's tensorboard events (SAM3 writes
    new-style scalars, stored as tensor summaries): the given ``tags``, or every tag
    starting with ``prefix``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    tb = log_dir / "tensorboard"
    if not tb.exists():
        return {}
    acc = EventAccumulator(str(tb), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    def wanted(tag: str) -> bool:
        return tag in tags if tags is not None else tag.startswith(prefix)

    out: dict[str, list[tuple[int, float]]] = {}
    for tag in filter(wanted, acc.Tags().get("tensors", [])):
        out[tag] = sorted((int(e.step), float(tensor_util.make_ndarray(e.tensor_proto)))
                          for e in acc.Tensors(tag))
    for tag in filter(wanted, acc.Tags().get("scalars", [])):
        if tag not in out:
            out[tag] = sorted((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return out


def read_train_losses(log_dir: Path) -> list[tuple[int, float]]:
    """Per-step training loss (the core loss of each step)."""
    return _read_tags(log_dir, [TRAIN_LOSS_TAG]).get(TRAIN_LOSS_TAG, [])


#: Per-term losses SAM3's loss wrapper logs each step (weighted sum = the core loss).
LOSS_TERM_PREFIX = "Step_Losses/Losses/train_all_loss/"


def read_loss_terms(log_dir: Path, first: int = 25, last: int = 40) -> dict[str, dict[str, float]]:
    """Mean of each loss term over the first ``first`` steps (after 5) and the last
    ``last`` steps: shows which terms fall and which rise (the one-to-many terms grow
    as more queries pass the o2m matcher's score threshold)."""
    out = {}
    for tag, events in _read_tags(log_dir, prefix=LOSS_TERM_PREFIX).items():
        term = tag[len(LOSS_TERM_PREFIX):]
        values = [v for _, v in events]
        if len(values) < first + 5 or "acc" in term or "f1" in term:  # accuracies, not losses
            continue
        out[term] = {"early": sum(values[5:5 + first]) / first, "late": sum(values[-last:]) / last}
    return out


def read_curves(log_dir: Path, spec: PhaseSpec) -> dict[str, Any]:
    """Loss per step, and AP after each validation with the optimizer step it followed."""
    ap = []
    for row in read_val_stats(log_dir):
        metrics = {k: float(row.get(key, float("nan"))) for k, key in _SAM3_METRIC.items()}
        epoch = int(row.get("Trainer/epoch", 0))
        step = 0 if spec.mode == "val" else (epoch + 1) * spec.steps_per_epoch
        ap.append({"epoch": epoch, "step": step, "metrics": metrics})
    losses = read_train_losses(log_dir)
    return {"loss_steps": [s for s, _ in losses], "loss": [v for _, v in losses], "ap": ap,
            "loss_terms": read_loss_terms(log_dir)}


def make_datasets(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The two synthetic domains (reused when already there with the same parameters)."""
    from sam3_lora_plugin.data import make_synthetic_coco

    common = {"image_size": args.resolution, "seed": args.seed}
    base = make_synthetic_coco(work / "data" / "base", num_train=args.base_train, num_valid=0,
                               num_test=args.base_test, style="base", **common)
    shifted = make_synthetic_coco(work / "data" / "shifted", num_train=args.shift_train,
                                  num_valid=0, num_test=args.shift_test, style="shifted", **common)
    return {"base": base, "shifted": shifted}


def _lora_settings(args: argparse.Namespace, variant: Optional[dict[str, Any]] = None
                   ) -> tuple[dict[str, Any], float]:
    """LoRA config (``LoraConfig`` fields) and learning rate, with a sweep variant applied."""
    lora: dict[str, Any] = {"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": 0.0,
                            "preset": args.lora_preset}
    mts = _split_list(args.lora_modules_to_save)
    if mts:
        lora["modules_to_save"] = mts
    lr = args.lora_lr
    for k, v in (variant or {}).items():
        if k == "lr":
            lr = float(v)
        else:
            lora[k] = v
    return lora, lr


def plan_phases(args: argparse.Namespace, work: Path, data: dict[str, Path]) -> dict[str, PhaseSpec]:
    """The phase specs in run order."""
    base_ckpt = str(work / "base_sam3.pt")
    pre_steps = args.base_train // args.pretrain_batch
    adapt_steps = args.shift_train // args.adapt_batch
    common = {"resolution": args.resolution, "seed": 123 + args.seed, "threads": args.threads,
              "dropout": args.dropout, "drop_path_rate": args.dropout}
    phases = {
        "pretrain": PhaseSpec(
            name="pretrain", data_root=str(data["base"]), eval_split="test",
            epochs=args.pretrain_epochs, lr=args.pretrain_lr, batch_size=args.pretrain_batch,
            schedule="cosine", warmup_steps=min(50, pre_steps), steps_per_epoch=pre_steps,
            backbone_lr_mult=args.backbone_lr_mult, save_base_to=base_ckpt, log_dir=str(work / "runs" / "pretrain"), **common),
        "base_eval": PhaseSpec(
            name="base_eval", data_root=str(data["shifted"]), eval_split="test", mode="val",
            base_checkpoint=base_ckpt, log_dir=str(work / "runs" / "base_eval"), **common),
    }
    adapt = {"data_root": str(data["shifted"]), "eval_split": "test", "epochs": args.adapt_epochs,
             "batch_size": args.adapt_batch, "base_checkpoint": base_ckpt, "schedule": "cosine",
             "warmup_steps": min(20, adapt_steps), "steps_per_epoch": adapt_steps, **common}
    lora, lora_lr = _lora_settings(args)
    phases["lora"] = PhaseSpec(name="lora", lr=lora_lr, lora=lora, check_base=True,
                               log_dir=str(work / "runs" / "lora"), **adapt)
    phases["full_ft"] = PhaseSpec(name="full_ft", lr=args.full_lr,
                                  backbone_lr_mult=args.backbone_lr_mult,
                                  log_dir=str(work / "runs" / "full_ft"), **adapt)
    for v in _split_list(args.sweep):
        lora, lora_lr = _lora_settings(args, SWEEP_VARIANTS[v])
        phases[f"sweep_{v}"] = PhaseSpec(name=f"sweep_{v}", lr=lora_lr, lora=lora, check_base=True,
                                         log_dir=str(work / "runs" / f"sweep_{v}"), **adapt)
    return phases


def summarize(args: argparse.Namespace, results: dict[str, dict[str, Any]],
              specs: dict[str, PhaseSpec]) -> dict[str, Any]:
    """The AP table, parameter counts and ratios, the bit-identity check, findings."""
    base_shift = results["base_eval"]["final"]
    table = {"base": base_shift, "lora": results["lora"]["final"],
             "full_ft": results["full_ft"]["final"]}
    full_params = results["full_ft"]["trainable_params"]
    params = {"total": results["full_ft"]["total_params"], "full_ft_trainable": full_params}
    for name, r in results.items():
        if specs[name].lora is not None:
            params[f"{name}_trainable"] = r["trainable_params"]
            params[f"{name}_ratio"] = r["trainable_params"] / full_params
    sweep = {}
    for name, r in results.items():
        if name.startswith("sweep_"):
            sweep[name[len("sweep_"):]] = {
                "lora": specs[name].lora, "lr": specs[name].lr, "final": r["final"],
                "trainable_params": r["trainable_params"],
                "bit_identical": r["base_check"]["bit_identical"], "seconds": r["seconds"]}
    checks = {name: r["base_check"] for name, r in results.items() if "base_check" in r}
    return {
        "base_own_domain": results["pretrain"]["final"],
        "shifted_heldout": table,
        "gains": _gains(table),
        "trainable_params": params,
        "base_bit_identical": all(c["bit_identical"] for c in checks.values()),
        "base_checks": checks,
        "sweep": sweep,
        "findings": findings(table, sweep, specs) + loss_findings(results),
    }


def _gains(table: dict[str, Optional[dict[str, float]]]) -> dict[str, Any]:
    """LoRA - base, full - base, and LoRA's share of the full fine-tune's gain, per metric."""
    out: dict[str, Any] = {}
    base, lora, full = table["base"] or {}, table["lora"] or {}, table["full_ft"] or {}
    for m in METRICS:
        if m not in base or m not in lora or m not in full:
            continue
        full_gain = full[m] - base[m]
        out[m] = {"lora_minus_base": lora[m] - base[m], "full_minus_base": full_gain,
                  "lora_share_of_full_gain": (lora[m] - base[m]) / full_gain
                  if abs(full_gain) > 1e-9 else None}
    return out


def findings(table: dict[str, Any], sweep: dict[str, Any], specs: dict[str, PhaseSpec]) -> list[str]:
    """Plain-language lines that follow from the numbers (no judgement calls hidden)."""
    lines = []
    base, lora, full = table["base"], table["lora"], table["full_ft"]
    if base and lora and full:
        for m in ("bbox_AP", "segm_AP"):
            lines.append(f"{m}: base {base[m]:.3f}, LoRA {lora[m]:.3f} "
                         f"({lora[m] - base[m]:+.3f}), full fine-tune {full[m]:.3f} "
                         f"({full[m] - base[m]:+.3f}).")
    best = None
    for name, s in sweep.items():
        if s["final"]:
            lines.append(f"sweep {name} (lora={s['lora']}, lr={s['lr']:g}): bbox_AP "
                         f"{s['final']['bbox_AP']:.3f}, segm_AP {s['final']['segm_AP']:.3f}, "
                         f"{s['trainable_params']:,} trainable.")
            if best is None or s["final"]["bbox_AP"] > sweep[best]["final"]["bbox_AP"]:
                best = name
    if best is not None and lora:
        lines.append(f"best sweep variant by bbox_AP: {best} "
                     f"({sweep[best]['final']['bbox_AP']:.3f} vs main LoRA {lora['bbox_AP']:.3f}).")
    return lines


def loss_findings(results: dict[str, dict[str, Any]]) -> list[str]:
    """Which loss terms rose during training (the total is not monotone in AP)."""
    lines = []
    for name in ("pretrain", "full_ft", "lora"):
        terms = results.get(name, {}).get("curves", {}).get("loss_terms", {})
        rising = sorted(t for t, v in terms.items() if v["late"] > 2 * v["early"] and v["late"] > 0.1)
        falling = sorted(t for t, v in terms.items() if v["late"] < 0.7 * v["early"])
        if rising:
            lines.append(f"{name}: loss terms that rose (late mean > 2x early): {', '.join(rising)}; "
                         f"fell: {', '.join(falling) or 'none'}.")
    return lines


# --------------------------------------------------------------------------- plot


def plot(report: dict[str, Any], path: Path) -> None:
    """Training loss per step and held-out AP per epoch: LoRA vs full FT (base as a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["curves"]
    adapt = [n for n in curves if n not in ("pretrain", "base_eval")]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    ax = axes[0, 0]
    c = curves["pretrain"]
    ax.plot(c["loss_steps"], _smooth(c["loss"]), color="black")
    ax.set(title="pretrain (base domain): train loss", xlabel="optimizer step", ylabel="loss",
           yscale="log")
    ax = axes[1, 0]
    for m, style in (("bbox_AP", "-"), ("bbox_AP50", "--"), ("segm_AP", "-."), ("segm_AP50", ":")):
        ax.plot([p["step"] for p in c["ap"]], [p["metrics"][m] for p in c["ap"]], style,
                marker="o", color="black", label=m)
    ax.set(title="pretrain: AP on base-domain held-out", xlabel="optimizer step", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for n in adapt:
        ax.plot(curves[n]["loss_steps"], _smooth(curves[n]["loss"]), label=n)
    ax.set(title="shifted domain: train loss (smoothed)", xlabel="optimizer step", yscale="log")
    ax.legend(fontsize=8)
    base = report["results"]["shifted_heldout"]["base"] or {}
    for ax, metric in ((axes[0, 2], "bbox_AP"), (axes[1, 1], "bbox_AP50"), (axes[1, 2], "segm_AP")):
        for n in adapt:
            pts = [(0, base.get(metric, math.nan))] + [
                (p["step"], p["metrics"][metric]) for p in curves[n]["ap"]]
            ax.plot(*zip(*pts), marker="o", label=n)
        if metric in base:
            ax.axhline(base[metric], color="grey", linestyle="--", label="base (no adaptation)")
        ax.set(title=f"shifted domain held-out: {metric}", xlabel="optimizer step", ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.suptitle(f"tiny SAM3 through SAM3's Trainer: LoRA vs full fine-tune ({report['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _smooth(values: list[float], window: int = 9) -> list[float]:
    """Centered moving average (the per-step loss is noisy at batch size 4)."""
    if len(values) < window:
        return list(values)
    half = window // 2
    return [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
            for i in range(len(values))]


# --------------------------------------------------------------------------- main


def _work_dir(args: argparse.Namespace, out: Path) -> tuple[Path, bool]:
    """The work directory and whether it is temporary."""
    if args.work_dir:
        return Path(args.work_dir).absolute(), False
    if args.quick:
        return Path(tempfile.mkdtemp(prefix="learning_work_", dir=out)), not args.keep_work
    return REPO / "experiments" / "learning", False


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run every phase and write ``learning.json`` and ``learning.png``; return the report."""
    args = parse_args(argv)
    if args.phase_spec:
        run_phase_in_process(args.phase_spec)
        return {}
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    work, temporary = _work_dir(args, out)
    started = time.perf_counter()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = {**machine_info(), "load_avg_at_start": list(os.getloadavg())}
    try:
        t0 = time.perf_counter()
        data = make_datasets(args, work)
        durations = {"datasets": round(time.perf_counter() - t0, 1)}
        specs = plan_phases(args, work, data)
        results = {}
        for name, spec in specs.items():
            reused = reuse_phase(spec) if args.reuse_base and name == "pretrain" else None
            results[name] = reused or run_phase(spec)
            durations[name] = results[name]["seconds"]
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    durations["total"] = round(time.perf_counter() - started, 1)
    report = {
        "benchmark": "learning", "date": date, "machine": machine,
        "command": "python benchmarks/learning.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items() if k != "phase_spec"},
        "config": CONFIG_NAME,
        "phases": {n: _spec_summary(s) for n, s in specs.items()},
        "durations_s": durations,
        "results": summarize(args, results, specs),
        "curves": {n: r["curves"] for n, r in results.items()},
    }
    report = json.loads(json.dumps(report, allow_nan=True))
    (out / "learning.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out / "learning.png")
    print(json.dumps({"results": report["results"]["shifted_heldout"],
                      "base_own_domain": report["results"]["base_own_domain"],
                      "durations_s": durations,
                      "base_bit_identical": report["results"]["base_bit_identical"]}, indent=1))
    return report


def _spec_summary(spec: PhaseSpec) -> dict[str, Any]:
    """What a phase ran with (paths relative to the work directory are dropped)."""
    keep = ("mode", "epochs", "lr", "backbone_lr_mult", "weight_decay", "schedule",
            "warmup_steps", "batch_size", "steps_per_epoch", "lora", "dropout", "drop_path_rate",
            "seed", "resolution", "eval_split", "threads")
    d = {k: getattr(spec, k) for k in keep}
    d["domain"] = Path(spec.data_root).name
    d["optimizer_steps"] = spec.epochs * spec.steps_per_epoch if spec.mode == "train" else 0
    d["model"] = "build_sam3_arch(size=tiny)" + (" + build_lora_sam3" if spec.lora else "")
    return d


if __name__ == "__main__":
    main()
