"""Param-group modifier for SAM3's ``optim.param_group_modifiers`` hook.

SAM3 calls each modifier as ``modifier(scheduler_cfgs=..., model=...)`` and then
requires every model parameter, frozen ones included, to be in exactly one param group
(``validate_param_group_params``). ``lora_param_groups`` keeps the user's schedulers
(``optim.options``) for the trainable parameters and puts all frozen parameters into
one extra group whose lr and weight decay are a constant 0. Frozen parameters never
receive a gradient, so AdamW creates no optimizer state for them.

Trainable parameters fall in three kinds:

* ``A``: the down-projections ``lora_A`` (and DoRA magnitudes, which scale ``A``'s
  side of the update),
* ``B``: the up-projections ``lora_B``,
* ``saved``: every other trainable parameter (``modules_to_save``).

LoRA+ (Hayou et al., 2024) trains ``B`` faster than ``A``: with the user's lr schedule
:math:`\\eta(t)`, ``A`` gets :math:`\\eta(t)` and ``B`` gets :math:`\\lambda \\eta(t)`
(``loraplus_lr_ratio`` :math:`= \\lambda`). The schedule is scaled, never replaced, with
:class:`ScaledParamScheduler`, so warm-up, cosine decay and an earlier modifier's layer
decay all carry over. (SAM3's own ``ValueScaler`` is not used: SAM3 looks through only one
wrapper for a scheduler that takes ``step``, so a ``ValueScaler`` inside SAM3's layer-decay
``ValueScaler`` around its inverse-sqrt scheduler fails on the first step.)

Composition: the modifier only splits and scales the scheduler configs it is given, so it
composes with SAM3's ``layer_decay_param_modifier`` in either order. Layer decay first:
each per-block lr config is split into A / B / saved parts. Layer decay second: it splits
each of our configs by block. Either way every adapter of trunk block ``i`` gets block
``i``'s decayed lr (times :math:`\\lambda` for ``B``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch.nn as nn
from fvcore.common.param_scheduler import ConstantParamScheduler

from sam3_lora_plugin.lora.factors import LoRAAdapterMixin

__all__ = ["ScaledParamScheduler", "get_trainable_kinds", "lora_param_groups"]

Schedule = Union[float, Callable[..., float]]


class ScaledParamScheduler:
    """``mult_val x scheduler``, callable the way SAM3's ``Optimizer.step_schedulers``
    calls schedulers, however deeply wrapped.

    SAM3 calls ``scheduler(step=..., where=...)`` when ``__call__`` (or the ``__call__`` of
    its ``.scheduler``) takes ``step``, else ``scheduler(where)``. This class takes both
    and forwards them the same way to the scheduler it wraps, at any depth.

    Args:
        scheduler: an fvcore ``ParamScheduler``, SAM3's ``InverseSquareRootParamScheduler``,
            a ``ValueScaler`` or another ``ScaledParamScheduler``.
        mult_val: the factor.
    """

    def __init__(self, scheduler: Callable[..., float], mult_val: float) -> None:
        self.scheduler = scheduler
        self.mult_val = float(mult_val)

    def __call__(self, step: int, where: float) -> float:
        return self.mult_val * _call_scheduler(self.scheduler, step, where)


def _call_scheduler(scheduler: Callable[..., float], step: int, where: float) -> float:
    import inspect

    inner: Any = scheduler
    while inner is not None:
        if "step" in inspect.signature(inner.__call__).parameters:
            return scheduler(step=step, where=where)
        inner = getattr(inner, "scheduler", None)
    return scheduler(where)


def get_trainable_kinds(model: nn.Module) -> dict[str, set[str]]:
    """Names of the trainable parameters by kind: ``A``, ``B`` and ``saved``.

    ``A`` holds the ``lora_A`` factors and the DoRA magnitudes (``lora_magnitude``),
    ``B`` the ``lora_B`` factors, ``saved`` every other trainable parameter.
    """
    kinds: dict[str, set[str]] = {"A": set(), "B": set(), "saved": set()}
    owner: dict[str, str] = {}
    for mod_name, module in model.named_modules():
        if not isinstance(module, LoRAAdapterMixin):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for attr, kind in (("lora_A", "A"), ("lora_magnitude", "A"), ("lora_B", "B")):
            sub = getattr(module, attr, None)
            if isinstance(sub, nn.Module):
                owner.update((f"{prefix}{attr}.{n}", kind) for n, _ in sub.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            kinds[owner.get(name, "saved")].add(name)
    return kinds


def lora_param_groups(
    scheduler_cfgs: list[list[Any]],
    model: nn.Module,
    *,
    lr: Optional[Schedule] = None,
    weight_decay: Optional[Schedule] = None,
    loraplus_lr_ratio: Optional[float] = None,
    modules_to_save_lr: Optional[Schedule] = None,
    modules_to_save_weight_decay: Optional[Schedule] = None,
) -> list[list[Any]]:
    """Restrict every scheduler to trainable parameters; park frozen ones in a zero group.

    Use in YAML as::

        param_group_modifiers:
          - _target_: sam3_lora_plugin.lora_param_groups
            _partial_: true
            loraplus_lr_ratio: 16        # optional: B factors train 16x faster than A

    Args:
        scheduler_cfgs: SAM3's per-option lists of scheduler configs (each has
            ``option``, ``scheduler`` and ``parameter_names``).
        model: the model (after ``inject_lora``).
        lr: if set, the learning rate of all trainable parameters (a number is a
            constant; an fvcore scheduler, e.g. a nested ``_target_``, is used as is),
            replacing the ``lr`` schedulers it is given.
        weight_decay: likewise for weight decay.
        loraplus_lr_ratio: LoRA+ ratio :math:`\\lambda > 0`: every lr scheduler that
            applies to ``B`` factors is scaled by :math:`\\lambda` for them.
        modules_to_save_lr: lr for the ``modules_to_save`` parameters only (number or
            scheduler); overrides ``lr`` and the user's schedulers for them.
        modules_to_save_weight_decay: likewise for their weight decay.

    Returns:
        The modified scheduler configs.

    Raises:
        ValueError: the model has no trainable parameter, or a bad ratio.
    """
    if loraplus_lr_ratio is not None and not (
            isinstance(loraplus_lr_ratio, (int, float)) and not isinstance(loraplus_lr_ratio, bool)
            and loraplus_lr_ratio > 0):
        raise ValueError(f"lora_param_groups: loraplus_lr_ratio must be a number > 0, got "
                         f"{loraplus_lr_ratio!r}; e.g. loraplus_lr_ratio: 16")
    names = {n for n, _ in model.named_parameters()}
    kinds = get_trainable_kinds(model)
    trainable = kinds["A"] | kinds["B"] | kinds["saved"]
    if not trainable:
        raise ValueError(
            "lora_param_groups: the model has no trainable parameter. Build it with "
            "sam3_lora_plugin.build_lora_sam3 (which injects adapters) before the optimizer."
        )
    frozen = names - trainable
    adapter = kinds["A"] | kinds["B"]
    overrides = {"lr": (lr, modules_to_save_lr),
                 "weight_decay": (weight_decay, modules_to_save_weight_decay)}
    out = []
    for option_cfgs in scheduler_cfgs:
        option = option_cfgs[0]["option"]
        for_adapter, for_saved = overrides.get(option, (None, None))
        if for_saved is None:
            for_saved = for_adapter
        kept = _restrict(option_cfgs, option, adapter, for_adapter)
        kept += _restrict(option_cfgs, option, kinds["saved"], for_saved)
        if option == "lr" and loraplus_lr_ratio is not None:
            kept = [part for cfg in kept for part in _split_b(cfg, kinds["B"], loraplus_lr_ratio)]
        if frozen:
            kept.append(_cfg(option, ConstantParamScheduler(0.0), frozen))
        out.append([cfg for cfg in kept if cfg["parameter_names"]])
    return out


def _restrict(option_cfgs: list[Any], option: str, allowed: set[str],
              override: Optional[Schedule]) -> list[Any]:
    """The configs for the parameters ``allowed``: the given ones narrowed to them, or
    one config with ``override``."""
    if not allowed:
        return []
    if override is not None:
        return [_cfg(option, _as_scheduler(override), allowed)]
    # SAM3 adds a config without a scheduler for the parameters no default covers.
    return [_cfg(option, cfg["scheduler"], set(cfg["parameter_names"]) & allowed)
            if "scheduler" in cfg else {"parameter_names": set(cfg["parameter_names"]) & allowed}
            for cfg in option_cfgs]


def _split_b(cfg: Any, b_names: set[str], ratio: float) -> list[Any]:
    """``cfg`` for its non-B parameters, plus a copy scaled by ``ratio`` for its B ones."""
    names = set(cfg["parameter_names"])
    b = names & b_names
    if not b or "scheduler" not in cfg:
        return [cfg]
    return [_cfg(cfg["option"], cfg["scheduler"], names - b),
            _cfg(cfg["option"], ScaledParamScheduler(cfg["scheduler"], ratio), b)]


def _as_scheduler(value: Schedule) -> Any:
    if callable(value):
        return value
    return ConstantParamScheduler(float(value))


def _cfg(option: str, scheduler: Any, names: set[str]) -> Any:
    # Same container type as SAM3's (a DictConfig built by hydra.instantiate).
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"option": option}, flags={"allow_objects": True})
    cfg.scheduler = scheduler
    cfg.parameter_names = names
    return cfg
