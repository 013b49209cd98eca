"""``torch.compile`` over the LoRA layers: no graph breaks in them, compiled == eager, and
training steps through the compiled layers give eager's gradients.

Dynamo (``torch._dynamo.explain``) and the ``aot_eager`` backend (Dynamo + AOTAutograd,
no Inductor code generation, so no C++ compiler is needed here) are checked on the two
layer kinds the plugin injects. A compiled tiny SAM3 with LoRA on every component is
checked in ``tests/trainer/test_compile_model.py``.
"""

import pytest
import torch
import torch.nn as nn

from sam3_lora_plugin.lora import add_lora_to_linear, add_lora_to_mha


def _randomise_b(module):
    with torch.no_grad():
        for b in module.lora_B.values():
            b.weight.normal_(0, 0.1)
    return module


def _linear():
    torch.manual_seed(0)
    layer = add_lora_to_linear(nn.Linear(32, 96), rank=4, alpha=8,
                               slices={"q": (0, 32), "v": (64, 96)})
    return _randomise_b(layer), (torch.randn(2, 5, 32),)


def _mha():
    torch.manual_seed(0)
    layer = add_lora_to_mha(nn.MultiheadAttention(32, 4, batch_first=False), rank=4, alpha=8)
    q, kv = torch.randn(5, 2, 32), torch.randn(7, 2, 32)
    return _randomise_b(layer), (q, kv, kv)


def _call(layer, inputs):
    out = layer(*inputs)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("make", [_linear, _mha], ids=["linear", "mha"])
def test_no_graph_breaks(make):
    layer, inputs = make()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda *a: _call(layer, a))(*inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("make", [_linear, _mha], ids=["linear", "mha"])
def test_compiled_forward_and_training_steps_equal_eager(make):
    eager, inputs = make()
    compiled_layer, _ = make()
    torch._dynamo.reset()
    compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
            for m in (eager, compiled_layer)]
    for _ in range(3):
        outs = []
        for fn, opt in zip((lambda *a: _call(eager, a), lambda *a: _call(compiled, a)), opts):
            opt.zero_grad(set_to_none=True)
            out = fn(*inputs)
            out.square().mean().backward()
            outs.append(out.detach())
            opt.step()
        torch.testing.assert_close(outs[1], outs[0])
        for (n, a), (_, b) in zip(eager.named_parameters(), compiled_layer.named_parameters()):
            if a.requires_grad:
                torch.testing.assert_close(b.grad, a.grad, msg=n)
                torch.testing.assert_close(b, a, msg=n)
            else:
                assert b.grad is None, n
