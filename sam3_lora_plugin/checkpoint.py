"""Adapter-only checkpoints inside SAM3's own Trainer.

SAM3's Trainer saves ``unwrap_ddp(model).state_dict()`` plus the optimizer state, and on
resume loads ``checkpoint["model"]`` with ``model.load_state_dict(strict=False)`` and
fails on any missing key (``load_state_dict_into_model``). Its own exclusion mechanism,
``checkpoint.skip_saving_parameters``, takes fnmatch patterns that can only exclude,
which cannot express "everything except the adapters".

So the hook lives on the model, via two PyTorch state-dict hooks:

* a ``state_dict`` post-hook drops every frozen parameter and every buffer outside
  ``modules_to_save``: ``checkpoint.pt`` holds the adapters and fully-trained modules;
* a ``load_state_dict`` pre/post-hook pair: when the incoming dict holds no frozen
  key (an adapter-only checkpoint), the frozen keys are removed from ``missing_keys``,
  so the Trainer's resume path loads it without a missing-key error, while a missing
  adapter key still fails. A full state dict loads exactly as without the hook.

The optimizer side needs nothing: frozen parameters never get a gradient, so AdamW
keeps no state for them (see ``sam3_lora_plugin.optim``).
"""

from __future__ import annotations

import torch.nn as nn

from sam3_lora_plugin.lora.factors import LoRAAdapterMixin

__all__ = ["enable_adapter_only_checkpoints", "get_adapter_state_keys", "get_state_keys"]

_FLAG = "_sam3_lora_adapter_only_checkpoints"
_LOADING_ADAPTER_ONLY = "_sam3_lora_loading_adapter_only"


def get_state_keys(model: nn.Module) -> list[str]:
    """All keys ``model.state_dict()`` would have without our hook (params + persistent buffers)."""
    keys = []
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        keys.extend(prefix + n for n, p in module._parameters.items() if p is not None)
        keys.extend(prefix + n for n, b in module._buffers.items()
                    if b is not None and n not in module._non_persistent_buffers_set)
    return keys


def get_adapter_state_keys(model: nn.Module) -> set[str]:
    """Keys kept in adapter-only checkpoints: trainable parameters, the frozen initial
    factors of PiSSA/OLoRA adapters (``lora_offset``), and the persistent buffers of
    modules whose parameters are all trainable (modules_to_save)."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, LoRAAdapterMixin):
            keep.update(prefix + "lora_offset." + n
                        for n, _ in module.lora_offset.named_buffers())
        params = list(module.parameters())
        if mod_name and params and all(p.requires_grad for p in params):
            keep.update(f"{mod_name}.{n}" for n, b in module._buffers.items()
                        if b is not None and n not in module._non_persistent_buffers_set)
    return keep


def _drop_frozen(module: nn.Module, state_dict, prefix: str, local_metadata) -> None:
    keep = {prefix + k for k in get_adapter_state_keys(module)}
    for key in [k for k in state_dict if k.startswith(prefix) and k not in keep]:
        del state_dict[key]


def _pre_load(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    frozen = {prefix + k for k in get_state_keys(module)} - {
        prefix + k for k in get_adapter_state_keys(module)}
    setattr(module, _LOADING_ADAPTER_ONLY, not any(k in frozen for k in state_dict))


def _post_load(module: nn.Module, incompatible_keys) -> None:
    if getattr(module, _LOADING_ADAPTER_ONLY, False):
        keep = get_adapter_state_keys(module)
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if k in keep]
    setattr(module, _LOADING_ADAPTER_ONLY, False)


def enable_adapter_only_checkpoints(model: nn.Module) -> nn.Module:
    """Make ``model.state_dict()`` adapter-only and let adapter-only dicts load back.

    Call after ``inject_lora`` (it reads ``requires_grad`` at save/load time, so
    later changes to what is trainable are honoured). Idempotent.
    """
    if getattr(model, _FLAG, False):
        return model
    model.register_state_dict_post_hook(_drop_frozen)
    model.register_load_state_dict_pre_hook(_pre_load)
    model.register_load_state_dict_post_hook(_post_load)
    setattr(model, _FLAG, True)
    return model
