"""Inject LoRA adapters into a SAM3 model, freeze the rest, and summarise what changed."""

from __future__ import annotations

import functools
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from .config import PRESETS, LoraConfig
from .factors import LoRAAdapterMixin
from .linear import add_lora_to_linear
from .mha import add_lora_to_mha
from .saved_modules import (check_saved_modules_enabled, keep_originals, select_modules_to_save,
                            set_saved_modules_enabled)
from .selection import (LoraSelectionError, LoraTarget, match_pattern, select_lora_targets,
                        trunk_block_filter)

__all__ = [
    "LoraReport",
    "get_lora_modules",
    "get_lora_report",
    "get_trainable_parameter_names",
    "inject_lora",
    "set_adapters_enabled",
    "train_in_fp32",
    "merge_lora",
    "unmerge_lora",
]

log = logging.getLogger(__name__)
_REPORT_ATTR = "_sam3_lora_report"


@dataclass
class LoraReport:
    """What ``inject_lora`` did."""

    targets: list[LoraTarget]
    warnings: list[str]
    modules_to_save: list[str]
    trainable_params: int
    total_params: int
    per_component: dict[str, Counter] = field(default_factory=dict)
    #: ``(pattern, modules, parameters)`` per ``lora.modules_to_save`` entry: each module
    #: counts for the first entry that names it.
    saved_per_pattern: list[tuple[str, int, int]] = field(default_factory=list)
    #: the preset whose ``modules_to_save`` list the config kept (None: the user's own list)
    saved_from_preset: Optional[str] = None

    def format(self) -> str:
        """A human-readable multi-line summary."""
        lines = ["LoRA summary:"]
        ranks: dict[str, set[int]] = defaultdict(set)
        for t in self.targets:
            ranks[t.component or "other"].add(t.rank)
        for comp, counts in sorted(self.per_component.items()):
            parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            rank = "rank " + "/".join(str(r) for r in sorted(ranks[comp]))
            lines.append(f"  {comp:<18} {rank:<8} {parts}")
        if self.modules_to_save:
            source = (f"the modules_to_save of preset {self.saved_from_preset!r} (an empty "
                      "list trains none: trainer.model.lora.modules_to_save=[])"
                      if self.saved_from_preset else "lora.modules_to_save")
            lines.append(f"  fully trained      {len(self.modules_to_save)} module(s), {source}:")
            lines.extend(f"    {pattern}: {n} module(s), {params:,} parameters"
                         for pattern, n, params in self.saved_per_pattern)
        pct = 100.0 * self.trainable_params / max(self.total_params, 1)
        lines.append(
            f"  trainable {self.trainable_params:,} / total {self.total_params:,} "
            f"parameters ({pct:.3f}%)"
        )
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _adapt(module: nn.Module, target: LoraTarget, cfg: LoraConfig) -> None:
    common = dict(rank=target.rank, alpha=target.alpha, dropout=cfg.dropout,
                  use_rslora=cfg.use_rslora, init=cfg.init, use_dora=cfg.use_dora)
    if target.kind == "mha":
        add_lora_to_mha(module, targets=target.targets, **common)
    elif target.kind == "qkv":
        dim = module.out_features // 3
        slices = {r: (i * dim, (i + 1) * dim) for i, r in enumerate("qkv") if r in target.targets}
        add_lora_to_linear(module, slices=slices, **common)
    else:
        add_lora_to_linear(module, slices=None, **common)


def inject_lora(model: nn.Module, cfg: LoraConfig) -> LoraReport:
    """Add adapters selected by ``cfg``, freeze every other parameter, log a summary.

    The report and ``cfg`` are recorded on the model (``get_lora_report(model)``,
    ``model.lora_config``), where the adapter metadata reads them.

    After this call, exactly the adapter factors and the parameters of
    ``cfg.modules_to_save`` have ``requires_grad=True``. Base parameter names are
    unchanged, so stock SAM3 checkpoints still load.

    Raises:
        LoraSelectionError: empty selection, a modules_to_save pattern that
            matches nothing, or a modules_to_save module that contains or lies inside
            an adapted layer (its base weight would train under the adapter).
    """
    targets, warnings = select_lora_targets(model, cfg)
    for w in warnings:
        log.warning(w)
    modules = dict(model.named_modules())
    saved, missing = select_modules_to_save(model, cfg.modules_to_save,
                                            keep=trunk_block_filter(modules, cfg))
    if missing:
        raise LoraSelectionError(
            f"lora.modules_to_save pattern(s) {missing} match no module with parameters. Use "
            "full dotted module names, e.g. 'dot_prod_scoring' or 'transformer.decoder.norm'."
        )
    overlap = [(t.name, s) for t in targets for s in saved
               if t.name == s or t.name.startswith(s + ".") or s.startswith(t.name + ".")]
    if overlap:
        adapted, kept = overlap[0]
        raise LoraSelectionError(
            f"lora.modules_to_save entry {kept!r} overlaps the adapted layer {adapted!r} "
            f"({len(overlap)} overlap(s)): its base weight would be trained under the "
            "adapter, so the base fingerprint and merge would be wrong. Add "
            f"'{kept}' (or '{kept}.*') to lora.exclude, or drop it from modules_to_save "
            f"(lora.modules_to_save: null takes preset {cfg.preset!r}'s list; give the list "
            "without it, or [] for none)."
        )
    for target in targets:
        _adapt(modules[target.name], target, cfg)
    model.requires_grad_(False)
    for name in saved:
        modules[name].requires_grad_(True)
        train_in_fp32(modules[name])
    keep_originals(model, saved)  # so that disabling the adapters restores them exactly
    for module in get_lora_modules(model):
        for p in module.lora_parameters():
            p.requires_grad_(True)

    per_component: dict[str, Counter] = defaultdict(Counter)
    for t in targets:
        per_component[t.component or "other"][f"{t.kind}[{'/'.join(t.targets)}]"] += 1
    report = LoraReport(
        targets=targets,
        warnings=warnings,
        modules_to_save=saved,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
        per_component=dict(per_component),
        saved_per_pattern=_per_pattern(modules, saved, cfg.modules_to_save),
        saved_from_preset=(cfg.preset if cfg.modules_to_save
                           and cfg.modules_to_save == PRESETS[cfg.preset].get("modules_to_save")
                           else None),
    )
    setattr(model, _REPORT_ATTR, report)
    model.lora_config = cfg
    log.info(report.format())
    return report


def _per_pattern(modules: dict[str, nn.Module], saved: list[str],
                 patterns: list[str]) -> list[tuple[str, int, int]]:
    """``(pattern, modules, parameters)`` for each of ``patterns``, each module of ``saved``
    counted for the first pattern that names it (the summary's lines: the resolved list runs
    to hundreds of norm layers on full-size SAM3)."""
    counts = {p: [0, 0] for p in patterns}
    for name in saved:
        pattern = next(p for p in patterns if match_pattern(p, name))  # one names it
        counts[pattern][0] += 1
        counts[pattern][1] += sum(t.numel() for t in modules[name].parameters())
    return [(p, n, params) for p, (n, params) in counts.items() if n]


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    """``obj`` with every floating tensor inside (tuples, lists, dicts) cast to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast_floats(x, dtype) for x in obj)
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


def _fp32_inputs(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple]:
    if torch.is_autocast_enabled():  # autocast casts at each op already
        return None
    return _cast_floats(args, torch.float32), _cast_floats(kwargs, torch.float32)


def _outputs_as(dtype: torch.dtype, module: nn.Module, args: tuple, output: Any) -> Any:
    return None if torch.is_autocast_enabled() else _cast_floats(output, dtype)


def train_in_fp32(module: nn.Module) -> bool:
    """Store a fully trained module's bf16/fp16 parameters in fp32, as the LoRA factors are.

    AdamW updates below half a bf16 ulp (:math:`2^{-9}|w|`) would otherwise vanish. Outside
    autocast the module then takes fp32 inputs and returns the base dtype (hooks); under
    autocast the ops cast as they do for any fp32 weight. Returns True if it cast anything.
    """
    low = {p.dtype for p in module.parameters() if p.dtype in (torch.bfloat16, torch.float16)}
    if not low:
        return False
    module.float()
    module.register_forward_pre_hook(_fp32_inputs, with_kwargs=True)
    module.register_forward_hook(functools.partial(_outputs_as, low.pop()))
    return True


def get_lora_report(model: nn.Module) -> Optional[LoraReport]:
    """The ``LoraReport`` that ``inject_lora`` recorded on ``model`` (None if never injected)."""
    return getattr(model, _REPORT_ATTR, None)


def get_lora_modules(model: nn.Module) -> Iterator[LoRAAdapterMixin]:
    """All adapted layers of ``model``."""
    return (m for m in model.modules() if isinstance(m, LoRAAdapterMixin))


def get_trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of parameters with ``requires_grad=True`` (adapters and modules_to_save)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Enable or disable every adapter; disabled, the model computes the base output
    exactly: adapted layers skip their deltas and the ``modules_to_save`` hold their base
    values (``sam3_lora_plugin.lora.saved_modules``)."""
    for m in get_lora_modules(model):
        m.set_adapters_enabled(enabled)
    set_saved_modules_enabled(model, enabled)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight in place (W += s·B·A)."""
    check_saved_modules_enabled(model, "merge")
    for m in get_lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora`` (exact within fp32 rounding)."""
    for m in get_lora_modules(model):
        m.unmerge()
