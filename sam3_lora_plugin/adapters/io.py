"""The adapter directory: ``adapter_config.json`` + ``adapter_model.safetensors``.

The layout and the config's top-level fields follow PEFT's LoRA format (``peft_type``,
``r``, ``lora_alpha``, ``lora_dropout``, ``use_rslora``, ``init_lora_weights``,
``target_modules``, ``rank_pattern``, ``alpha_pattern``, ``modules_to_save``), and
tensor keys read ``base_model.model.<module>.lora_A.weight`` as PEFT writes them. Two
extensions: an adapter on one slice of a fused projection (q/k/v of a ViT ``attn.qkv``
or of an ``nn.MultiheadAttention`` in-projection, ``out`` of its out-projection) is
keyed ``...lora_A.<slice>.weight``, and PiSSA/OLoRA offsets are ``...lora_offset.<slice>.A``.
Everything the plugin needs to load, check and merge the adapter is under
``"sam3_lora"`` (see ``sam3_lora_plugin.adapters.metadata``).

Weights are stored as safetensors (a dependency for this reason): it is the format
PEFT users expect, it cannot execute code on load, and a truncated file is detected
from its header instead of failing deep inside a pickle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sam3_lora_plugin.models.base_checkpoint import CheckpointError, read_checkpoint

from .metadata import METADATA_KEY, RNG_STATE_KEY, decode_metadata
from .outputs import check_output_dir, is_adapter_dir

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "Adapter", "AdapterFileError",
           "export_adapter", "from_peft_key", "get_peft_config", "read_adapter",
           "to_peft_key", "write_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
# Not a PEFT type: PEFT stops with KeyError(<this text>) instead of loading per-slice
# adapters wrong (sam3_lora_plugin.adapters.peft_form writes the exact PEFT form).
NOT_PEFT_TYPE = ("SAM3_LORA: not loadable by PEFT as is; write the exact PEFT form with "
                 "`python -m sam3_lora_plugin.adapters to-peft ADAPTER OUT`")
_INITS_TO_PEFT = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


class AdapterFileError(CheckpointError):
    """An adapter directory is missing, incomplete or corrupt."""


@dataclass
class Adapter:
    """An adapter read from disk: PEFT-style config, our metadata, and the tensors
    keyed as in the model's state dict (``<module>.lora_A.<slice>.weight``)."""

    path: str
    config: dict[str, Any]
    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def to_peft_key(key: str) -> str:
    """Model state-dict key -> PEFT-style key (whole-output adapters lose ``.all``)."""
    key = re.sub(r"\.lora_magnitude\.all$", ".lora_magnitude_vector", key)  # PEFT's DoRA key
    return _PEFT_PREFIX + re.sub(r"\.(lora_A|lora_B|lora_offset)\.all\.", r".\1.", key)


def from_peft_key(key: str) -> str:
    """Inverse of ``to_peft_key``."""
    if not key.startswith(_PEFT_PREFIX):
        raise KeyError(f"not an adapter key (expected prefix {_PEFT_PREFIX!r}): {key!r}")
    key = key[len(_PEFT_PREFIX):]
    key = re.sub(r"\.lora_magnitude_vector$", ".lora_magnitude.all", key)
    key = re.sub(r"\.(lora_A|lora_B)\.weight$", r".\1.all.weight", key)
    return re.sub(r"\.lora_offset\.(A|B)$", r".lora_offset.all.\1", key)


def get_peft_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``adapter_config.json`` contents for ``meta``."""
    targets = meta["targets"]
    cfg = meta.get("lora_config") or {}
    ranks = [t["rank"] for t in targets.values()]
    alphas = [t["alpha"] for t in targets.values()]
    r = cfg.get("rank", max(set(ranks), key=ranks.count))
    alpha = cfg.get("alpha", max(set(alphas), key=alphas.count))
    return {
        "peft_type": NOT_PEFT_TYPE,
        "task_type": None,
        # not "facebook/sam3": that names transformers' Sam3Model, whose modules differ
        "base_model_name_or_path": None,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": cfg.get("dropout", 0.0),
        "use_rslora": cfg.get("use_rslora", False),
        "use_dora": cfg.get("use_dora", False),
        "init_lora_weights": _INITS_TO_PEFT.get(cfg.get("init", "kaiming"), True),
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": sorted(targets),
        "rank_pattern": {n: t["rank"] for n, t in targets.items() if t["rank"] != r},
        "alpha_pattern": {n: t["alpha"] for n, t in targets.items() if t["alpha"] != alpha},
        "modules_to_save": list(meta.get("modules_to_save", [])),
        "sam3_lora": dict(meta),
    }


def write_adapter(out_dir: str, tensors: Mapping[str, torch.Tensor],
                  meta: Mapping[str, Any]) -> str:
    """Write an adapter directory atomically.

    The files are written into a temporary sibling directory which then replaces
    ``out_dir`` in one rename; an existing ``out_dir`` is only removed after the new
    one is complete, so a crash never leaves a half-written adapter in its place.

    Raises:
        OutputPathError: ``out_dir`` exists and is neither empty nor an adapter
            directory this plugin wrote (a run directory, a file, ...); nothing is
            written or removed.
    """
    check_output_dir(out_dir, owned=(ADAPTER_CONFIG, ADAPTER_WEIGHTS),
                     what="adapter directory", is_own=is_adapter_dir)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        save_file({to_peft_key(k): v.detach().to("cpu").contiguous()
                   for k, v in tensors.items()},
                  os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(get_peft_config(meta), f, indent=2, sort_keys=True)
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_adapter(path: str) -> Adapter:
    """Read an adapter directory written by ``write_adapter`` (or by ``export_adapter``).

    Raises:
        AdapterFileError: missing directory or files, unreadable JSON, a config without
            the ``sam3_lora`` block, a truncated/corrupt safetensors file, or tensors that
            do not match the config's targets.
    """
    cfg_path, w_path = os.path.join(path, ADAPTER_CONFIG), os.path.join(path, ADAPTER_WEIGHTS)
    if os.path.isfile(path):
        raise AdapterFileError(
            f"Adapter {path!r} is a file; an adapter is the directory that holds "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}: pass {os.path.dirname(path) or '.'!r}"
            " if this file is in one, or export one from a Trainer checkpoint with "
            "`python -m sam3_lora_plugin.adapters export CHECKPOINT OUT_DIR`.")
    if not os.path.isdir(path):
        raise AdapterFileError(
            f"Adapter directory {path!r} does not exist. Pass the directory that holds "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} (export one from a Trainer checkpoint "
            "with `python -m sam3_lora_plugin.adapters export`).")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise AdapterFileError(f"Adapter {path!r} is incomplete: {os.path.basename(p)} "
                                   "is missing. Re-export the adapter.")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
        meta = config["sam3_lora"]
        meta["targets"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{cfg_path!r} is not valid JSON ({e}). Re-export the "
                               "adapter.") from e
    except (KeyError, TypeError) as e:
        raise AdapterFileError(
            f"{cfg_path!r} has no 'sam3_lora' block with targets: it was not written by "
            "sam3-lora-plugin (a plain PEFT adapter cannot be applied without knowing "
            "which SAM3 slices it targets). Re-export it with this plugin.") from e
    try:
        raw = load_file(w_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFileError(
            f"{w_path!r} ({os.path.getsize(w_path):,} bytes) is truncated or corrupt and "
            f"cannot be read ({e}). Re-export the adapter from its checkpoint.") from e
    try:
        tensors = {from_peft_key(k): v for k, v in raw.items()}
    except KeyError as e:
        raise AdapterFileError(f"{w_path!r}: {e.args[0]}") from e
    _check_tensors_cover_targets(tensors, meta, w_path)
    return Adapter(path=path, config=config, metadata=meta, tensors=tensors)


def _check_tensors_cover_targets(tensors: Mapping[str, torch.Tensor],
                                 meta: Mapping[str, Any], where: str) -> None:
    missing = []
    for name, t in meta["targets"].items():
        for s in t["slices"]:
            keys = [f"{name}.lora_A.{s}.weight", f"{name}.lora_B.{s}.weight"]
            keys += [f"{name}.lora_magnitude.{s}"] if t.get("use_dora") else []
            for k in keys:
                if k not in tensors:
                    missing.append(k)
    if missing:
        raise AdapterFileError(
            f"{where!r} lacks {len(missing)} adapter tensor(s) its config lists, e.g. "
            f"{missing[:3]}. The file is incomplete; re-export the adapter.")


def export_adapter(checkpoint_path: str, out_dir: str) -> str:
    """Write the adapter held by a Trainer ``checkpoint.pt`` as an adapter directory.

    Needs no model: the adapter-only checkpoint carries its own metadata.

    Raises:
        CheckpointError: the checkpoint is missing, truncated, or not an adapter-only
            checkpoint written by ``build_lora_sam3``.
    """
    ckpt = read_checkpoint(checkpoint_path, weights_only=True)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or METADATA_KEY not in state:
        raise CheckpointError(
            f"{checkpoint_path!r} holds no LoRA adapter metadata: it is not an adapter-only "
            "checkpoint from a run with trainer.model._target_=sam3_lora_plugin.build_lora_sam3 "
            "(adapter_only_checkpoints: true).")
    state = dict(state)
    meta = decode_metadata(state.pop(METADATA_KEY))
    state.pop(RNG_STATE_KEY, None)
    _check_tensors_cover_targets(state, meta, checkpoint_path)
    if isinstance(ckpt, dict) and "epoch" in ckpt:
        meta = dict(meta, trainer_epoch=ckpt["epoch"], trainer_steps=ckpt.get("steps"))
    return write_adapter(out_dir, state, meta)
