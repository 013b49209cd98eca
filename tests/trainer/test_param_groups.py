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


# ----------------------------------------------------------------- LoRA+, modules_to_save,
# and SAM3's own layer decay

#: SAM3's official recipes: inverse-sqrt schedule, lower lr for the vision backbone.
SAM3_OPTIONS = OmegaConf.create({
    "lr": [
        {"scheduler": {"_target_": "sam3.train.optim.schedulers.InverseSquareRootParamScheduler",
                       "base_lr": 8e-5, "warmup_steps": 5, "cooldown_steps": 5,
                       "timescale": 10}},
        {"scheduler": {"_target_": "sam3.train.optim.schedulers.InverseSquareRootParamScheduler",
                       "base_lr": 2.5e-5, "warmup_steps": 5, "cooldown_steps": 5,
                       "timescale": 10},
         "param_names": ["backbone.vision_backbone.*"]},
    ],
    "weight_decay": [
        {"scheduler": {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler",
                       "value": 0.1}},
    ],
})
TRUNK = "backbone.vision_backbone.trunk"
LAYER_DECAY = {"_target_": "sam3.train.optim.optimizer.layer_decay_param_modifier",
               "_partial_": True, "layer_decay_value": 0.5, "apply_to": TRUNK}


def _ours(**kwargs):
    return {"_target_": "sam3_lora_plugin.lora_param_groups", "_partial_": True, **kwargs}


def _lr_by_name(model, optim, step=20, where=0.4):
    optim.step_schedulers(where, step)
    names = {p: n for n, p in model.named_parameters()}
    return {names[p]: g["lr"] for g in optim.optimizer.param_groups for p in g["params"]}, \
        {names[p]: g["weight_decay"] for g in optim.optimizer.param_groups for p in g["params"]}


def _sam3_lr(base_lr, step=20, where=0.4):
    from sam3.train.optim.schedulers import InverseSquareRootParamScheduler

    return InverseSquareRootParamScheduler(base_lr, 5, 5, 10)(step=step, where=where)


def test_loraplus_scales_b_through_a_real_sam3_scheduler_step(model):
    """B's lr = ratio x A's lr at a later step of SAM3's inverse-sqrt schedule, in both the
    default and the vision-backbone groups; A's lr is the user's schedule unchanged."""
    optim = construct_optimizer(model, ADAMW, SAM3_OPTIONS,
                                OmegaConf.create([_ours(loraplus_lr_ratio=16)]))
    lrs, _ = _lr_by_name(model, optim)
    a = [n for n in lrs if ".lora_A." in n]
    b = [n for n in lrs if ".lora_B." in n]
    assert a and b
    for n in a:
        base = 2.5e-5 if n.startswith("backbone.vision_backbone.") else 8e-5
        assert lrs[n] == pytest.approx(_sam3_lr(base))
        assert lrs[n.replace(".lora_A.", ".lora_B.")] == pytest.approx(16 * _sam3_lr(base))
    assert {lrs[n] for n, p in model.named_parameters() if not p.requires_grad} == {0.0}


def test_loraplus_ratio_is_checked(model):
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be a number > 0"):
        construct_optimizer(model, ADAMW, SAM3_OPTIONS,
                            OmegaConf.create([_ours(loraplus_lr_ratio=0)]))


def test_modules_to_save_get_their_own_lr_and_weight_decay():
    m = build_sam3_arch("tiny")
    inject_lora(m, LoraConfig(components=["decoder"], modules_to_save=["dot_prod_scoring"]))
    modifier = OmegaConf.create([_ours(modules_to_save_lr=3e-4, modules_to_save_weight_decay=0.0,
                                       loraplus_lr_ratio=4)])
    optim = construct_optimizer(m, ADAMW, SAM3_OPTIONS, modifier)
    lrs, wds = _lr_by_name(m, optim)
    saved = [n for n, p in m.named_parameters() if p.requires_grad and ".lora_" not in n]
    assert saved and all(n.startswith("dot_prod_scoring.") for n in saved)
    for n in saved:
        assert lrs[n] == 3e-4 and wds[n] == 0.0  # not scaled by the LoRA+ ratio either
    for n in lrs:
        if ".lora_A." in n:
            assert lrs[n] == pytest.approx(_sam3_lr(8e-5)) and wds[n] == pytest.approx(0.1)
            assert lrs[n.replace(".lora_A.", ".lora_B.")] == pytest.approx(4 * _sam3_lr(8e-5))


@pytest.mark.parametrize("order", ["layer_decay_first", "ours_first"])
def test_composes_with_sam3_layer_decay_in_either_order(model, order):
    """SAM3's own layer_decay_param_modifier and ours in one list: SAM3's validator passes
    (construct_optimizer runs it), every adapter of trunk block i gets block i's decayed lr
    (x the LoRA+ ratio for B), and so does every norm the default preset trains fully there;
    the trunk's ln_pre, which SAM3's ViT puts in layer 0 with the patch embedding, gets
    layer 0's; frozen parameters stay at 0."""
    from sam3.train.optim.optimizer import validate_param_group_params

    mods = [LAYER_DECAY, _ours(loraplus_lr_ratio=4)]
    if order == "ours_first":
        mods.reverse()
    optim = construct_optimizer(model, ADAMW, SAM3_OPTIONS, OmegaConf.create(mods))
    validate_param_group_params(optim.optimizer.param_groups, model)
    lrs, _ = _lr_by_name(model, optim)
    n_blocks = len(model.backbone.vision_backbone.trunk.blocks)
    num_layers = n_blocks + 1  # SAM3's modifier: decay ** (num_layers - (block + 1))
    checked = 0
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert lrs[n] == 0.0, n
            continue
        if n.startswith(TRUNK + ".blocks."):
            block = int(n[len(TRUNK + ".blocks."):].split(".")[0])
            scale = 0.5 ** (num_layers - (block + 1))
            base = 2.5e-5
        elif n.startswith(TRUNK + ".ln_pre."):
            scale, base = 0.5 ** num_layers, 2.5e-5
        else:
            scale, base = 1.0, (2.5e-5 if n.startswith("backbone.vision_backbone.") else 8e-5)
        ratio = 4 if ".lora_B." in n else 1
        assert lrs[n] == pytest.approx(ratio * scale * _sam3_lr(base)), n
        checked += n.startswith(TRUNK + ".blocks.")
    assert checked >= 2 * n_blocks
    assert lrs[TRUNK + ".ln_pre.weight"] > 0  # the default trains it fully: layer 0's lr checked
