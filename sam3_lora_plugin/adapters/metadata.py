"""What an adapter was trained on: its targets, its settings, and a fingerprint of the
base weights it modifies; and the check that refuses an adapter for another base.

The same metadata dict travels in three places: inside the Trainer's ``checkpoint.pt``
(as one uint8 tensor under ``METADATA_KEY`` in the model state, added and consumed by
the state-dict hooks of ``sam3_lora_plugin.trainer.checkpoint_hooks``), in ``adapter_config.json``
(under ``"sam3_lora"``), and in merge exports' provenance checks.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata as _pkg_metadata
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn as nn

from sam3_lora_plugin.lora.factors import LoRAAdapterMixin
from sam3_lora_plugin.lora.inject import get_lora_report

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "RNG_STATE_KEY", "AdapterMismatchError", "check_compatible",
           "decode_metadata", "describe_targets", "encode_metadata", "fingerprint_tensors",
           "get_adapter_metadata", "get_base_fingerprint", "get_base_param_keys",
           "PINNED_FINGERPRINT_ATTR"]

FORMAT_VERSION = 1
#: Key of the metadata tensor in an adapter-only model state dict.
METADATA_KEY = "_sam3_lora_metadata"
#: Key of the RNG-state tensor in an adapter-only model state dict (Trainer resume only;
#: see ``sam3_lora_plugin.trainer.checkpoint_hooks``). Never part of an exported adapter.
RNG_STATE_KEY = "_sam3_lora_rng_state"


class AdapterMismatchError(ValueError):
    """An adapter (or adapter checkpoint) does not fit the model it is loaded into."""


def _version(dist: str) -> Optional[str]:
    try:
        return _pkg_metadata.version(dist)
    except _pkg_metadata.PackageNotFoundError:
        return None


def describe_targets(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every adapted layer: kind, rank, alpha, scaling, init, and per adapter the base
    parameter it writes into, its rows, and that parameter's shape."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if not isinstance(m, LoRAAdapterMixin):
            continue
        slices = {}
        for s, (lo, hi) in m.lora_slices.items():
            param = m.lora_base_param(s)
            slices[s] = {"param": param, "rows": [lo, hi],
                         "shape": list(m.get_parameter(param).shape)}
        out[name] = {
            "kind": "mha" if isinstance(m, nn.MultiheadAttention) else "linear",
            "rank": m.rank, "alpha": m.lora_alpha, "use_rslora": m.use_rslora,
            "init": m.lora_init, "scaling": m.scaling, "use_dora": m.use_dora, "slices": slices,
        }
    return out


#: Attribute holding the fingerprint taken before the frozen base was cast to bf16
#: (``sam3_lora_plugin.trainer.frozen_base``); :func:`get_base_fingerprint` returns it.
PINNED_FINGERPRINT_ATTR = "_sam3_lora_pinned_base_fingerprint"


def get_base_param_keys(targets: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Sorted keys (``<module>.<param>``) of the base weights the adapters modify."""
    return sorted({f"{name}.{sl['param']}" for name, t in targets.items()
                   for sl in t["slices"].values()})


def fingerprint_tensors(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over ``(key, shape, fp32 values)``, in the given order.

    Values are hashed as float32 so a bf16-stored checkpoint and the fp32 model
    loaded from it agree.
    """
    h = hashlib.sha256()
    for key, t in items:
        h.update(f"{key}:{tuple(t.shape)};".encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


#: Attribute of the model that caches its base fingerprint (see ``get_base_fingerprint``).
_FINGERPRINT_CACHE = "_sam3_lora_base_fingerprint"


def _weights_state(params: list[tuple[str, torch.Tensor]]) -> Optional[tuple]:
    """What identifies the current values of ``params`` without reading them: each
    tensor's identity, storage, dtype, device and autograd version counter (bumped by
    every in-place write: ``load_state_dict``, ``copy_``, merges). None where a tensor
    has no version counter (created under ``torch.inference_mode``)."""
    try:
        return tuple((k, id(p), p.data_ptr(), p._version, p.dtype, str(p.device), tuple(p.shape))
                     for k, p in params)
    except RuntimeError:
        return None


def get_base_fingerprint(model: nn.Module, targets: Optional[Mapping] = None, *,
                         refresh: bool = False) -> str:
    """Fingerprint of the base weights the adapters of ``model`` modify.

    Only the adapted weights are hashed: they are exactly where the adapter's deltas
    land, and hashing them costs a fraction of hashing all 840M parameters.

    The hash is computed once and cached on ``model``; it is recomputed only when one
    of those weights has changed since: written in place (``load_state_dict``, ``copy_``,
    merge/unmerge bump the tensor's version counter), replaced (``load_state_dict(...,
    assign=True)``), moved or cast. So the Trainer's every ``state_dict()`` costs a
    version check, not a device-to-host copy and a SHA-256 of ~570 MB (default preset,
    full SAM3). Writes through ``param.data`` bypass the version counter: after one,
    pass ``refresh=True``.

    Raises:
        RuntimeError: if an adapter is merged (the base rows then hold the delta).
    """
    if any(m.merged for m in model.modules() if isinstance(m, LoRAAdapterMixin)):
        raise RuntimeError("get_base_fingerprint: unmerge the adapters first "
                           "(sam3_lora_plugin.lora.inject.unmerge_lora)")
    pinned = getattr(model, PINNED_FINGERPRINT_ATTR, None)
    if pinned is not None:  # base stored in bf16 after injection: the fp32 weights' hash
        return pinned
    targets = describe_targets(model) if targets is None else targets
    params = [(k, model.get_parameter(k)) for k in get_base_param_keys(targets)]
    state = _weights_state(params)
    cached = model.__dict__.get(_FINGERPRINT_CACHE)
    if not refresh and state is not None and cached is not None and cached[0] == state:
        return cached[1]
    fingerprint = fingerprint_tensors(params)
    model.__dict__[_FINGERPRINT_CACHE] = (state, fingerprint)
    return fingerprint


def get_adapter_metadata(model: nn.Module) -> dict[str, Any]:
    """The metadata of ``model``'s adapters (see the module docstring)."""
    targets = describe_targets(model)
    cfg = getattr(model, "lora_config", None)
    report = get_lora_report(model)
    return {
        "format_version": FORMAT_VERSION,
        "plugin_version": _version("sam3-lora-plugin"),
        "sam3_version": _version("sam3"),
        "torch_version": torch.__version__,
        "lora_config": cfg.to_dict() if cfg is not None else None,
        "modules_to_save": list(report.modules_to_save) if report else [],
        "targets": targets,
        "base_fingerprint": get_base_fingerprint(model, targets),
    }


def encode_metadata(meta: Mapping[str, Any]) -> torch.Tensor:
    """A JSON-able dict as a uint8 tensor, so it can live in a state dict."""
    return torch.frombuffer(bytearray(json.dumps(meta, sort_keys=True).encode()),
                            dtype=torch.uint8).clone()


def decode_metadata(t: torch.Tensor) -> dict[str, Any]:
    return json.loads(bytes(t.to(torch.uint8).cpu().numpy().tobytes()).decode())


_COMPARED = ("kind", "rank", "alpha", "use_rslora", "init", "use_dora")
_ABSENT = {"use_dora": False}  # what an adapter written before the field existed means


def _target_differences(saved: Mapping, here: Mapping) -> list[str]:
    diffs = [f"{n}: adapted in the adapter, not in this model"
             for n in sorted(set(saved) - set(here))]
    diffs += [f"{n}: adapted in this model, not in the adapter"
              for n in sorted(set(here) - set(saved))]
    for n in sorted(set(saved) & set(here)):
        a, b = saved[n], here[n]
        for field in _COMPARED:
            va, vb = (d.get(field, _ABSENT.get(field)) for d in (a, b))
            if va != vb:
                diffs.append(f"{n}: {field} {va!r} in the adapter, {vb!r} here")
        if set(a["slices"]) != set(b["slices"]):
            diffs.append(f"{n}: adapters {sorted(a['slices'])} in the adapter, "
                         f"{sorted(b['slices'])} here")
        else:
            for s in a["slices"]:
                sa, sb = a["slices"][s], b["slices"][s]
                if list(sa["shape"]) != list(sb["shape"]) or list(sa["rows"]) != list(sb["rows"]):
                    diffs.append(f"{n}.{sa['param']}: shape {sa['shape']} in the adapter, "
                                 f"{sb['shape']} here (another architecture or size)")
    return diffs


def check_compatible(saved: Mapping[str, Any], here: Mapping[str, Any], source: str,
                     *, check_base: bool = True) -> None:
    """Raise ``AdapterMismatchError`` unless ``saved`` (from a file) fits ``here``.

    Compared: the adapted modules, their kind, rank, alpha, scaling variant, init,
    adapter slices and base shapes; ``modules_to_save``; and, with ``check_base``, the
    base fingerprint.
    """
    diffs = _target_differences(saved["targets"], here["targets"])
    if sorted(saved.get("modules_to_save", [])) != sorted(here.get("modules_to_save", [])):
        diffs.append(f"modules_to_save {saved.get('modules_to_save')} in the adapter, "
                     f"{here.get('modules_to_save')} here")
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise AdapterMismatchError(
            f"{source} does not fit this model ({len(diffs)} difference(s): {shown}). "
            "Build the model with the same architecture and the LoRA settings the adapter "
            f"was trained with ({_config_hint(saved)}), or, to start a different run, use "
            "a new experiment_log_dir."
        )
    if check_base and saved.get("base_fingerprint") != here.get("base_fingerprint"):
        raise AdapterMismatchError(
            f"{source} was trained on a different base model: the weights of the adapted "
            f"layers differ (base fingerprint {saved.get('base_fingerprint')} in the "
            f"adapter, {here.get('base_fingerprint')} here). Load the base checkpoint it "
            "was trained on (checkpoint_path); pass check_base=False only if you mean to "
            "apply it to another base."
        )


def _config_hint(saved: Mapping[str, Any]) -> str:
    cfg = saved.get("lora_config")
    if not cfg:
        return "see its metadata"
    keys = ("rank", "alpha", "preset", "components", "roles", "qkv_mode", "init", "use_dora")
    return "lora: {" + ", ".join(f"{k}: {cfg[k]}" for k in keys if k in cfg) + "}"
