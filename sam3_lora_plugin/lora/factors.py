"""Shared low-rank adapter factors used by every LoRA layer of the plugin.

A LoRA adapter adds a trainable low-rank update to a frozen linear map. For a
base projection :math:`y = W x + b` with :math:`W \\in \\mathbb{R}^{d_{out}
\\times d_{in}}`, one adapter named ``name`` covering output rows
:math:`[s_0, s_1)` contributes

.. math::

    y_{[s_0, s_1)} \\mathrel{+}= s \\cdot B \\, A \\, \\mathrm{drop}(x),
    \\qquad A \\in \\mathbb{R}^{r \\times d_{in}},
    \\quad B \\in \\mathbb{R}^{(s_1 - s_0) \\times r},

with scaling :math:`s = \\alpha / r` (or :math:`\\alpha / \\sqrt{r}` for
rank-stabilised LoRA). ``B`` starts at zero, so a freshly converted layer
computes exactly what the base layer computes.

The update is always evaluated on the activation path, :math:`B (A x)`, never
by materialising :math:`W + s B A` inside ``forward``: that would make autograd
build a full :math:`d_{out} \\times d_{in}` weight gradient.

Factors are stored as two :class:`torch.nn.ModuleDict` named ``lora_A`` and
``lora_B`` keyed by the slice name, each entry a bias-free
:class:`torch.nn.Linear` (``lora_A[name]: d_in -> r``,
``lora_B[name]: r -> s_1 - s_0``). State-dict keys therefore read
``<layer>.lora_A.<name>.weight`` and ``<layer>.lora_B.<name>.weight``.

:class:`LoRAAdapterMixin` implements everything that does not depend on the
host layer (merge / unmerge, enabling, delta weights, parameter iteration);
a host layer only provides :meth:`LoRAAdapterMixin._lora_base_rows`, the view
of the base weight rows an adapter writes into.

Data-driven initialisations (PiSSA, OLoRA) start ``A`` and ``B`` from a
decomposition of the base rows ``W`` (SVD, QR), so :math:`s B_0 A_0 \neq 0`.
The papers subtract that product from ``W`` once (the "residual" base). We do
not touch ``W``: instead the initial factors are kept as frozen buffers
``lora_offset.<name>.A/B`` and the update becomes :math:`s (B A - B_0 A_0)`.
The function and the gradients of ``A``/``B`` are those of PiSSA/OLoRA, but

* the base weights stay bit-identical to the checkpoint the user has, so an
  adapter still applies to stock SAM3 weights;
* resume is exact: ``B_0``/``A_0`` travel in the adapter state, so a resumed run
  never depends on recomputing an SVD/QR that could round differently on another
  machine or BLAS; merge folds ``s (B A - B_0 A_0)`` like any other delta;
* identity at init holds to fp32 rounding (~1e-7; autograd may pick a different
  matmul kernel for the trainable path than for the frozen one), where the
  paper's ``W - s B_0 A_0`` residual is itself only rounding-exact.

The price is a second rank-``r`` product per adapter in ``forward``.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .dora import dora_add, dora_merged_rows, init_dora, merge_dora, unmerge_dora
from .nf4 import is_nf4

__all__ = [
    "DATA_DRIVEN_INITS",
    "LORA_INITS",
    "NF4_MERGE_REFUSED",
    "LoRAAdapterMixin",
    "get_factor_dtype",
    "lora_scaling",
    "make_lora_dropout",
    "validate_lora_args",
]

#: Allowed values of the ``init`` argument: ``kaiming`` / ``gaussian`` initialise ``A``
#: randomly with ``B = 0``; ``pissa`` (principal singular vectors) and ``olora``
#: (orthonormal QR basis) derive both factors from the base weight.
LORA_INITS: tuple[str, ...] = ("kaiming", "gaussian", "pissa", "olora")

#: The inits that derive ``A`` and ``B`` from the base weight (and keep an offset).
DATA_DRIVEN_INITS: tuple[str, ...] = ("pissa", "olora")


#: Why an adapter over an NF4 base (``frozen_base_dtype=nf4``) is not merged in the model.
NF4_MERGE_REFUSED = (
    "cannot merge into an NF4 (4-bit) base: W + s*BA would be rounded back to 4 bits and the "
    "result would not be your checkpoint plus the adapter. Merge from the full-precision file "
    "instead: python -m sam3_lora_plugin.adapters merge sam3.pt adapter/ out.pt")


def validate_lora_args(rank: int, alpha: float, dropout: float, init: str) -> None:
    """Check the hyper-parameters shared by every LoRA layer.

    Args:
        rank (int): Adapter rank :math:`r`; must be a positive integer.
        alpha (float): Scaling numerator :math:`\\alpha`; must be ``> 0``.
        dropout (float): Dropout probability on the adapter input, in ``[0, 1)``.
        init (str): Initialisation of ``A``, one of :data:`LORA_INITS`.

    Raises:
        ValueError: If any argument is out of range; the message names the
            offending value and what is allowed.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive int, got rank={rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a number > 0, got alpha={alpha!r}")
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(
            f"LoRA dropout must be a float in [0, 1), got dropout={dropout!r}"
        )
    if init not in LORA_INITS:
        raise ValueError(
            f"Unknown LoRA init {init!r}; allowed values are {list(LORA_INITS)}"
        )


def lora_scaling(rank: int, alpha: float, use_rslora: bool = False) -> float:
    """Return the LoRA scaling factor.

    .. math::

        s = \\begin{cases} \\alpha / r & \\text{default} \\\\
        \\alpha / \\sqrt{r} & \\text{rank-stabilised (rsLoRA)} \\end{cases}

    Args:
        rank (int): Adapter rank :math:`r`.
        alpha (float): Scaling numerator :math:`\\alpha`.
        use_rslora (bool): Use :math:`\\alpha / \\sqrt{r}`.

    Returns:
        float: The scaling :math:`s`.
    """
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


def get_factor_dtype(base_dtype: torch.dtype) -> torch.dtype:
    r"""The dtype LoRA factors are stored and trained in: fp32 over a bf16/fp16 base.

    AdamW's step on a bf16 weight :math:`w` is lost when it is below half a unit in the
    last place, :math:`|\Delta w| < 2^{-9}|w|` (bf16 keeps 8 significant bits), which
    small learning rates reach at once. Factors therefore train in fp32 whatever the base
    dtype (as PEFT upcasts them), and are cast to the activation dtype at the matmul.
    fp32/fp64 bases keep their own dtype.
    """
    return torch.float32 if base_dtype in (torch.bfloat16, torch.float16) else base_dtype


def make_lora_dropout(p: float) -> nn.Module:
    """Dropout on the adapter input; :class:`~torch.nn.Identity` when ``p == 0``.

    Using ``Identity`` for ``p == 0`` means no random numbers are drawn, so a
    layer without LoRA dropout consumes the RNG exactly like its base layer.
    """
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _init_factors(a: nn.Linear, b: nn.Linear, rank: int, init: str) -> None:
    """Initialise ``A`` (kaiming-uniform or gaussian) and zero ``B``."""
    with torch.no_grad():
        if init == "kaiming":
            # Same rule as nn.Linear.reset_parameters.
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        else:  # "gaussian"
            nn.init.normal_(a.weight, mean=0.0, std=1.0 / rank)
        nn.init.zeros_(b.weight)


def data_driven_factors(
    weight: torch.Tensor, rank: int, scaling: float, init: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` for PiSSA or OLoRA from base rows ``weight`` (rows × d_in), fp32.

    * ``pissa``: ``W = U S Vᵀ``; ``A = sqrt(S_r / s) V_rᵀ``, ``B = U_r sqrt(S_r / s)``,
      so ``s B A`` is the best rank-r approximation of ``W``.
    * ``olora``: ``W = Q R``; ``A = R_{:r}``, ``B = Q_{:, :r}`` (orthonormal columns).

    Raises:
        ValueError: if ``rank`` exceeds ``min(rows, d_in)``.
    """
    rows, cols = weight.shape
    if rank > min(rows, cols):
        raise ValueError(
            f"init={init!r} needs rank <= min(out, in) = {min(rows, cols)} for a "
            f"{rows}x{cols} weight, got rank={rank}; lower the rank or use init='kaiming'"
        )
    w = weight.detach().to(torch.float32)
    if init == "pissa":
        u, sv, vh = torch.linalg.svd(w, full_matrices=False)
        root = torch.sqrt(sv[:rank] / scaling)
        return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
    q, r = torch.linalg.qr(w)
    return r[:rank].clone(), q[:, :rank].clone()


class _FrozenFactors(nn.Module):
    """The initial ``A``/``B`` of a data-driven init, as persistent buffers."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", a)
        self.register_buffer("B", b)


class LoRAAdapterMixin:
    """Adapter bookkeeping shared by :class:`LoRALinear` and
    :class:`LoRAMultiheadAttention`.

    The mixin is attached to an existing module by in-place class swap, so it
    has no ``__init__``; :meth:`_setup_lora` installs the adapter state.

    Attributes:
        lora_A (nn.ModuleDict): ``name -> nn.Linear(d_in, r, bias=False)``.
        lora_B (nn.ModuleDict): ``name -> nn.Linear(r, rows, bias=False)``.
        lora_dropout (nn.Module): Dropout on the adapter input (shared).
        lora_offset (nn.ModuleDict): ``name -> {A, B}`` frozen initial factors
            of a data-driven init (empty otherwise); see the module docstring.
        lora_slices (dict[str, tuple[int, int]]): Row range of each adapter in
            its base weight (for attention, ``q``/``k``/``v`` index
            ``in_proj_weight`` and ``out`` spans ``out_proj.weight``).
        rank (int), lora_alpha (float), use_rslora (bool), lora_init (str),
        scaling (float): Hyper-parameters; ``scaling`` is :math:`s`.

    Merging semantics:
        * :meth:`merge` adds :math:`s B A` into the base weight in place.
          Merging an already merged layer is a **no-op** (idempotent), as is
          unmerging an unmerged one.
        * While merged, ``forward`` adds no delta (it is already in ``W``).
        * Disabling adapters of a merged layer, or merging a layer whose
          adapters are disabled, raises :class:`RuntimeError`: the disabled
          output is always the exact base output, never ``W + sBA - sBA``.
        * Do not update ``A``/``B`` while merged, otherwise :meth:`unmerge`
          subtracts a different delta than was added.
    """

    lora_A: nn.ModuleDict
    lora_B: nn.ModuleDict
    lora_offset: nn.ModuleDict
    lora_dropout: nn.Module
    lora_slices: dict[str, tuple[int, int]]
    rank: int
    lora_alpha: float
    use_rslora: bool
    lora_init: str
    scaling: float
    _lora_merged: bool
    _lora_enabled: bool
    use_dora: bool = False  # DoRA (see lora.dora): a trained magnitude per output row

    # ------------------------------------------------------------------ setup
    def _setup_lora(
        self,
        *,
        in_features: int,
        slices: dict[str, tuple[int, int]],
        rank: int,
        alpha: float,
        dropout: float,
        use_rslora: bool,
        init: str,
        like: torch.Tensor,
        use_dora: bool = False,
    ) -> None:
        """Create the factors for every slice on ``like``'s device, in
        :func:`get_factor_dtype` of its dtype (fp32 over a bf16/fp16 base), and the DoRA
        magnitudes with ``use_dora``."""
        if use_dora and init in DATA_DRIVEN_INITS:
            raise ValueError(f"use_dora does not combine with init={init!r}; use "
                             "init='kaiming' or 'gaussian' with DoRA")
        self.rank = rank
        self.lora_alpha = float(alpha)
        self.use_rslora = bool(use_rslora)
        self.lora_init = init
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        self.lora_slices = {n: (int(s), int(e)) for n, (s, e) in slices.items()}
        self._lora_merged = False
        self._lora_enabled = True
        self.lora_dropout = make_lora_dropout(float(dropout))
        factory = {"device": like.device, "dtype": get_factor_dtype(like.dtype)}
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_offset = nn.ModuleDict()
        for name, (start, end) in self.lora_slices.items():
            self.lora_A[name] = nn.Linear(in_features, rank, bias=False, **factory)
            self.lora_B[name] = nn.Linear(rank, end - start, bias=False, **factory)
        self.reset_lora_parameters()
        self.use_dora = bool(use_dora)
        if self.use_dora:
            init_dora(self)

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """Re-initialise all factors per ``lora_init``.

        ``kaiming``/``gaussian``: random ``A``, ``B = 0``. ``pissa``/``olora``: both
        from the base rows, and the offset buffers set to the same values.

        Raises:
            RuntimeError: while merged (the base rows hold the delta).
        """
        if self._lora_merged:
            raise RuntimeError(
                f"{type(self).__name__}: call unmerge() before reset_lora_parameters()"
            )
        for name in self.lora_A:
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            if self.lora_init not in DATA_DRIVEN_INITS:
                _init_factors(self.lora_A[name], self.lora_B[name], self.rank, self.lora_init)
                continue
            a0, b0 = data_driven_factors(
                self._lora_base_rows(name), self.rank, self.scaling, self.lora_init)
            a.copy_(a0)
            b.copy_(b0)
            self.lora_offset[name] = _FrozenFactors(a.detach().clone(), b.detach().clone())
        if self.use_dora:
            init_dora(self)

    # ------------------------------------------------------ host-layer hooks
    def _lora_base_rows(self, name: str) -> torch.Tensor:
        """Return the (view of the) base weight rows adapted by ``name``."""
        raise NotImplementedError

    def lora_base_param(self, name: str) -> str:
        """Name, relative to this layer, of the base parameter adapter ``name``
        writes into (its rows are ``lora_slices[name]``)."""
        raise NotImplementedError

    # ------------------------------------------------------------- queries
    @property
    def merged(self) -> bool:
        """Whether the deltas are currently folded into the base weights."""
        return self._lora_merged

    @property
    def adapters_enabled(self) -> bool:
        """Whether the adapters contribute to ``forward``."""
        return self._lora_enabled

    @adapters_enabled.setter
    def adapters_enabled(self, enabled: bool) -> None:
        self.set_adapters_enabled(enabled)

    @property
    def _lora_active(self) -> bool:
        """True when ``forward`` must add the deltas on the activation path."""
        return self._lora_enabled and not self._lora_merged

    def set_adapters_enabled(self, enabled: bool) -> None:
        """Enable or disable the adapters.

        When disabled, ``forward`` returns exactly the base layer output.

        Raises:
            RuntimeError: When disabling a merged layer (call :meth:`unmerge`
                first).
        """
        enabled = bool(enabled)
        if not enabled and self._lora_merged:
            raise RuntimeError(
                f"{type(self).__name__}: cannot disable adapters while they are "
                "merged into the base weights; call unmerge() first"
            )
        self._lora_enabled = enabled

    def lora_parameters(self) -> Iterator[nn.Parameter]:
        """Yield the adapter parameters (all ``A`` then all ``B`` factors)."""
        yield from self.lora_A.parameters()
        yield from self.lora_B.parameters()
        if self.use_dora:
            yield from self.lora_magnitude.parameters()

    def delta_weight(self, name: str) -> torch.Tensor:
        """Return :math:`s \\, B A` for adapter ``name``.

        The product is accumulated in at least fp32 and returned in the base
        weight dtype, shape ``(rows, d_in)`` (the rows of ``lora_slices[name]``).

        Raises:
            KeyError: If ``name`` is not an adapter of this layer.
        """
        if name not in self.lora_A:
            raise KeyError(
                f"No LoRA adapter named {name!r}; available: {list(self.lora_A)}"
            )
        a = self.lora_A[name].weight
        b = self.lora_B[name].weight
        if self.use_dora:  # W' - W, from the current (unmerged) base rows
            rows = self._lora_base_rows(name)
            return dora_merged_rows(rows, a, b, self.lora_magnitude[name], self.scaling) - rows
        compute = torch.promote_types(a.dtype, torch.float32)
        product = b.to(compute) @ a.to(compute)
        if name in self.lora_offset:
            off = self.lora_offset[name]
            product = product - off.B.to(compute) @ off.A.to(compute)
        return (product * self.scaling).to(self.get_parameter(self.lora_base_param(name)).dtype)

    def _lora_add(self, base: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        """``base + s·B(A x)`` on the activation path (``x`` already dropped), minus
        ``s·B₀(A₀ x)`` for a data-driven init.

        ``A x`` is the only product over the input width; ``B`` and the scaling are
        applied by one ``addmm`` onto ``base``, so no full-width delta tensor is formed
        and scaled separately (one pass over the output instead of three).
        """
        if self.use_dora:
            return dora_add(self, base, x, name)
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        lead = base.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        # fp32 factors over a bf16 base: cast at the matmul, as autocast does (no-op when
        # the dtypes agree; under autocast both casts are the ones autocast makes).
        out = torch.addmm(base.reshape(-1, base.shape[-1]), F.linear(x2, a.to(x2.dtype)),
                          b.t().to(base.dtype), alpha=self.scaling)
        if name in self.lora_offset:
            off = self.lora_offset[name]
            out = torch.addmm(out, F.linear(x2, off.A.to(x2.dtype)), off.B.to(out.dtype).t(),
                              alpha=-self.scaling)
        return out.view(*lead, out.shape[-1])

    # -------------------------------------------------------- merge / unmerge
    @torch.no_grad()
    def merge(self) -> None:
        """Fold :math:`s B A` into the base weights in place (no-op if merged).

        Raises:
            RuntimeError: If the adapters are disabled, or the base is NF4 (merge from
                the full-precision file, :data:`NF4_MERGE_REFUSED`).
        """
        if self._lora_merged:
            return
        if not self._lora_enabled:
            raise RuntimeError(
                f"{type(self).__name__}: cannot merge disabled adapters; "
                "call set_adapters_enabled(True) first"
            )
        if any(is_nf4(self.get_parameter(self.lora_base_param(n))) for n in self.lora_A):
            raise RuntimeError(NF4_MERGE_REFUSED)
        if self.use_dora:
            merge_dora(self)
        for name in self.lora_A if not self.use_dora else ():
            self._lora_base_rows(name).add_(self.delta_weight(name))
        self._lora_merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract :math:`s B A` from the base weights (no-op if not merged)."""
        if not self._lora_merged:
            return
        if self.use_dora:
            unmerge_dora(self)
        for name in self.lora_A if not self.use_dora else ():
            self._lora_base_rows(name).sub_(self.delta_weight(name))
        self._lora_merged = False
