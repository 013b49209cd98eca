"""The shipped pretrained tiny SAM3 base (``assets/tiny_base.safetensors``).

A ``build_sam3_arch(size="tiny")`` model (3.69M parameters, 112 px) trained fully on the
synthetic *base* domain (red circle / blue square / green triangle on grey) by
``python -m sam3_lora_plugin.pretrain_base``, stored as float16 ``detector.*`` tensors
(stock ``sam3.pt`` key layout) with the recipe, the command and the held-out AP in the
file's metadata. It is ours, trained on synthetic data: a base for the CPU first run
(``configs/lora/first_run_cpu.yaml``), which adapts it to the *shifted* domain with LoRA.
"""

from __future__ import annotations

import os

__all__ = ["TINY_BASE_FILENAME", "get_tiny_base_path"]

TINY_BASE_FILENAME = "tiny_base.safetensors"


def get_tiny_base_path() -> str:
    """Absolute path of the shipped tiny base; usable as a config's ``checkpoint_path``
    through a nested ``_target_: sam3_lora_plugin.models.pretrained.get_tiny_base_path``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", TINY_BASE_FILENAME)
