"""The three configurations ``benchmarks/mha_lora.py`` compares, on one full-size SAM3
fusion-encoder layer with identical weights and factors: the frozen base, this package's
activation-path LoRA, and PEFT-style merge-in-forward (:class:`MergeInForwardMHA`); and
the layer's inputs."""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sam3_lora_plugin.lora import MHA_TARGETS, add_lora_to_mha
from sam3_lora_plugin.models.arch import SIZES, _transformer

VARIANTS: tuple[str, ...] = ("frozen_base", "lora_activation", "lora_merge_in_forward")
#: Attention modules of the encoder layer that get adapters.
ATTENTION_MODULES: tuple[str, ...] = ("self_attn", "cross_attn_image")

Inputs = dict[str, Any]


class MergeInForwardMHA(nn.Module):
    """PEFT-style LoRA around an ``nn.MultiheadAttention``: merge inside ``forward``.

    Every call builds ``W_in + [s B_q A_q; s B_k A_k; s B_v A_v]`` and
    ``W_out + s B_o A_o`` (differentiable in ``A``/``B``, base detached as in PEFT)
    and runs the unmodified base module with these tensors in place of
    ``in_proj_weight`` / ``out_proj.weight`` (``torch.func.functional_call``; PEFT
    deletes the parameters and assigns the merged tensors, which is the same
    computation). Self-contained on purpose (it does not reuse the package's
    adapter code); the factors are laid out like the package's (``lora_A[t]``:
    ``E -> r``, ``lora_B[t]``: ``r -> E``, one pair per target) so
    :func:`copy_factors` can copy them one-to-one. PEFT keeps one ``3E x r``
    ``B`` for the whole in-projection; per-slice factors give the same merged
    weight for the cost of two more tiny ``E x r x E`` products.
    """

    def __init__(
        self, base: nn.MultiheadAttention, *, rank: int, alpha: float,
        targets: Sequence[str] = MHA_TARGETS,
    ) -> None:
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        factory = {"device": base.in_proj_weight.device, "dtype": base.in_proj_weight.dtype}
        E = base.embed_dim
        self.lora_A = nn.ModuleDict({t: nn.Linear(E, rank, bias=False, **factory) for t in targets})
        self.lora_B = nn.ModuleDict({t: nn.Linear(rank, E, bias=False, **factory) for t in targets})
        for b in self.lora_B.values():
            nn.init.zeros_(b.weight)

    def delta(self, target: str) -> Tensor:
        """``s * B A`` of one target (``E x E``), or zeros if it has no adapter."""
        if target not in self.lora_A:
            E = self.base.embed_dim
            return self.base.in_proj_weight.new_zeros(E, E)
        return (self.lora_B[target].weight @ self.lora_A[target].weight) * self.scaling

    def merged_weights(self) -> dict[str, Tensor]:
        """The effective ``in_proj_weight`` and ``out_proj.weight`` for this forward."""
        w_in = self.base.in_proj_weight.detach() + torch.cat([self.delta(t) for t in ("q", "k", "v")])
        w_out = self.base.out_proj.weight.detach() + self.delta("out")
        return {"in_proj_weight": w_in, "out_proj.weight": w_out}

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        """Stock ``MultiheadAttention`` forward (``F.multi_head_attention_forward``)
        with the merged weights."""
        return functional_call(self.base, self.merged_weights(), args, kwargs)


def build_encoder_layer(seed: int) -> nn.Module:
    """One full-size SAM3 fusion-encoder layer (frozen, train mode).

    Built with ``arch._transformer`` (the builder ``build_sam3_arch(size="full")``
    uses), so the construction arguments are exactly the real model's; the layer is
    ``transformer.encoder.layers[0]``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = _transformer(SIZES["full"], 0.1).encoder.layers[0]
    layer.requires_grad_(False)
    return layer.train()


def set_dropout(module: nn.Module, p: float) -> None:
    """Set every ``nn.Dropout`` and the attention dropout of every MHA to ``p``."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, nn.MultiheadAttention):
            m.dropout = p


def lora_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """The adapted attention modules of a LoRA variant (those with ``lora_A``), by name."""
    return {n: getattr(layer, n) for n in ATTENTION_MODULES if hasattr(getattr(layer, n), "lora_A")}


def copy_factors(src: nn.Module, dst: nn.Module) -> None:
    """Copy every ``lora_A``/``lora_B`` factor of ``src``'s adapted MHAs into ``dst``'s."""
    for name, module in lora_modules(src).items():
        target = lora_modules(dst)[name]
        target.lora_A.load_state_dict(module.lora_A.state_dict())
        target.lora_B.load_state_dict(module.lora_B.state_dict())


def build_variants(base: nn.Module, rank: int, alpha: float) -> dict[str, nn.Module]:
    """The three configurations, sharing ``base``'s weights (deep copies)."""
    activation = copy.deepcopy(base)
    merge = copy.deepcopy(base)
    for name in ATTENTION_MODULES:
        add_lora_to_mha(getattr(activation, name), rank=rank, alpha=alpha, targets=MHA_TARGETS)
        setattr(merge, name, MergeInForwardMHA(getattr(merge, name), rank=rank, alpha=alpha))
    copy_factors(activation, merge)
    return {"frozen_base": base, "lora_activation": activation, "lora_merge_in_forward": merge}


def randomize_lora_b(layer: nn.Module, generator: torch.Generator, std: float = 0.1) -> None:
    """Give every ``B`` factor random non-zero values (``B = 0`` would hide the delta)."""
    with torch.no_grad():
        for module in lora_modules(layer).values():
            for b in module.lora_B.values():
                b.weight.copy_(torch.randn(b.weight.shape, generator=generator) * std)


def make_inputs(
    batch: int, tokens: int, text_tokens: int, d_model: int, device: torch.device, seed: int
) -> Inputs:
    """Keyword arguments of ``TransformerEncoderLayer.forward``, batch-first as in SAM3.

    ``tgt``: image tokens (requires grad), ``query_pos``: their positional encoding,
    ``memory``: text tokens (requires grad), ``memory_key_padding_mask``: the second
    half of the text tokens is padding (a short prompt); no self-attention mask, as in
    ``Sam3Image._run_encoder``.
    """
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, text_tokens, dtype=torch.bool)
    mask[:, max(1, math.ceil(text_tokens / 2)):] = True
    return {
        "tgt": torch.randn(batch, tokens, d_model, generator=g).to(device).requires_grad_(),
        "memory": torch.randn(batch, text_tokens, d_model, generator=g).to(device).requires_grad_(),
        "query_pos": torch.randn(batch, tokens, d_model, generator=g).to(device),
        "memory_key_padding_mask": mask.to(device),
    }
