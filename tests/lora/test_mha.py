"""Tests for LoRAMultiheadAttention / add_lora_to_mha."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from sam3_lora_plugin.lora import LoRAMultiheadAttention, add_lora_to_mha

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from sam3.model.model_misc import MultiheadAttentionWrapper

E, H, N, L, S = 8, 2, 2, 3, 4
ROWS = {"q": (0, E), "k": (E, 2 * E), "v": (2 * E, 3 * E)}


def _make(cls=nn.MultiheadAttention, *, randomise=True, targets=("q", "k", "v", "out"),
          batch_first=False, attn_dropout=0.0, dtype=torch.float32, seed=0, **kw):
    """Return (stock deep copy, converted module)."""
    torch.manual_seed(seed)
    mha = cls(E, H, dropout=attn_dropout, batch_first=batch_first, dtype=dtype)
    with torch.no_grad():  # non-trivial biases
        mha.in_proj_bias.normal_(0, 0.1)
        mha.out_proj.bias.normal_(0, 0.1)
    stock = copy.deepcopy(mha)
    kw.setdefault("rank", 2)
    kw.setdefault("alpha", 3.0)
    lora = add_lora_to_mha(mha, targets=targets, **kw)
    if randomise:
        with torch.no_grad():
            for p in lora.lora_parameters():
                p.normal_(0, 0.5)
    return stock, lora


def _merged_reference(stock, lora):
    """Stock copy whose weights are W + s*B@A, computed by hand."""
    ref = copy.deepcopy(stock)
    s = lora.lora_alpha / lora.rank
    with torch.no_grad():
        for name in lora.lora_A:
            delta = s * lora.lora_B[name].weight @ lora.lora_A[name].weight
            if name == "out":
                ref.out_proj.weight += delta
            else:
                a, b = ROWS[name]
                ref.in_proj_weight[a:b] += delta
    return ref


def _inputs(mode, batch_first, unbatched=False, dtype=torch.float32):
    src = L if mode == "self" else S
    shape_q = (L, E) if unbatched else ((N, L, E) if batch_first else (L, N, E))
    shape_k = (src, E) if unbatched else ((N, src, E) if batch_first else (src, N, E))
    q = torch.randn(shape_q, dtype=dtype)
    if mode == "self":
        return (q, q, q), src
    k = torch.randn(shape_k, dtype=dtype)
    if mode == "kv_same":
        return (q, k, k), src
    return (q, k, torch.randn(shape_k, dtype=dtype)), src


def _masks(kind, src, n=N):
    """key_padding_mask / attn_mask; bool True = masked; no fully masked row."""
    kpm = attn = None
    if kind.startswith("kpm") or kind.startswith("both"):
        kpm = torch.rand(n, src) < 0.4
        kpm[:, 0] = False
    if kind.startswith("a2d") or kind.startswith("both"):
        attn = torch.rand(L, src) < 0.4
        attn[:, 0] = False
    if kind.startswith("a3d"):
        attn = torch.rand(n * H, L, src) < 0.4
        attn[..., 0] = False
    if kind.endswith("float"):
        to_float = lambda m: None if m is None else torch.randn(m.shape).masked_fill(m, float("-inf"))
        kpm, attn = to_float(kpm), to_float(attn)
    return kpm, attn


MASKS = ["none", "kpm_bool", "kpm_float", "a2d_bool", "a2d_float", "a3d_bool", "a3d_float",
         "both_bool", "both_float"]
WEIGHTS = [(False, True), (True, True), (True, False)]  # (need_weights, average_attn_weights)


def _call(m, inputs, kpm, attn, need_weights=True, average=True):
    return m(*inputs, key_padding_mask=kpm, need_weights=need_weights, attn_mask=attn,
             average_attn_weights=average)


def _assert_same(out, ref, **tol):
    torch.testing.assert_close(out[0], ref[0], **tol)
    if ref[1] is None:
        assert out[1] is None
    else:
        torch.testing.assert_close(out[1], ref[1], **tol)


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("need_weights, average", WEIGHTS)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", ["self", "kv_same", "distinct"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_parity_matrix(batch_first, mode, mask, need_weights, average):
    stock, lora = _make(batch_first=batch_first, randomise=False)
    inputs, src = _inputs(mode, batch_first)
    kpm, attn = _masks(mask, src)
    # Zero adapters (B = 0): identical to stock.
    _assert_same(_call(lora, inputs, kpm, attn, need_weights, average),
                 _call(stock, inputs, kpm, attn, need_weights, average))
    # Random adapters: identical to stock with merged weights W + s*B@A.
    with torch.no_grad():
        for p in lora.lora_parameters():
            p.normal_(0, 0.5)
    ref = _merged_reference(stock, lora)
    _assert_same(_call(lora, inputs, kpm, attn, need_weights, average),
                 _call(ref, inputs, kpm, attn, need_weights, average))


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mask", ["none", "kpm_bool", "a2d_bool"])
def test_eval_no_grad_matches_stock_fast_path(mask, need_weights):
    # Stock takes its native fused kernel here (eval, no_grad, batch_first, self-attn).
    stock, lora = _make(batch_first=True)
    ref = _merged_reference(stock, lora).eval()
    lora.eval()
    inputs, src = _inputs("self", True)
    kpm, attn = _masks(mask, src)
    with torch.no_grad():
        _assert_same(_call(lora, inputs, kpm, attn, need_weights),
                     _call(ref, inputs, kpm, attn, need_weights))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights, average", WEIGHTS)
@pytest.mark.parametrize("mask", ["none", "kpm_bool", "a2d_float"])
def test_unbatched(mask, need_weights, average, batch_first):
    stock, lora = _make(batch_first=batch_first)  # batch_first is ignored when unbatched
    inputs, src = _inputs("kv_same", False, unbatched=True)
    kpm, attn = _masks(mask, src)
    kpm = None if kpm is None else kpm[0]
    out = _call(lora, inputs, kpm, attn, need_weights, average)
    assert out[0].shape == (L, E)
    _assert_same(out, _call(_merged_reference(stock, lora), inputs, kpm, attn, need_weights, average))


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_row_like_stock(need_weights):
    stock, lora = _make(randomise=False)
    (x, _, _), _ = _inputs("self", False)
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[1] = True  # batch element 1 sees nothing
    out = lora(x, x, x, key_padding_mask=kpm, need_weights=need_weights)
    ref = stock(x, x, x, key_padding_mask=kpm, need_weights=need_weights)
    torch.testing.assert_close(out[0], ref[0], equal_nan=True)


@pytest.mark.parametrize("targets", [("q",), ("v",), ("q", "v"), ("q", "k", "v"), ("out",), ("k", "out")])
def test_targets_and_delta_rows(targets):
    stock, lora = _make(targets=targets)
    assert list(lora.lora_A) == [t for t in ("q", "k", "v", "out") if t in targets]
    (x, _, _), _ = _inputs("self", False)
    _assert_same(lora(x, x, x), _merged_reference(stock, lora)(x, x, x))
    lora.merge()
    rows = torch.zeros(3 * E, dtype=torch.bool)
    for t in targets:
        if t != "out":
            rows[ROWS[t][0]:ROWS[t][1]] = True
    diff = lora.in_proj_weight.detach() - stock.in_proj_weight
    assert torch.count_nonzero(diff[~rows]) == 0
    assert (diff[rows].abs().sum(dim=1) > 0).all()
    out_diff = lora.out_proj.weight.detach() - stock.out_proj.weight
    assert (torch.count_nonzero(out_diff) > 0) == ("out" in targets)
    torch.testing.assert_close(lora.delta_weight(targets[0]).shape, (E, E))


# --------------------------------------------------------- subclass / SAM3
def test_wrapper_subclass_identity_and_sdpa(monkeypatch):
    stock, lora = _make(MultiheadAttentionWrapper, randomise=False, batch_first=True)
    other = add_lora_to_mha(MultiheadAttentionWrapper(E, H), rank=1, alpha=1.0)
    assert isinstance(lora, MultiheadAttentionWrapper) and isinstance(lora, LoRAMultiheadAttention)
    assert type(lora) is type(other) and type(lora).__name__ == "LoRAMultiheadAttentionWrapper"
    assert type(lora).__mro__[1:3] == (MultiheadAttentionWrapper, LoRAMultiheadAttention)
    (x, _, _), _ = _inputs("self", True)
    kpm, _ = _masks("kpm_bool", L)
    out = lora(x, x, x, key_padding_mask=kpm, need_weights=True)  # wrapper forces False
    ref = stock(x, x, x, key_padding_mask=kpm, need_weights=True)
    assert out[1] is None and ref[1] is None
    torch.testing.assert_close(out[0], ref[0])

    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    monkeypatch.setattr(F, "softmax", lambda *a, **k: pytest.fail("softmax path used"))
    with torch.no_grad():
        for p in lora.lora_parameters():
            p.normal_(0, 0.5)
    out = lora(x, x, x, key_padding_mask=kpm)
    assert calls == [1]
    monkeypatch.undo()
    ref = _merged_reference(stock, lora)(x, x, x, key_padding_mask=kpm)
    torch.testing.assert_close(out[0], ref[0])


def test_plain_class_and_in_place():
    mha = nn.MultiheadAttention(E, H)
    assert add_lora_to_mha(mha, rank=1, alpha=1.0) is mha and type(mha) is LoRAMultiheadAttention


# --------------------------------------------------- merge / disable / state
def test_merge_unmerge_disable():
    stock, lora = _make()
    ref = _merged_reference(stock, lora)
    (x, _, _), _ = _inputs("self", False)
    unmerged = lora(x, x, x)
    lora.set_adapters_enabled(False)
    _assert_same(lora(x, x, x), stock(x, x, x), rtol=0, atol=0)
    lora.set_adapters_enabled(True)
    lora.merge()
    lora.merge()  # idempotent
    torch.testing.assert_close(lora.in_proj_weight, ref.in_proj_weight)
    torch.testing.assert_close(lora.out_proj.weight, ref.out_proj.weight)
    _assert_same(lora(x, x, x), unmerged)
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.set_adapters_enabled(False)
    lora.unmerge()
    torch.testing.assert_close(lora.in_proj_weight, stock.in_proj_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(lora.out_proj.weight, stock.out_proj.weight, rtol=0, atol=1e-6)
    _assert_same(lora(x, x, x), unmerged)


def test_state_dict_round_trip():
    stock, lora = _make(targets=("q", "v", "out"))
    sd = lora.state_dict()
    base_keys = {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
    lora_keys = {f"lora_{m}.{t}.weight" for m in "AB" for t in ("q", "v", "out")}
    assert set(stock.state_dict()) == base_keys
    assert set(sd) == base_keys | lora_keys
    (x, _, _), _ = _inputs("self", False)

    fresh = add_lora_to_mha(nn.MultiheadAttention(E, H), rank=2, alpha=3.0, targets=("q", "v", "out"))
    fresh.load_state_dict(sd)
    _assert_same(fresh(x, x, x), lora(x, x, x))

    other = add_lora_to_mha(nn.MultiheadAttention(E, H), rank=2, alpha=3.0, targets=("q", "v", "out"))
    res = other.load_state_dict(stock.state_dict(), strict=False)
    assert set(res.missing_keys) == lora_keys and not res.unexpected_keys
    _assert_same(other(x, x, x), stock(x, x, x))


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mode", ["self", "distinct"])
def test_gradients_match_reference(mode, need_weights):
    # float64: grads are O(100), so fp32 summation-order noise would need loose tolerances.
    stock, lora = _make(batch_first=True, dtype=torch.float64)
    for p in (lora.in_proj_weight, lora.in_proj_bias, lora.out_proj.weight, lora.out_proj.bias):
        p.requires_grad_(False)
    inputs, src = _inputs(mode, True, dtype=torch.float64)
    kpm, attn = _masks("both_bool", src)
    target = torch.randn(N, L, E, dtype=torch.float64)
    loss = ((_call(lora, inputs, kpm, attn, need_weights)[0] - target) ** 2).sum()
    loss.backward()
    assert lora.in_proj_weight.grad is None and lora.out_proj.weight.grad is None
    assert all(p.grad is not None for p in lora.lora_parameters())

    ref = _merged_reference(stock, lora)
    ((_call(ref, inputs, kpm, attn, need_weights)[0] - target) ** 2).sum().backward()
    s = lora.scaling
    for name in lora.lora_A:
        if name == "out":
            g = ref.out_proj.weight.grad
        else:
            g = ref.in_proj_weight.grad[ROWS[name][0]:ROWS[name][1]]
        A, B = lora.lora_A[name].weight, lora.lora_B[name].weight
        torch.testing.assert_close(B.grad, s * g @ A.detach().T)
        torch.testing.assert_close(A.grad, s * B.detach().T @ g)


def test_gradcheck_float64():
    _, lora = _make(dtype=torch.float64, batch_first=True)
    names = [n for n, _ in lora.named_parameters() if "lora_" in n]
    x = torch.randn(1, 2, E, dtype=torch.float64, requires_grad=True)
    params = [dict(lora.named_parameters())[n].detach().clone().requires_grad_(True) for n in names]
    kpm = torch.tensor([[False, True]])

    def fn(x, *ps):
        out, w = torch.func.functional_call(
            lora, dict(zip(names, ps)), (x, x, x), {"key_padding_mask": kpm, "need_weights": True}
        )
        return out, w

    assert torch.autograd.gradcheck(fn, (x, *params))


class _MatmulShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}:
            self.shapes.append(tuple(out.shape))
        return out


def test_no_full_weight_product_or_gradient():
    _, lora = _make()
    for p in (lora.in_proj_weight, lora.in_proj_bias, lora.out_proj.weight, lora.out_proj.bias):
        p.requires_grad_(False)
    x = torch.randn(5, 1, E)  # 5 tokens: no activation matrix is (E, E)-shaped
    with _MatmulShapes() as rec:
        lora(x, x, x, need_weights=False)[0].pow(2).sum().backward()
    assert rec.shapes and not {(3 * E, E), (E, E), (E, 3 * E)} & set(rec.shapes), rec.shapes
    assert lora.in_proj_weight.grad is None


# ------------------------------------------------------ dropout / train mode
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_attention_dropout_train_matches_stock_with_seed(batch_first, need_weights):
    # LoRA dropout is 0 (nn.Identity draws no random numbers), so the RNG is
    # consumed exactly as in stock: bit-identical dropout masks.
    stock, lora = _make(batch_first=batch_first, attn_dropout=0.5)
    ref = _merged_reference(stock, lora)
    lora.train()
    ref.train()
    inputs, src = _inputs("self", batch_first)
    kpm, attn = _masks("both_bool", src)
    torch.manual_seed(11)
    out = _call(lora, inputs, kpm, attn, need_weights)
    torch.manual_seed(11)
    expected = _call(ref, inputs, kpm, attn, need_weights)
    _assert_same(out, expected)
    # Dropout in eval mode is exactly off.
    lora.eval()
    ref.eval()
    _assert_same(_call(lora, inputs, kpm, attn, need_weights), _call(ref, inputs, kpm, attn, need_weights))


def test_lora_dropout_train_matches_hand_reference():
    # Hand-written reference drawing the same dropout masks in the same order:
    # LoRA input dropout (once, self-attention), then the out-adapter dropout.
    _, lora = _make(dropout=0.5)
    lora.train()
    (x, _, _), _ = _inputs("self", False)
    torch.manual_seed(5)
    out = lora(x, x, x, need_weights=False)[0]

    s, W, b = lora.scaling, lora.in_proj_weight, lora.in_proj_bias
    delta = lambda t, inp: s * inp @ lora.lora_A[t].weight.T @ lora.lora_B[t].weight.T
    torch.manual_seed(5)
    xd = F.dropout(x, 0.5)
    q, k, v = (F.linear(x, W[a:c], b[a:c]) + delta(t, xd) for t, (a, c) in ROWS.items())
    heads = lambda t: t.reshape(L, N, H, E // H).permute(1, 2, 0, 3)
    attn = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    attn = attn.permute(2, 0, 1, 3).reshape(L, N, E)
    ref = lora.out_proj(attn) + delta("out", F.dropout(attn, 0.5))
    torch.testing.assert_close(out, ref)
    lora.eval()
    assert not torch.allclose(lora(x, x, x)[0], out)


# -------------------------------------------------- autocast / checkpoint
@pytest.mark.parametrize("need_weights", [False, True])
def test_autocast_bf16(need_weights):
    _, lora = _make(batch_first=True)
    inputs, src = _inputs("kv_same", True)
    kpm, _ = _masks("kpm_bool", src)
    ref = _call(lora, inputs, kpm, None, need_weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _call(lora, inputs, kpm, None, need_weights)
    assert out[0].dtype == torch.bfloat16
    torch.testing.assert_close(out[0].float(), ref[0], rtol=5e-2, atol=5e-2)


def test_checkpoint_matches_plain():
    _, lora = _make(dropout=0.3, attn_dropout=0.2)
    lora.train()
    (x, _, _), _ = _inputs("self", False)
    x.requires_grad_(True)
    run = lambda inp: lora(inp, inp, inp, need_weights=False)[0]
    torch.manual_seed(3)
    out = run(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in lora.parameters()] + [x.grad.clone()]
    lora.zero_grad()
    x.grad = None
    torch.manual_seed(3)
    out_ck = checkpoint(run, x, use_reentrant=False)
    out_ck.sum().backward()
    torch.testing.assert_close(out_ck, out)
    for g, p in zip(grads, list(lora.parameters()) + [x]):
        torch.testing.assert_close(p.grad, g)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, exc, needle",
    [
        (dict(targets=()), ValueError, "non-empty"),
        (dict(targets=("q", "x")), ValueError, "'x'"),
        (dict(targets=("q", "q")), ValueError, "duplicates"),
        (dict(rank=0), ValueError, "rank=0"),
        (dict(alpha=-2.0), ValueError, "alpha=-2.0"),
        (dict(dropout=1.5), ValueError, "dropout=1.5"),
        (dict(init="zeros"), ValueError, "'zeros'"),
    ],
)
def test_bad_args(kwargs, exc, needle):
    args = dict(rank=2, alpha=1.0)
    args.update(kwargs)
    mha = nn.MultiheadAttention(E, H)
    with pytest.raises(exc, match=needle):
        add_lora_to_mha(mha, **args)
    assert type(mha) is nn.MultiheadAttention and not hasattr(mha, "lora_A")


@pytest.mark.parametrize(
    "ctor_kwargs, needle",
    [(dict(add_bias_kv=True), "add_bias_kv"), (dict(add_zero_attn=True), "add_zero_attn"),
     (dict(kdim=4), "kdim"), (dict(vdim=4), "vdim")],
)
def test_unsupported_configs(ctor_kwargs, needle):
    mha = nn.MultiheadAttention(E, H, **ctor_kwargs)
    with pytest.raises(NotImplementedError, match=needle):
        add_lora_to_mha(mha, rank=2, alpha=1.0)
    assert type(mha) is nn.MultiheadAttention


def test_call_time_errors():
    _, lora = _make()
    (x, _, _), _ = _inputs("self", False)
    with pytest.raises(NotImplementedError, match="is_causal"):
        lora(x, x, x, attn_mask=torch.zeros(L, L), is_causal=True)
    with pytest.raises(ValueError, match="attn_mask"):
        lora(x, x, x, attn_mask=torch.zeros(L, L + 1))
    with pytest.raises(TypeError, match="Linear"):
        add_lora_to_mha(nn.Linear(2, 2), rank=1, alpha=1.0)
    with pytest.raises(ValueError, match="already"):
        add_lora_to_mha(lora, rank=1, alpha=1.0)
