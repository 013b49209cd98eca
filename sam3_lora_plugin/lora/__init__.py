"""LoRA layers: in-place conversion of ``nn.Linear`` and ``nn.MultiheadAttention``."""

from .factors import LORA_INITS, LoRAAdapterMixin, lora_scaling, validate_lora_args
from .linear import LoRALinear, add_lora_to_linear
from .mha import MHA_TARGETS, LoRAMultiheadAttention, add_lora_to_mha

__all__ = [
    "LORA_INITS",
    "MHA_TARGETS",
    "LoRAAdapterMixin",
    "LoRALinear",
    "LoRAMultiheadAttention",
    "add_lora_to_linear",
    "add_lora_to_mha",
    "lora_scaling",
    "validate_lora_args",
]
