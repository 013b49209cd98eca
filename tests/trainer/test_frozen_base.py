"""bf16 frozen base (sam3_lora_plugin.trainer.frozen_base) and the graph a selection builds."""

import pytest
import torch

from sam3_lora_plugin.adapters.metadata import get_adapter_metadata, get_base_fingerprint
from sam3_lora_plugin.lora.selection import LoraSelectionError
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.testing import flatten_outputs, make_loss
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


def _assert_same_step(ref, other, batch) -> dict:
    """One training step of each model: outputs and every trainable gradient equal
    ``ref``'s, bit for bit; returns ``other``'s gradients."""
    loss_fn = make_loss()
    out_ref, grads_ref = _step(ref, batch, loss_fn)
    out_other, grads_other = _step(other, batch, loss_fn)
    a, b = dict(flatten_outputs(out_ref)), dict(flatten_outputs(out_other))
    assert a.keys() == b.keys() and len(a) > 5
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert grads_ref.keys() == grads_other.keys()
    for n in grads_ref:
        assert grads_other[n] is not None and torch.equal(grads_ref[n], grads_other[n]), n
    return grads_other


def test_bf16_base_is_bit_identical_under_autocast(train_batch, process_group):
    """Forward outputs and every trainable gradient equal the fp32 base's, bit for bit."""
    grads_cast = _assert_same_step(_model(), _model(frozen_base_dtype="bfloat16"), train_batch)
    assert all(g.dtype == torch.float32 for g in grads_cast.values())


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


# ------------------------------------------------------------------ NF4 (QLoRA)
def _nf4_and_reference(lora=ALL):
    """An NF4 model and an fp32 one whose quantized weights hold their dequantization;
    also the fp32 model's fingerprint before that."""
    from sam3_lora_plugin.lora.nf4 import dequantize_nf4, is_nf4

    nf4, ref = _model(lora, frozen_base_dtype="nf4"), _model(lora)
    fingerprint = get_base_fingerprint(ref)
    with torch.no_grad():
        for n, p in nf4.named_parameters():
            if is_nf4(p) or p.dtype != ref.get_parameter(n).dtype:  # NF4 or bf16: their values
                ref.get_parameter(n).copy_(dequantize_nf4(p))
    return nf4, ref, fingerprint


@pytest.mark.parametrize("lora", [ALL, {"preset": "image_mlp"}], ids=["all_components", "image_mlp"])
def test_nf4_base_equals_lora_over_the_dequantized_weights(lora, train_batch, process_group):
    """Outputs and every trainable gradient equal an fp32 model holding D(NF4(W)) (and the
    bf16 values of what is bf16), bit for bit; no frozen weight gets a gradient. With the
    image_mlp preset the text encoder has no adapters: its attention layers run the NF4
    attention forward and its token embedding is bf16."""
    pytest.importorskip("torchao.quantization")
    nf4, ref, _ = _nf4_and_reference(lora)
    grads_nf4 = _assert_same_step(ref, nf4, train_batch)
    assert all(".lora_" in n or n.startswith("dot_prod_scoring.") for n in grads_nf4)
    assert all(p.grad is None for p in nf4.parameters() if not p.requires_grad)


def test_nf4_stores_what_its_forwards_read_and_keeps_the_fp32_fingerprint():
    """With the image_mlp preset (text encoder without adapters): every frozen Linear weight
    (a multiple of 64 values) and every attention layer's projections, adapted or not, are
    NF4; biases and the text encoder's token embedding are bf16; the fingerprint is the
    fp32 weights'."""
    pytest.importorskip("torchao.quantization")
    from sam3.model.text_encoder_ve import TextTransformer

    from sam3_lora_plugin.lora.mha import FrozenNF4MultiheadAttention, LoRAMultiheadAttention
    from sam3_lora_plugin.lora.nf4 import is_nf4

    nf4, ref, fingerprint = _nf4_and_reference({"preset": "image_mlp"})
    assert get_base_fingerprint(nf4) == fingerprint != get_base_fingerprint(ref, refresh=True)
    assert get_adapter_metadata(nf4)["base_fingerprint"] == fingerprint
    mha = [m for m in nf4.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert {type(m) for m in mha} >= {FrozenNF4MultiheadAttention, LoRAMultiheadAttention}
    assert all(is_nf4(m.in_proj_weight) and is_nf4(m.out_proj.weight) for m in mha)
    in_mha = {id(m.out_proj) for m in mha}
    for name, m in nf4.named_modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad and id(m) not in in_mha:
            assert is_nf4(m.weight) == (m.weight.numel() % 64 == 0), name
    text = [m for m in nf4.modules() if isinstance(m, TextTransformer)]
    assert text and all(m.token_embedding.weight.dtype == torch.bfloat16
                        and m.positional_embedding.dtype == torch.float32 for m in text)
    assert sum(is_nf4(p) for p in nf4.parameters()) > 20
    for n, p in nf4.named_parameters():
        if not p.requires_grad and not is_nf4(p) and n in dict(get_frozen_projection_params(nf4)):
            assert p.dtype == torch.bfloat16, n
    assert all(p.dtype == torch.float32 for p in nf4.parameters() if p.requires_grad)


def test_nf4_merges_from_the_fp32_file_only(tmp_path):
    """In the model: refused, naming the file merge. From the file: the adapter trained over
    NF4 lands on the fp32 weights, equal to merging it into the fp32 model."""
    pytest.importorskip("torchao.quantization")
    from sam3_lora_plugin.adapters.io import export_adapter
    from sam3_lora_plugin.adapters.merge import merge_adapter_into_checkpoint
    from sam3_lora_plugin.lora.inject import merge_lora
    from sam3_lora_plugin.models.base_checkpoint import write_stock_checkpoint

    base_file = write_stock_checkpoint(build_sam3_arch("tiny", seed=0), str(tmp_path / "sam3.pt"))
    nf4, fp32 = _model({"preset": "default"}, frozen_base_dtype="nf4"), _model({"preset": "default"})
    with torch.no_grad():
        for n, p in nf4.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.05)
    with pytest.raises(RuntimeError, match="merge sam3.pt adapter/ out.pt"):
        merge_lora(nf4)
    torch.save({"model": nf4.state_dict()}, tmp_path / "checkpoint.pt")
    adapter = export_adapter(str(tmp_path / "checkpoint.pt"), str(tmp_path / "adapter"))
    merged = torch.load(merge_adapter_into_checkpoint(base_file, adapter, str(tmp_path / "out.pt")),
                        weights_only=True)["model"]

    fp32.load_state_dict(nf4.state_dict())  # the adapter state only: it resumes over fp32 too
    merge_lora(fp32)
    base = torch.load(base_file, weights_only=True)["model"]
    changed = 0
    for k, p in fp32.named_parameters():
        if "lora_" in k:
            continue
        got = merged["detector." + k]
        assert got.dtype == torch.float32 and torch.equal(got, p.detach()), k
        changed += not torch.equal(got, base["detector." + k])
    assert changed > 10


def test_nf4_adapter_state_resumes_over_nf4_and_fp32():
    """The Trainer's checkpoint (adapter-only state_dict) of an NF4 run loads strictly into
    another NF4 model and into an fp32 one, with the same metadata."""
    pytest.importorskip("torchao.quantization")
    nf4 = _model(frozen_base_dtype="nf4")
    state = nf4.state_dict()
    assert state and all(not type(v).__name__.startswith("NF4") for v in state.values())
    for other in (_model(frozen_base_dtype="nf4"), _model()):
        other.load_state_dict(state)
        assert get_adapter_metadata(other) == get_adapter_metadata(nf4)
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                assert torch.equal(other.state_dict()[k], v), k


NF4_RUN = ["-c", "configs/lora/smoke_cpu.yaml", "trainer.model.frozen_base_dtype=nf4",
           "trainer.optim.amp.enabled=true", "+trainer.optim.amp.amp_dtype=bfloat16"]


def test_nf4_model_steps_inside_ddp_as_the_trainer_wraps_it(train_batch, process_group):
    """SAM3's Trainer wraps the model in DistributedDataParallel (also on one process):
    its broadcast of the parameters and its gradient reducer accept the NF4 weights, and
    every trainable parameter, and nothing else, gets a finite gradient. (The Trainer's
    own AMP is CUDA autocast, so a CPU Trainer run cannot use a bf16 or NF4 base.)"""
    pytest.importorskip("torchao.quantization")
    from sam3_lora_plugin.lora.nf4 import is_nf4

    model = _model(frozen_base_dtype="nf4")
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    ddp.back_convert = model.back_convert
    _, grads = _step(ddp, train_batch, make_loss())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.removeprefix("module.") for n in grads} == trainable
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(is_nf4(p) for p in model.parameters())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_config_check_of_nf4_needs_bf16_autocast_and_torchao(monkeypatch):
    import sys

    from sam3_lora_plugin.trainer.compose import compose_config
    from sam3_lora_plugin.trainer.config_check import ConfigError, validate_training_config

    with pytest.raises(ConfigError, match="frozen_base_dtype=nf4 needs bf16 autocast"):
        validate_training_config(compose_config("configs/lora/smoke_cpu.yaml",
                                                ["trainer.model.frozen_base_dtype=nf4"]))
    cfg = compose_config("configs/lora/smoke_cpu.yaml", NF4_RUN[2:])
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")] or ["torchao"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"pip install 'sam3-lora-plugin\[qlora\]'"):
        validate_training_config(cfg)
    with pytest.raises(ImportError, match=r"sam3-lora-plugin\[qlora\]"):
        _model(frozen_base_dtype="nf4")
