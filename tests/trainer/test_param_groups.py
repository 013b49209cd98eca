"""lora_param_groups inside SAM3's own construct_optimizer (and its validator)."""

import pytest
import torch
from omegaconf import OmegaConf
from sam3.train.optim.optimizer import construct_optimizer

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.lora.config import LoraConfig
from sam3_lora_plugin.lora.inject import inject_lora

OPTIONS = OmegaConf.create({
    "lr": [
        {"scheduler": {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler",
                       "value": 1e-3}},
        {"scheduler": {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler",
                       "value": 1e-4},
         "param_names": ["backbone.vision_backbone.*"]},
    ],
    "weight_decay": [
        {"scheduler": {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler",
                       "value": 0.1}},
    ],
})
MODIFIER = OmegaConf.create([{"_target_": "sam3_lora_plugin.trainer.param_groups.lora_param_groups",
                              "_partial_": True}])
ADAMW = OmegaConf.create({"_target_": "torch.optim.AdamW"})


@pytest.fixture
def model():
    m = build_sam3_arch("tiny")
    inject_lora(m, LoraConfig(components=["vision_trunk", "decoder"]))
    return m


def _groups_by_param(optim):
    out = {}
    for i, group in enumerate(optim.optimizer.param_groups):
        for p in group["params"]:
            out[p] = i
    return out


def test_validator_passes_and_groups_split_trainable_from_frozen(model):
    """Every parameter is in exactly one group (SAM3 validates this); no group mixes
    trainable and frozen parameters."""
    optim = construct_optimizer(model, ADAMW, OPTIONS, MODIFIER)
    groups = _groups_by_param(optim)
    assert set(groups) == set(model.parameters())
    for group in optim.optimizer.param_groups:
        flags = {p.requires_grad for p in group["params"]}
        assert len(flags) == 1


def test_schedulers_apply_to_trainable_only(model):
    """User lr schedulers keep their patterns for trainable params; frozen ones get lr 0."""
    optim = construct_optimizer(model, ADAMW, OPTIONS, MODIFIER)
    optim.step_schedulers(0.0, 0)
    names = {p: n for n, p in model.named_parameters()}
    for group in optim.optimizer.param_groups:
        p = group["params"][0]
        if not p.requires_grad:
            assert group["lr"] == 0.0 and group["weight_decay"] == 0.0
        elif names[p].startswith("backbone.vision_backbone."):
            assert group["lr"] == pytest.approx(1e-4)
        else:
            assert group["lr"] == pytest.approx(1e-3)


def test_no_optimizer_state_for_frozen_params(model):
    """After a step, AdamW holds state for exactly the trainable parameters, and frozen
    parameters are bit-identical."""
    optim = construct_optimizer(model, ADAMW, OPTIONS, MODIFIER)
    optim.step_schedulers(0.0, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    optim.optimizer.step()
    trainable = {p for p in model.parameters() if p.requires_grad}
    assert set(optim.optimizer.state) == trainable
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n


def test_constant_lr_override(model):
    modifier = OmegaConf.create([{"_target_": "sam3_lora_plugin.trainer.param_groups.lora_param_groups",
                                  "_partial_": True, "lr": 5e-3}])
    optim = construct_optimizer(model, ADAMW, OPTIONS, modifier)
    optim.step_schedulers(0.0, 0)
    lrs = {g["lr"] for g in optim.optimizer.param_groups if g["params"][0].requires_grad}
    assert lrs == {5e-3}


def test_no_trainable_params_is_a_clear_error():
    m = build_sam3_arch("tiny").requires_grad_(False)
    with pytest.raises(Exception, match="no trainable parameter"):
        construct_optimizer(m, ADAMW, OPTIONS, MODIFIER)
