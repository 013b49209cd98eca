"""Compose and run one SAM3 Trainer phase from the packaged smoke config, in this process.

The building blocks of the pretraining recipe behind the shipped tiny base
(``python -m sam3_lora_plugin.pretrain_base``) and of ``benchmarks/learning.py``'s phases:
the config is ``configs/lora/smoke_cpu.yaml`` composed as SAM3's launcher composes it
(``compose.compose_config``), then edited for the phase (dataset paths, epochs, learning-rate
schedule, model node); the phase is SAM3's own ``Trainer`` instantiated from that config,
as ``sam3.train.train.single_proc_run`` does.

Learning-rate schedules are fvcore nodes, the schedulers SAM3's configs use:
``constant``, or ``cosine`` from ``lr`` to ``lr / 100`` with an optional linear warm-up
from ``lr / 100`` (``CompositeParamScheduler``, lengths in fractions of the run).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

__all__ = ["SLOW_PARAMS", "PhaseSpec", "build_phase_config", "build_trainer_in_process",
           "close_trainer_logs", "get_free_port", "get_lr_scheduler", "run_trainer_in_process"]

CONFIG_NAME = "configs/lora/smoke_cpu.yaml"
ANN_FILE = "_annotations.coco.json"

#: Parameters that get ``backbone_lr_mult`` (SAM3's own configs give the backbones a lower
#: learning rate the same way, through ``param_names`` in ``optim.options.lr``).
SLOW_PARAMS = ["backbone.*", "transformer.encoder.*"]


@dataclass
class PhaseSpec:
    """Everything one Trainer run needs (JSON-serialisable: ``dataclasses.asdict``).

    Attributes:
        data_root: a Roboflow-layout dataset (``train/``, ``<eval_split>/``).
        eval_split: the split validated on.
        log_dir: the run's ``launcher.experiment_log_dir``.
        mode: ``"train"`` or ``"val"``.
        steps_per_epoch: optimizer steps per epoch (train images // batch size); the
            schedule's length is ``epochs * steps_per_epoch``.
        lora: ``LoraConfig`` fields; None trains the plain model fully.
        backbone_lr_mult: lr factor for ``SLOW_PARAMS`` (full training only).
        val_epoch_freq: validate every N epochs (and after the last).
        sampler_seed: the training data order's seed (``data.SeededTorchDataset``);
            None keeps stock ``TorchDataset``, whose order ignores ``seed``.
    """

    data_root: str
    eval_split: str
    log_dir: str
    mode: str = "train"
    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 2
    val_batch_size: int = 8
    steps_per_epoch: int = 0
    base_checkpoint: Optional[str] = None
    lora: Optional[dict[str, Any]] = None
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    seed: int = 123
    resolution: int = 112
    backbone_lr_mult: float = 1.0
    val_epoch_freq: int = 1
    sampler_seed: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)


def get_lr_scheduler(lr: float, *, schedule: str = "constant", total_steps: int = 1,
                     warmup_steps: int = 0) -> dict[str, Any]:
    """An fvcore scheduler node: constant, or (linear warm-up then) cosine to ``lr / 100``.

    Args:
        lr: the peak learning rate.
        schedule: ``"constant"`` or ``"cosine"``.
        total_steps: optimizer steps of the whole run (fractions are of this).
        warmup_steps: linear warm-up from ``lr / 100``, capped at half the run.
    """
    if schedule == "constant":
        return {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler", "value": lr}
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    cosine = {"_target_": "fvcore.common.param_scheduler.CosineParamScheduler",
              "start_value": lr, "end_value": lr / 100}
    if warmup_steps <= 0:
        return cosine
    w = min(warmup_steps / max(total_steps, 1), 0.5)
    warm = {"_target_": "fvcore.common.param_scheduler.LinearParamScheduler",
            "start_value": lr / 100, "end_value": lr}
    return {"_target_": "fvcore.common.param_scheduler.CompositeParamScheduler",
            "schedulers": [warm, cosine], "lengths": [w, 1 - w],
            "interval_scaling": ["rescaled", "rescaled"]}


def _lr_options(spec: PhaseSpec) -> list[dict[str, Any]]:
    kw = {"schedule": spec.schedule, "total_steps": spec.epochs * spec.steps_per_epoch,
          "warmup_steps": spec.warmup_steps}
    main = {"scheduler": get_lr_scheduler(spec.lr, **kw)}
    if spec.backbone_lr_mult == 1.0:
        return [main]
    return [main, {"scheduler": get_lr_scheduler(spec.lr * spec.backbone_lr_mult, **kw),
                   "param_names": list(SLOW_PARAMS)}]


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
    """The composed smoke config, edited for one phase (paths, sizes, optimizer, model).

    Returns:
        A ``DictConfig`` (struct mode off) ready for ``run_trainer_in_process``.
    """
    from omegaconf import OmegaConf

    from .compose import compose_config

    cfg = compose_config(CONFIG_NAME)
    OmegaConf.set_struct(cfg, False)
    root = Path(spec.data_root)
    train_dir, eval_dir = root / "train", root / spec.eval_split
    cfg.paths.experiment_log_dir = spec.log_dir
    s = cfg.scratch
    s.resolution = spec.resolution
    s.train_batch_size, s.val_batch_size = spec.batch_size, spec.val_batch_size
    s.lr, s.wd = spec.lr, spec.weight_decay
    # The dataset block's paths are replaced by plain ones (all four readers use them).
    s.train_img_folder, s.train_ann_file = str(train_dir) + os.sep, str(train_dir / ANN_FILE)
    s.val_img_folder, s.val_ann_file = str(eval_dir) + os.sep, str(eval_dir / ANN_FILE)
    t = cfg.trainer
    t.mode, t.max_epochs, t.seed_value = spec.mode, spec.epochs, spec.seed
    t.skip_first_val, t.val_epoch_freq = False, spec.val_epoch_freq
    if spec.sampler_seed is not None:
        t.data.train._target_ = "sam3_lora_plugin.data.SeededTorchDataset"
        t.data.train.sampler_seed = spec.sampler_seed
    t.model = _model_node(spec, t.model.model)
    t.optim.options.lr = _lr_options(spec)
    if spec.lora is None:
        t.optim.param_group_modifiers = []  # nothing frozen: every param in the user's groups
        # segmentation_head.semantic_seg_head gets no gradient (no semantic-seg loss) and DDP
        # cannot find SAM3's outputs to mark it unused: a static graph records it in step 1.
        t.distributed.static_graph = True
    t.checkpoint.save_freq = 0  # only checkpoint.pt
    t.logging.log_freq = 50
    t.logging.log_scalar_frequency = 1  # per-step losses in tensorboard
    for key, value in spec.extra.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def get_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a local process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_trainer_in_process(cfg, threads: int = 0):
    """Instantiate ``cfg.trainer`` as ``sam3.train.train.single_proc_run`` does, not run.

    Sets the single-process ``torch.distributed`` environment (a free port), enables the
    CPU fallbacks (a plain model has no ``build_lora_sam3(cpu_fallbacks=True)``) and
    saves the resolved config beside the run. One Trainer per process: the Trainer
    initialises ``torch.distributed`` and does not tear it down.

    Args:
        cfg: a config from ``build_phase_config``.
        threads: ``torch.set_num_threads`` (0: torch's default). 1 gives the same bits
            on every run on one machine and torch build.

    Returns:
        The ``sam3.train.trainer.Trainer``, ready for ``run()``.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from .compose import register_sam3_resolvers
    from .cpu_fallbacks import enable_cpu_fallbacks

    register_sam3_resolvers()
    if not torch.cuda.is_available():
        enable_cpu_fallbacks()
    if threads > 0:
        torch.set_num_threads(threads)
    log_dir = Path(cfg.launcher.experiment_log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, log_dir / "config_resolved.yaml", resolve=True)
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(get_free_port()), RANK="0",
                      LOCAL_RANK="0", WORLD_SIZE="1")
    return instantiate(cfg.trainer, _recursive_=False)


def close_trainer_logs(trainer) -> None:
    """Flush and close the Trainer's tensorboard writer (SAM3 leaves it open)."""
    if trainer.logger.tb_logger is not None:
        trainer.logger.tb_logger.close()


def run_trainer_in_process(cfg, threads: int = 0):
    """``build_trainer_in_process``, then ``run()`` and ``close_trainer_logs``.

    Returns:
        The finished ``sam3.train.trainer.Trainer`` (its model is still in memory).
    """
    trainer = build_trainer_in_process(cfg, threads)
    trainer.run()
    close_trainer_logs(trainer)
    return trainer
