"""DoRA: parity with PEFT's DoRA (float64, same factors and magnitude: same output, same
gradients), per-slice qkv and attention, merge/unmerge, resume, export and merge into a
stock checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sam3_lora_plugin.lora import add_lora_to_linear, add_lora_to_mha

peft = pytest.importorskip("peft")

D_IN, D_OUT, RANK, ALPHA = 12, 10, 4, 8.0


class _One(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Non-zero B and a magnitude away from the row norms, so every term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in module.lora_A:
            for w in (module.lora_A[name].weight, module.lora_B[name].weight):
                w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.3)
            m = module.lora_magnitude[name]
            m.mul_(1 + 0.2 * torch.rand(m.shape, generator=g, dtype=m.dtype))


def _peft_dora(lin: nn.Linear, ours: nn.Module, name: str = "all") -> nn.Module:
    """PEFT's DoRA on a copy of ``lin`` with our factors and magnitude."""
    model = peft.get_peft_model(_One(copy.deepcopy(lin)), peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=["lin"], use_dora=True))
    layer = model.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A[name].weight)
        layer.lora_B["default"].weight.copy_(ours.lora_B[name].weight)
        layer.lora_magnitude_vector["default"].weight.copy_(ours.lora_magnitude[name])
    return model


def test_linear_matches_peft_dora_output_and_gradients_float64():
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT).double()
    ours = add_lora_to_linear(copy.deepcopy(base), rank=RANK, alpha=ALPHA, use_dora=True)
    torch.testing.assert_close(ours.lora_magnitude["all"], base.weight.norm(dim=1))
    _randomize(ours)
    theirs = _peft_dora(base, ours)
    layer = theirs.base_model.model.lin
    x = torch.randn(5, 3, D_IN, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = ours(x), theirs(x2)
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    y2.backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)
    pairs = [(ours.lora_A["all"].weight, layer.lora_A["default"].weight),
             (ours.lora_B["all"].weight, layer.lora_B["default"].weight),
             (ours.lora_magnitude["all"], layer.lora_magnitude_vector["default"].weight)]
    for mine, peft_param in pairs:
        assert mine.grad is not None and mine.grad.abs().sum() > 0
        torch.testing.assert_close(mine.grad, peft_param.grad, rtol=1e-12, atol=1e-12)


def test_dora_starts_as_the_base():
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT).double()
    ours = add_lora_to_linear(copy.deepcopy(base), rank=RANK, alpha=ALPHA, use_dora=True)
    x = torch.randn(4, D_IN, dtype=torch.float64)
    torch.testing.assert_close(ours(x), base(x), rtol=1e-14, atol=1e-14)


def test_fused_qkv_slices_equal_peft_dora_on_separate_linears():
    """DoRA normalises per output row, so q and v adapters on a fused qkv Linear equal
    PEFT's DoRA on separate q and v Linears; k's rows stay the base's."""
    torch.manual_seed(1)
    d = 8
    qkv = nn.Linear(d, 3 * d).double()
    ours = add_lora_to_linear(copy.deepcopy(qkv), rank=RANK, alpha=ALPHA, use_dora=True,
                              slices={"q": (0, d), "v": (2 * d, 3 * d)})
    _randomize(ours)
    x = torch.randn(6, d, dtype=torch.float64)
    out = ours(x)
    for name, (lo, hi) in (("q", (0, d)), ("v", (2 * d, 3 * d))):
        part = nn.Linear(d, d).double()
        with torch.no_grad():
            part.weight.copy_(qkv.weight[lo:hi])
            part.bias.copy_(qkv.bias[lo:hi])
        torch.testing.assert_close(out[:, lo:hi], _peft_dora(part, ours, name)(x),
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[:, d:2 * d], qkv(x)[:, d:2 * d], rtol=0, atol=0)


def _mha_pair(seed: int = 2):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    ours = add_lora_to_mha(copy.deepcopy(mha), rank=RANK, alpha=ALPHA, use_dora=True).eval()
    _randomize(ours, seed)
    return mha, ours


def test_mha_dora_equals_attention_with_dora_weights():
    """DoRA on nn.MultiheadAttention (q, k, v rows of in_proj_weight, out_proj) is exact:
    it equals a stock MHA whose weights are W' = m/||W + sBA|| (W + sBA) per row."""
    from sam3_lora_plugin.lora.dora import dora_merged_rows

    mha, ours = _mha_pair()
    ref = copy.deepcopy(mha)
    with torch.no_grad():
        for name in ("q", "k", "v"):
            lo, hi = ours.lora_slices[name]
            ref.in_proj_weight[lo:hi] = dora_merged_rows(
                mha.in_proj_weight[lo:hi], ours.lora_A[name].weight, ours.lora_B[name].weight,
                ours.lora_magnitude[name], ours.scaling)
        ref.out_proj.weight.copy_(dora_merged_rows(
            mha.out_proj.weight, ours.lora_A["out"].weight, ours.lora_B["out"].weight,
            ours.lora_magnitude["out"], ours.scaling))
    q, kv = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 7, 8, dtype=torch.float64)
    for args in ((q, q, q), (q, kv, kv)):
        torch.testing.assert_close(ours(*args)[0], ref(*args)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "qkv", "mha"])
def test_merge_unmerge_round_trip(kind):
    """Merged output == unmerged output; unmerge restores the base weights."""
    if kind == "mha":
        _, layer = _mha_pair()
        x = (torch.randn(2, 5, 8, dtype=torch.float64),) * 3
        run = lambda: layer(*x)[0]  # noqa: E731
    else:
        torch.manual_seed(3)
        layer = nn.Linear(8, 24 if kind == "qkv" else D_OUT).double()
        slices = {"q": (0, 8), "k": (8, 16)} if kind == "qkv" else None
        layer = add_lora_to_linear(layer, rank=RANK, alpha=ALPHA, use_dora=True, slices=slices)
        _randomize(layer)
        x = torch.randn(4, 8, dtype=torch.float64)
        run = lambda: layer(x)  # noqa: E731
    before = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    unmerged = run()
    layer.merge()
    torch.testing.assert_close(run(), unmerged, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=1e-13, atol=1e-13, msg=k)
    torch.testing.assert_close(run(), unmerged, rtol=1e-12, atol=1e-12)


def test_reset_restores_the_base_in_place():
    torch.manual_seed(4)
    base = nn.Linear(D_IN, D_OUT).double()
    layer = add_lora_to_linear(copy.deepcopy(base), rank=RANK, alpha=ALPHA, use_dora=True)
    magnitude = layer.lora_magnitude["all"]
    _randomize(layer)
    layer.reset_lora_parameters()
    assert layer.lora_magnitude["all"] is magnitude  # an optimizer's reference stays valid
    x = torch.randn(3, D_IN, dtype=torch.float64)
    torch.testing.assert_close(layer(x), base(x), rtol=1e-14, atol=1e-14)
