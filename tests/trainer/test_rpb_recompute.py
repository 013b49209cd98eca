"""The decoder's box-RPB biases recomputed in backward (sam3_lora_plugin.trainer.rpb_recompute):
the same step as stock's, bit for bit, without the biases alive between forward and backward."""

import copy
import pickle
import weakref

import pytest
import torch
from sam3.model.decoder import TransformerDecoder

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.testing import flatten_outputs, make_loss
from sam3_lora_plugin.trainer.rpb_recompute import RpbRecomputingDecoder, recompute_box_rpb
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

pytestmark = pytest.mark.usefixtures("sam3_cpu_patches")

RPB_MLPS = ["transformer.decoder.boxRPB_embed_x", "transformer.decoder.boxRPB_embed_y"]


def _model(lora, stock_decoder=False):
    torch.manual_seed(0)
    model = build_lora_sam3(build_sam3_arch("tiny", seed=0), lora).train()
    with torch.no_grad():  # non-zero B: the adapters are on every gradient path
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.02)
    if stock_decoder:
        model.transformer.decoder.__class__ = TransformerDecoder
    return model


def _step(model, batch, autocast):
    """One step; returns outputs, gradients, how many biases the decoder made (forward and
    backward) and how many of them were alive at the end of the forward."""
    biases = []
    make = TransformerDecoder._get_rpb_matrix

    def recording(self, *args):
        bias = make(self, *args)
        biases.append(weakref.ref(bias))
        return bias

    loss_fn = make_loss()
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    TransformerDecoder._get_rpb_matrix = recording
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(batch)
            loss = loss_fn(out, [model.back_convert(t) for t in batch.find_targets])["core_loss"]
        alive_after_forward = sum(b() is not None for b in biases)
        loss.backward()
    finally:
        TransformerDecoder._get_rpb_matrix = make
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return dict(flatten_outputs(out)), grads, len(biases), alive_after_forward


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_recomputed_biases_give_stock_step_bit_for_bit_and_are_not_kept(autocast, train_batch,
                                                                        process_group):
    lora = {"preset": "default"}
    ours, stock = _model(lora), _model(lora, stock_decoder=True)
    assert type(ours.transformer.decoder) is RpbRecomputingDecoder
    out_a, grads_a, made_a, alive_a = _step(ours, train_batch, autocast)
    out_b, grads_b, made_b, alive_b = _step(stock, train_batch, autocast)
    assert out_a.keys() == out_b.keys() and all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for n in grads_a:
        assert grads_a[n] is not None and torch.equal(grads_a[n], grads_b[n]), n
    layers = len(ours.transformer.decoder.layers)
    # stock keeps every layer's bias for backward (the last one's too: its layer is
    # checkpointed like the others); ours keeps none, and made each once more in backward
    assert made_b == alive_b == layers
    assert alive_a == 0 and made_a == 2 * layers


def test_a_bias_that_needs_grad_is_kept_as_stock_keeps_it(train_batch, process_group):
    """With the bias MLPs trained (modules_to_save), the bias is part of the graph."""
    lora = {"preset": "default", "modules_to_save": RPB_MLPS}
    ours, stock = _model(lora), _model(lora, stock_decoder=True)
    out_a, grads_a, made_a, alive_a = _step(ours, train_batch, False)
    out_b, grads_b, _, alive_b = _step(stock, train_batch, False)
    assert alive_a == alive_b == made_a == len(ours.transformer.decoder.layers)
    assert any(n.startswith(RPB_MLPS[0]) for n in grads_a)
    for n in grads_a:
        assert torch.equal(grads_a[n], grads_b[n]), n


def test_eval_and_no_grad_run_stock_and_the_decoder_copies_and_pickles(train_batch):
    model = _model({"preset": "default"}).eval()
    with torch.no_grad():
        model(train_batch)
    assert model.transformer.decoder._rpb_made is None
    clone = copy.deepcopy(model)
    assert type(clone.transformer.decoder) is RpbRecomputingDecoder
    decoder = pickle.loads(pickle.dumps(build_sam3_arch("tiny", seed=0).transformer.decoder))
    assert recompute_box_rpb(decoder) == 1 and type(pickle.loads(pickle.dumps(decoder))) is RpbRecomputingDecoder
    assert recompute_box_rpb(clone) == 0  # already swapped: nothing to do
    assert recompute_box_rpb(torch.nn.Linear(2, 2)) == 0
