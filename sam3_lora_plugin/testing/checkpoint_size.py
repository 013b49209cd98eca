"""How big a Trainer checkpoint may be, from what it holds."""

from __future__ import annotations

from typing import Any

__all__ = ["RECORD_BYTES", "max_checkpoint_file_bytes", "tensor_bytes"]

#: Bytes ``torch.save``'s zip format spends per tensor beyond its data (the record header
#: and alignment; about 0.35 KB measured on the tiny SAM3's checkpoints), with margin.
RECORD_BYTES = 512


def tensor_bytes(obj: Any) -> tuple[int, int]:
    """(bytes, count) of the tensors in a nested checkpoint object (dicts, lists, tuples)."""
    import torch

    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size(), 1
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    sizes = [tensor_bytes(x) for x in items]
    return sum(b for b, _ in sizes), sum(n for _, n in sizes)


def max_checkpoint_file_bytes(checkpoint: Any, other_bytes: int = 64 * 1024) -> int:
    """The largest file that ``checkpoint`` (a loaded Trainer checkpoint) may be saved as:
    its tensors, one record each, and ``other_bytes`` for the rest (epoch, meters, metadata)."""
    data, count = tensor_bytes(checkpoint)
    return data + RECORD_BYTES * count + other_bytes
