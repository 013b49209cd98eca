"""Merge an adapter into a stock SAM3 checkpoint file (``sam3.pt`` layout).

The result is the user's base file with the adapted ``detector.*`` weights replaced by
``W + s·(B A − B₀A₀)`` (DoRA: ``m / ‖W + s·BA‖ ⊙ (W + s·BA)`` per row) and the ``modules_to_save`` weights replaced by the trained ones;
every other entry (``tracker.*``, top-level keys) is kept as is. So stock
``build_sam3_image_model(checkpoint_path=...)`` (which keeps ``detector.*``) and stock
``build_sam3_video_model`` (which loads the whole dict strictly) both accept it.
"""

from __future__ import annotations

from typing import Any, Union

import torch

from sam3_lora_plugin.lora.dora import dora_merged_rows
from sam3_lora_plugin.models.base_checkpoint import CheckpointError, read_checkpoint

from .io import Adapter, read_adapter
from .metadata import AdapterMismatchError, fingerprint_tensors, get_base_param_keys
from .outputs import atomic_path, check_output_file

__all__ = ["merge_adapter_into_checkpoint", "merge_adapter_into_state_dict"]


def _find_prefix(state: dict[str, Any], keys: list[str], source: str) -> str:
    for prefix in ("detector.", ""):
        if all(prefix + k in state for k in keys):
            return prefix
    missing = [k for k in keys if "detector." + k not in state]
    raise AdapterMismatchError(
        f"{source} lacks {len(missing)} of the {len(keys)} weights the adapter modifies "
        f"(e.g. 'detector.{missing[0]}'): it is not the SAM3 image checkpoint the adapter "
        "was trained for (another architecture or size).")


def merge_adapter_into_state_dict(state: dict[str, Any], adapter: Adapter, *,
                                  check_base: bool = True,
                                  source: str = "The base checkpoint") -> dict[str, Any]:
    """A copy of ``state`` (stock ``detector.*`` layout, or a bare image-model state
    dict) with ``adapter`` merged in. ``state`` itself is not modified.

    Raises:
        AdapterMismatchError: missing weights, other shapes, or (with ``check_base``) a
            base fingerprint other than the one the adapter was trained on.
    """
    meta = adapter.metadata
    targets = meta["targets"]
    keys = get_base_param_keys(targets)
    prefix = _find_prefix(state, keys, source)
    for name, t in targets.items():
        for sl in t["slices"].values():
            got = list(state[f"{prefix}{name}.{sl['param']}"].shape)
            if got != list(sl["shape"]):
                raise AdapterMismatchError(
                    f"{source}: {prefix}{name}.{sl['param']} has shape {got}, the adapter "
                    f"was trained on {sl['shape']} (another architecture or size).")
    if check_base:
        here = fingerprint_tensors((k, state[prefix + k]) for k in keys)
        if here != meta.get("base_fingerprint"):
            raise AdapterMismatchError(
                f"{source} is not the base the adapter was trained on: the weights of the "
                f"adapted layers differ (fingerprint {here}, adapter "
                f"{meta.get('base_fingerprint')}). Merge into the checkpoint used for "
                "training, or pass --no-check-base to merge anyway.")
    out = dict(state)
    merged: dict[str, torch.Tensor] = {}
    for name, t in targets.items():
        for s, sl in t["slices"].items():
            key = f"{prefix}{name}.{sl['param']}"
            if key not in merged:
                merged[key] = state[key].detach().to(torch.float32).clone()
            a = adapter.tensors[f"{name}.lora_A.{s}.weight"].to(torch.float32)
            b = adapter.tensors[f"{name}.lora_B.{s}.weight"].to(torch.float32)
            lo, hi = sl["rows"]
            magnitude = adapter.tensors.get(f"{name}.lora_magnitude.{s}")
            if magnitude is not None:  # DoRA: W' = m / ||W + sBA|| (W + sBA), per row
                merged[key][lo:hi] = dora_merged_rows(merged[key][lo:hi], a, b, magnitude,
                                                      t["scaling"])
                continue
            product = b @ a
            if f"{name}.lora_offset.{s}.A" in adapter.tensors:
                product -= (adapter.tensors[f"{name}.lora_offset.{s}.B"].to(torch.float32)
                            @ adapter.tensors[f"{name}.lora_offset.{s}.A"].to(torch.float32))
            merged[key][lo:hi] += product * t["scaling"]
    for key, w in merged.items():
        out[key] = w.to(state[key].dtype)
    for key, value in adapter.tensors.items():
        if any(f".{k}." in key for k in ("lora_A", "lora_B", "lora_offset", "lora_magnitude")):
            continue
        full = prefix + key
        if full not in state or state[full].shape != value.shape:
            raise AdapterMismatchError(
                f"{source} has no weight {full!r} of shape {tuple(value.shape)} for the "
                "adapter's modules_to_save entry; it was trained on another architecture.")
        out[full] = value.to(state[full].dtype)
    return out


def merge_adapter_into_checkpoint(base_path: str, adapter: Union[str, Adapter],
                                  out_path: str, *, check_base: bool = True,
                                  overwrite: bool = False) -> str:
    """Write ``out_path``: ``base_path`` with ``adapter`` merged in (see module doc).

    Written to a temporary file beside it and renamed, so an interrupted merge leaves no
    partial file. ``out_path`` may not be the base file or a directory, and an existing
    file is replaced only with ``overwrite``.

    Raises:
        OutputPathError: see ``sam3_lora_plugin.adapters.outputs.check_output_file``.
        CheckpointError: unreadable base file.
        AdapterMismatchError / AdapterFileError: see ``merge_adapter_into_state_dict``.
    """
    check_output_file(out_path, inputs=[base_path], overwrite=overwrite,
                      what="merged checkpoint")
    if not isinstance(adapter, Adapter):
        adapter = read_adapter(adapter)
    ckpt = read_checkpoint(base_path)
    nested = isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict)
    state = ckpt["model"] if nested else ckpt
    if not isinstance(state, dict):
        raise CheckpointError(f"{base_path!r} holds no state dict.")
    merged = merge_adapter_into_state_dict(state, adapter, check_base=check_base,
                                           source=f"Base checkpoint {base_path!r}")
    result = dict(ckpt, model=merged) if nested else merged
    with atomic_path(out_path) as tmp:
        torch.save(result, tmp)
    return out_path
