"""bf16 frozen base (sam3_lora_plugin.trainer.frozen_base) and the graph a selection builds."""

import pytest
import torch

from sam3_lora_plugin.adapters.metadata import get_adapter_metadata, get_base_fingerprint
from sam3_lora_plugin.lora.selection import LoraSelectionError
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.testing import flatten_outputs, make_batch, make_loss, single_process_group
from sam3_lora_plugin.trainer.frozen_base import cast_frozen_base, get_frozen_projection_params
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

pytestmark = pytest.mark.usefixtures("sam3_cpu_patches")

ALL = {"components": ["vision_trunk", "text_encoder", "fusion_encoder", "decoder",
                      "geometry_encoder", "segmentation_head"],
       "roles": ["q", "k", "v", "out", "mlp"], "modules_to_save": ["dot_prod_scoring"]}


def _model(lora=ALL, **kw):
    torch.manual_seed(0)
    model = build_lora_sam3(build_sam3_arch("tiny", seed=0), lora, **kw).train()
    with torch.no_grad():  # non-zero B: the adapters are on every gradient path
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.02)
    return model


def _step(model, batch, loss_fn):
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        loss = loss_fn(out, [model.back_convert(t) for t in batch.find_targets])["core_loss"]
    loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def process_group():
    with single_process_group():
        yield


@pytest.fixture(scope="module")
def train_batch(tmp_path_factory):
    return make_batch(tmp_path_factory.mktemp("data"), training=True)["x"]


def test_bf16_base_is_bit_identical_under_autocast(train_batch, process_group):
    """Forward outputs and every trainable gradient equal the fp32 base's, bit for bit."""
    ref, cast = _model(), _model(frozen_base_dtype="bfloat16")
    loss_fn = make_loss()
    out_ref, grads_ref = _step(ref, train_batch, loss_fn)
    out_cast, grads_cast = _step(cast, train_batch, loss_fn)
    a, b = dict(flatten_outputs(out_ref)), dict(flatten_outputs(out_cast))
    assert a.keys() == b.keys() and len(a) > 5
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert grads_ref.keys() == grads_cast.keys()
    for n in grads_ref:
        assert grads_cast[n].dtype == torch.float32 and torch.equal(grads_ref[n], grads_cast[n]), n


def test_only_frozen_projections_are_cast_and_fingerprint_stays_fp32():
    ref, cast = _model(), _model(frozen_base_dtype="bfloat16")
    cast_names = {n for n, _ in get_frozen_projection_params(cast)}
    assert any(n.endswith("in_proj_weight") for n in cast_names)
    assert any(n.endswith("attn.qkv.weight") for n in cast_names)
    for n, p in cast.named_parameters():
        if n in cast_names:
            assert p.dtype == torch.bfloat16 and not p.requires_grad, n
        else:  # LoRA factors, modules_to_save, norms, convs, embeddings
            assert p.dtype == torch.float32, n
    assert any(n.startswith("dot_prod_scoring") and p.requires_grad for n, p in cast.named_parameters())
    # Metadata names the fp32 weights, so an fp32 run's checkpoint resumes here and back.
    assert get_base_fingerprint(cast) == get_base_fingerprint(ref)
    assert get_adapter_metadata(cast)["base_fingerprint"] == get_adapter_metadata(ref)["base_fingerprint"]
    frozen_bytes = sum(p.numel() * p.element_size() for n, p in cast.named_parameters() if n in cast_names)
    assert frozen_bytes * 2 == sum(p.numel() * p.element_size() for n, p in ref.named_parameters()
                                   if n in cast_names)


def test_unsupported_dtype_is_one_clear_error():
    with pytest.raises(ValueError, match="frozen_base_dtype='float8'.*bfloat16"):
        cast_frozen_base(torch.nn.Linear(2, 2), "float8")


def test_low_memory_preset_builds_no_graph_in_trunk_and_text_encoder(train_batch, process_group):
    model = _model({"preset": "low_memory"})
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"transformer"}
    seen = {}
    for name in ("backbone.vision_backbone.trunk", "backbone.language_backbone", "transformer.decoder"):
        model.get_submodule(name).register_forward_hook(_record_graph(seen, name))
    _step(model, train_batch, make_loss())
    assert seen == {"backbone.vision_backbone.trunk": False, "backbone.language_backbone": False,
                    "transformer.decoder": True}


def _record_graph(seen, key):
    """A forward hook noting whether any output of the module is on an autograd graph."""
    def hook(module, args, output):
        seen.setdefault(key, any(t.requires_grad for t in _tensors(output)))
    return hook


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _tensors(x)]
    return []


def test_trunk_blocks_stop_backward_before_the_first_adapted_block(train_batch, process_group):
    model = _model({"preset": "default", "trunk_blocks": [-1, None]})
    names = [n for n, p in model.named_parameters() if p.requires_grad and ".trunk." in n]
    assert names and all(n.startswith("backbone.vision_backbone.trunk.blocks.1.") for n in names)
    graph = {}
    for i, blk in enumerate(model.backbone.vision_backbone.trunk.blocks):
        blk.register_forward_hook(_record_graph(graph, i))
    _step(model, train_batch, make_loss())
    assert graph == {0: False, 1: True}


def test_trunk_blocks_selecting_nothing_is_an_error():
    with pytest.raises(LoraSelectionError, match=r"trunk_blocks=\[5, None\] selects none of the 2"):
        _model({"preset": "default", "trunk_blocks": [5, None]})
    with pytest.raises(ValueError, match="trunk_blocks must be"):
        _model({"preset": "default", "trunk_blocks": [1, 2, 3]})


def test_config_check_refuses_a_bf16_base_without_bf16_autocast():
    """Checked from the composed config, before any model is built."""
    from sam3_lora_plugin.trainer.compose import compose_config
    from sam3_lora_plugin.trainer.config_check import ConfigError, validate_training_config

    cfg = compose_config("configs/lora/smoke_cpu.yaml", ["trainer.model.frozen_base_dtype=bfloat16"])
    with pytest.raises(ConfigError, match="frozen_base_dtype=bfloat16 needs bf16 autocast"):
        validate_training_config(cfg)
    validate_training_config(compose_config("configs/lora/smoke_cpu.yaml", [
        "trainer.model.frozen_base_dtype=bfloat16", "trainer.optim.amp.enabled=true",
        "+trainer.optim.amp.amp_dtype=bfloat16"]))
    gpu = compose_config("configs/lora/coco_box.yaml", ["paths.dataset_root=/x", "runtime=gpu"])
    assert gpu.trainer.model.frozen_base_dtype == "bfloat16"
    validate_training_config(gpu)
