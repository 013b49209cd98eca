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

The adapters keep referring to the user's fp32 checkpoint: the base fingerprint is
computed *before* the cast and pinned on the model (``adapters.metadata``), so adapter
metadata, resume checks and ``adapters merge`` (which merges into the fp32 file, not
into this copy) are those of an fp32 run.
"""

from __future__ import annotations

import logging
from typing import Union

import torch
from torch import nn

from sam3_lora_plugin.adapters.metadata import PINNED_FINGERPRINT_ATTR, get_base_fingerprint
from sam3_lora_plugin.lora.factors import LoRAAdapterMixin

__all__ = ["FROZEN_BASE_DTYPES", "cast_frozen_base", "get_frozen_projection_params"]

log = logging.getLogger(__name__)

#: Accepted values of ``build_lora_sam3(frozen_base_dtype=...)``.
FROZEN_BASE_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16}


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
        params = [(n, p) for n, p in params if isinstance(p, nn.Parameter)]
        if params and not any(p.requires_grad for _, p in params):
            out.extend(params)
    return out


def cast_frozen_base(model: nn.Module, dtype: Union[str, torch.dtype, None] = "bfloat16") -> int:
    """Cast the frozen projection weights of ``model`` to ``dtype`` in place.

    Pins the base fingerprint of the adapted weights (taken before the cast) on the
    model first, so metadata and resume checks still name the fp32 weights.

    Args:
        model: a model after ``inject_lora`` (and any adapter loading).
        dtype: ``"bfloat16"`` (or ``torch.bfloat16``); None does nothing.

    Returns:
        Bytes of tensor memory freed (fp32 bytes minus bf16 bytes).

    Raises:
        ValueError: an unsupported dtype, named with the accepted ones.
    """
    if dtype is None:
        return 0
    if isinstance(dtype, str):
        if dtype not in FROZEN_BASE_DTYPES:
            raise ValueError(f"frozen_base_dtype={dtype!r} is not supported; use one of "
                             f"{list(FROZEN_BASE_DTYPES)} or null (keep the checkpoint's dtype)")
        dtype = FROZEN_BASE_DTYPES[dtype]
    if dtype not in FROZEN_BASE_DTYPES.values():
        raise ValueError(f"frozen_base_dtype={dtype} is not supported; use one of {list(FROZEN_BASE_DTYPES)}")
    if any(isinstance(m, LoRAAdapterMixin) for m in model.modules()):
        setattr(model, PINNED_FINGERPRINT_ATTR, get_base_fingerprint(model))
    freed = 0
    with torch.no_grad():
        for _, p in get_frozen_projection_params(model):
            if p.dtype == dtype or not p.is_floating_point():
                continue
            before = p.numel() * p.element_size()
            p.data = p.data.to(dtype)
            freed += before - p.numel() * p.element_size()
    log.info("Frozen projection weights stored in %s (%.2f GiB freed)", dtype, freed / 2**30)
    return freed

