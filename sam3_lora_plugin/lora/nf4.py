"""A frozen 4-bit NormalFloat (NF4) base weight for the LoRA layers (QLoRA).

torchao's ``NF4Tensor`` stores a weight :math:`W` in blocks of 64 values: each value
:math:`w` as the index of the nearest of 16 NormalFloat levels :math:`q_i` after scaling
by its block's absolute maximum :math:`m_b`, and the :math:`m_b` themselves as int8
("double quantization", one fp32 factor per 256 of them). Dequantizing gives

.. math::

    \\hat W = D(W), \\qquad \\hat w = q_{i(w)} \\cdot \\hat m_b,

about 0.52 bytes per weight instead of 2 (bf16) or 4 (fp32). The base product of a
layer is that of :math:`\\hat W`:

.. math::

    y = \\mathrm{linear}(x, \\hat W_{[s, e)}, b),

computed by :class:`_FrozenNF4Linear`, which dequantizes at the matmul (a transient
copy), saves only the NF4 tensor for backward, and dequantizes again there:

.. math::

    \\frac{\\partial L}{\\partial x} = \\frac{\\partial L}{\\partial y}\\,
    \\mathrm{c}(\\hat W_{[s, e)}),

with :math:`\\mathrm{c}` the cast the forward's matmul made (bf16 under bf16 autocast).
Forward and input gradient are therefore those of ``F.linear`` over the dequantized
fp32 weights, bit for bit, under autocast or not; the weight gets no gradient (it is
frozen). torchao is an optional dependency (``pip install 'sam3-lora-plugin[qlora]'``);
nothing here imports it until a weight is quantized.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NF4_BLOCK_SIZE", "TORCHAO_MISSING", "FrozenNF4Linear", "dequantize_nf4", "frozen_linear",
           "is_nf4", "nf4_scaler_block_size", "require_torchao", "to_nf4_weight",
           "use_frozen_linear_forward"]

#: Values per absmax block (QLoRA's and torchao's default).
NF4_BLOCK_SIZE = 64
#: Absmax scalers per double-quantization block (torchao's default), or the largest
#: divisor of the block count below it for small weights.
NF4_SCALER_BLOCK_SIZE = 256

#: The one line shown when torchao is not installed.
TORCHAO_MISSING = ("frozen_base_dtype=nf4 needs torchao (torchao.quantization.NF4Tensor): "
                   "pip install 'sam3-lora-plugin[qlora]' (or: pip install 'torchao>=0.18')")


def require_torchao():
    """The ``torchao.quantization`` module, or ImportError with :data:`TORCHAO_MISSING`."""
    try:
        import torchao.quantization as tq
        tq.NF4Tensor, tq.to_nf4  # noqa: B018 (older torchao kept them elsewhere)
    except (ImportError, AttributeError) as e:
        raise ImportError(TORCHAO_MISSING) from e
    return tq


def is_nf4(t: object) -> bool:
    """Whether ``t`` is a torchao ``NF4Tensor`` (False without importing torchao)."""
    tq = sys.modules.get("torchao.quantization")
    cls = getattr(tq, "NF4Tensor", None) if tq is not None else None
    return cls is not None and isinstance(t, cls)


def nf4_scaler_block_size(numel: int) -> Optional[int]:
    """Double-quantization block for a weight of ``numel`` values, or None if it cannot
    be stored as NF4 (``numel`` not a multiple of :data:`NF4_BLOCK_SIZE`).

    torchao needs the block count :math:`n = \\mathrm{numel}/64` to be a multiple of the
    scaler block; that is 256 for every SAM3 projection, and for smaller weights the
    largest divisor of :math:`n` not above 256 (finer, hence no less exact, scalers).
    """
    if numel <= 0 or numel % NF4_BLOCK_SIZE:
        return None
    n = numel // NF4_BLOCK_SIZE
    return next(s for s in range(min(n, NF4_SCALER_BLOCK_SIZE), 0, -1) if n % s == 0)


def to_nf4_weight(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """``weight`` (2-D) as a frozen NF4 ``nn.Parameter``, quantized from its own values and
    dtype (so :func:`dequantize_nf4` returns that dtype); None where it cannot be stored.

    Raises:
        ImportError: torchao missing (:data:`TORCHAO_MISSING`).
    """
    scaler = nf4_scaler_block_size(weight.numel())
    if weight.dim() != 2 or scaler is None:
        return None
    tq = require_torchao()
    with torch.no_grad():
        q = tq.to_nf4(weight.detach().contiguous(), NF4_BLOCK_SIZE, scaler)
    return nn.Parameter(q, requires_grad=False)


def dequantize_nf4(weight: torch.Tensor, rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """:math:`\\hat W` (rows ``[s, e)`` of it) as a plain tensor; a plain ``weight`` is
    returned as is (sliced)."""
    dense = weight.get_original_weight() if is_nf4(weight) else weight
    return dense if rows is None else dense[rows[0]:rows[1]]


def _op_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear(x, W)`` computes in: autocast's where it applies, else ``x``'s."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.is_floating_point():
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _FrozenNF4Linear(torch.autograd.Function):
    """``F.linear(x, D(W)[s:e], b)`` saving only the NF4 ``W`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, rows):  # noqa: D102
        ctx.save_for_backward(weight)
        ctx.rows, ctx.op_dtype, ctx.x_dtype = rows, _op_dtype(x), x.dtype
        return F.linear(x, dequantize_nf4(weight, rows), bias)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (weight,) = ctx.saved_tensors
        w = dequantize_nf4(weight, ctx.rows).to(ctx.op_dtype)
        g = grad_out.to(ctx.op_dtype)
        grad_x = g.reshape(-1, g.shape[-1]).mm(w).view(*g.shape[:-1], w.shape[1])
        return grad_x.to(ctx.x_dtype), None, None, None


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The base product of a LoRA layer: ``F.linear(x, W[s:e], b)``, through
    :class:`_FrozenNF4Linear` where ``W`` is NF4.

    ``rows`` selects output rows ``[s, e)`` of ``W`` (a q/k/v slice of a fused attention
    in-projection); ``bias`` must already be those rows.

    Raises:
        RuntimeError: an NF4 ``weight`` that requires grad (NF4 bases are frozen).
    """
    if not is_nf4(weight):
        return F.linear(x, weight if rows is None else weight[rows[0]:rows[1]], bias)
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise RuntimeError("an NF4 base weight is frozen: it and its bias cannot require grad")
    return _FrozenNF4Linear.apply(x, weight, bias, rows)


class FrozenNF4Linear(nn.Linear):
    """A frozen ``nn.Linear`` whose forward is :func:`frozen_linear` (its weight NF4).

    Obtained by class swap (:func:`use_frozen_linear_forward`), so parameter names and
    ``isinstance(m, nn.Linear)`` stay as they were.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return frozen_linear(x, self.weight, self.bias)


def use_frozen_linear_forward(module: nn.Linear) -> bool:
    """Swap a plain ``nn.Linear`` (stock forward) to :class:`FrozenNF4Linear` in place.

    Returns:
        False (nothing changed) for a subclass with its own forward, which could not be
        kept; True otherwise.
    """
    if type(module) is FrozenNF4Linear:
        return True
    if type(module) is not nn.Linear:
        return False
    module.__class__ = FrozenNF4Linear
    return True
