"""Tests for the shared LoRA factor logic (sam3_lora_plugin.lora.factors)."""

import math

import pytest
import torch
from torch import nn

from sam3_lora_plugin.lora import LORA_INITS, add_lora_to_linear, lora_scaling, validate_lora_args
from sam3_lora_plugin.lora.factors import DATA_DRIVEN_INITS, make_lora_dropout


def _layer(**kw):
    torch.manual_seed(0)
    base = nn.Linear(6, 9)
    kw.setdefault("rank", 2)
    kw.setdefault("alpha", 4.0)
    return add_lora_to_linear(base, **kw)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(rank=0), "rank=0"),
        (dict(rank=-3), "rank=-3"),
        (dict(rank=1.5), "rank=1.5"),
        (dict(rank=True), "rank=True"),
        (dict(alpha=0), "alpha=0"),
        (dict(alpha=-1.0), "alpha=-1.0"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(dropout=-0.1), "dropout=-0.1"),
        (dict(init="xavier"), "'xavier'"),
    ],
)
def test_validate_rejects_bad_values(kwargs, needle):
    args = dict(rank=4, alpha=8.0, dropout=0.0, init="kaiming")
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        validate_lora_args(**args)
    assert needle in str(err.value)
    if "init" in kwargs:
        assert "kaiming" in str(err.value) and "gaussian" in str(err.value)


def test_scaling():
    assert lora_scaling(8, 16) == 2.0
    assert lora_scaling(16, 8, use_rslora=True) == pytest.approx(2.0)
    assert _layer(rank=4, alpha=2.0).scaling == 0.5
    assert _layer(rank=4, alpha=2.0, use_rslora=True).scaling == 1.0


@pytest.mark.parametrize("init", [i for i in LORA_INITS if i not in DATA_DRIVEN_INITS])
def test_init_and_factor_properties(init):
    torch.manual_seed(0)
    layer = add_lora_to_linear(nn.Linear(2048, 8), rank=4, alpha=1.0, init=init)
    a, b = layer.lora_A["all"].weight, layer.lora_B["all"].weight
    assert a.shape == (4, 2048) and b.shape == (8, 4)
    assert a.requires_grad and b.requires_grad
    assert torch.count_nonzero(b) == 0
    if init == "kaiming":
        bound = 1 / math.sqrt(2048)  # kaiming_uniform_(a=sqrt(5)) == nn.Linear init
        assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
    else:
        assert a.std().item() == pytest.approx(1 / 4, rel=0.05)


@pytest.mark.parametrize("dtype, factor_dtype", [(torch.float64, torch.float64),
                                                  (torch.float32, torch.float32),
                                                  (torch.bfloat16, torch.float32),
                                                  (torch.float16, torch.float32)])
def test_factors_are_fp32_over_a_low_precision_base(dtype, factor_dtype):
    layer = add_lora_to_linear(nn.Linear(4, 4, dtype=dtype), rank=2, alpha=1.0)
    for p in layer.lora_parameters():
        assert p.dtype == factor_dtype and p.device == layer.weight.device
    assert layer.weight.dtype == dtype


def _small_adamw_step(layer, x):
    """One AdamW step at lr 1e-4 from B = 1: the update (~1e-4) is below half a bf16 ulp
    of 1.0 (2^-8), so a bf16 factor would not move."""
    with torch.no_grad():
        for b in layer.lora_B.values():
            b.weight.fill_(1.0)
    before = [p.detach().clone() for p in layer.lora_parameters()]
    opt = torch.optim.AdamW(layer.lora_parameters(), lr=1e-4, weight_decay=0.0)
    out = layer(x, x, x, need_weights=False) if isinstance(layer, nn.MultiheadAttention) else layer(x)
    (out[0] if isinstance(out, tuple) else out).float().square().sum().backward()
    opt.step()
    return before, list(layer.lora_parameters())


def test_small_update_over_bf16_linear_base_is_not_lost():
    torch.manual_seed(0)
    layer = add_lora_to_linear(nn.Linear(8, 6, dtype=torch.bfloat16), rank=2, alpha=2.0)
    before, after = _small_adamw_step(layer, torch.randn(5, 8, dtype=torch.bfloat16))
    for b, a in zip(before, after):
        assert a.dtype == torch.float32 and not torch.equal(a, b)
    assert layer.lora_B["all"].weight.grad.dtype == torch.float32
    # The delta moved by ~lr: a bf16 B (old behaviour) would still read exactly 1.0.
    assert (1.0 - layer.lora_B["all"].weight).abs().max().item() == pytest.approx(1e-4, rel=0.1)


def test_small_update_over_bf16_mha_base_is_not_lost_under_autocast():
    from sam3_lora_plugin.lora import add_lora_to_mha

    torch.manual_seed(0)
    mha = add_lora_to_mha(nn.MultiheadAttention(8, 2, dtype=torch.bfloat16), rank=2, alpha=2.0)
    x = torch.randn(4, 1, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before, after = _small_adamw_step(mha, x)
    assert all(a.dtype == torch.float32 and not torch.equal(a, b) for a, b in zip(before, after))


def test_base_requires_grad_untouched():
    base = nn.Linear(4, 4)
    base.weight.requires_grad_(False)
    add_lora_to_linear(base, rank=2, alpha=1.0)
    assert not base.weight.requires_grad and base.bias.requires_grad


def test_dropout_module():
    assert isinstance(make_lora_dropout(0.0), nn.Identity)
    assert isinstance(_layer().lora_dropout, nn.Identity)
    layer = _layer(dropout=0.25)
    assert isinstance(layer.lora_dropout, nn.Dropout) and layer.lora_dropout.p == 0.25


def test_lora_parameters_and_delta_weight():
    layer = _layer(slices={"q": (0, 3), "v": (6, 9)})
    params = list(layer.lora_parameters())
    expected = [layer.lora_A["q"].weight, layer.lora_A["v"].weight,
                layer.lora_B["q"].weight, layer.lora_B["v"].weight]
    assert [id(p) for p in params] == [id(p) for p in expected]
    nn.init.normal_(layer.lora_B["v"].weight)
    delta = layer.delta_weight("v")
    ref = layer.scaling * layer.lora_B["v"].weight @ layer.lora_A["v"].weight
    assert delta.shape == (3, 6)
    torch.testing.assert_close(delta, ref)
    with pytest.raises(KeyError, match="'k'"):
        layer.delta_weight("k")


def test_merge_is_idempotent_and_unmerge_noop():
    layer = _layer()
    nn.init.normal_(layer.lora_B["all"].weight)
    w0 = layer.weight.detach().clone()
    layer.unmerge()  # not merged -> no-op
    assert torch.equal(layer.weight, w0) and not layer.merged
    layer.merge()
    w1 = layer.weight.detach().clone()
    assert layer.merged and not torch.equal(w1, w0)
    layer.merge()  # second merge is a no-op
    assert torch.equal(layer.weight, w1)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.weight, w0, rtol=0, atol=1e-6)


def test_enable_disable_and_merge_interplay():
    layer = _layer()
    assert layer.adapters_enabled
    layer.adapters_enabled = False
    assert not layer.adapters_enabled
    with pytest.raises(RuntimeError, match="disabled"):
        layer.merge()
    layer.set_adapters_enabled(True)
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.set_adapters_enabled(False)
    assert layer.adapters_enabled
    layer.unmerge()
    layer.set_adapters_enabled(False)
    assert not layer.adapters_enabled


def test_reset_lora_parameters():
    layer = _layer()
    nn.init.normal_(layer.lora_B["all"].weight)
    layer.reset_lora_parameters()
    assert torch.count_nonzero(layer.lora_B["all"].weight) == 0


def test_modules_to_save_train_in_fp32_over_a_bf16_model():
    """A fully trained module of a bf16 model keeps a small AdamW update (issue: factors
    and modules_to_save train in fp32), and still takes/returns bf16 outside autocast."""
    from sam3_lora_plugin.lora.config import LoraConfig
    from sam3_lora_plugin.lora.inject import inject_lora

    torch.manual_seed(0)
    model = nn.ModuleDict({"blocks": nn.ModuleDict({"mlp": nn.ModuleDict({
        "fc1": nn.Linear(8, 8), "fc2": nn.Linear(8, 8)})}), "head": nn.Linear(8, 3)}).to(torch.bfloat16)
    inject_lora(model, LoraConfig(components=[], include=["blocks.mlp.fc1"], modules_to_save=["head"]))
    head = model["head"]
    assert head.weight.dtype == torch.float32 and head.weight.requires_grad
    with torch.no_grad():
        head.weight.fill_(1.0)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=0.0)
    out = head(torch.randn(4, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    opt.step()
    assert (1.0 - head.weight).abs().max().item() == pytest.approx(1e-4, rel=0.1)
