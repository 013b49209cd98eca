"""Recompute SAM3's decoder box-relative position bias in backward instead of keeping it.

For each of its six layers, SAM3's ``TransformerDecoder`` builds a cross-attention bias
:math:`B = \\mathrm{rpb}(\\hat b, (H, W))` of shape ``(batch·heads, queries, H·W)`` from
the layer's reference boxes :math:`\\hat b` (detached) and passes it to the
activation-checkpointed layer, which keeps its inputs until backward. At 1008 px
(:math:`H = W = 72`), 8 heads and 400 queries that is 0.031 GiB per prompt and layer
in bf16: 0.56 GiB for an image with three prompts, 1.9 GiB with ten, the largest single
item of a LoRA step's peak after the trunk.

When :math:`B` needs no gradient (the two small MLPs that make it are frozen, as under
every LoRA preset except ``all_linear``, which adapts them), keeping :math:`\\hat b` is enough: the checkpoint's input saver
(through ``torch.autograd.graph.saved_tensors_hooks``) stores the boxes, the feature
size and the autocast state instead of :math:`B`, and backward recomputes :math:`B` with
the same function from the same inputs under the same autocast state, hence the same
tensor, bit for bit (``tests/trainer/test_rpb_recompute.py``). The cost is one extra
evaluation of the two MLPs per layer in backward. A bias that requires grad (its MLPs in
``modules_to_save``, or full fine-tuning) is kept as stock keeps it.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from sam3.model.decoder import TransformerDecoder
from torch import nn

__all__ = ["RpbRecomputingDecoder", "recompute_box_rpb"]

log = logging.getLogger(__name__)


class _BiasRecipe:
    """What a bias is recomputed from: the decoder, its inputs, the autocast state and
    the shape of the view the layer received."""

    __slots__ = ("decoder", "boxes", "version", "feat_size", "autocast", "shape")

    def __init__(self, decoder: "RpbRecomputingDecoder", boxes: torch.Tensor, feat_size: Any,
                 shape: torch.Size) -> None:
        dev = boxes.device.type
        self.decoder, self.boxes, self.feat_size, self.shape = decoder, boxes, feat_size, shape
        self.version = boxes._version
        self.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))

    def bias(self) -> torch.Tensor:
        if self.boxes._version != self.version:  # what autograd's own check would refuse
            raise RuntimeError("the decoder's reference boxes were modified in place after the "
                               "forward; the box-RPB bias cannot be recomputed from them")
        dev, enabled, dtype = self.autocast
        with torch.no_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
            return TransformerDecoder._get_rpb_matrix(self.decoder, self.boxes, self.feat_size).view(self.shape)


def _unpack(saved: Any) -> torch.Tensor:
    return saved.bias() if isinstance(saved, _BiasRecipe) else saved


class RpbRecomputingDecoder(TransformerDecoder):
    """SAM3's ``TransformerDecoder`` whose box-RPB biases are recomputed in backward (module
    docstring). Obtained by class swap (:func:`recompute_box_rpb`): parameters, buffers
    and the forward's results are stock's."""

    _rpb_made: Optional[dict[int, tuple[torch.Tensor, tuple]]] = None

    def _get_rpb_matrix(self, reference_boxes: torch.Tensor, feat_size: Any) -> torch.Tensor:
        bias = super()._get_rpb_matrix(reference_boxes, feat_size)
        if self._rpb_made is not None and not bias.requires_grad and not reference_boxes.requires_grad:
            self._rpb_made[bias.data_ptr()] = (bias, (reference_boxes, feat_size))
        return bias

    def _pack(self, t: torch.Tensor) -> Any:
        # every tensor the forward saves outside the checkpointed layers comes here; only
        # a bias this forward made (alive in _rpb_made, so its address is not reused) is
        # replaced by its recipe
        if not self._rpb_made or type(t) is not torch.Tensor:  # e.g. an NF4 weight: never a bias
            return t
        made = self._rpb_made.get(t.data_ptr())
        if made is None or t.dtype != made[0].dtype or t.numel() != made[0].numel():
            return t
        boxes, feat_size = made[1]
        return _BiasRecipe(self, boxes, feat_size, t.shape)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        if not (torch.is_grad_enabled() and self.training) or torch.compiler.is_compiling():
            return super().forward(*args, **kwargs)
        self._rpb_made = {}
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
                return super().forward(*args, **kwargs)
        finally:
            self._rpb_made = None


def recompute_box_rpb(model: nn.Module) -> int:
    """Swap every stock ``TransformerDecoder`` with a box RPB in ``model`` to
    :class:`RpbRecomputingDecoder`; returns how many. Subclasses (their own forward) are
    left as they are."""
    n = 0
    for m in model.modules():
        if type(m) is TransformerDecoder and m.boxRPB != "none":
            m.__class__ = RpbRecomputingDecoder
            n += 1
    if n:
        log.info("Decoder box-RPB biases recomputed in backward (%d decoder%s)", n, "s" * (n > 1))
    return n
