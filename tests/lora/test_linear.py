"""Tests for LoRALinear / add_lora_to_linear."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from sam3_lora_plugin.lora import LoRALinear, add_lora_to_linear

D = 5  # qkv embed dim -> fused output 3 * D
QKV = {"q": (0, D), "k": (D, 2 * D), "v": (2 * D, 3 * D)}
SELECTIONS = [("q",), ("v",), ("q", "v"), ("q", "k", "v")]


def _make(slices=None, *, randomise=True, seed=0, **kw):
    """Return (stock copy, converted layer) with random (non-zero) factors."""
    torch.manual_seed(seed)
    base = nn.Linear(D, 3 * D)
    stock = copy.deepcopy(base)
    kw.setdefault("rank", 2)
    kw.setdefault("alpha", 3.0)
    layer = add_lora_to_linear(base, slices=slices, **kw)
    if randomise:
        with torch.no_grad():
            for p in layer.lora_parameters():
                p.normal_(0, 0.5)
    return stock, layer


def _reference_weight(layer, stock):
    """W + s * B @ A, written out by hand, rows placed per slice."""
    w = stock.weight.detach().clone()
    s = layer.lora_alpha / layer.rank
    for name, (start, end) in layer.lora_slices.items():
        w[start:end] += s * layer.lora_B[name].weight.detach() @ layer.lora_A[name].weight.detach()
    return w


def _slices(sel):
    return None if sel is None else {n: QKV[n] for n in sel}


def test_in_place_and_class():
    base = nn.Linear(3, 4)
    out = add_lora_to_linear(base, rank=1, alpha=1.0)
    assert out is base and type(base) is LoRALinear
    assert isinstance(base, nn.Linear)


def test_subclass_keeps_isinstance_and_class_cached():
    cls = nn.modules.linear.NonDynamicallyQuantizableLinear
    a = add_lora_to_linear(cls(3, 4), rank=1, alpha=1.0)
    b = add_lora_to_linear(cls(3, 4), rank=1, alpha=1.0)
    assert isinstance(a, cls) and isinstance(a, LoRALinear)
    assert type(a) is type(b) and type(a).__name__ == "LoRANonDynamicallyQuantizableLinear"
    x = torch.randn(2, 3)
    torch.testing.assert_close(a(x), F.linear(x, a.weight, a.bias))


def test_constructor():
    layer = LoRALinear(4, 6, rank=2, alpha=2.0, slices={"a": (0, 2)})
    assert layer(torch.randn(3, 4)).shape == (3, 6)
    assert list(layer.lora_A) == ["a"]


@pytest.mark.parametrize("sel", [None] + SELECTIONS)
def test_identity_at_init(sel):
    stock, layer = _make(_slices(sel), randomise=False)
    x = torch.randn(2, 3, 4, D)
    assert torch.equal(layer(x), stock(x))


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("sel", [None] + SELECTIONS)
def test_matches_hand_written_reference(sel, use_rslora, init):
    stock, layer = _make(_slices(sel), use_rslora=use_rslora, init=init)
    s = layer.lora_alpha / (layer.rank ** 0.5 if use_rslora else layer.rank)
    assert layer.scaling == pytest.approx(s)
    w_ref = stock.weight.detach().clone()
    for name, (a, b) in layer.lora_slices.items():
        w_ref[a:b] += s * layer.lora_B[name].weight.detach() @ layer.lora_A[name].weight.detach()
    x = torch.randn(2, 3, D)
    torch.testing.assert_close(layer(x), F.linear(x, w_ref, stock.bias))
    # 1-D input (no leading dims) also works.
    torch.testing.assert_close(layer(x[0, 0]), F.linear(x[0, 0], w_ref, stock.bias))


@pytest.mark.parametrize("sel", SELECTIONS)
def test_delta_lands_only_in_selected_rows(sel):
    stock, layer = _make(_slices(sel))
    rows = torch.zeros(3 * D, dtype=torch.bool)
    for name in sel:
        rows[QKV[name][0]:QKV[name][1]] = True
    layer.merge()
    diff = layer.weight.detach() - stock.weight
    assert torch.count_nonzero(diff[~rows]) == 0
    assert (diff[rows].abs().sum(dim=1) > 0).all()
    assert torch.equal(layer.bias, stock.bias)
    # Output delta also confined to the selected columns.
    layer.unmerge()
    x = torch.randn(4, D)
    out_diff = layer(x) - stock(x)
    assert torch.count_nonzero(out_diff[:, ~rows]) == 0


@pytest.mark.parametrize("sel", [None, ("q", "v")])
def test_merge_unmerge_disable(sel):
    stock, layer = _make(_slices(sel))
    x = torch.randn(3, 2, D)
    unmerged = layer(x)
    layer.set_adapters_enabled(False)
    assert torch.equal(layer(x), stock(x))  # disabled == base, exactly
    layer.set_adapters_enabled(True)
    torch.testing.assert_close(layer(x), unmerged)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged)  # delta not added twice
    torch.testing.assert_close(layer.weight, _reference_weight(layer, stock))
    layer.unmerge()
    torch.testing.assert_close(layer.weight, stock.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged)


@pytest.mark.parametrize("sel", [None, ("q", "v"), ("q", "k", "v")])
def test_gradients_match_reference(sel):
    stock, layer = _make(_slices(sel))
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x = torch.randn(2, 3, D)
    target = torch.randn(2, 3, 3 * D)
    ((layer(x) - target) ** 2).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    for p in layer.lora_parameters():
        assert p.grad is not None

    # Reference: gradient of the merged weight, then chain rule into A and B.
    w_ref = _reference_weight(layer, stock).requires_grad_(True)
    ((F.linear(x, w_ref, stock.bias.detach()) - target) ** 2).sum().backward()
    s = layer.scaling
    for name, (a, b) in layer.lora_slices.items():
        g = w_ref.grad[a:b]
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
        torch.testing.assert_close(B.grad, s * g @ A.detach().T)
        torch.testing.assert_close(A.grad, s * B.detach().T @ g)


class _MatmulShapes(TorchDispatchMode):
    """Record output shapes of every matmul-like aten op."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}:
            self.shapes.append(tuple(out.shape))
        return out


def test_no_full_weight_product_or_gradient():
    stock, layer = _make({"q": QKV["q"], "v": QKV["v"]})
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x = torch.randn(2, 3, D)
    with _MatmulShapes() as rec:
        layer(x).pow(2).sum().backward()
    forbidden = {(3 * D, D), (D, D), (D, 3 * D)}
    assert rec.shapes and not forbidden & set(rec.shapes), rec.shapes
    assert layer.weight.grad is None


def test_dropout_train_and_eval():
    stock, layer = _make({"q": QKV["q"], "v": QKV["v"]}, dropout=0.5)
    x = torch.randn(4, D)
    layer.eval()
    w_ref = _reference_weight(layer, stock)
    torch.testing.assert_close(layer(x), F.linear(x, w_ref, stock.bias))
    layer.train()
    torch.manual_seed(123)
    out = layer(x)
    torch.manual_seed(123)
    xd = F.dropout(x, 0.5, training=True)  # one shared dropout draw per call
    ref = stock(x)
    for name, (a, b) in layer.lora_slices.items():
        ref[:, a:b] += layer.scaling * xd @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T
    torch.testing.assert_close(out, ref)


def test_state_dict_round_trip():
    stock, layer = _make({"q": QKV["q"], "v": QKV["v"]})
    sd = layer.state_dict()
    lora_keys = {"lora_A.q.weight", "lora_A.v.weight", "lora_B.q.weight", "lora_B.v.weight"}
    assert set(sd) == {"weight", "bias"} | lora_keys

    fresh = add_lora_to_linear(nn.Linear(D, 3 * D), rank=2, alpha=3.0, slices={"q": QKV["q"], "v": QKV["v"]})
    fresh.load_state_dict(sd)
    x = torch.randn(3, D)
    torch.testing.assert_close(fresh(x), layer(x))

    # A stock checkpoint loads into a converted layer; only LoRA keys missing.
    other = add_lora_to_linear(nn.Linear(D, 3 * D), rank=2, alpha=3.0, slices={"q": QKV["q"], "v": QKV["v"]})
    res = other.load_state_dict(stock.state_dict(), strict=False)
    assert set(res.missing_keys) == lora_keys and not res.unexpected_keys
    assert torch.equal(other(x), stock(x))


def test_autocast_bf16():
    stock, layer = _make({"q": QKV["q"], "v": QKV["v"]})
    x = torch.randn(4, D)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


def test_checkpoint_matches_plain():
    _, layer = _make(None, dropout=0.3)
    layer.train()
    x = torch.randn(3, D, requires_grad=True)
    torch.manual_seed(7)
    out = layer(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    torch.manual_seed(7)
    out_ck = checkpoint(layer, x, use_reentrant=False)
    out_ck.sum().backward()
    torch.testing.assert_close(out_ck, out)
    for g, p in zip(grads, list(layer.parameters()) + [x]):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize(
    "slices, needle",
    [
        ({"q": (0, 16)}, "out of range"),
        ({"q": (-1, 3)}, "out of range"),
        ({"q": (3, 3)}, "out of range"),
        ({"q": (0, 6), "k": (5, 10)}, "overlap"),
        ({"q": (0, 2.5)}, "pair of ints"),
        ({"q.x": (0, 2)}, "'q.x'"),
        ({}, "non-empty"),
    ],
)
def test_bad_slices(slices, needle):
    base = nn.Linear(D, 3 * D)
    with pytest.raises(ValueError, match=needle):
        add_lora_to_linear(base, rank=2, alpha=1.0, slices=slices)
    assert type(base) is nn.Linear and not hasattr(base, "lora_A")  # untouched


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(rank=0), "rank=0"),
        (dict(alpha=0.0), "alpha=0.0"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(init="orthogonal"), "'orthogonal'"),
    ],
)
def test_bad_args(kwargs, needle):
    args = dict(rank=2, alpha=1.0)
    args.update(kwargs)
    base = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=needle):
        add_lora_to_linear(base, **args)
    assert type(base) is nn.Linear


def test_bad_module_and_double_conversion():
    with pytest.raises(TypeError, match="Conv1d"):
        add_lora_to_linear(nn.Conv1d(2, 2, 1), rank=1, alpha=1.0)
    layer = add_lora_to_linear(nn.Linear(2, 2), rank=1, alpha=1.0)
    with pytest.raises(ValueError, match="already"):
        add_lora_to_linear(layer, rank=1, alpha=1.0)
