"""``modules_to_save`` trained in place and switched off exactly: the attention_mlp_heads
preset's heads, neck level and norms, ``set_adapters_enabled`` swapping their base values in and out, and the
refusals while they are out (checkpoint save and load, adapter load, merge)."""

from dataclasses import asdict

import pytest
import torch

from sam3_lora_plugin.lora.config import NORM_LAYERS, PRESETS, LoraConfig
from sam3_lora_plugin.lora.inject import merge_lora, set_adapters_enabled
from sam3_lora_plugin.lora.saved_modules import (SavedModulesDisabledError, saved_modules_enabled,
                                                 select_modules_to_save)
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.testing import flatten_outputs
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

pytestmark = pytest.mark.usefixtures("sam3_cpu_patches", "mha_fastpath_off")

HEADS = {"preset": "attention_mlp_heads"}

HEADS_SAVED = ["dot_prod_scoring", "transformer.decoder.bbox_embed",
                 "transformer.decoder.presence_token_head", "transformer.decoder.ref_point_head",
                 "backbone.vision_backbone.convs.2", NORM_LAYERS]


def _outputs(model, batch):
    with torch.no_grad():
        return dict(flatten_outputs(model(batch)))


def _trained_default_model():
    """A tiny attention_mlp_heads model whose adapters and saved modules moved off the base."""
    model = build_lora_sam3(build_sam3_arch("tiny", eval_mode=True), HEADS).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p), alpha=0.05)
    return model


def test_the_heads_preset_trains_the_heads_the_neck_level_and_the_norms_fully():
    cfg = LoraConfig(**HEADS)
    assert cfg.modules_to_save == HEADS_SAVED == PRESETS["attention_mlp_heads"]["modules_to_save"]
    assert LoraConfig().modules_to_save == HEADS_SAVED  # the default trains the same fully
    assert LoraConfig(**HEADS, modules_to_save=[]).modules_to_save == []  # [] trains none
    assert LoraConfig(**HEADS, modules_to_save=["dot_prod_scoring"]).modules_to_save == ["dot_prod_scoring"]
    model = build_sam3_arch("tiny")
    modules = dict(model.named_modules())
    saved, _ = select_modules_to_save(model, cfg.modules_to_save)
    norms = {n for n, m in modules.items()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))}
    inside = lambda n: any(n == s or n.startswith(s + ".") for s in saved)  # noqa: E731
    # NORM_LAYERS finds every norm but the one SAM3's pixel decoder builds and never calls and
    # the geometry encoder's image norm (a float-noise gradient under text prompts)
    left_out = {"segmentation_head.pixel_decoder.norms.2", "geometry_encoder.img_pre_norm"}
    assert left_out <= norms and not any(inside(n) for n in left_out)
    assert all(inside(n) for n in norms - left_out)
    assert LoraConfig(preset="attention_mlp").modules_to_save == []
    # attention_mlp's adapters: it differs from it only in what it trains fully
    assert {k: v for k, v in PRESETS["attention_mlp_heads"].items() if k != "modules_to_save"} \
        == PRESETS["attention_mlp"]


def test_a_recorded_config_keeps_its_modules_to_save():
    """An adapter records its resolved modules_to_save next to the preset's name: the
    recorded list wins over the preset's, whatever the preset holds today."""
    recorded = {**asdict(LoraConfig(preset="attention_mlp")), "preset": "attention_mlp_heads"}
    assert recorded["modules_to_save"] == []
    assert LoraConfig.from_any(recorded).modules_to_save == []


def test_disabled_default_adapter_computes_the_base_exactly(tiny_val_batch):
    base = build_sam3_arch("tiny", eval_mode=True).requires_grad_(False)
    model = _trained_default_model()
    saved_before = {n: p for n, p in model.named_parameters()
                    if n.startswith("backbone.vision_backbone.convs.2.")}
    trained = _outputs(model, tiny_val_batch)
    reference = _outputs(base, tiny_val_batch)
    assert any(not torch.equal(trained[k], reference[k]) for k in reference)

    set_adapters_enabled(model, False)
    assert not saved_modules_enabled(model)
    disabled = _outputs(model, tiny_val_batch)
    assert disabled.keys() == reference.keys()
    for k in reference:
        assert torch.equal(disabled[k], reference[k]), k
    base_params = dict(base.named_parameters())
    for n, p in saved_before.items():
        assert torch.equal(p, base_params[n]), n

    set_adapters_enabled(model, True)
    again = _outputs(model, tiny_val_batch)
    for k in trained:
        assert torch.equal(again[k], trained[k]), k
    # swapped in place: the same Parameter objects (optimizer state, DDP buckets), still trainable
    for n, p in model.named_parameters():
        if n in saved_before:
            assert p is saved_before[n] and p.requires_grad


def test_disabling_twice_keeps_the_trained_values(tiny_val_batch):
    model = _trained_default_model()
    trained = _outputs(model, tiny_val_batch)
    set_adapters_enabled(model, False)
    set_adapters_enabled(model, False)
    set_adapters_enabled(model, True)
    set_adapters_enabled(model, True)
    again = _outputs(model, tiny_val_batch)
    assert all(torch.equal(again[k], trained[k]) for k in trained)


def test_nothing_trained_or_lost_while_disabled(tmp_path):
    """With the base values in place, saving would write the base as the adapter, and
    loading or merging would be undone by re-enabling: each is refused with the fix."""
    from sam3_lora_plugin.adapters.load import load_adapter

    model = _trained_default_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    set_adapters_enabled(model, False)
    fix = r"set_adapters_enabled\(model, True\)"
    with pytest.raises(SavedModulesDisabledError, match=fix):
        model.state_dict()
    with pytest.raises(SavedModulesDisabledError, match=fix):
        model.load_state_dict(state, strict=False)
    with pytest.raises(SavedModulesDisabledError, match=fix):
        merge_lora(model)
    with pytest.raises(SavedModulesDisabledError, match=fix):
        load_adapter(model, tmp_path / "never_read")
    set_adapters_enabled(model, True)
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state if isinstance(state[k], torch.Tensor))


def test_a_model_without_saved_modules_switches_as_before():
    model = build_lora_sam3(build_sam3_arch("tiny", eval_mode=True), {"preset": "attention_mlp"})
    set_adapters_enabled(model, False)
    assert saved_modules_enabled(model)  # nothing to swap
    model.state_dict()  # allowed: the adapters' factors are untouched by disabling


def test_a_pattern_selects_modules_with_parameters_once():
    """A norm-layer pattern also matches parameter-free stand-ins (nn.Identity, the matcher's
    Sigmoid) and norms inside another selected module: each parameter's module is named once,
    and the trainable parameters are exactly those of the modules named."""
    model = build_sam3_arch("tiny")
    patterns = [r"re:.*\.(norm\d?|\w+_norm|ln_\w+)$", "transformer.decoder.bbox_embed"]
    saved, missing = select_modules_to_save(model, patterns)
    modules = dict(model.named_modules())
    assert not missing
    assert "transformer.decoder.bbox_embed" in saved
    assert "transformer.decoder.bbox_embed.out_norm" not in saved  # inside bbox_embed
    assert all(next(modules[n].parameters(), None) is not None for n in saved)
    assert {type(modules[n]).__name__ for n in saved} == {"LayerNorm", "MLP"}
    assert not any(isinstance(modules[n], (torch.nn.Identity, torch.nn.Sigmoid)) for n in saved)
    assert select_modules_to_save(model, ["re:.*\\.mlp\\.norm$"]) == ([], ["re:.*\\.mlp\\.norm$"])


def test_the_summary_counts_each_pattern_and_says_where_the_list_came_from():
    """The LoRA summary gives one line per ``modules_to_save`` entry (modules, parameters)
    rather than every norm layer by name, and says when the list is the preset's, with the
    override that trains none; the counts add up to the trainable non-adapter parameters."""
    from sam3_lora_plugin.lora.inject import get_lora_report

    model = build_lora_sam3(build_sam3_arch("tiny"), {})
    report = get_lora_report(model)
    text = report.format()
    assert [p for p, _, _ in report.saved_per_pattern] == HEADS_SAVED
    assert sum(n for _, n, _ in report.saved_per_pattern) == len(report.modules_to_save)
    saved_params = sum(p.numel() for n, p in model.named_parameters()
                       if p.requires_grad and ".lora_" not in n)
    assert sum(params for _, _, params in report.saved_per_pattern) == saved_params
    assert "preset 'default'" in text and "trainer.model.lora.modules_to_save=[]" in text
    assert "blocks.0.norm1" not in text  # the norms are counted, not listed
    assert "  decoder            rank 16 " in text and "  text_encoder       rank 4 " in text
    own = get_lora_report(build_lora_sam3(build_sam3_arch("tiny"),
                                          {"preset": "attention_mlp",
                                           "modules_to_save": ["dot_prod_scoring"]}))
    assert own.saved_from_preset is None and own.saved_per_pattern[0][:2] == ("dot_prod_scoring", 1)
    assert "module(s), lora.modules_to_save:" in own.format()
    assert "fully trained" not in get_lora_report(
        build_lora_sam3(build_sam3_arch("tiny"), {"preset": "attention_mlp"})).format()
