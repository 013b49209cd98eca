"""Data utilities for the SAM3 LoRA plugin (no torch at import time)."""

from __future__ import annotations

from typing import Any

__all__ = ["make_synthetic_coco", "get_smoke_dataset_root", "get_smoke_split_path"]


def __getattr__(name: str) -> Any:
    # Lazy re-export: keeps `python -m sam3_lora_plugin.data.synthetic` free of runpy warnings.
    if name in __all__:
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
