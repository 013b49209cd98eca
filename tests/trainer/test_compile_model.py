"""``torch.compile`` over a whole tiny SAM3 with LoRA on every component
(``build_lora_sam3``): no graph breaks in our layers, compiled == eager, and AdamW steps
through the compiled model give eager's gradients and parameters.

SAM3's own switches (sam3 0.1.4). ``build_sam3_image_model(compile=True)`` passes
``compile_mode="default"`` to the ViT trunk and to the segmentation head's
``PixelDecoder``; each then replaces its ``forward`` with
``torch.compile(self.forward, mode=compile_mode, fullgraph=True)`` (the pixel decoder
adds ``dynamic=True``). ``TransformerEncoderFusion``, ``TransformerDecoder`` (after its
first forward) and the text encoder's ``Transformer`` take the same ``compile_mode``
(stock never sets it), and ``SAM3VLBackbone(compile_visual=True)`` wraps the vision
backbone in ``torch.compile``. None of them takes a backend, so they compile with
Inductor, which on CPU needs a C++ compiler and minutes of code generation. Here the
same calls are made with ``backend="aot_eager"`` (Dynamo graph capture + AOTAutograd's
joint forward/backward graph, run by the eager kernels): it checks what LoRA can break
(tracing, guards, the autograd graph), not Inductor's kernels.

What sam3 itself breaks, found here (none of it in ``sam3_lora_plugin``): the text
tokenizer (``ftfy``/``unicodedata`` on Python strings) and a ``list.copy`` in
``SAM3VLBackbone._forward_text_no_ack_ckpt`` split the eval forward into several
graphs; in training the Hungarian matcher (scipy, ``torch.as_tensor`` over a list of
0-d tensors) makes Dynamo fail outright, so the tests run it eagerly
(``torch.compiler.disable``, it has no parameters); and ``TransformerDecoder`` fills its
box-RPB coordinate cache on the first call (sam3 defers its own decoder compile until
then for that reason), so the compiled model gets one eager forward first.
"""

import sys

import pytest
import torch

from sam3_lora_plugin.lora.factors import LoRAAdapterMixin
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.testing import flatten_outputs, make_batch, make_loss, single_process_group
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

ALL = {
    "components": ["vision_trunk", "text_encoder", "fusion_encoder", "decoder",
                   "geometry_encoder", "segmentation_head", "scoring"],
    "roles": ["q", "k", "v", "out", "mlp", "head"],
    "modules_to_save": [],  # plain LoRA: the heads get adapters here
}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("sam3_cpu_patches")]


@pytest.fixture(autouse=True)
def no_mha_fastpath():
    torch.backends.mha.set_fastpath_enabled(False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.backends.mha.set_fastpath_enabled(True)


def _model(training: bool):
    """Tiny SAM3, LoRA everywhere with B ~ N(0, 0.05²) (so every adapter is on the
    gradient path), no dropout or drop path (compiled and eager draw masks differently)."""
    torch.manual_seed(0)  # the adapters' A init draws from the global RNG
    model = build_lora_sam3(build_sam3_arch("tiny", eval_mode=not training, dropout=0.0,
                                            drop_path_rate=0.0), ALL)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    if model.matcher is not None:
        model.matcher.forward = torch.compiler.disable(model.matcher.forward)
    return model.train(training)


def _lora_frames(fn, *args):
    """Run ``fn(*args)`` and return the Python functions of ``sam3_lora_plugin/lora``
    that the interpreter executed. A LoRA layer traced into a compiled graph runs as
    part of that graph's code, so in a compiled forward the set is empty."""
    seen = set()

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and "sam3_lora_plugin/lora/" in code.co_filename:
            seen.add(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}")

    sys.setprofile(profile)
    try:
        result = fn(*args)
    finally:
        sys.setprofile(None)
    return seen, result


def _outputs(out) -> dict:
    flat = dict(flatten_outputs(out))
    assert len(flat) > 20
    return flat


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_no_graph_breaks_in_lora_layers(data_dir, training):
    """``torch._dynamo.explain`` over the whole model: every break is in sam3 (listed in
    the module docstring), none in ``sam3_lora_plugin``."""
    model = _model(training)
    batch = make_batch(data_dir, training=training)["x"]
    with torch.no_grad():
        model(batch)  # fill the decoder's coordinate cache, as sam3 does before compiling
        explanation = torch._dynamo.explain(model)(batch)
    frames = [f.filename for r in explanation.break_reasons for f in r.user_stack]
    assert frames and not [f for f in frames if "sam3_lora_plugin" in f], frames
    print(f"{'train' if training else 'eval'}: {explanation.graph_count} graphs, "
          f"{explanation.graph_break_count} breaks")


def test_compiled_forward_equals_eager_eval(data_dir):
    """Eval mode: the compiled model's outputs (logits, boxes, masks, presence, ...) are
    bit-identical to eager's: aot_eager runs the same ATen kernels in the same order."""
    model = _model(training=False)
    batch = make_batch(data_dir, training=False)["x"]
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        eager_frames, ref = _lora_frames(model, batch)
        compiled(batch)  # compiles
        compiled_frames, out = _lora_frames(compiled, batch)
    assert {"linear.py:forward", "mha.py:forward"} <= eager_frames  # the probe sees them
    assert not compiled_frames, compiled_frames  # every LoRA layer ran inside a graph
    ref, out = _outputs(ref), _outputs(out)
    assert out.keys() == ref.keys()
    for k in ref:
        assert torch.equal(out[k], ref[k]), k


def test_sam3_compile_mode_components_fullgraph(data_dir):
    """What ``build_sam3_image_model(compile=True)`` compiles, compiled the way it does
    (``fullgraph=True``; ``dynamic=True`` for the pixel decoder) after LoRA injection,
    backend ``aot_eager``: the adapted ViT trunk is one graph (``fullgraph`` raises on
    any break) and the model's outputs stay bit-identical to eager."""
    model = _model(training=False)
    batch = make_batch(data_dir, training=False)["x"]
    with torch.no_grad():
        ref = _outputs(model(batch))
        trunk = model.backbone.vision_backbone.trunk
        pixel_decoder = model.segmentation_head.pixel_decoder
        assert any(isinstance(m, LoRAAdapterMixin) for m in trunk.modules())
        trunk.forward = torch.compile(trunk.forward, backend="aot_eager", fullgraph=True)
        pixel_decoder.forward = torch.compile(pixel_decoder.forward, backend="aot_eager",
                                              dynamic=True, fullgraph=True)
        out = _outputs(model(batch))
    assert out.keys() == ref.keys()
    for k in ref:
        assert torch.equal(out[k], ref[k]), k


def test_training_steps_equal_eager(data_dir):
    """Three AdamW steps (lr 1e-2) on SAM3's loss, a compiled twin against an eager one
    from the same weights. Step 1's outputs and loss are bit-identical; the backward is
    AOTAutograd's joint graph, which sums some gradient contributions in another order,
    so adapter gradients agree to fp32 rounding (measured <= 5e-6 absolute, gradients up
    to ~20; checked with rtol=atol=1e-5) and the parameters after three steps to 1e-4
    (measured <= 4e-5: AdamW divides by |g|, so small entries amplify that rounding).
    Left out of the parameter check: the adapters whose gradient is zero in exact
    arithmetic but not in fp32, the geometry encoder's self-attention q/k (a text-only
    prompt is one token, so its softmax is 1 whatever q and k are): both runs give them
    ~1e-8 of rounding noise, which AdamW turns into steps of +-lr in either direction. Frozen
    weights stay bit-identical, and after the compiling step no LoRA code runs
    outside the graphs, backward (activation-checkpoint recompute) included."""
    batch, loss_fn = make_batch(data_dir, training=True)["x"], make_loss()
    eager, twin = _model(training=True), _model(training=True)
    frozen = {n: p.detach().clone() for n, p in twin.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        twin(batch)  # the decoder's coordinate cache, as for sam3's own decoder compile
    compiled = torch.compile(twin, backend="aot_eager")
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
            for m in (eager, twin)]
    zero_grad = set()
    with single_process_group("gloo"):
        for step in range(3):
            results = []
            for model, fn, opt in zip((eager, twin), (eager, compiled), opts):
                opt.zero_grad(set_to_none=True)

                def train_step():
                    out = fn(batch)
                    loss = loss_fn(out, [model.back_convert(t) for t in batch.find_targets])
                    loss["core_loss"].backward()
                    return _outputs(out), loss["core_loss"].detach()

                # Step 0 compiles, which the profiler would slow down many times over.
                frames, (out, loss) = (_lora_frames(train_step) if step else
                                       (set(), train_step()))
                grads = {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.requires_grad}
                results.append((frames, out, loss, grads))
                opt.step()
            (_, out_e, loss_e, grads_e), (frames_c, out_c, loss_c, grads_c) = results
            assert not frames_c, frames_c
            assert out_c.keys() == out_e.keys()
            if step == 0:
                assert torch.equal(loss_c, loss_e)
                for k in out_e:
                    assert torch.equal(out_c[k], out_e[k]), k
                zero_grad = {n for n, g in grads_e.items() if 0 < g.abs().max() < 1e-6}
            torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=0)
            assert grads_c.keys() == grads_e.keys() and len(grads_e) > 200
            for n in grads_e:
                torch.testing.assert_close(grads_c[n], grads_e[n], rtol=1e-5, atol=1e-5,
                                           msg=lambda m, n=n: f"step {step}, {n}: {m}")
    assert zero_grad == {f"geometry_encoder.encode.0.self_attn.lora_{ab}.{qk}.weight"
                         for ab in "AB" for qk in "qk"}, zero_grad
    lora0 = dict(_model(training=True).named_parameters())
    moved = 0
    for (n, a), (_, b) in zip(eager.named_parameters(), twin.named_parameters()):
        if not b.requires_grad:
            assert torch.equal(b, frozen[n]), n
        elif n not in zero_grad:
            torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
            moved += not torch.equal(b, lora0[n])
    assert moved > 200
