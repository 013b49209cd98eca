"""Which entries of a model's state dict are the adapter's: the keys an adapter-only
checkpoint keeps and an exported adapter holds."""

from __future__ import annotations

import torch.nn as nn

from sam3_lora_plugin.lora.factors import LoRAAdapterMixin

__all__ = ["get_adapter_state_keys", "get_state_keys"]


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
