"""Store the frozen projection weights in bf16 when the run trains under bf16 autocast.

Under ``torch.autocast(dtype=bfloat16)`` every ``F.linear`` (hence every
``nn.Linear`` and every ``nn.MultiheadAttention`` in- and out-projection) casts its
fp32 weight :math:`W` to :math:`\\mathrm{bf16}(W)` at each use, and keeps that copy
alive for backward wherever the op is recorded. Casting is round-to-nearest-even,
so storing :math:`\\mathrm{bf16}(W)` once gives the same operands bit for bit:

.. math::

    \\mathrm{linear}_{\\mathrm{autocast}}(x, W) = \\mathrm{linear}(\\mathrm{bf16}(x),
    \\mathrm{bf16}(W)) = \\mathrm{linear}_{\\mathrm{autocast}}(x, \\mathrm{bf16}(W)),

at half the weight memory and without the per-use casts. Only *frozen* Linear and
attention-projection weights and biases are cast; norms, convolutions, embeddings,
positional tables, LoRA factors and ``modules_to_save`` stay as they are. Outside bf16
autocast these layers would see fp32 inputs against bf16 weights, so this is only for
runs with ``optim.amp.enabled: true`` and ``amp_dtype: bfloat16``.

``frozen_base_dtype: nf4`` (QLoRA) goes further: the frozen weights the LoRA layers'
own forwards compute with (``nn.Linear`` weights, adapted or not, and the in- and
out-projections of every frozen attention layer: adapted ones through the LoRA forward,
the others, e.g. the text encoder's 24, through ``lora.mha.FrozenNF4MultiheadAttention``,
because stock ``nn.MultiheadAttention.forward`` reads ``in_proj_weight`` directly) are
stored as torchao ``NF4Tensor`` (``sam3_lora_plugin.lora.nf4``: 4-bit NormalFloat, ~0.52
bytes per weight), quantized from the fp32 values, and the model computes with their
dequantization :math:`\\hat W = D(\\mathrm{NF4}(W))`. Everything else is as with
``bfloat16``: biases and the weights that cannot be NF4 are bf16, namely DoRA layers
(their forward reads the base rows), Linear subclasses with their own forward and weights
whose size is not a multiple of 64. The text encoder's frozen token embedding (49,408 x
1,024, 0.19 GiB in fp32) is stored in bf16 too: SAM3 adds its fp32 positional table to
the rows it looks up, so the encoder computes with :math:`\\mathrm{bf16}(E)` upcast,
exactly as from an fp32 table holding those values.

The adapters keep referring to the user's fp32 checkpoint: the base fingerprint is
computed *before* the cast and pinned on the model (``adapters.metadata``), so adapter
metadata, resume checks and ``adapters merge`` (which merges into the fp32 file, not
into this copy) are those of an fp32 run. Over NF4, ``merge_lora`` refuses and names
that command: merged into :math:`\\hat W`, the result would not be the user's file plus
the adapter.
"""

from __future__ import annotations

import logging
from typing import Union

import torch
from torch import nn

from sam3_lora_plugin.adapters.metadata import PINNED_FINGERPRINT_ATTR, get_base_fingerprint
from sam3_lora_plugin.lora.factors import LoRAAdapterMixin
from sam3_lora_plugin.lora.mha import (FrozenNF4MultiheadAttention, LoRAMultiheadAttention,
                                       use_frozen_attention_forward)
from sam3_lora_plugin.lora.nf4 import (FrozenNF4Linear, is_nf4, require_torchao, to_nf4_weight,
                                       use_frozen_linear_forward)

__all__ = ["FROZEN_BASE_DTYPES", "cast_frozen_base", "get_frozen_projection_params", "quantize_frozen_base"]

log = logging.getLogger(__name__)

#: Accepted values of ``build_lora_sam3(frozen_base_dtype=...)``.
#: ``nf4``: NF4 where the forward allows it, bf16 elsewhere (see the module docstring).
FROZEN_BASE_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "nf4": torch.bfloat16}


def get_frozen_projection_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every frozen Linear weight/bias and attention projection.

    A module qualifies only if none of its own projection parameters is trainable (a
    ``modules_to_save`` Linear stays fp32).
    """
    out: list[tuple[str, nn.Parameter]] = []
    for mname, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            own = ["in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"]
        elif isinstance(module, nn.Linear):
            own = ["weight", "bias"]
        else:
            continue
        params = [(f"{mname}.{n}" if mname else n, getattr(module, n, None)) for n in own]
        params = [(n, p) for n, p in params if isinstance(p, nn.Parameter) and not is_nf4(p)]
        if params and not any(p.requires_grad for _, p in params):
            out.extend(params)
    return out


def cast_frozen_base(model: nn.Module, dtype: Union[str, torch.dtype, None] = "bfloat16") -> int:
    """Cast the frozen projection weights of ``model`` to ``dtype`` in place.

    Pins the base fingerprint of the adapted weights (taken before the cast) on the
    model first, so metadata and resume checks still name the fp32 weights.

    Args:
        model: a model after ``inject_lora`` (and any adapter loading).
        dtype: ``"bfloat16"`` (or ``torch.bfloat16``), ``"nf4"``; None does nothing.

    Returns:
        Bytes of tensor memory freed.

    Raises:
        ValueError: an unsupported dtype, named with the accepted ones.
        ImportError: ``"nf4"`` without torchao (one line naming the install).
    """
    if dtype is None:
        return 0
    nf4 = dtype == "nf4"
    if nf4:
        require_torchao()
    if isinstance(dtype, str):
        if dtype not in FROZEN_BASE_DTYPES:
            raise ValueError(f"frozen_base_dtype={dtype!r} is not supported; use one of "
                             f"{list(FROZEN_BASE_DTYPES)} or null (keep the checkpoint's dtype)")
        dtype = FROZEN_BASE_DTYPES[dtype]
    if dtype not in FROZEN_BASE_DTYPES.values():
        raise ValueError(f"frozen_base_dtype={dtype} is not supported; use one of {list(FROZEN_BASE_DTYPES)}")
    if any(isinstance(m, LoRAAdapterMixin) for m in model.modules()):
        setattr(model, PINNED_FINGERPRINT_ATTR, get_base_fingerprint(model))
    freed = quantize_frozen_base(model) if nf4 else 0
    with torch.no_grad():
        extra = _frozen_token_embeddings(model) if nf4 else []
        for _, p in get_frozen_projection_params(model) + extra:
            if p.dtype == dtype or not p.is_floating_point():
                continue
            before = p.numel() * p.element_size()
            p.data = p.data.to(dtype)
            freed += before - p.numel() * p.element_size()
    log.info("Frozen projection weights stored in %s (%.2f GiB freed)", "NF4/bf16" if nf4 else dtype,
             freed / 2**30)
    return freed


def _nf4_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, parameter name)`` of every frozen weight whose forward can read it through
    ``lora.nf4.frozen_linear``: a LoRA layer's (not DoRA's: its forward reads the base
    rows themselves), the in- and out-projection of a LoRA attention layer or of a frozen
    one swapped to the NF4 attention forward, and a plain ``nn.Linear``'s (given the NF4
    forward). Linear subclasses with their own forward are left out; stock attention's
    ``out_proj`` is read by the attention layer's forward, not its own."""
    slots: list[tuple[nn.Module, str]] = []
    for m in model.modules():
        if isinstance(m, LoRAAdapterMixin) and m.use_dora:
            continue
        if isinstance(m, (LoRAMultiheadAttention, FrozenNF4MultiheadAttention)):
            if not m.in_proj_weight.requires_grad:
                slots.append((m, "in_proj_weight"))
            if not m.out_proj.weight.requires_grad:
                slots.append((m.out_proj, "weight"))
        elif isinstance(m, LoRAAdapterMixin) or type(m) in (nn.Linear, FrozenNF4Linear):
            if isinstance(m, nn.Linear) and not any(p.requires_grad for p in m.parameters(recurse=False)):
                slots.append((m, "weight"))
    return slots


def quantize_frozen_base(model: nn.Module) -> int:
    """Store the frozen weights of :func:`_nf4_slots` as NF4 (``lora.nf4.to_nf4_weight``),
    quantized from their current values; returns the bytes freed.

    A plain ``nn.Linear`` gets the NF4 forward (``FrozenNF4Linear``), a frozen attention
    layer without adapters the NF4 attention forward (``FrozenNF4MultiheadAttention``,
    which reads plain weights as stock does); weights whose size is
    not a multiple of 64 stay as they are (then cast to bf16 by the caller), as do those
    :func:`_nf4_slots` leaves out.
    """
    freed = 0
    for m in model.modules():
        use_frozen_attention_forward(m)  # False (nothing done) unless a frozen stock attention
    for module, name in _nf4_slots(model):
        dense = getattr(module, name)
        if is_nf4(dense):
            continue
        q = to_nf4_weight(dense)
        if q is None:
            continue
        if type(module) is nn.Linear:
            use_frozen_linear_forward(module)
        setattr(module, name, q)
        freed += dense.numel() * dense.element_size() - _nf4_nbytes(q)
    return freed


def _nf4_nbytes(q: torch.Tensor) -> int:
    """Bytes held by an ``NF4Tensor``'s inner tensors."""
    names, _ = q.__tensor_flatten__()
    return sum(getattr(q, n).numel() * getattr(q, n).element_size() for n in names)


def _frozen_token_embeddings(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, weight)`` of each frozen token embedding of SAM3's text encoder
    (``TextTransformer.token_embedding``), which it reads only through the lookup, the
    looked-up rows then added to the fp32 positional table (module docstring)."""
    from sam3.model.text_encoder_ve import TextTransformer

    return [(f"{name}.token_embedding.weight" if name else "token_embedding.weight",
             m.token_embedding.weight)
            for name, m in model.named_modules()
            if isinstance(m, TextTransformer) and type(m.token_embedding) is nn.Embedding
            and not m.token_embedding.weight.requires_grad]
