"""Load a stock-layout SAM3 checkpoint (``sam3.pt``) into an image model, with clear errors.

Key handling is the same as sam3's ``model_builder._load_checkpoint``: take the dict
under ``"model"`` if present, keep keys containing ``"detector"`` and strip
``"detector."``. Unlike stock, which prints missing keys and carries on, a mismatch
here is an error: it means the checkpoint is for another architecture or size.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Optional

import torch
import torch.nn as nn

from sam3_lora_plugin.lora.factors import LoRAAdapterMixin

__all__ = ["CheckpointError", "load_base_checkpoint", "read_checkpoint", "write_stock_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def read_checkpoint(path: str, *, weights_only: bool = True) -> Any:
    """``torch.load`` a file on CPU, turning low-level failures into one clear error.

    Uses ``mmap=True`` where the file format allows it, so validating a 3 GB file
    does not read it all.

    Raises:
        CheckpointError: the file is missing, truncated or not a torch checkpoint.
    """
    if not os.path.isfile(path):
        raise CheckpointError(
            f"Checkpoint file {path!r} does not exist. Check the path (checkpoint_path / "
            "resume_from / adapter_path), or download it first."
        )
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        size = os.path.getsize(path)
        raise CheckpointError(
            f"Checkpoint file {path!r} ({size:,} bytes) is truncated or corrupt and cannot "
            f"be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Re-download or "
            "re-export it; if it is a training checkpoint, use an earlier checkpoint_N.pt."
        ) from e


def load_base_checkpoint(model: nn.Module, checkpoint_path: str) -> nn.Module:
    """Load the ``detector.*`` weights of a stock SAM3 checkpoint into ``model``.

    Args:
        model: a ``Sam3Image`` built by stock or by ``build_sam3_arch``.
        checkpoint_path: a ``sam3.pt``-style file.

    Raises:
        CheckpointError: unreadable file, or keys/shapes that do not match the model.
    """
    ckpt = read_checkpoint(checkpoint_path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    state = {k.replace("detector.", ""): v for k, v in ckpt.items() if "detector" in k}
    if not state:
        raise CheckpointError(
            f"{checkpoint_path!r} holds no 'detector.*' keys, so it is not a stock SAM3 "
            "checkpoint. A LoRA training checkpoint or adapter is loaded with adapter_path "
            "or resume_from instead; a merged export is written in stock layout by "
            "`python -m sam3_lora_plugin.adapters merge`."
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(
            f"{checkpoint_path!r} does not fit this model (another size or architecture): "
            f"{str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else e}"
        ) from e
    # Base weights are loaded before LoRA is injected, so no adapter keys are expected.
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint_path!r} does not match this model: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}) and {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}). Build the model size the checkpoint was made for."
        )
    return model


def write_stock_checkpoint(model: nn.Module, path: str,
                           extra: Optional[dict[str, Any]] = None) -> str:
    """Write ``model``'s weights as a stock SAM3 checkpoint: ``{"model": {"detector.<k>":
    ...}}``, plus ``extra`` entries (e.g. ``tracker.*`` keys) as given.

    Used to make a base checkpoint for a model built here (tests, the learning
    benchmark), in the layout of the real ``sam3.pt``. Written atomically.

    Raises:
        ValueError: ``model`` has LoRA adapters (merge-export those with
            ``python -m sam3_lora_plugin.adapters merge`` instead).
    """
    if any(isinstance(m, LoRAAdapterMixin) for m in model.modules()):
        raise ValueError("write_stock_checkpoint expects a model without LoRA adapters; "
                         "use `python -m sam3_lora_plugin.adapters merge` for adapted ones.")
    state = {f"detector.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    state.update(extra or {})
    tmp = f"{path}.tmp"
    torch.save({"model": state}, tmp)
    os.replace(tmp, path)
    return path
