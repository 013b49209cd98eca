"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024), per adapter slice.

DoRA splits each adapted weight row into a direction and a trained magnitude. For the
base rows :math:`W` of one adapter (rows × d_in), with the LoRA update
:math:`\\Delta = s\\,B A`, a trainable magnitude :math:`m \\in \\mathbb{R}^{rows}`
(initialised to the row norms :math:`\\lVert W \\rVert_r`, so the layer starts as the
base) and the row norm :math:`n = \\lVert W + \\Delta \\rVert_r`,

.. math::

    W' = \\frac{m}{n} \\odot (W + \\Delta), \\qquad
    y = W' x + b = W x + b + (g - 1) \\odot W x + g \\odot s\\,B (A x),
    \\quad g = m / n .

As in the paper (Sec. 4.3) and PEFT, :math:`n` is treated as a constant in the backward
pass (computed without gradient), so ``A`` and ``B`` get gradients only through the
activation path and no full weight gradient is formed. Computing :math:`n` needs
:math:`W + \\Delta` (rows × d_in) once per forward, without autograd.

The norm runs over each output row, so it is exact per slice: a fused ``qkv`` Linear, or
``nn.MultiheadAttention``'s packed ``in_proj_weight``, with q/k/v adapters is DoRA on
each of the three projections, as with separate Linears.

Merge writes :math:`W'` into the base rows and remembers :math:`n` (a vector per
adapter); unmerge restores :math:`W = W' \\odot n / m - \\Delta`, equal to the original
up to rounding (like LoRA's :math:`W + \\Delta - \\Delta`).

State-dict keys: ``<layer>.lora_magnitude.<slice>`` (a parameter of ``rows`` values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["dora_add", "dora_merged_rows", "init_dora", "merge_dora", "unmerge_dora"]


def init_dora(module: nn.Module) -> None:
    """Set every adapter's magnitude to :math:`m = \\lVert W \\rVert_r` (created on the first
    call, overwritten in place afterwards, so an optimizer keeps its references)."""
    if not hasattr(module, "lora_magnitude"):
        module.lora_magnitude = nn.ParameterDict()
    module._dora_norms = {}
    with torch.no_grad():
        for name in module.lora_A:
            rows = module._lora_base_rows(name)
            norm = torch.linalg.norm(rows.to(module.lora_A[name].weight.dtype), dim=1)
            if name in module.lora_magnitude:
                module.lora_magnitude[name].copy_(norm)
            else:
                module.lora_magnitude[name] = nn.Parameter(norm)


def _row_norm(module: nn.Module, name: str, dtype: torch.dtype) -> torch.Tensor:
    """:math:`n = \\lVert W + s B A \\rVert_r`, without gradient, in ``dtype``."""
    with torch.no_grad():
        rows = module._lora_base_rows(name).to(dtype)
        product = module.lora_B[name].weight.to(dtype) @ module.lora_A[name].weight.to(dtype)
        return torch.linalg.norm(rows + module.scaling * product, dim=1)


def _bias_rows(module: nn.Module, name: str) -> torch.Tensor | None:
    """The bias rows of adapter ``name`` (``weight`` -> ``bias``, ``in_proj_weight`` ->
    ``in_proj_bias``, ``out_proj.weight`` -> ``out_proj.bias``), or None."""
    path = module.lora_base_param(name).rsplit("weight", 1)[0] + "bias"
    owner, _, attr = path.rpartition(".")
    bias = getattr(module.get_submodule(owner) if owner else module, attr, None)
    if bias is None:
        return None
    start, end = module.lora_slices[name]
    return bias[start:end]


def dora_add(module: nn.Module, base: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """``base + (g - 1) ⊙ W x + g ⊙ s·B(A x)`` for adapter ``name``.

    Args:
        base: :math:`W x_0 + b` for the adapter's rows, shape ``(..., rows)``, where
            :math:`x_0` is the layer input.
        x: the input after LoRA dropout. Without dropout (``nn.Identity``) :math:`W x`
            is taken as ``base - b``; with it, :math:`W x` is computed (as PEFT does).
    """
    m = module.lora_magnitude[name]
    g = m / _row_norm(module, name, m.dtype)
    if isinstance(module.lora_dropout, nn.Identity):
        bias = _bias_rows(module, name)
        wx = base if bias is None else base - bias
    else:
        wx = F.linear(x, module._lora_base_rows(name).to(x.dtype))
    lora = F.linear(F.linear(x, module.lora_A[name].weight), module.lora_B[name].weight)
    g = g.to(base.dtype)
    return base + (g - 1) * wx + g * (module.scaling * lora)


def dora_merged_rows(rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                     magnitude: torch.Tensor, scaling: float) -> torch.Tensor:
    """:math:`W' = m / \\lVert W + sBA \\rVert_r \\odot (W + sBA)` in at least fp32, in
    ``rows``' dtype (for merging a saved adapter into a checkpoint)."""
    compute = torch.promote_types(rows.dtype, torch.float32)
    full = rows.to(compute) + scaling * (b.to(compute) @ a.to(compute))
    norm = torch.linalg.norm(full, dim=1)
    return (full * (magnitude.to(compute) / norm)[:, None]).to(rows.dtype)


@torch.no_grad()
def merge_dora(module: nn.Module) -> None:
    """Write :math:`W'` into every adapter's base rows; remember :math:`n` for unmerge."""
    for name in module.lora_A:
        rows = module._lora_base_rows(name)
        m = module.lora_magnitude[name]
        module._dora_norms[name] = _row_norm(module, name, torch.promote_types(
            rows.dtype, torch.float32))
        rows.copy_(dora_merged_rows(rows, module.lora_A[name].weight,
                                    module.lora_B[name].weight, m, module.scaling))


@torch.no_grad()
def unmerge_dora(module: nn.Module) -> None:
    """Restore :math:`W = W' \\odot n / m - s B A` in every adapter's base rows."""
    for name in module.lora_A:
        rows = module._lora_base_rows(name)
        compute = torch.promote_types(rows.dtype, torch.float32)
        norm = module._dora_norms.pop(name)
        m = module.lora_magnitude[name].to(compute)
        product = module.lora_B[name].weight.to(compute) @ module.lora_A[name].weight.to(compute)
        restored = rows.to(compute) * (norm / m)[:, None] - module.scaling * product
        rows.copy_(restored.to(rows.dtype))
