"""build_lora_sam3 on a tiny SAM3: identity at init, disabled == base, and training
through SAM3's own loss changes only the adapters."""

import pytest
import torch
from omegaconf import OmegaConf
from sam3.train.optim.optimizer import construct_optimizer

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.testing import single_process_group
from sam3_lora_plugin.lora.factors import LoRAAdapterMixin
from sam3_lora_plugin.lora.inject import set_adapters_enabled
from sam3_lora_plugin.lora.inject import get_lora_report
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3
from sam3_lora_plugin.testing import flatten_outputs, make_batch, make_loss

ALL = {
    "components": ["vision_trunk", "text_encoder", "fusion_encoder", "decoder",
                   "geometry_encoder", "segmentation_head", "scoring"],
    "roles": ["q", "k", "v", "out", "mlp", "head"],
    "modules_to_save": [],  # plain LoRA: the heads get adapters here
}


pytestmark = pytest.mark.usefixtures("sam3_cpu_patches", "mha_fastpath_off")


def _assert_outputs_equal(a, b):
    ta, tb = dict(flatten_outputs(a)), dict(flatten_outputs(b))
    assert ta.keys() == tb.keys() and len(ta) > 5
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def _frozen_base():
    # The reference base is frozen like the adapted model's base: SAM3's fusion encoder
    # output depends on parameters' requires_grad in the last bits (~1e-6 on CPU), even
    # under no_grad, so an unfrozen base is not the same computation.
    return build_sam3_arch("tiny", eval_mode=True).requires_grad_(False)


def test_identity_at_init(tiny_val_batch):
    """With B = 0 the adapted model's outputs equal the base model's exactly.

    Compared with nn.MultiheadAttention's fused inference fast path off: it is a
    different kernel from the training path that the LoRA layer follows.
    """
    base = _frozen_base()
    lora = build_lora_sam3(build_sam3_arch("tiny", eval_mode=True), ALL).eval()
    with torch.no_grad():
        _assert_outputs_equal(base(tiny_val_batch), lora(tiny_val_batch))


def test_disabled_adapters_equal_base(tiny_val_batch):
    """With non-zero adapters the output changes; disabling them restores the base output."""
    base = _frozen_base()
    lora = build_lora_sam3(build_sam3_arch("tiny", eval_mode=True), ALL).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.05)
        ref = dict(flatten_outputs(base(tiny_val_batch)))
        changed = dict(flatten_outputs(lora(tiny_val_batch)))
        assert any(not torch.equal(changed[k], ref[k]) for k in ref)
        set_adapters_enabled(lora, False)
        _assert_outputs_equal(base(tiny_val_batch), lora(tiny_val_batch))


def test_report_counts_parameters():
    model = build_lora_sam3(build_sam3_arch("tiny"), {"rank": 4})
    report = get_lora_report(model)
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert "trainable" in report.format()


@pytest.fixture
def process_group():
    with single_process_group("gloo"):
        yield


def test_training_changes_only_adapters(tmp_path, process_group):
    """Three AdamW steps on SAM3's loss (boxes, CE, presence, masks) through SAM3's
    construct_optimizer: adapters move, every frozen tensor stays bit-identical."""
    model = build_lora_sam3(build_sam3_arch("tiny"), ALL)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = construct_optimizer(
        model,
        OmegaConf.create({"_target_": "torch.optim.AdamW"}),
        OmegaConf.create({"lr": [{"scheduler": {
            "_target_": "fvcore.common.param_scheduler.ConstantParamScheduler", "value": 1e-2}}]}),
        OmegaConf.create([{"_target_": "sam3_lora_plugin.trainer.param_groups.lora_param_groups",
                           "_partial_": True}]),
    )
    opt.step_schedulers(0.0, 0)
    loss_fn = make_loss()
    batch = make_batch(tmp_path, training=True)["x"]
    for _ in range(3):
        out = model(batch)
        targets = [model.back_convert(t) for t in batch.find_targets]
        loss = loss_fn(out, targets)["core_loss"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is None) == (not p.requires_grad), n
        opt.optimizer.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            continue
        assert torch.equal(p, frozen[n]), n
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, lora0[n])]
    assert len(moved) > 0.9 * len(lora0)


def _adapter_grads(model, batch, loss_fn, seed=0):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(batch)
    targets = [model.back_convert(t) for t in batch.find_targets]
    loss = loss_fn(out, targets)["core_loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.requires_grad}


def test_activation_checkpointing_gives_the_same_adapter_gradients(
        tmp_path, process_group, monkeypatch):
    """SAM3 checkpoints activations of its encoder, decoder, geometry encoder and mask
    head in training (and asserts it is on); recomputing through the LoRA layers gives
    the gradients of a run where the checkpoint call runs the module directly."""
    from sam3.model import act_ckpt_utils

    model = build_lora_sam3(build_sam3_arch("tiny"), ALL).train()
    batch, loss_fn = make_batch(tmp_path, training=True)["x"], make_loss()
    calls = []
    real = act_ckpt_utils.checkpoint.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(act_ckpt_utils.checkpoint, "checkpoint", counting)
    loss_ckpt, grads_ckpt = _adapter_grads(model, batch, loss_fn)
    # Checkpointed segments do contain adapted layers.
    assert any(isinstance(m, LoRAAdapterMixin) for fn in calls
               if isinstance(fn, torch.nn.Module) for m in fn.modules())
    monkeypatch.setattr(act_ckpt_utils.checkpoint, "checkpoint",
                        lambda fn, *a, use_reentrant=False, **k: fn(*a, **k))
    loss_plain, grads_plain = _adapter_grads(model, batch, loss_fn)
    assert torch.equal(loss_ckpt, loss_plain)
    assert grads_ckpt.keys() == grads_plain.keys()
    for n in grads_plain:
        torch.testing.assert_close(grads_ckpt[n], grads_plain[n], rtol=1e-5, atol=1e-7)


def test_autocast_bf16_training_step(tmp_path, process_group):
    """Under CPU autocast (bf16), as SAM3's AMP runs it: a finite loss close to fp32,
    and finite gradients on the adapters only."""
    model = build_lora_sam3(build_sam3_arch("tiny"), ALL).train()
    with torch.no_grad():  # non-zero B, so the adapters are on the gradient path of A too
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.02)
    batch, loss_fn = make_batch(tmp_path, training=True)["x"], make_loss()
    loss32, _ = _adapter_grads(model, batch, loss_fn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, grads16 = _adapter_grads(model, batch, loss_fn)
    assert torch.isfinite(loss16)
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.1)
    assert all(torch.isfinite(g).all() for g in grads16.values())
    assert sum(g.abs().sum() > 0 for g in grads16.values()) > 0.9 * len(grads16)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
