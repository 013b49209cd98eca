"""The preset inventory: analytic counts equal real injection, and the default preset
reaches every attention block of the full-size architecture."""

import json

import pytest
import torch.nn as nn

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.cli.inventory import get_attention_blocks, lora_inventory, main
from sam3_lora_plugin.lora import LoRALinear, LoRAMultiheadAttention
from sam3_lora_plugin.lora.config import PRESETS, LoraConfig
from sam3_lora_plugin.lora.inject import inject_lora
from sam3_lora_plugin.lora.selection import select_lora_targets


@pytest.mark.parametrize("preset", list(PRESETS))
def test_counts_equal_real_injection(preset):
    cfg = LoraConfig(preset=preset, rank=4, component_overrides={"decoder": {"rank": 2}})
    model = build_sam3_arch("tiny")
    rows = lora_inventory(model, cfg)
    report = inject_lora(model, cfg)
    assert sum(r.params for r in rows) == report.trainable_params
    assert sum(r.modules for r in rows if r.kind != "full") == len(report.targets)
    assert sum(r.modules for r in rows if r.kind == "full") == len(report.modules_to_save)
    adapters = sum(len(m.lora_A) for m in model.modules()
                   if isinstance(m, (LoRALinear, LoRAMultiheadAttention)))
    assert sum(r.adapters for r in rows) == adapters


def test_presets_grow_monotonically():
    model = build_sam3_arch("tiny")
    params = {p: sum(r.params for r in lora_inventory(model, LoraConfig(preset=p)))
              for p in PRESETS}
    assert params["qv"] < params["attention_image"] < params["attention"]
    assert params["attention_image"] < params["image_mlp"] < params["attention_mlp"]
    assert params["default"] == params["attention_mlp_heads_rebalanced"]
    # attention_mlp_heads_rebalanced: attention_mlp_heads at half the rank in the text encoder
    # and twice the rank in the fusion encoder, decoder, geometry encoder and mask head
    # (adapter parameters are linear in the rank)
    def per_part(preset):
        return {(r.component, r.kind): r.params
                for r in lora_inventory(model, LoraConfig(preset=preset))}
    heads, rebalanced = per_part("attention_mlp_heads"), per_part("attention_mlp_heads_rebalanced")
    assert set(heads) == set(rebalanced)
    for (component, kind), n in heads.items():
        factor = 1 if kind == "full" else {"text_encoder": 0.5, "vision_trunk": 1}.get(component, 2)
        assert rebalanced[component, kind] == n * factor, (component, kind)
    # attention_mlp_heads: attention_mlp's adapters, and heads, neck level and norms trained fully
    adapters = sum(r.params for r in lora_inventory(model, LoraConfig(preset="attention_mlp_heads"))
                   if r.kind != "full")
    assert adapters == params["attention_mlp"] < params["attention_mlp_heads"]
    assert params["attention"] < params["attention_mlp"] < params["all_linear"]


@pytest.fixture(scope="module")
def full_model():
    return build_sam3_arch("full")


def test_default_preset_reaches_every_attention_block_of_full_sam3(full_model):
    """Every nn.MultiheadAttention and ViT attention of the default components gets
    q, k, v and out adapters (the ViT's out is attn.proj)."""
    cfg = LoraConfig()
    blocks = get_attention_blocks(full_model, cfg.components)
    targets = {t.name: t for t in select_lora_targets(full_model, cfg)[0]}
    modules = dict(full_model.named_modules())
    vit = [b for b in blocks if not isinstance(modules[b], nn.MultiheadAttention)]
    mha = [b for b in blocks if isinstance(modules[b], nn.MultiheadAttention)]
    assert len(vit) == 32  # SAM3's ViT-L/14 trunk depth
    # text encoder: 24 layers; fusion encoder: self+cross; decoder: self+cross+text; geometry
    # encoder: self+cross to the image; segmentation head: cross to the prompt
    assert len(mha) == 24 + 6 * 2 + 6 * 3 + 3 * 2 + 1
    for b in mha:
        assert targets[b].targets == ("q", "k", "v", "out"), b
    for b in vit:
        assert targets[f"{b}.qkv"].targets == ("q", "k", "v"), b
        assert targets[f"{b}.proj"].targets == ("all",), b
    for b in vit:  # and their MLPs (the learning study's finding, README)
        assert targets[f"{b.rsplit('.', 1)[0]}.mlp.fc1"].targets == ("all",), b
    total = sum(p.numel() for p in full_model.parameters())
    for preset in ("default", "attention_mlp_heads_rebalanced", "attention_mlp_heads"):
        trainable = sum(r.params for r in lora_inventory(full_model, LoraConfig(preset=preset)))
        assert 0.001 < trainable / total < 0.015  # the budget: within 1.5%
    rows = lora_inventory(full_model, LoraConfig(preset="attention_mlp_heads"))
    full = {r.component: r.params for r in rows if r.kind == "full"}  # fully trained modules
    assert {"scoring", "decoder", "vision_trunk", "text_encoder", "other"} <= set(full)
    # other: the neck's stride-14 level; vision_trunk: its norms
    assert full["other"] == sum(p.numel() for p in modules["backbone.vision_backbone.convs.2"].parameters())
    assert full["vision_trunk"] == sum(p.numel() for n, m in modules.items()
                                       if n.startswith("backbone.vision_backbone.trunk.")
                                       and isinstance(m, nn.LayerNorm) for p in m.parameters())


def test_cli_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "inv.json"
    assert main(["--size", "tiny", "--preset", "qv", "--rank", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "preset 'qv'" in text and "vision_trunk" in text and "total" in text
    data = json.loads(out.read_text())
    assert data["rank"] == 2 and data["presets"]["qv"]
