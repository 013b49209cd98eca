"""An exact PEFT form of an adapter, or a clear refusal.

Our adapter directory keeps one adapter per slice of a fused projection
(``...attn.qkv.lora_A.q.weight``), which PEFT's LoRA cannot read: given our files it would
load only the whole-layer adapters, warn about missing keys and compute something else.
So the directory's ``adapter_config.json`` names a ``peft_type`` PEFT does not know (PEFT
stops with a ``KeyError`` that carries the explanation), and ``get_peft_form`` builds
what PEFT *can* load exactly:

* per-slice adapters on one ``nn.Linear`` are one adapter of rank ``sum(r_s)``: with
  ``A = [A_q; A_k; A_v]`` (stacked rows) and ``B`` block-diagonal (``B_s`` in the rows of
  slice ``s`` and the columns of ``A_s``), ``B A x`` puts ``B_s A_s x`` in exactly the
  rows of slice ``s`` and zero elsewhere;
* a PiSSA/OLoRA offset ``s·(B A − B₀A₀)`` is the same construction with one more
  component, ``(−B₀, A₀)``;
* the scale is carried by PEFT's own ``lora_alpha / r`` per module
  (``rank_pattern``/``alpha_pattern``, ``use_rslora: false``), so ``B`` and ``A`` are the
  trained factors.

Refused, with the reason: adapters on ``nn.MultiheadAttention`` (installed PEFT's
MHA LoRA adds the out-projection delta twice, huggingface/peft #3774, so anything we
wrote would be misloaded) and ``modules_to_save`` (merge them instead).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from safetensors.torch import save_file

from .io import Adapter, AdapterFileError, read_adapter
from .outputs import atomic_path, check_output_dir

__all__ = ["PEFT_FILES", "PeftFormError", "get_peft_form", "peft_lora_config",
           "write_peft_adapter"]

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PREFIX = "base_model.model."


class PeftFormError(AdapterFileError):
    """The adapter has no exact PEFT form."""


def _components(adapter: Adapter, name: str, slice_: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    t = adapter.tensors
    parts = [(t[f"{name}.lora_B.{slice_}.weight"], t[f"{name}.lora_A.{slice_}.weight"])]
    if f"{name}.lora_offset.{slice_}.A" in t:
        parts.append((-t[f"{name}.lora_offset.{slice_}.B"], t[f"{name}.lora_offset.{slice_}.A"]))
    return parts


def get_peft_form(adapter: Adapter) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(adapter_config.json contents, tensors)`` that PEFT loads to the same outputs.

    Raises:
        PeftFormError: MHA targets or ``modules_to_save`` (see module docstring).
    """
    meta = adapter.metadata
    mha = sorted(n for n, t in meta["targets"].items() if t["kind"] == "mha")
    if mha:
        raise PeftFormError(
            f"The adapter adapts {len(mha)} nn.MultiheadAttention layer(s) (e.g. {mha[0]!r}), "
            "which PEFT's LoRA misloads (it adds the out_proj delta twice, huggingface/peft "
            "#3774); there is no exact PEFT form. Use sam3_lora_plugin.adapters.load.load_adapter "
            "or `python -m sam3_lora_plugin.adapters merge`, or train with lora.components "
            "limited to vision_trunk.")
    if meta.get("modules_to_save"):
        raise PeftFormError(
            f"The adapter also trains modules_to_save {meta['modules_to_save']}, which this "
            "PEFT form does not carry; merge it with `python -m sam3_lora_plugin.adapters merge`.")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for name, target in sorted(meta["targets"].items()):
        out_features = next(iter(target["slices"].values()))["shape"][0]
        blocks = [(rows, b, a) for s, sl in target["slices"].items()
                  for rows in [sl["rows"]] for b, a in _components(adapter, name, s)]
        rank = sum(a.shape[0] for _, _, a in blocks)
        big_a = torch.cat([a.float() for _, _, a in blocks])
        big_b = torch.zeros(out_features, rank)
        col = 0
        for (lo, hi), b, a in blocks:
            big_b[lo:hi, col:col + a.shape[0]] = b.float()
            col += a.shape[0]
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = big_a.contiguous()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = big_b.contiguous()
        ranks[name] = rank
        alphas[name] = float(target["scaling"]) * rank  # PEFT's scale: lora_alpha / r
    config = peft_lora_config(ranks, alphas, meta, target_modules=sorted(ranks),
                              modules_to_save=None, sam3_lora_base=(
        "the SAM3 image model of sam3.model_builder.build_sam3_image_model "
        "(module names of the sam3 package, not transformers' Sam3Model)"))
    return config, tensors


def peft_lora_config(ranks: dict[str, int], alphas: dict[str, float], meta: dict[str, Any], *,
                     anchored: bool = False, **fields: Any) -> dict[str, Any]:
    """PEFT's ``adapter_config.json`` for one LoRA adapter per module of ``ranks``.

    Each module's scale ``lora_alpha / r`` comes from ``alphas`` and ``ranks`` through
    ``alpha_pattern`` / ``rank_pattern`` (``use_rslora`` off), so the factors are written
    as trained. ``anchored`` keys the patterns with ``^`` + the escaped name (PEFT matches
    pattern keys by suffix otherwise). ``fields`` add or replace entries (``target_modules``,
    ``modules_to_save``, ``use_dora`` ...).
    """
    names = sorted(ranks)
    key = (lambda n: f"^{re.escape(n)}") if anchored else (lambda n: n)
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": ranks[names[0]],
        "lora_alpha": alphas[names[0]],
        "rank_pattern": {key(n): ranks[n] for n in names},
        "alpha_pattern": {key(n): alphas[n] for n in names},
        "lora_dropout": (meta.get("lora_config") or {}).get("dropout", 0.0),
        "use_rslora": False,
        "init_lora_weights": True,
        "bias": "none",
        "fan_in_fan_out": False,
        **fields,
    }


def write_peft_adapter(adapter_dir: str, out_dir: str) -> str:
    """Write the exact PEFT form of ``adapter_dir`` to ``out_dir`` (new, empty or an
    earlier PEFT form) for ``peft.PeftModel.from_pretrained(sam3_image_model, out_dir)``.

    Raises:
        PeftFormError, AdapterFileError, OutputPathError.
    """
    config, tensors = get_peft_form(read_adapter(adapter_dir))
    check_output_dir(out_dir, owned=PEFT_FILES, what="PEFT adapter directory")
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, PEFT_FILES[1])) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    with atomic_path(os.path.join(out_dir, PEFT_FILES[0])) as tmp:
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    return out_dir
