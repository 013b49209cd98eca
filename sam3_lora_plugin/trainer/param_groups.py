"""Param-group modifier for SAM3's ``optim.param_group_modifiers`` hook.

SAM3 calls each modifier as ``modifier(scheduler_cfgs=..., model=...)`` and then
requires every model parameter, frozen ones included, to be in exactly one param group
(``validate_param_group_params``). ``lora_param_groups`` keeps the user's schedulers
(``optim.options``) for the trainable parameters and puts all frozen parameters into
one extra group whose lr and weight decay are a constant 0. Frozen parameters never
receive a gradient, so AdamW creates no optimizer state for them.
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn as nn
from fvcore.common.param_scheduler import ConstantParamScheduler

__all__ = ["lora_param_groups"]


def lora_param_groups(
    scheduler_cfgs: list[list[Any]],
    model: nn.Module,
    *,
    lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
) -> list[list[Any]]:
    """Restrict every scheduler to trainable parameters; park frozen ones in a zero group.

    Use in YAML as::

        param_group_modifiers:
          - _target_: sam3_lora_plugin.lora_param_groups
            _partial_: true

    Args:
        scheduler_cfgs: SAM3's per-option lists of scheduler configs (each has
            ``option``, ``scheduler`` and ``parameter_names``).
        model: the model (after ``inject_lora``).
        lr: if set, a constant learning rate for all trainable parameters, replacing
            the ``lr`` schedulers of ``optim.options``.
        weight_decay: likewise for weight decay.

    Returns:
        The modified scheduler configs.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    names = {n for n, _ in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(
            "lora_param_groups: the model has no trainable parameter. Build it with "
            "sam3_lora_plugin.build_lora_sam3 (which injects adapters) before the optimizer."
        )
    frozen = names - trainable
    overrides = {"lr": lr, "weight_decay": weight_decay}
    out = []
    for option_cfgs in scheduler_cfgs:
        option = option_cfgs[0]["option"]
        template = option_cfgs[0]
        if overrides.get(option) is not None:
            kept = [_cfg(template, option, ConstantParamScheduler(overrides[option]), trainable)]
        else:
            kept = []
            for cfg in option_cfgs:
                cfg.parameter_names = set(cfg.parameter_names) & trainable
                kept.append(cfg)
        if frozen:
            kept.append(_cfg(template, option, ConstantParamScheduler(0.0), frozen))
        out.append(kept)
    return out


def _cfg(template: Any, option: str, scheduler: Any, names: set[str]) -> Any:
    # Same container type as SAM3's (a DictConfig built by hydra.instantiate).
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"option": option}, flags={"allow_objects": True})
    cfg.scheduler = scheduler
    cfg.parameter_names = names
    return cfg
