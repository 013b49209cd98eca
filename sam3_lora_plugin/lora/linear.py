"""LoRA for :class:`torch.nn.Linear`, optionally restricted to output slices.

An existing ``nn.Linear`` is converted *in place* (its class is swapped and the
adapter sub-modules are added), so the base parameters keep their names
(``weight``, ``bias``) and a stock checkpoint still loads.

For adapters :math:`\\{(A_n, B_n, [s_n, e_n))\\}` the layer computes

.. math::

    y = W x + b, \\qquad
    y_{[s_n, e_n)} \\mathrel{+}= s \\cdot B_n A_n \\, \\mathrm{drop}(x)
    \\quad \\text{for every adapter } n,

which lets a fused ``qkv`` projection (``nn.Linear(d, 3d)``) adapt e.g. only
the ``q`` and ``v`` rows with ``slices={"q": (0, d), "v": (2 * d, 3 * d)}``.
"""

from __future__ import annotations

import torch
from torch import nn

from .factors import LoRAAdapterMixin, validate_lora_args
from .nf4 import frozen_linear

__all__ = ["LoRALinear", "add_lora_to_linear"]

_DYNAMIC_CLASSES: dict[type, type] = {}


class LoRALinear(LoRAAdapterMixin, nn.Linear):
    """``nn.Linear`` with low-rank adapters on (slices of) its output.

    Instances are normally obtained with :func:`add_lora_to_linear`, which
    converts an existing layer in place; the constructor builds a fresh
    ``nn.Linear`` and converts it.

    Args:
        in_features (int): Input size.
        out_features (int): Output size.
        bias (bool): Whether the base layer has a bias.
        rank (int), alpha (float), dropout (float), slices, use_rslora (bool),
        init (str): See :func:`add_lora_to_linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        slices: dict[str, tuple[int, int]] | None = None,
        use_rslora: bool = False,
        init: str = "kaiming",
        use_dora: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        _convert(self, rank, alpha, dropout, slices, use_rslora, init, use_dora)

    def lora_base_param(self, name: str) -> str:
        return "weight"

    def _lora_base_rows(self, name: str) -> torch.Tensor:
        start, end = self.lora_slices[name]
        return self.weight[start:end]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute :math:`W x + b` plus the sliced low-rank updates.

        Args:
            x (torch.Tensor): Input of shape ``(..., in_features)``.

        Returns:
            torch.Tensor: Output of shape ``(..., out_features)``.
        """
        out = frozen_linear(x, self.weight, self.bias)  # W may be NF4 (lora.nf4)
        if not self._lora_active:
            return out
        xd = self.lora_dropout(x)
        spans = sorted(self.lora_slices.items(), key=lambda item: item[1][0])
        if len(spans) == 1 and spans[0][1] == (0, self.out_features):
            return self._lora_add(out, xd, spans[0][0])
        # Rebuild the output from contiguous column blocks: untouched blocks
        # are taken from the base output, adapted ones get their delta. One
        # concatenation, no (out, in) matrix, no per-token loop.
        pieces: list[torch.Tensor] = []
        cursor = 0
        for name, (start, end) in spans:
            if start > cursor:
                pieces.append(out[..., cursor:start])
            pieces.append(self._lora_add(out[..., start:end], xd, name))
            cursor = end
        if cursor < self.out_features:
            pieces.append(out[..., cursor:])
        return torch.cat(pieces, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"{nn.Linear.extra_repr(self)}, rank={self.rank}, alpha={self.lora_alpha}, "
            f"slices={self.lora_slices}, merged={self.merged}"
        )


def _validate_slices(
    slices: dict[str, tuple[int, int]], out_features: int
) -> dict[str, tuple[int, int]]:
    if not isinstance(slices, dict) or not slices:
        raise ValueError(f"slices must be a non-empty dict name -> (start, end), got {slices!r}")
    checked: dict[str, tuple[int, int]] = {}
    for name, span in slices.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"slice name must be a non-empty str without '.', got {name!r}")
        if (
            not isinstance(span, (tuple, list))
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            raise ValueError(f"slice {name!r} must be a (start, end) pair of ints, got {span!r}")
        start, end = span
        if not 0 <= start < end <= out_features:
            raise ValueError(
                f"slice {name!r}={tuple(span)} is out of range: need "
                f"0 <= start < end <= out_features={out_features}"
            )
        checked[name] = (start, end)
    ordered = sorted(checked.items(), key=lambda item: item[1][0])
    for (n0, (_, e0)), (n1, (s1, e1)) in zip(ordered, ordered[1:]):
        if s1 < e0:
            raise ValueError(
                f"slices {n0!r}={checked[n0]} and {n1!r}={(s1, e1)} overlap"
            )
    return checked


def _lora_class_for(cls: type) -> type:
    """``LoRALinear`` for ``nn.Linear``; a cached ``(LoRALinear, cls)`` subclass
    for subclasses of it, so ``isinstance(module, cls)`` stays true."""
    if cls is nn.Linear or issubclass(cls, LoRALinear):
        return LoRALinear
    if cls not in _DYNAMIC_CLASSES:
        _DYNAMIC_CLASSES[cls] = type("LoRA" + cls.__name__, (LoRALinear, cls), {})
    return _DYNAMIC_CLASSES[cls]


def _convert(
    module: nn.Linear,
    rank: int,
    alpha: float,
    dropout: float,
    slices: dict[str, tuple[int, int]] | None,
    use_rslora: bool,
    init: str,
    use_dora: bool = False,
) -> LoRALinear:
    validate_lora_args(rank, alpha, dropout, init)
    out_features = module.weight.shape[0]
    slices = {"all": (0, out_features)} if slices is None else _validate_slices(slices, out_features)
    module._setup_lora(
        in_features=module.weight.shape[1],
        slices=slices,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        use_rslora=use_rslora,
        init=init,
        like=module.weight,
        use_dora=use_dora,
    )
    return module


def add_lora_to_linear(
    module: nn.Linear,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    slices: dict[str, tuple[int, int]] | None = None,
    use_rslora: bool = False,
    init: str = "kaiming",
    use_dora: bool = False,
) -> LoRALinear:
    """Convert ``module`` into a :class:`LoRALinear` in place.

    The base parameters are untouched (values, names and ``requires_grad``);
    new factors are created on the weight's device/dtype with
    ``requires_grad=True``, ``B = 0`` so the output is unchanged.

    Args:
        module (nn.Linear): Layer to convert (any ``nn.Linear`` subclass).
        rank (int): Adapter rank :math:`r > 0`.
        alpha (float): Scaling numerator :math:`\\alpha > 0`.
        dropout (float): Dropout on the adapter input, in ``[0, 1)``.
        slices (dict[str, tuple[int, int]] | None): Output row ranges
            ``name -> (start, end)`` to adapt, non-overlapping. ``None`` means
            one adapter named ``"all"`` over the whole output.
        use_rslora (bool): Scale by :math:`\\alpha/\\sqrt{r}` instead of
            :math:`\\alpha/r`.
        init (str): ``"kaiming"`` (as ``nn.Linear``) or ``"gaussian"``
            (:math:`\\mathcal{N}(0, 1/r^2)`) for ``A``.
        use_dora (bool): DoRA: a trained magnitude per output row (``lora.dora``).

    Returns:
        LoRALinear: The same object, with its class swapped.

    Raises:
        TypeError: If ``module`` is not an ``nn.Linear``.
        ValueError: On invalid hyper-parameters/slices or an already
            converted layer.
    """
    if not isinstance(module, nn.Linear):
        raise TypeError(f"expected an nn.Linear, got {type(module).__name__}")
    if isinstance(module, LoRALinear):
        raise ValueError(f"{type(module).__name__} already has LoRA adapters")
    # Validate before mutating anything so a failure leaves the module intact.
    validate_lora_args(rank, alpha, dropout, init)
    if slices is not None:
        _validate_slices(slices, module.weight.shape[0])
    module.__class__ = _lora_class_for(type(module))
    return _convert(module, rank, alpha, dropout, slices, use_rslora, init, use_dora)
