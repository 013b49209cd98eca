"""LoRA fine-tuning for SAM3 as a plugin for SAM3's official Hydra trainer.

Public API (imported lazily so ``import sam3_lora_plugin`` stays cheap and patches nothing):

* ``build_lora_sam3``: Hydra-instantiable model wrapper (``trainer.model``).
* ``build_sam3_arch``: SAM3-architecture builder (``tiny`` / ``full``) that runs on CPU.
* ``LoraConfig``: the LoRA settings.
* ``lora_param_groups``: ``optim.param_group_modifiers`` entry.
* ``get_bpe_path``: locate the BPE vocabulary.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_lora_sam3": "sam3_lora_plugin.trainer.wrapper",
    "get_lora_report": "sam3_lora_plugin.lora.inject",
    "build_sam3_arch": "sam3_lora_plugin.models.arch",
    "LoraConfig": "sam3_lora_plugin.lora.config",
    "lora_param_groups": "sam3_lora_plugin.trainer.param_groups",
    "get_bpe_path": "sam3_lora_plugin.models.bpe",
    "enable_cpu_fallbacks": "sam3_lora_plugin.trainer.cpu_fallbacks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sam3_lora_plugin' has no attribute {name!r}")
