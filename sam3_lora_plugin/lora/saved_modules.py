"""The original weights of the modules trained fully (``modules_to_save``), kept so that
disabling the adapters gives the base model exactly.

An adapter is a delta, so a LoRA layer turns it off by skipping it. A module in
``modules_to_save`` is trained in place (its parameter names stay stock SAM3's, so
checkpoints and SAM3's optimizer patterns keep working); turning it off means putting
its base values back. ``inject_lora`` keeps a copy of them (``keep_originals``), on the
device the model was built on (the CPU before the Trainer moves it: 11 MB for the heads,
neck level and norms of the ``attention_mlp_heads`` preset, not GPU memory), and
``set_adapters_enabled`` swaps them in and out with ``set_saved_modules_enabled``. PEFT's
``ModulesToSaveWrapper`` keeps its copy as a second module instead; that would rename every
parameter.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn as nn

from .selection import match_pattern

__all__ = ["SavedModulesDisabledError", "check_saved_modules_enabled", "keep_originals",
           "saved_modules_enabled", "select_modules_to_save", "set_saved_modules_enabled"]

_ORIGINALS = "_lora_saved_originals"
_TRAINED = "_lora_saved_trained"


class SavedModulesDisabledError(RuntimeError):
    """The fully trained modules hold their base values (adapters disabled), so reading or
    writing their trained weights now would lose them."""


def select_modules_to_save(model: nn.Module, patterns: list[str],
                           keep: Callable[[str], bool] = lambda name: True,
                           ) -> tuple[list[str], list[str]]:
    """``(modules, missing)``: the modules ``patterns`` name that hold parameters, each once
    (none inside another) and only where ``keep`` says so (``lora.trunk_blocks``: no trunk
    module before the first adapted block, so backward still stops there), and the patterns
    that name none. A pattern for norm layers also matches parameter-free stand-ins (an
    ``nn.Identity`` where a block has no norm); those are left out."""
    matched = [n for n, m in model.named_modules() if n and next(m.parameters(), None) is not None
               and any(match_pattern(p, n) for p in patterns)]
    missing = [p for p in patterns if not any(match_pattern(p, n) for n in matched)]
    return [n for n in matched if keep(n)
            and not any(n.startswith(o + ".") for o in matched)], missing


def _saved_tensors(model: nn.Module, modules: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer under ``modules`` (from ``select_modules_to_save``: none
    lies inside another, so each tensor comes once)."""
    for name in modules:
        module = model.get_submodule(name)
        for key, t in [*module.named_parameters(), *module.named_buffers()]:
            yield f"{name}.{key}", t


def keep_originals(model: nn.Module, modules: list[str]) -> None:
    """Copy the current (base) values of every tensor of ``modules`` onto ``model``."""
    with torch.no_grad():
        originals = {n: t.detach().clone() for n, t in _saved_tensors(model, modules)}
    object.__setattr__(model, _ORIGINALS, originals)  # a plain attribute: not state, not moved
    object.__setattr__(model, _TRAINED, None)


def saved_modules_enabled(model: nn.Module) -> bool:
    """False while ``set_saved_modules_enabled(model, False)`` has the base values in place."""
    return getattr(model, _TRAINED, None) is None


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    return module._parameters[leaf] if leaf in module._parameters else module._buffers[leaf]


@torch.no_grad()
def set_saved_modules_enabled(model: nn.Module, enabled: bool) -> None:
    """Put the trained values of the ``modules_to_save`` in place (``enabled``) or their base
    values (not), in place, so parameters keep their identity (optimizer state, DDP buckets).
    A no-op when already so, or when the model has no ``modules_to_save``."""
    originals = getattr(model, _ORIGINALS, None)
    if not originals or enabled == saved_modules_enabled(model):
        return
    if enabled:
        trained = getattr(model, _TRAINED)
        for name, value in trained.items():
            t = _tensor(model, name)
            t.copy_(value.to(t.device))
        object.__setattr__(model, _TRAINED, None)
    else:
        trained = {}
        for name, value in originals.items():
            t = _tensor(model, name)
            trained[name] = t.detach().clone()
            t.copy_(value.to(t.device))
        object.__setattr__(model, _TRAINED, trained)


def check_saved_modules_enabled(model: nn.Module, action: str) -> None:
    """Raise ``SavedModulesDisabledError`` when the base values are in place."""
    if not saved_modules_enabled(model):
        raise SavedModulesDisabledError(
            f"Cannot {action} while the adapters are disabled: the modules_to_save hold their "
            "base values. Call set_adapters_enabled(model, True) first.")
