"""PiSSA and OLoRA inits: the factors are the paper's, the base stays untouched, and
resume and merge are exact (``sam3_lora_plugin.lora.factors``)."""

import pytest
import torch
from torch import nn

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.adapters.metadata import RNG_STATE_KEY
from sam3_lora_plugin.lora import add_lora_to_linear
from sam3_lora_plugin.lora.mha import add_lora_to_mha
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

INITS = ["pissa", "olora"]
SLICES = {"q": (0, 8), "v": (16, 24)}


def _pair(kind, init, rank=4):
    """(adapted layer, untouched copy of its base)."""
    torch.manual_seed(0)
    if kind == "linear":
        base, ref = nn.Linear(16, 24), nn.Linear(16, 24)
        ref.load_state_dict(base.state_dict())
        return add_lora_to_linear(base, rank=rank, alpha=8.0, init=init, slices=SLICES), ref
    base = nn.MultiheadAttention(16, 2, batch_first=True)
    ref = nn.MultiheadAttention(16, 2, batch_first=True)
    ref.load_state_dict(base.state_dict())
    return add_lora_to_mha(base, rank=rank, alpha=8.0, init=init), ref


def _run(layer, x):
    return layer(x) if isinstance(layer, nn.Linear) else layer(x, x, x, need_weights=False)[0]


def _base_rows(layer, name):
    return layer._lora_base_rows(name).detach().double()


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("kind", ["linear", "mha"])
def test_identity_at_init_and_base_untouched(kind, init):
    layer, ref = _pair(kind, init)
    for k, v in ref.state_dict().items():
        assert torch.equal(layer.state_dict()[k], v), k
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(_run(layer, x), _run(ref, x), rtol=0, atol=1e-6)
    for name in layer.lora_A:
        assert layer.lora_B[name].weight.abs().sum() > 0  # not the zero-B init
        assert layer.delta_weight(name).abs().max() == 0


@pytest.mark.parametrize("kind", ["linear", "mha"])
def test_pissa_factors_are_the_principal_components(kind):
    layer, _ = _pair(kind, "pissa")
    for name in layer.lora_A:
        w = _base_rows(layer, name)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        principal = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
        a, b = layer.lora_A[name].weight.double(), layer.lora_B[name].weight.double()
        torch.testing.assert_close(layer.scaling * b @ a, principal, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "mha"])
def test_olora_factors_are_an_orthonormal_basis(kind):
    layer, _ = _pair(kind, "olora")
    for name in layer.lora_A:
        w = _base_rows(layer, name)
        b = layer.lora_B[name].weight.double()
        a = layer.lora_A[name].weight.double()
        torch.testing.assert_close(b.T @ b, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
        torch.testing.assert_close(a, b.T @ w, atol=1e-5, rtol=0)  # A = Qᵣᵀ W = Rᵣ


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("kind", ["linear", "mha"])
def test_merge_unmerge_after_training(kind, init):
    layer, _ = _pair(kind, init)
    with torch.no_grad():
        for p in layer.lora_parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 5, 16)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    y = _run(layer, x)
    layer.merge()
    torch.testing.assert_close(_run(layer, x), y, rtol=0, atol=1e-5)
    layer.unmerge()
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", INITS)
def test_resume_is_exact_even_if_the_decomposition_rounds_differently(init):
    """Loading the adapter state restores the saved offsets, so a rebuilt layer
    computes bit-identical outputs even if its own SVD/QR differed."""
    trained, _ = _pair("linear", init)
    with torch.no_grad():
        for p in trained.lora_parameters():
            p.add_(0.05 * torch.randn_like(p))
    adapter = {k: v for k, v in trained.state_dict().items() if k.startswith("lora_")}
    assert {k for k in adapter if k.startswith("lora_offset.")} == {
        "lora_offset.q.A", "lora_offset.q.B", "lora_offset.v.A", "lora_offset.v.B"}
    rebuilt, _ = _pair("linear", init)
    with torch.no_grad():  # simulate another machine's rounding
        for off in rebuilt.lora_offset.values():
            off.A.mul_(1 + 1e-6)
    rebuilt.load_state_dict(adapter, strict=False)
    x = torch.randn(3, 16)
    assert torch.equal(rebuilt(x), trained(x))


def test_only_trainable_factors_get_gradients():
    layer, _ = _pair("linear", "pissa")
    layer.weight.requires_grad_(False)  # as inject_lora freezes the base
    _run(layer, torch.randn(2, 5, 16)).square().sum().backward()
    assert all(p.grad is not None for p in layer.lora_parameters())
    assert not any(b.requires_grad for b in layer.lora_offset.buffers())


def test_gradients_match_the_residual_formulation():
    """Our s(BA - B0A0) offset trains exactly like PiSSA's residual base W - s B0 A0."""
    layer, _ = _pair("linear", "pissa")
    x = torch.randn(4, 16, dtype=torch.float64)
    layer.double()
    _run(layer, x).square().sum().backward()
    s = layer.scaling
    w_res = layer.weight.detach().clone()
    for name, (a0, b0) in {n: (o.A, o.B) for n, o in layer.lora_offset.items()}.items():
        lo, hi = SLICES[name]
        w_res[lo:hi] -= s * b0 @ a0
    a = {n: layer.lora_A[n].weight.detach().clone().requires_grad_() for n in SLICES}
    b = {n: layer.lora_B[n].weight.detach().clone().requires_grad_() for n in SLICES}
    w = w_res.clone()
    for n, (lo, hi) in SLICES.items():
        w = torch.cat([w[:lo], w[lo:hi] + s * b[n] @ a[n], w[hi:]])
    (x @ w.T + layer.bias.detach()).square().sum().backward()
    for n in SLICES:
        torch.testing.assert_close(layer.lora_A[n].weight.grad, a[n].grad)
        torch.testing.assert_close(layer.lora_B[n].weight.grad, b[n].grad)


def test_rank_above_weight_rank_is_a_clear_error():
    with pytest.raises(ValueError, match=r"rank <= min\(out, in\) = 8.*init='kaiming'"):
        add_lora_to_linear(nn.Linear(16, 8), rank=9, alpha=1.0, init="pissa")


@pytest.mark.parametrize("init", INITS)
def test_model_adapter_checkpoint_keeps_offsets(init):
    """The Trainer's adapter-only state dict carries the offsets, and a rebuilt model
    loads it back to identical outputs."""
    cfg = {"rank": 4, "init": init, "components": ["decoder"]}
    model = build_lora_sam3(build_sam3_arch("tiny", seed=0), cfg)
    sd = model.state_dict()
    offsets = [k for k in sd if ".lora_offset." in k]
    assert offsets and all(not k.endswith("weight") for k in offsets)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    sd = model.state_dict()
    again = build_lora_sam3(build_sam3_arch("tiny", seed=0), cfg)
    result = again.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # The RNG-state entry is the process's, restored only by a Trainer resume.
    for k, v in sd.items():
        if k != RNG_STATE_KEY:
            assert torch.equal(again.state_dict()[k], v), k
