"""Helpers shared by the adapter tests."""

import torch

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

LORA = {"rank": 4, "alpha": 8, "components": ["vision_trunk", "decoder"],
        "component_overrides": {"decoder": {"rank": 2}}, "modules_to_save": ["dot_prod_scoring"]}


def make_model(seed=0, lora=None, **arch):
    return build_lora_sam3(build_sam3_arch("tiny", seed=seed, eval_mode=True, **arch),
                           dict(LORA, **(lora or {})))


def randomise_trainable(model, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model




# One text + box prompt: sam3 always runs its geometry encoder (a cls token even without
# boxes), transformers' Sam3Model skips it without boxes, so a box makes both paths equal.
PROMPT, BOX = "red circle", (0.4, 0.5, 0.3, 0.2)  # box: normalised cx, cy, w, h


def get_image(seed=0, size=112):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def run_sam3(model, image):
    """sam3 ``Sam3Image`` outputs for ``PROMPT`` + ``BOX``: (logits, xyxy boxes, masks,
    presence logit, semantic seg). Call with ``torch.Tensor.pin_memory`` patched on CPU.

    The presence logit is clamped to [-10, 10] here, as ``Sam3Model`` clamps it: sam3
    0.1.4 means to (``TransformerDecoder.forward`` calls ``.clamp(-10, 10)``) but drops
    the result, so beyond +-10 the two differ by design, not by weights."""
    from sam3.model.box_ops import box_cxcywh_to_xyxy
    from sam3.model.data_misc import FindStage

    find = FindStage(img_ids=torch.tensor([0]), text_ids=torch.tensor([0]), input_boxes=None,
                     input_boxes_mask=None, input_boxes_label=None, input_points=None,
                     input_points_mask=None)
    with torch.no_grad():
        backbone_out = model.backbone.forward_image(image)
        backbone_out.update(model.backbone.forward_text([PROMPT], device="cpu"))
        geo = model._get_dummy_prompt()
        geo.append_boxes(torch.tensor([[BOX]]), torch.tensor([[True]]))
        out = model.forward_grounding(backbone_out=backbone_out, find_input=find,
                                      geometric_prompt=geo, find_target=None)
    return (out["pred_logits"].squeeze(-1), box_cxcywh_to_xyxy(out["pred_boxes"]),
            out["pred_masks"], out["presence_logit_dec"].clamp(-10.0, 10.0), out["semantic_seg"])


def run_sam3model(model, image, tokenizer):
    """transformers ``Sam3Model`` outputs for the same prompt, in ``run_sam3``'s order;
    ``tokenizer`` is sam3's (``Sam3Image.backbone.language_backbone.tokenizer``)."""
    ids = tokenizer([PROMPT], context_length=32)
    with torch.no_grad():
        out = model(pixel_values=image, input_ids=ids, attention_mask=(ids != 0).long(),
                    input_boxes=torch.tensor([[BOX]]), input_boxes_labels=torch.tensor([[1]]))
    return out.pred_logits, out.pred_boxes, out.pred_masks, out.presence_logits, out.semantic_seg
