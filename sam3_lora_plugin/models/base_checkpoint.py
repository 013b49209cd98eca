"""Load a stock-layout SAM3 checkpoint (``sam3.pt``) into an image model, with clear errors.

Key handling is the same as sam3's ``model_builder._load_checkpoint``: take the dict
under ``"model"`` if present, keep keys containing ``"detector"`` and strip
``"detector."``. A ``.safetensors`` file holds the same ``detector.*`` keys at top level
(the shipped tiny base, ``write_stock_safetensors``). Unlike stock, which prints missing keys and carries on, a mismatch
here is an error: it means the checkpoint is for another architecture or size.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import torch
import torch.nn as nn

from sam3_lora_plugin.lora.factors import LoRAAdapterMixin
from sam3_lora_plugin.models.errors import CheckpointError
from sam3_lora_plugin.models.output_files import atomic_path, check_output_file

__all__ = ["CheckpointError", "describe_file", "load_base_checkpoint", "read_base_state_dict",
           "read_checkpoint", "read_safetensors", "write_stock_checkpoint", "write_stock_safetensors"]


def describe_file(path: str) -> str:
    """What a file that failed to load as a torch checkpoint looks like, for messages:
    ``"empty"``, ``"a safetensors file"``, ``"a JSON file"``, ``"a text file"``,
    ``"a zip archive"`` (torch's format, then truncated or corrupt), ``"a pickle"`` or
    ``"unrecognized bytes"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch's checkpoint format), truncated or corrupt"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file (an adapter's weights? pass its directory instead)"
    if head[:1] == b"\x80":
        return "a pickle, but not a weights-only torch checkpoint"
    if head.lstrip()[:1] in (b"{", b"[") and _is_text(head):
        return "a JSON file"
    if _is_text(head):
        return "a text file"
    return "unrecognized bytes"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def read_checkpoint(path: str, *, weights_only: bool = True) -> Any:
    """``torch.load`` a file on CPU, turning low-level failures into one clear error.

    Uses ``mmap=True`` where the file format allows it, so validating a 3 GB file
    does not read it all. Never relays torch's advice to retry with
    ``weights_only=False`` (which would run code from the file).

    Raises:
        CheckpointError: the file is missing, a directory, unreadable, truncated, or not
            a torch checkpoint (text, JSON, safetensors, a pickle of Python objects,
            random bytes); the message names the file and what it is.
    """
    if os.path.isdir(path):
        raise CheckpointError(
            f"Checkpoint {path!r} is a directory, not a file. An adapter directory is "
            "passed as adapter_path / --adapter; a checkpoint is a .pt file.")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"Checkpoint file {path!r} does not exist. Check the path (checkpoint_path / "
            "resume_from / adapter_path), or download it first."
        )
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"Checkpoint file {path!r} is not readable (permission "
                              f"denied). Fix its permissions: chmod u+r {path}")
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        # Only torch's zip format can be memory-mapped; the legacy format is read whole.
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4" on a bad file
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=zipped)
    except Exception as e:  # torch raises RuntimeError, KeyError, IndexError, UnpicklingError...
        size = os.path.getsize(path)
        what = describe_file(path)
        if what.startswith("a zip archive"):
            detail = (str(e).splitlines() or [type(e).__name__])[0].split(". This is")[0][:160]
            raise CheckpointError(
                f"Checkpoint file {path!r} ({size:,} bytes) is truncated or corrupt and "
                f"cannot be read ({detail}). Re-download or re-export it; if it is a "
                "training checkpoint, use an earlier checkpoint_N.pt."
            ) from e
        raise CheckpointError(
            f"Checkpoint file {path!r} ({size:,} bytes) is not a torch checkpoint: it is "
            f"{what}. Pass a .pt file written by torch.save (sam3.pt, a Trainer "
            "checkpoint.pt, or a merged export)."
        ) from e


def read_base_state_dict(checkpoint_path: str) -> dict[str, torch.Tensor]:
    """The model weights of a stock SAM3 checkpoint, ``detector.`` stripped from the keys.

    Args:
        checkpoint_path: a ``sam3.pt``-style file (``{"model": {...}}`` or a plain state
            dict), or a ``.safetensors`` file with the same keys.

    Raises:
        CheckpointError: unreadable file, or no ``detector.*`` keys in it.
    """
    if str(checkpoint_path).endswith(".safetensors"):
        ckpt = read_safetensors(checkpoint_path)[0]
    else:
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
    return state


def load_base_checkpoint(model: nn.Module, checkpoint_path: str) -> nn.Module:
    """Load the ``detector.*`` weights of a stock SAM3 checkpoint into ``model``.

    Args:
        model: a ``Sam3Image`` built by stock or by ``build_sam3_arch``.
        checkpoint_path: a ``sam3.pt``-style file, or a ``.safetensors`` file with the
            same keys (cast to the model's dtype on load).

    Raises:
        CheckpointError: unreadable file, or keys/shapes that do not match the model.
    """
    state = read_base_state_dict(checkpoint_path)
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


def write_stock_checkpoint(model: nn.Module, path: str, extra: Optional[dict[str, Any]] = None,
                           *, overwrite: bool = False) -> str:
    """Write ``model``'s weights as a stock SAM3 checkpoint: ``{"model": {"detector.<k>":
    ...}}``, plus ``extra`` entries (e.g. ``tracker.*`` keys) as given.

    Used to make a base checkpoint for a model built here (tests, the learning
    benchmark), in the layout of the real ``sam3.pt``. Written atomically (a temporary
    file beside ``path``, renamed onto it when complete); an existing file is replaced
    only with ``overwrite``.

    Raises:
        ValueError: ``model`` has LoRA adapters (merge-export those with
            ``python -m sam3_lora_plugin.adapters merge`` instead).
        OutputPathError: ``path`` is a directory, or exists and ``overwrite`` is False;
            nothing was written.
    """
    if any(isinstance(m, LoRAAdapterMixin) for m in model.modules()):
        raise ValueError("write_stock_checkpoint expects a model without LoRA adapters; "
                         "use `python -m sam3_lora_plugin.adapters merge` for adapted ones.")
    check_output_file(path, overwrite=overwrite, what="stock checkpoint")
    state = {f"detector.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    state.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save({"model": state}, tmp)
    return path


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a ``.safetensors`` file, on CPU.

    Raises:
        CheckpointError: the file is missing, truncated or not a safetensors file.
    """
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file {path!r} does not exist. Check the path "
                              "(checkpoint_path), or rebuild it with the command in its README line.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ValueError
        raise CheckpointError(
            f"Checkpoint file {path!r} ({os.path.getsize(path):,} bytes) is truncated or not a "
            f"safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:200]})."
        ) from e


def write_stock_safetensors(model: nn.Module, path: str, *, dtype: torch.dtype = torch.float16,
                            metadata: Optional[dict[str, str]] = None, overwrite: bool = False) -> str:
    """Write ``model``'s weights as ``detector.<k>`` tensors in a ``.safetensors`` file.

    Floating-point tensors are stored as ``dtype`` (float16 halves the tiny base to
    7.4 MB; ``load_base_checkpoint`` casts back to the model's dtype), other tensors as
    they are. Written atomically; an existing file is replaced only with ``overwrite``.

    Raises:
        ValueError: ``model`` has LoRA adapters.
        OutputPathError: ``path`` is a directory, or exists and ``overwrite`` is False.
    """
    from safetensors.torch import save_file

    if any(isinstance(m, LoRAAdapterMixin) for m in model.modules()):
        raise ValueError("write_stock_safetensors expects a model without LoRA adapters.")
    check_output_file(path, overwrite=overwrite, what="stock checkpoint")
    state = {f"detector.{k}": (v.detach().cpu().to(dtype) if v.is_floating_point()
                               else v.detach().cpu()).contiguous()
             for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=dict(metadata or {}))
    return path
