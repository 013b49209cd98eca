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


