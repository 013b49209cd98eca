"""Load an adapter directory into a SAM3 image model, checked against it."""

from __future__ import annotations

from typing import Union

import torch.nn as nn

from sam3_lora_plugin.adapters.state import get_adapter_state_keys
from sam3_lora_plugin.lora.config import LoraConfig
from sam3_lora_plugin.lora.factors import LoRAAdapterMixin
from sam3_lora_plugin.lora.inject import inject_lora
from sam3_lora_plugin.lora.saved_modules import check_saved_modules_enabled

from .io import Adapter, AdapterFileError, read_adapter
from .metadata import check_compatible, get_adapter_metadata

__all__ = ["load_adapter"]


def load_adapter(model: nn.Module, adapter: Union[str, Adapter], *,
                 check_base: bool = True) -> nn.Module:
    """Load ``adapter`` (a directory or a read ``Adapter``) into ``model``.

    * A model built by ``build_lora_sam3`` must already have the adapter's targets.
    * A model without adapters (e.g. from stock ``build_sam3_image_model``) gets them
      injected first from the adapter's own LoRA settings (base frozen, same parameter
      names), so stock inference code can run it as is.

    The targets, ranks, architecture and (with ``check_base``) the base-weight
    fingerprint must match; every adapter tensor must be present and nothing else.

    Returns:
        ``model``, with the adapter loaded (unmerged, enabled).

    Raises:
        AdapterFileError: unreadable or incomplete adapter files.
        AdapterMismatchError: the adapter was made for another model or base.
    """
    check_saved_modules_enabled(model, "load an adapter")
    if not isinstance(adapter, Adapter):
        adapter = read_adapter(adapter)
    source = f"Adapter {adapter.path!r}"
    meta = adapter.metadata
    if not any(isinstance(m, LoRAAdapterMixin) for m in model.modules()):
        if not meta.get("lora_config"):
            raise AdapterFileError(f"{source} records no lora_config, so it cannot be "
                                   "injected into a plain model; build it with build_lora_sam3.")
        inject_lora(model, LoraConfig.from_any(meta["lora_config"]))
    check_compatible(meta, get_adapter_metadata(model), source, check_base=check_base)
    expected = get_adapter_state_keys(model)
    missing = sorted(expected - set(adapter.tensors))
    unexpected = sorted(set(adapter.tensors) - expected)
    if missing or unexpected:
        raise AdapterFileError(
            f"{source} does not hold exactly this model's adapter weights: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}). Re-export it from the training checkpoint.")
    result = model.load_state_dict(adapter.tensors, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return model
