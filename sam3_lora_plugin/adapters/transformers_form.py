"""An adapter as a PEFT LoRA adapter for transformers' ``Sam3Model``, or a clear refusal.

``Sam3Model`` (transformers 5.x) has one ``nn.Linear`` per projection where sam3 fuses
them (see ``adapters.hf_names``), so our per-slice adapters map onto plain PEFT LoRA
adapters one to one, with no block-diagonal trick (compare ``adapters.peft_form``):

* an adapter on rows ``[lo, hi)`` of a sam3 weight (a q/k/v slice of a ViT ``attn.qkv`` or
  of an ``nn.MultiheadAttention``'s ``in_proj_weight``, or ``out`` on its ``out_proj``)
  lands on the ``Sam3Model`` Linear that holds exactly those rows: ``q_proj``,
  ``k_proj``, ``v_proj``, ``o_proj``. PEFT's ``nn.MultiheadAttention`` bug (#3774) does
  not apply: these are plain Linears;
* a whole-output adapter on a fused Linear (``qkv_mode: fused``: one ``A``, ``B`` of 3d
  rows) is the three adapters ``(B[0:d], A)``, ``(B[d:2d], A)``, ``(B[2d:3d], A)``:
  ``s·B A x`` restricted to the rows of each projection;
* a PiSSA/OLoRA offset ``s·(B A − B₀A₀)`` is one adapter of twice the rank,
  ``A' = [A; A₀]``, ``B' = [B, −B₀]``;
* DoRA: our magnitude and norm are per output row (``lora.dora``), exactly PEFT's
  ``use_dora`` on the Linear that holds those rows, so the magnitude rows become that
  Linear's ``lora_magnitude_vector``;
* the scale is PEFT's ``lora_alpha / r`` per module (``alpha_pattern``, ``rank_pattern``,
  ``use_rslora: false``), so ``A`` and ``B`` are the trained factors;
* ``modules_to_save``: the module's weights in ``Sam3Model``'s names and layout, under
  the ``Sam3Model`` module that holds all of them (e.g. ``dot_prod_scoring`` ->
  ``dot_product_scoring``).

Refused, with the reason: an adapter or a saved module on weights ``Sam3Model`` lacks
(the geometry encoder's point-prompt layers), a saved module that maps to no single
``Sam3Model`` module, and a saved module PEFT would also match elsewhere (PEFT matches
``modules_to_save`` by name suffix: ``text_projection`` is also CLIP's).

``target_modules`` is written as an exact regular expression (PEFT full-matches a string)
and the pattern keys are anchored with ``^``, because PEFT matches list entries by
suffix and ``text_projection`` (sam3's resizer) is also the end of
``text_encoder.text_projection``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .hf_names import get_transformers_keys, to_transformers_state_dict
from .io import Adapter, AdapterFileError, export_adapter, read_adapter
from .outputs import atomic_path, check_output_dir
from .peft_form import peft_lora_config

__all__ = ["TRANSFORMERS_FILES", "TransformersFormError", "get_transformers_form",
           "write_transformers_adapter"]

TRANSFORMERS_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PREFIX = "base_model.model."
#: In the safetensors header (not the config: PEFT warns about config keys it lacks).
_MARK = ("sam3_lora_form", "transformers.Sam3Model")
#: Sam3Model module names that are also the end of another module's name.
_SUFFIX_CLASHES = {"text_projection": "text_encoder.text_projection"}
_FIX = ("merge the adapter into the checkpoint instead (`python -m sam3_lora_plugin.adapters "
        "merge`), or train without it")


class TransformersFormError(AdapterFileError):
    """The adapter has no exact form for transformers' ``Sam3Model``."""


def _pieces(adapter: Adapter, name: str, slice_: str, target: dict[str, Any]):
    """``(hf_module, B rows, A, magnitude rows or None)`` for every ``Sam3Model`` Linear
    that slice ``slice_`` of target ``name`` covers."""
    t, sl = adapter.tensors, target["slices"][slice_]
    lo, hi = sl["rows"]
    hf = get_transformers_keys(f"{name}.{sl['param']}", sl["shape"][0])
    if not hf:
        raise TransformersFormError(
            f"The adapter adapts {name!r}, which transformers' Sam3Model does not have "
            f"(it takes box prompts only); {_FIX} (lora.exclude).")
    comps = [(t[f"{name}.lora_B.{slice_}.weight"], t[f"{name}.lora_A.{slice_}.weight"])]
    if f"{name}.lora_offset.{slice_}.A" in t:
        comps.append((-t[f"{name}.lora_offset.{slice_}.B"], t[f"{name}.lora_offset.{slice_}.A"]))
    magnitude = t.get(f"{name}.lora_magnitude.{slice_}")
    out = []
    for key, span in hf:
        s0, s1 = span or (0, sl["shape"][0])
        if s1 <= lo or s0 >= hi:
            continue
        if s0 < lo or s1 > hi:  # our slices are whole q/k/v blocks; anything else is not
            raise TransformersFormError(
                f"{name!r} slice {slice_!r} (rows {lo}:{hi}) covers part of {key!r} "
                f"(rows {s0}:{s1}), so it has no exact Sam3Model form; {_FIX}.")
        rows = slice(s0 - lo, s1 - lo)
        out.append((key.rsplit(".", 1)[0], [(b[rows], a) for b, a in comps],
                    None if magnitude is None else magnitude[rows]))
    return out


def _saved_module(adapter: Adapter, module: str) -> tuple[str, dict[str, torch.Tensor]]:
    """``(Sam3Model module name, its tensors in Sam3Model keys)`` of ``modules_to_save``
    entry ``module``."""
    prefix = module + "."
    state = {k: v for k, v in adapter.tensors.items() if k.startswith(prefix)}
    lost = [k for k, v in state.items() if not get_transformers_keys(k, v.shape[0] if v.dim() else 1)]
    if lost:
        raise TransformersFormError(
            f"modules_to_save {module!r} holds {lost[0]!r}, which transformers' Sam3Model "
            f"does not have; {_FIX}.")
    mapped = to_transformers_state_dict(state)
    parts = [k.split(".")[:-1] for k in mapped]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    target = ".".join(common)
    if not target:
        raise TransformersFormError(
            f"modules_to_save {module!r} maps to several Sam3Model modules, not one "
            f"({sorted({p[0] for p in parts})}); {_FIX}.")
    if target in _SUFFIX_CLASHES:
        raise TransformersFormError(
            f"modules_to_save {module!r} is Sam3Model's {target!r}, and PEFT matches "
            f"modules_to_save by name suffix, so it would also replace "
            f"{_SUFFIX_CLASHES[target]!r}; {_FIX}.")
    return target, mapped


def get_transformers_form(adapter: Adapter) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(adapter_config.json contents, tensors)`` that
    ``peft.PeftModel.from_pretrained(Sam3Model, out_dir)`` loads to our adapted outputs.

    Raises:
        TransformersFormError: see the module docstring.
    """
    meta = adapter.metadata
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    use_dora = False
    for name, target in sorted(meta["targets"].items()):
        for slice_ in target["slices"]:
            for module, comps, magnitude in _pieces(adapter, name, slice_, target):
                if module in ranks:
                    raise TransformersFormError(f"Two adapters of {name!r} land on {module!r}.")
                a = torch.cat([a.float() for _, a in comps])
                b = torch.cat([b.float() for b, _ in comps], dim=1)
                tensors[f"{_PREFIX}{module}.lora_A.weight"] = a.contiguous()
                tensors[f"{_PREFIX}{module}.lora_B.weight"] = b.contiguous()
                if magnitude is not None:
                    tensors[f"{_PREFIX}{module}.lora_magnitude_vector"] = magnitude.float().contiguous()
                    use_dora = True
                ranks[module] = a.shape[0]
                alphas[module] = float(target["scaling"]) * a.shape[0]  # PEFT: alpha / r
    saved = []
    for module in meta.get("modules_to_save") or []:
        target, mapped = _saved_module(adapter, module)
        saved.append(target)
        tensors.update({f"{_PREFIX}{k}": v.contiguous() for k, v in mapped.items()})
    names = sorted(ranks)
    config = peft_lora_config(ranks, alphas, meta, anchored=True,
                              target_modules="|".join(re.escape(n) for n in names),
                              use_dora=use_dora, modules_to_save=saved or None)
    return config, tensors


def _is_export(path: str) -> bool:
    """True if ``path`` holds an export of this kind (``_MARK`` in the weights' header)."""
    try:
        with safe_open(os.path.join(path, TRANSFORMERS_FILES[1]), framework="pt") as f:
            return (f.metadata() or {}).get(_MARK[0]) == _MARK[1]
    except Exception:  # missing, truncated or not safetensors: not ours
        return False


def _read_source(source: str) -> Adapter:
    """An adapter directory, or the adapter of a Trainer checkpoint (via a temporary
    adapter directory)."""
    if os.path.isdir(source):
        return read_adapter(source)
    with tempfile.TemporaryDirectory() as tmp:
        return read_adapter(export_adapter(source, os.path.join(tmp, "adapter")))


def write_transformers_adapter(source: str, out_dir: str) -> str:
    """Write the ``Sam3Model`` PEFT form of ``source`` (an adapter directory or a Trainer
    checkpoint) to ``out_dir`` (new, empty or an earlier PEFT form of ours), for
    ``peft.PeftModel.from_pretrained(sam3_model, out_dir)``.

    Raises:
        TransformersFormError, AdapterFileError, CheckpointError, OutputPathError.
    """
    config, tensors = get_transformers_form(_read_source(source))
    check_output_dir(out_dir, owned=TRANSFORMERS_FILES, what="PEFT adapter directory",
                     is_own=_is_export)
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, TRANSFORMERS_FILES[1])) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", _MARK[0]: _MARK[1]})
    with atomic_path(os.path.join(out_dir, TRANSFORMERS_FILES[0])) as tmp:
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    return out_dir
