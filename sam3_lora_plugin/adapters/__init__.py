"""Portable LoRA adapters: metadata and compatibility checks, the on-disk format
(``adapter_config.json`` + ``adapter_model.safetensors``), loading into a model, and
merging into a stock SAM3 checkpoint. CLI: ``python -m sam3_lora_plugin.adapters``."""

from .metadata import AdapterMismatchError, get_adapter_metadata, get_base_fingerprint

__all__ = ["AdapterMismatchError", "get_adapter_metadata", "get_base_fingerprint"]
