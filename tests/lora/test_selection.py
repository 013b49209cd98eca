"""Selection and injection on a tiny SAM3 built from sam3's own classes."""

import logging

import pytest
import torch.nn as nn

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.lora import LoRALinear, LoRAMultiheadAttention
from sam3_lora_plugin.lora.config import COMPONENTS, LoraConfig
from sam3_lora_plugin.lora.inject import inject_lora
from sam3_lora_plugin.lora.selection import LoraSelectionError, select_lora_targets


@pytest.fixture(scope="module")
def tiny_names():
    model = build_sam3_arch("tiny")
    return {n: type(m) for n, m in model.named_modules()}


@pytest.fixture
def tiny():
    return build_sam3_arch("tiny")


def test_default_preset_reaches_every_attention_block(tiny):
    """Every MultiheadAttention and every ViT qkv/proj in the default components is adapted."""
    cfg = LoraConfig()
    attn_names = [
        n for n, m in tiny.named_modules()
        if any(n.startswith(COMPONENTS[c] + ".") for c in cfg.components)
        and (isinstance(m, nn.MultiheadAttention) or n.endswith((".attn.qkv", ".attn.proj")))
    ]
    assert len(attn_names) > 10
    inject_lora(tiny, cfg)
    modules = dict(tiny.named_modules())
    for name in attn_names:
        assert isinstance(modules[name], (LoRAMultiheadAttention, LoRALinear)), name


def test_only_adapters_are_trainable(tiny):
    """After injection, requires_grad is True exactly on lora_A/lora_B weights and on the
    parameters of the modules trained fully (attention_mlp_heads' heads, neck level, norms)."""
    cfg = LoraConfig(preset="attention_mlp_heads", roles=["q", "v", "mlp"])
    report = inject_lora(tiny, cfg)
    assert report.modules_to_save
    for name, p in tiny.named_parameters():
        saved = any(name.startswith(m + ".") for m in report.modules_to_save)
        assert p.requires_grad == (".lora_A." in name or ".lora_B." in name or saved), name


def test_qkv_split_adapts_only_selected_slices(tiny):
    """roles [q, v] on the fused ViT qkv gives adapters named q and v only."""
    inject_lora(tiny, LoraConfig(components=["vision_trunk"], roles=["q", "v"]))
    qkv = tiny.backbone.vision_backbone.trunk.blocks[0].attn.qkv
    assert set(qkv.lora_A) == {"q", "v"}
    dim = qkv.in_features
    assert qkv.lora_slices == {"q": (0, dim), "v": (2 * dim, 3 * dim)}


def test_qkv_fused_mode_uses_one_adapter(tiny):
    inject_lora(tiny, LoraConfig(components=["vision_trunk"], roles=["q"], qkv_mode="fused"))
    qkv = tiny.backbone.vision_backbone.trunk.blocks[0].attn.qkv
    assert set(qkv.lora_A) == {"all"}


def test_base_parameter_names_unchanged(tiny):
    """A stock state dict (no lora keys) still loads: only lora keys are missing."""
    base = {k: v.clone() for k, v in tiny.state_dict().items()}
    inject_lora(tiny, LoraConfig(components=list(COMPONENTS), roles=["q", "k", "v", "out", "mlp"]))
    missing, unexpected = tiny.load_state_dict(base, strict=False)
    assert unexpected == []
    assert missing and all(".lora_" in k for k in missing)


def test_empty_selection_is_an_error(tiny_names):
    """A selection that matches nothing raises, naming the settings and the fix."""
    model = build_sam3_arch("tiny")
    with pytest.raises(LoraSelectionError, match="matches no module"):
        select_lora_targets(model, LoraConfig(components=[], include=["no.such.module"]))


def test_unknown_component_is_an_error():
    with pytest.raises(ValueError, match="Unknown SAM3 component 'vision'"):
        LoraConfig(components=["vision"])


def test_unknown_key_is_an_error():
    with pytest.raises(TypeError, match="Unknown LoRA setting.*'rnak'"):
        LoraConfig.from_any({"rnak": 4})


@pytest.mark.parametrize("rank", [0, -1])
def test_bad_rank_is_an_error(rank):
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=rank)


def test_missing_component_and_unmatched_exclude_are_reported(caplog):
    """A preset naming an absent component and an exclude matching nothing are warned about."""
    model = build_sam3_arch("tiny", enable_segmentation=False)
    cfg = LoraConfig(components=["decoder", "segmentation_head"], exclude=["nothing.*"])
    with caplog.at_level(logging.WARNING):
        report = inject_lora(model, cfg)
    text = "\n".join(report.warnings)
    assert "'segmentation_head'" in text and "'nothing.*'" in text
    assert "nothing.*" in caplog.text


def test_include_matching_nothing_is_an_error():
    """An explicit include pattern that matches no module is an error, even when the
    components select other modules."""
    model = build_sam3_arch("tiny", enable_segmentation=False)
    cfg = LoraConfig(components=["decoder"], include=["transformer.decoder.*", "nothing.*"])
    with pytest.raises(LoraSelectionError, match=r"include pattern\(s\) \['nothing\.\*'\]"):
        select_lora_targets(model, cfg)


def test_include_exclude_and_overrides(tiny):
    """include adds a head Linear, exclude removes a layer, overrides set per-component rank."""
    cfg = LoraConfig(
        components=["decoder", "fusion_encoder"],
        include=["dot_prod_scoring.hs_proj"],
        exclude=["re:transformer\\.decoder\\.layers\\.0\\..*"],
        component_overrides={"fusion_encoder": {"rank": 2, "alpha": 4}},
    )
    targets, _ = select_lora_targets(tiny, cfg)
    names = {t.name: t for t in targets}
    assert "dot_prod_scoring.hs_proj" in names
    assert not any(n.startswith("transformer.decoder.layers.0.") for n in names)
    assert any(n.startswith("transformer.decoder.layers.1.") for n in names)
    enc = [t for t in targets if t.component == "fusion_encoder"]
    assert enc and all(t.rank == 2 and t.alpha == 4 for t in enc)


def test_modules_to_save_are_trainable_and_must_match(tiny):
    inject_lora(tiny, LoraConfig(modules_to_save=["dot_prod_scoring"]))
    assert all(p.requires_grad for p in tiny.dot_prod_scoring.parameters())
    with pytest.raises(LoraSelectionError, match="modules_to_save"):
        inject_lora(build_sam3_arch("tiny"), LoraConfig(modules_to_save=["nope"]))


def test_presets_fill_only_what_is_not_given():
    assert LoraConfig(preset="qv").roles == ["q", "v"]
    cfg = LoraConfig(preset="attention_mlp", components=["decoder"])
    assert cfg.components == ["decoder"] and "mlp" in cfg.roles
    with pytest.raises(ValueError, match="Unknown lora.preset 'everything'.*'all_linear'"):
        LoraConfig(preset="everything")


def test_a_presets_per_component_ranks_follow_the_configs_rank(tiny):
    """``component_rank_scale`` (the default's): rank x factor per component, alpha scaled
    alike (alpha / rank kept); an explicit ``component_overrides`` replaces it ({}: one rank);
    the resolved ranks are what the config records, so a recorded adapter keeps them."""
    from dataclasses import asdict

    from sam3_lora_plugin.lora.config import PRESETS

    scale = PRESETS["default"]["component_rank_scale"]
    assert scale == {"text_encoder": 0.5, "fusion_encoder": 2.0, "decoder": 2.0,
                     "geometry_encoder": 2.0, "segmentation_head": 2.0}
    for rank, alpha in ((8, 16.0), (4, 8.0), (16, 16.0), (1, 2.0)):
        cfg = LoraConfig(rank=rank, alpha=alpha)
        for component in cfg.components:
            r, a = cfg.rank_alpha_for(component)
            assert r == max(1, round(rank * scale.get(component, 1.0))), (rank, component)
            assert a / r == alpha / rank
    ranks = {t.component: t.rank for t in select_lora_targets(tiny, LoraConfig())[0]}
    assert ranks == {"vision_trunk": 8, "text_encoder": 4, "fusion_encoder": 16, "decoder": 16,
                     "geometry_encoder": 16, "segmentation_head": 16}
    one_rank = LoraConfig(component_overrides={})
    assert {t.rank for t in select_lora_targets(tiny, one_rank)[0]} == {8}
    assert LoraConfig(preset="attention_mlp_heads").component_overrides == {}
    recorded = LoraConfig.from_any({**asdict(LoraConfig(rank=4, alpha=8)), "rank": 8})
    assert recorded.rank_alpha_for("decoder") == (8, 16.0)  # recorded at rank 4: 2 x 4


def test_a_config_recorded_under_the_old_default_keeps_its_layers(tiny):
    """An adapter saved while ``default`` was image_mlp's layers recorded its resolved
    components and roles next to ``preset: default``; those win over today's preset."""
    from dataclasses import asdict

    recorded = {**asdict(LoraConfig(preset="image_mlp")), "preset": "default"}
    cfg = LoraConfig.from_any(recorded)
    assert cfg.components == ["vision_trunk", "fusion_encoder", "decoder"]
    assert cfg.components != LoraConfig().components
    names = lambda c: sorted(t.name for t in select_lora_targets(tiny, c)[0])  # noqa: E731
    assert names(cfg) == names(LoraConfig(preset="image_mlp"))


def test_component_without_matching_roles_is_reported(tiny):
    """'scoring' has only head Linears: with attention roles it adapts nothing, and the
    user is told so."""
    _, warnings = select_lora_targets(tiny, LoraConfig(components=["decoder", "scoring"]))
    assert any("'scoring'" in w and "match no layer" in w for w in warnings)


def test_modules_to_save_overlapping_an_adapted_layer_is_refused(tiny):
    """all_linear adapts dot_prod_scoring's Linears: training the module fully as well would
    train their base weights under the adapters (wrong fingerprint, merge without s·BA)."""
    with pytest.raises(LoraSelectionError, match=r"'dot_prod_scoring' overlaps the adapted "
                       r"layer 'dot_prod_scoring\..*lora\.exclude"):
        inject_lora(tiny, LoraConfig(preset="all_linear", modules_to_save=["dot_prod_scoring"]))
    assert not any(p.requires_grad is False for p in tiny.parameters())  # nothing was changed
    # the advice works: exclude the module's layers from the adapters
    model = build_sam3_arch("tiny")
    inject_lora(model, LoraConfig(preset="all_linear", modules_to_save=["dot_prod_scoring"],
                                  exclude=["dot_prod_scoring.*"]))
    assert all(p.requires_grad for p in model.dot_prod_scoring.parameters())
