"""NF4 base weights (sam3_lora_plugin.lora.nf4) under the LoRA layers: the products are
those of ``F.linear`` over the dequantized weights, bit for bit."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sam3_lora_plugin.lora import add_lora_to_linear, add_lora_to_mha
from sam3_lora_plugin.lora.factors import NF4_MERGE_REFUSED
from sam3_lora_plugin.lora.mha import FrozenNF4MultiheadAttention, use_frozen_attention_forward
from sam3_lora_plugin.lora.nf4 import (FrozenNF4Linear, dequantize_nf4, frozen_linear, is_nf4,
                                       nf4_scaler_block_size, require_torchao, to_nf4_weight,
                                       use_frozen_linear_forward)

tq = pytest.importorskip("torchao.quantization", reason="QLoRA tests need torchao (the qlora extra)")


def _freeze_base(*layers):
    """As inject_lora leaves them: only the factors train."""
    for layer in layers:
        for n, p in layer.named_parameters():
            p.requires_grad_(n.startswith("lora_"))


def _grads(fn, x):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(y.dtype))
    return y, x.grad


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("rows", [None, (64, 128)])
@pytest.mark.parametrize("shape", [(7, 128), (2, 5, 128)])
def test_frozen_linear_is_f_linear_over_the_dequantized_weight(autocast, rows, shape):
    torch.manual_seed(0)
    w, b = torch.randn(192, 128), torch.randn(192)
    q = to_nf4_weight(w)
    dense = dequantize_nf4(q)
    assert type(dense) is torch.Tensor and dense.dtype == torch.float32
    b_rows = b if rows is None else b[rows[0]:rows[1]]
    x = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, gx = _grads(lambda t: frozen_linear(t, q, b_rows, rows), x)
        ref_w = dense if rows is None else dense[rows[0]:rows[1]]
        y_ref, gx_ref = _grads(lambda t: F.linear(t, ref_w, b_rows), x)
    assert y.dtype == y_ref.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    assert q.grad is None and not q.requires_grad


def test_dequantized_values_are_nf4_levels_times_block_scalers():
    """Each block of 64 dequantized values is one scaler times 16 NormalFloat levels, and
    4-bit rounding stays within half the widest level gap of the block's absmax."""
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    dense = dequantize_nf4(to_nf4_weight(w)).view(-1, 64)
    levels = to_nf4_weight(w).nf4
    scale = dense.abs().max(dim=1, keepdim=True).values
    ratio = dense / scale
    assert torch.isclose(ratio[..., None], levels, atol=1e-6).any(-1).all()
    gap = (levels[1:] - levels[:-1]).max()
    absmax = w.view(-1, 64).abs().max(dim=1, keepdim=True).values
    assert ((dense - w.view(-1, 64)).abs() <= absmax * (gap / 2 + 0.02)).all()
    assert w.numel() / 2 < sum(getattr(to_nf4_weight(w), n).nbytes for n in
                               to_nf4_weight(w).__tensor_flatten__()[0]) < w.numel() * 0.53


def test_scaler_block_size_and_what_cannot_be_nf4():
    assert nf4_scaler_block_size(1024 * 1024) == 256
    assert nf4_scaler_block_size(32 * 32) == 16  # 16 blocks: finer scalers for small weights
    assert nf4_scaler_block_size(64 * 3) == 3
    assert nf4_scaler_block_size(100) is None and nf4_scaler_block_size(0) is None
    assert to_nf4_weight(torch.randn(1, 32)) is None  # 32 values: not one block of 64
    assert to_nf4_weight(torch.randn(128)) is None  # 1-D (a bias)


def test_lora_linear_over_nf4_equals_lora_over_dequantized_and_merge_refuses():
    torch.manual_seed(0)
    layer = add_lora_to_linear(nn.Linear(64, 192), rank=4, alpha=8, slices={"q": (0, 64), "v": (128, 192)})
    with torch.no_grad():
        for p in layer.lora_B.parameters():
            p.normal_()
    ref = add_lora_to_linear(nn.Linear(64, 192), rank=4, alpha=8, slices={"q": (0, 64), "v": (128, 192)})
    ref.load_state_dict(layer.state_dict())
    _freeze_base(layer, ref)
    layer.weight = to_nf4_weight(layer.weight)
    with torch.no_grad():
        ref.weight.copy_(dequantize_nf4(layer.weight))
    x = torch.randn(3, 6, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, gx = _grads(layer, x)
        y_ref, gx_ref = _grads(ref, x)
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    for n, p in layer.named_parameters():
        assert (p.grad is not None) == n.startswith("lora_"), n
        if p.grad is not None:
            assert torch.equal(p.grad, ref.get_parameter(n).grad), n
    with pytest.raises(RuntimeError, match="python -m sam3_lora_plugin.adapters merge sam3.pt adapter/ out.pt"):
        layer.merge()
    assert not layer.merged
    layer.set_adapters_enabled(False)
    ref.set_adapters_enabled(False)
    assert torch.equal(layer(x), ref(x))
    assert "sam3_lora_plugin.adapters merge" in NF4_MERGE_REFUSED


@pytest.mark.parametrize("mode", ["self", "kv_same", "separate"])
def test_lora_mha_over_nf4_equals_lora_over_dequantized(mode):
    torch.manual_seed(0)
    mha = add_lora_to_mha(nn.MultiheadAttention(64, 4, batch_first=True), rank=4, alpha=8,
                          targets=("q", "v", "out"))
    with torch.no_grad():
        for p in mha.lora_B.parameters():
            p.normal_()
    ref = add_lora_to_mha(nn.MultiheadAttention(64, 4, batch_first=True), rank=4, alpha=8,
                          targets=("q", "v", "out"))
    ref.load_state_dict(mha.state_dict())
    _freeze_base(mha, ref)
    mha.in_proj_weight = to_nf4_weight(mha.in_proj_weight)
    mha.out_proj.weight = to_nf4_weight(mha.out_proj.weight)
    with torch.no_grad():
        ref.in_proj_weight.copy_(dequantize_nf4(mha.in_proj_weight))
        ref.out_proj.weight.copy_(dequantize_nf4(mha.out_proj.weight))
    q, k = torch.randn(2, 5, 64), torch.randn(2, 7, 64)
    args = {"self": (q, q, q), "kv_same": (q, k, k), "separate": (q, k, torch.randn(2, 7, 64))}[mode]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mha(*args, need_weights=False)[0]
        out_ref = ref(*args, need_weights=False)[0]
    assert torch.equal(out, out_ref)
    out.float().sum().backward()
    out_ref.float().sum().backward()
    for n, p in mha.named_parameters():
        assert (p.grad is not None) == n.startswith("lora_"), n
        if p.grad is not None:
            assert torch.equal(p.grad, ref.get_parameter(n).grad), n
    mha.set_adapters_enabled(False)  # over NF4, our forward without the deltas (stock reads no NF4)
    ref.set_adapters_enabled(False)
    with torch.no_grad():
        torch.testing.assert_close(mha(*args)[0], ref(*args)[0], rtol=1e-5, atol=1e-6)


class _Wrapped(nn.MultiheadAttention):
    """A subclass with its own forward (as SAM3's attention wrappers): it must still run."""

    calls = 0

    def forward(self, *args, **kwargs):
        _Wrapped.calls += 1
        return super().forward(*args, **kwargs)


def _frozen_pair(cls, **kw):
    """A frozen attention layer swapped to the NF4 forward with NF4 projections, and stock
    ``nn.MultiheadAttention`` holding their dequantization."""
    torch.manual_seed(0)
    layer, ref = cls(64, 4, **kw), nn.MultiheadAttention(64, 4, **kw)
    ref.load_state_dict(layer.state_dict())
    layer.requires_grad_(False), ref.requires_grad_(False)
    assert use_frozen_attention_forward(layer) and isinstance(layer, (cls, FrozenNF4MultiheadAttention))
    layer.in_proj_weight = to_nf4_weight(layer.in_proj_weight)
    layer.out_proj.weight = to_nf4_weight(layer.out_proj.weight)
    with torch.no_grad():
        ref.in_proj_weight.copy_(dequantize_nf4(layer.in_proj_weight))
        ref.out_proj.weight.copy_(dequantize_nf4(layer.out_proj.weight))
    return layer, ref


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("cls", [nn.MultiheadAttention, _Wrapped], ids=["stock", "subclass"])
def test_frozen_attention_over_nf4_equals_stock_over_dequantized(cls, autocast):
    """The text encoder's case (self-attention, causal float mask, need_weights=False) and a
    cross-attention with a key padding mask: outputs and input gradients equal stock's."""
    layer, ref = _frozen_pair(cls, batch_first=True)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    pad = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    k = torch.randn(2, 7, 64)
    cases = [lambda x: (x, x, x, None, False, causal), lambda x: (x, k, k, pad, False, None),
             lambda x: (x, k, k, pad, True, None)]
    for case in cases:
        def run(module, x):
            q_, k_, v_, kpm, need, mask = case(x)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return module(q_, k_, v_, key_padding_mask=kpm, need_weights=need, attn_mask=mask)[0]

        x = torch.randn(2, 5, 64)
        (out, gx), (out_ref, gx_ref) = _grads(lambda t: run(layer, t), x), _grads(lambda t: run(ref, t), x)
        assert out.dtype == out_ref.dtype
        torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-6 if not autocast else 1e-2)
        torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-5 if not autocast else 2e-2)
    assert cls is not _Wrapped or _Wrapped.calls > 0
    assert not any(p.requires_grad for p in layer.parameters())


def test_frozen_attention_forward_is_refused_where_it_would_not_be_the_same():
    """LoRA layers, trainable projections and layouts the re-written forward does not cover
    keep their class."""
    lora = add_lora_to_mha(nn.MultiheadAttention(64, 4), rank=2, alpha=4)
    trainable = nn.MultiheadAttention(64, 4)
    bias_kv = nn.MultiheadAttention(64, 4, add_bias_kv=True).requires_grad_(False)
    kdim = nn.MultiheadAttention(64, 4, kdim=32).requires_grad_(False)
    for m in (lora, trainable, bias_kv, kdim, nn.Linear(4, 4)):
        before = type(m)
        assert not use_frozen_attention_forward(m) and type(m) is before
    plain = nn.MultiheadAttention(64, 4).requires_grad_(False)
    x = torch.randn(3, 2, 64)
    expected = plain(x, x, x)
    assert use_frozen_attention_forward(plain) and not is_nf4(plain.in_proj_weight)
    assert all(torch.equal(a, b) for a, b in zip(plain(x, x, x), expected))  # stock's forward


def test_plain_linear_gets_the_nf4_forward_and_subclasses_do_not():
    lin = nn.Linear(64, 64)
    ref = nn.Linear(64, 64)
    assert use_frozen_linear_forward(lin) and type(lin) is FrozenNF4Linear and isinstance(lin, nn.Linear)
    lin.weight = to_nf4_weight(lin.weight)
    lin.bias.requires_grad_(False)
    ref.load_state_dict({"weight": dequantize_nf4(lin.weight), "bias": lin.bias})
    x = torch.randn(4, 64)
    assert torch.equal(lin(x), ref(x))
    assert not use_frozen_linear_forward(nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4))
    assert is_nf4(lin.weight) and not is_nf4(ref.weight)


def test_missing_torchao_is_one_line_naming_the_install(monkeypatch):
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError) as info:
        require_torchao()
    assert "pip install 'sam3-lora-plugin[qlora]'" in str(info.value) and "\n" not in str(info.value)
