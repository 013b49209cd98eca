"""Data utilities for the SAM3 LoRA plugin (no torch at import time)."""

from __future__ import annotations

from typing import Any

__all__ = ["SeededTorchDataset", "checked_path", "collate_fn_accumulate", "make_synthetic_coco",
           "get_smoke_dataset_root", "get_smoke_split_path", "get_synthetic_split_path"]

_HOMES = {"checked_path": "preflight", "collate_fn_accumulate": "collate",
          "SeededTorchDataset": "seeded_loader"}


def __getattr__(name: str) -> Any:
    # Lazy re-export: keeps `python -m sam3_lora_plugin.data.synthetic` free of runpy warnings.
    if name in __all__:
        import importlib

        module = importlib.import_module(f".{_HOMES.get(name, 'synthetic')}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
