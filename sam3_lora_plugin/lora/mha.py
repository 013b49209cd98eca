"""LoRA for :class:`torch.nn.MultiheadAttention`.

The fused in-projection :math:`W_{in} = [W_q; W_k; W_v] \\in
\\mathbb{R}^{3E \\times E}` and the out-projection :math:`W_o` get optional
adapters ``q``, ``k``, ``v`` (rows :math:`[0,E)`, :math:`[E,2E)`,
:math:`[2E,3E)` of ``in_proj_weight``) and ``out`` (``out_proj.weight``):

.. math::

    Q &= W_q x_q + b_q + s B_q A_q \\mathrm{drop}(x_q) \\\\
    K &= W_k x_k + b_k + s B_k A_k \\mathrm{drop}(x_k) \\\\
    V &= W_v x_v + b_v + s B_v A_v \\mathrm{drop}(x_v) \\\\
    O &= W_o \\, \\mathrm{Attn}(Q, K, V) + b_o
         + s B_o A_o \\mathrm{drop}(\\mathrm{Attn}(Q, K, V))

Stock ``nn.MultiheadAttention`` passes ``in_proj_weight`` / ``out_proj.weight``
straight to ``F.multi_head_attention_forward``, so the forward is re-written
here following that function step by step (same ops, same mask handling, same
RNG consumption, ``F.scaled_dot_product_attention`` when weights are not
needed). When the adapters are disabled or merged, the stock forward is used (over an
NF4 base, ``lora.nf4``, this forward without the deltas: stock cannot read NF4).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .factors import LoRAAdapterMixin, validate_lora_args
from .nf4 import frozen_linear, is_nf4

__all__ = ["FrozenNF4MultiheadAttention", "LoRAMultiheadAttention", "add_lora_to_mha", "MHA_TARGETS",
           "use_frozen_attention_forward"]

#: Adapter targets of a multi-head attention layer.
MHA_TARGETS: tuple[str, ...] = ("q", "k", "v", "out")

_DYNAMIC_CLASSES: dict[tuple[type, type], type] = {}


def _float_mask(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """Bool mask (True = masked) -> additive ``-inf`` mask; float mask as is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"only bool and floating {name} are supported, got {mask.dtype}")
    return mask


def _same_map(
    fn: Callable[[Tensor], Tensor], query: Tensor, key: Tensor, value: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply ``fn`` to q/k/v keeping ``query is key`` / ``key is value``."""
    k = fn(key)
    v = k if value is key else fn(value)
    q = k if query is key else fn(query)
    return q, k, v


class _RewrittenAttention(nn.MultiheadAttention):
    """Stock attention's forward re-written (module docstring), its base products through
    ``lora.nf4.frozen_linear`` (so the projection weights may be NF4) and, when ``active``,
    the LoRA deltas of a :class:`LoRAMultiheadAttention`. Never instantiated itself."""

    def _deltas_active(self) -> bool:
        """Whether the forward adds LoRA deltas (never, unless a LoRA layer)."""
        return False

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Multi-head attention, stock signature: stock's forward where it can serve (no
        deltas and a plain weight), else the re-written one.

        Shapes follow ``nn.MultiheadAttention``: ``(L, N, E)`` (or
        ``(N, L, E)`` with ``batch_first``) or unbatched ``(L, E)``; masks as
        stock (bool ``True`` = not allowed to attend, float masks are added).

        Raises:
            NotImplementedError: If ``is_causal=True``.
        """
        active = self._deltas_active()
        if is_causal:
            raise NotImplementedError(
                f"{type(self).__name__} does not support is_causal=True; "
                "pass an explicit attn_mask instead"
            )
        if not active and not is_nf4(self.in_proj_weight):  # an NF4 base needs our forward
            return nn.MultiheadAttention.forward(
                self, query, key, value, key_padding_mask=key_padding_mask,
                need_weights=need_weights, attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
            )
        return self._attention(query, key, value, key_padding_mask, need_weights, attn_mask,
                               average_attn_weights, active)

    def _attention(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
        need_weights: bool, attn_mask: Tensor | None, average_attn_weights: bool, active: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """``F.multi_head_attention_forward`` step by step (plus deltas when ``active``)."""
        if query.is_nested or key.is_nested or value.is_nested:
            raise NotImplementedError(f"{type(self).__name__} does not support nested tensors")
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "query/key/value must all be 3-D (batched) or 2-D (unbatched), got "
                f"{query.dim()}-D, {key.dim()}-D, {value.dim()}-D"
            )
        is_batched = query.dim() == 3
        kv_same, self_attn = key is value, query is key and key is value

        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", query.dtype)
        attn_mask = _float_mask(attn_mask, "attn_mask", query.dtype)

        # -> sequence-first (L, N, E), preserving tensor identity like stock.
        if not is_batched:
            query, key, value = _same_map(lambda t: t.unsqueeze(1), query, key, value)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = _same_map(lambda t: t.transpose(1, 0), query, key, value)
        tgt_len, bsz, embed_dim = query.shape
        src_len = key.shape[0]
        num_heads, head_dim = self.num_heads, self.head_dim
        if embed_dim != self.embed_dim:
            raise ValueError(f"expected embedding dim {self.embed_dim}, got {embed_dim}")
        if key.shape != value.shape:
            raise ValueError(f"key shape {tuple(key.shape)} != value shape {tuple(value.shape)}")

        q, k, v = self._in_projection(query, key, value, self_attn, kv_same, active)

        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if attn_mask.shape != (tgt_len, src_len):
                    raise ValueError(
                        f"2-D attn_mask has shape {tuple(attn_mask.shape)}, "
                        f"expected {(tgt_len, src_len)}"
                    )
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.dim() == 3:
                if attn_mask.shape != (bsz * num_heads, tgt_len, src_len):
                    raise ValueError(
                        f"3-D attn_mask has shape {tuple(attn_mask.shape)}, "
                        f"expected {(bsz * num_heads, tgt_len, src_len)}"
                    )
            else:
                raise ValueError(f"attn_mask must be 2-D or 3-D, got {attn_mask.dim()}-D")

        q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
        k = k.view(src_len, bsz * num_heads, head_dim).transpose(0, 1)
        v = v.view(src_len, bsz * num_heads, head_dim).transpose(0, 1)

        if key_padding_mask is not None:
            if key_padding_mask.shape != (bsz, src_len):
                raise ValueError(
                    f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, "
                    f"expected {(bsz, src_len)}"
                )
            key_padding_mask = (
                key_padding_mask.view(bsz, 1, 1, src_len)
                .expand(-1, num_heads, -1, -1)
                .reshape(bsz * num_heads, 1, src_len)
            )
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask

        dropout_p = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:
            # Explicit softmax path (as stock), to be able to return weights.
            q_scaled = q * math.sqrt(1.0 / float(head_dim))
            if attn_mask is not None:
                weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                weights = torch.bmm(q_scaled, k.transpose(-2, -1))
            weights = F.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            attn = torch.bmm(weights, v)
            attn = attn.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
            weights = weights.view(bsz, num_heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            # Fused SDPA kernel on (N, H, L, D).
            if attn_mask is not None:
                if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                    attn_mask = attn_mask.unsqueeze(0)
                else:
                    attn_mask = attn_mask.view(bsz, num_heads, -1, src_len)
            q = q.view(bsz, num_heads, tgt_len, head_dim)
            k = k.view(bsz, num_heads, src_len, head_dim)
            v = v.view(bsz, num_heads, src_len, head_dim)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, False)
            attn = attn.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)

        out = frozen_linear(attn, self.out_proj.weight, self.out_proj.bias)
        if active and "out" in self.lora_A:
            out = self._lora_add(out, self.lora_dropout(attn), "out")
        out = out.view(tgt_len, bsz, out.size(1))

        if not is_batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(1, 0)
        return out, weights

    def _in_projection(
        self, query: Tensor, key: Tensor, value: Tensor, self_attn: bool, kv_same: bool,
        active: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Packed in-projection (as ``F._in_projection_packed``) plus deltas.

        Row ranges of ``in_proj_weight`` go through ``lora.nf4.frozen_linear``, which
        slices a plain weight as ``split``/``chunk`` do and dequantizes an NF4 one.
        """
        E = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if self_attn:
            proj = frozen_linear(query, w, b)
            proj = proj.unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            q, k, v = proj[0], proj[1], proj[2]
        elif kv_same:
            b_q, b_kv = (None, None) if b is None else b.split([E, 2 * E])
            q = frozen_linear(query, w, b_q, (0, E))
            kv = frozen_linear(key, w, b_kv, (E, 3 * E))
            kv = kv.unflatten(-1, (2, E)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            k, v = kv[0], kv[1]
        else:
            b_q, b_k, b_v = (None, None, None) if b is None else b.chunk(3)
            q = frozen_linear(query, w, b_q, (0, E))
            k = frozen_linear(key, w, b_k, (E, 2 * E))
            v = frozen_linear(value, w, b_v, (2 * E, 3 * E))

        # Dropout once per distinct input tensor (self-attention: once).
        dropped: dict[int, Tensor] = {}

        def drop(x: Tensor) -> Tensor:
            if id(x) not in dropped:
                dropped[id(x)] = self.lora_dropout(x)
            return dropped[id(x)]

        if not active:
            return q, k, v
        if "q" in self.lora_A:
            q = self._lora_add(q, drop(query), "q")
        if "k" in self.lora_A:
            k = self._lora_add(k, drop(key), "k")
        if "v" in self.lora_A:
            v = self._lora_add(v, drop(value), "v")
        return q, k, v


class LoRAMultiheadAttention(LoRAAdapterMixin, _RewrittenAttention):
    """``nn.MultiheadAttention`` with LoRA on the q/k/v/out projections.

    Obtain instances with :func:`add_lora_to_mha` (in-place conversion).
    ``forward`` has the stock signature and semantics; ``is_causal=True`` is
    not supported.
    """

    def lora_base_param(self, name: str) -> str:
        return "out_proj.weight" if name == "out" else "in_proj_weight"

    def _lora_base_rows(self, name: str) -> Tensor:
        if name == "out":
            return self.out_proj.weight
        start, end = self.lora_slices[name]
        return self.in_proj_weight[start:end]

    def _deltas_active(self) -> bool:
        return self._lora_active

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"batch_first={self.batch_first}, rank={self.rank}, alpha={self.lora_alpha}, "
            f"targets={list(self.lora_A)}, merged={self.merged}"
        )


class FrozenNF4MultiheadAttention(_RewrittenAttention):
    """A frozen ``nn.MultiheadAttention`` without adapters whose ``in_proj_weight`` /
    ``out_proj.weight`` may be NF4 (QLoRA's frozen base): stock's forward over plain
    weights, the re-written one (no deltas) over NF4, which stock cannot read.

    Obtain instances with :func:`use_frozen_attention_forward` (class swap, parameter
    names kept). ``forward`` has the stock signature and semantics; ``is_causal=True`` is
    not supported.
    """


def _class_for(cls: type, replacement: type) -> type:
    """``replacement`` for the stock class (or one already swapped); for a subclass ``C``
    a cached ``(C, replacement)`` class, so ``C.forward`` (e.g. SAM3's
    ``MultiheadAttentionWrapper``) runs first and its ``super().forward`` lands in
    ``replacement``'s."""
    if cls is nn.MultiheadAttention or issubclass(cls, replacement):
        return replacement
    if (cls, replacement) not in _DYNAMIC_CLASSES:
        name = replacement.__name__.replace("MultiheadAttention", cls.__name__)
        _DYNAMIC_CLASSES[(cls, replacement)] = type(name, (cls, replacement), {})
    return _DYNAMIC_CLASSES[(cls, replacement)]


def _unsupported(module: nn.MultiheadAttention) -> str | None:
    """What the re-written forward does not cover in ``module``, or None."""
    if module.bias_k is not None or module.bias_v is not None:
        return "add_bias_kv=True"
    if module.add_zero_attn:
        return "add_zero_attn=True"
    if not module._qkv_same_embed_dim:
        return (f"kdim/vdim != embed_dim (embed_dim={module.embed_dim}, kdim={module.kdim}, "
                f"vdim={module.vdim})")
    return None


def use_frozen_attention_forward(module: nn.Module) -> bool:
    """Swap a frozen ``nn.MultiheadAttention`` without adapters (subclasses allowed) to
    :class:`FrozenNF4MultiheadAttention` in place, so its projection weights can be NF4.

    Returns:
        False (nothing changed) for a LoRA layer, a trainable projection, or a layer the
        re-written forward does not cover (:func:`_unsupported`); True otherwise.
    """
    if isinstance(module, FrozenNF4MultiheadAttention):
        return True
    if (not isinstance(module, nn.MultiheadAttention) or isinstance(module, LoRAMultiheadAttention)
            or _unsupported(module) or module.in_proj_weight.requires_grad
            or module.out_proj.weight.requires_grad):
        return False
    module.__class__ = _class_for(type(module), FrozenNF4MultiheadAttention)
    return True


def add_lora_to_mha(
    module: nn.MultiheadAttention,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Sequence[str] = MHA_TARGETS,
    use_rslora: bool = False,
    init: str = "kaiming",
    use_dora: bool = False,
) -> LoRAMultiheadAttention:
    """Convert ``module`` into a :class:`LoRAMultiheadAttention` in place.

    Adapters are named after their target: ``lora_A.q`` ... ``lora_A.out``.
    Base parameters (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``)
    keep their names, values and ``requires_grad``.

    Args:
        module (nn.MultiheadAttention): Layer to convert (subclasses allowed).
        rank (int): Adapter rank :math:`r > 0`.
        alpha (float): Scaling numerator :math:`\\alpha > 0`.
        dropout (float): Dropout on the adapter inputs, in ``[0, 1)``
            (independent of the layer's attention dropout).
        targets (Sequence[str]): Non-empty subset of ``("q", "k", "v", "out")``.
        use_rslora (bool): Scale by :math:`\\alpha/\\sqrt{r}`.
        init (str): ``"kaiming"`` or ``"gaussian"`` for ``A``.
        use_dora (bool): DoRA per projection (rows of ``in_proj_weight`` / ``out_proj``;
            see ``lora.dora``).

    Returns:
        LoRAMultiheadAttention: The same object, with its class swapped.

    Raises:
        TypeError: If ``module`` is not an ``nn.MultiheadAttention``.
        ValueError: On invalid hyper-parameters/targets or an already
            converted layer.
        NotImplementedError: For ``add_bias_kv``, ``add_zero_attn`` or
            ``kdim``/``vdim`` different from ``embed_dim``.
    """
    if not isinstance(module, nn.MultiheadAttention):
        raise TypeError(f"expected an nn.MultiheadAttention, got {type(module).__name__}")
    if isinstance(module, LoRAMultiheadAttention):
        raise ValueError(f"{type(module).__name__} already has LoRA adapters")
    validate_lora_args(rank, alpha, dropout, init)
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    bad = [t for t in targets if t not in MHA_TARGETS]
    if not targets or bad or len(set(targets)) != len(targets):
        raise ValueError(
            f"targets must be a non-empty subset of {list(MHA_TARGETS)} without "
            f"duplicates, got {list(targets)}"
        )
    unsupported = _unsupported(module)
    if unsupported:
        raise NotImplementedError(f"LoRA for MultiheadAttention with {unsupported} is not supported")

    E = module.embed_dim
    spans = {"q": (0, E), "k": (E, 2 * E), "v": (2 * E, 3 * E), "out": (0, E)}
    module.__class__ = _class_for(type(module), LoRAMultiheadAttention)
    module._setup_lora(
        in_features=E,
        slices={t: spans[t] for t in MHA_TARGETS if t in targets},
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        use_rslora=use_rslora,
        init=init,
        like=module.in_proj_weight,
        use_dora=use_dora,
    )
    return module
