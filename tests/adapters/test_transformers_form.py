"""Against PEFT and transformers' own Sam3Model (issue 16): `export --format transformers`
loads with PeftModel.from_pretrained onto a tiny Sam3Model (weights from our stock-layout
tiny sam3.pt, ``adapters.hf_names``) and reproduces our adapted model's outputs."""

import json

import pytest
import torch

from sam3_lora_plugin.adapters.__main__ import main
from sam3_lora_plugin.adapters.hf_names import get_transformers_config, to_transformers_state_dict
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import read_base_state_dict, write_stock_checkpoint
from sam3_lora_plugin.models.pretrained import get_tiny_base_path
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3
from tests.adapters.helpers import get_image, make_model, randomise_trainable, run_sam3, run_sam3model

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

NAMES = ("logits", "boxes", "masks", "presence", "semantic_seg")
# fp32 rounding: the base alone is within 1e-5 (test_hf_names.py); DoRA's row norms, computed
# in another order, move single mask logits by up to 3e-5. An adapter changes them by > 1e-2.
TOL = {"rtol": 1e-4, "atol": 5e-5}
BASE = {"rank": 4, "alpha": 8, "component_overrides": {"decoder": {"rank": 2}}}
CASES = {
    # every component but scoring (trained fully instead), every role, per-slice q/k/v
    "split_all": {"components": ["vision_trunk", "text_encoder", "fusion_encoder", "decoder",
                                 "geometry_encoder", "segmentation_head"],
                  "roles": ["q", "k", "v", "out", "mlp", "head"],
                  "exclude": ["geometry_encoder.points_*"], "modules_to_save": ["dot_prod_scoring"]},
    "dora": {"use_dora": True, "modules_to_save": []},
    "pissa": {"init": "pissa", "use_rslora": True, "modules_to_save": []},
    "fused_qv": {"qkv_mode": "fused", "roles": ["q", "v", "mlp"], "modules_to_save": []},
    # the default (= attention_mlp_heads_rebalanced): its adapters at three ranks (text
    # encoder rank/2, fusion encoder / decoder / geometry encoder / mask head 2 x rank), and the
    # heads, the neck's stride-14 level and every norm trained fully (177 modules_to_save on
    # full size, 39 on tiny)
    "default": {},
}


@pytest.fixture(autouse=True)
def _no_pin_memory(monkeypatch):  # sam3's box encoder pins memory, which needs a GPU
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """Our stock-layout tiny sam3.pt (the shipped pretrained tiny base)."""
    base = build_sam3_arch("tiny", seed=0, eval_mode=True, checkpoint_path=get_tiny_base_path())
    return write_stock_checkpoint(base, str(tmp_path_factory.mktemp("base") / "sam3.pt"))


def _sam3model(stock):
    model = transformers.Sam3Model(get_transformers_config("tiny")).eval()
    model.load_state_dict(to_transformers_state_dict(read_base_state_dict(stock)), strict=True)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_transformers_reproduces_our_outputs_in_peft(stock, tmp_path, case, capsys):
    ours = build_lora_sam3(build_sam3_arch("tiny", eval_mode=True, checkpoint_path=stock),
                           dict(BASE, **CASES[case]))
    randomise_trainable(ours, scale=0.1).eval()
    torch.save({"model": ours.state_dict()}, tmp_path / "checkpoint.pt")
    out = tmp_path / "hf"
    assert main(["export", "--format", "transformers", str(tmp_path / "checkpoint.pt"), str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] == (case == "dora")

    image = get_image()
    tokenizer = ours.backbone.language_backbone.tokenizer
    plain = run_sam3model(_sam3model(stock), image, tokenizer)
    loaded = peft.PeftModel.from_pretrained(_sam3model(stock), str(out)).eval()
    lora_layers = {n.rsplit(".lora_A", 1)[0] for n, _ in loaded.named_modules() if n.endswith(".lora_A")}
    assert len(lora_layers) == len(config["rank_pattern"])  # every adapter found its Linear
    got = run_sam3model(loaded.base_model.model, image, tokenizer)
    expected = run_sam3(ours, image)
    assert max((e - p).abs().max() for e, p in zip(expected, plain)) > 1e-2  # the adapter matters
    for name, e, g in zip(NAMES, expected, got):
        torch.testing.assert_close(g, e, **TOL, msg=lambda m: f"{name}: {m}")


def test_mha_and_fused_slices_land_on_q_k_v_o_proj(tmp_path, capsys):
    ours = randomise_trainable(make_model(lora={"components": ["vision_trunk", "fusion_encoder"],
                                                "roles": ["q", "v", "out"], "modules_to_save": []}))
    torch.save({"model": ours.state_dict()}, tmp_path / "checkpoint.pt")
    assert main(["export", str(tmp_path / "checkpoint.pt"), str(tmp_path / "adapter")]) == 0
    assert main(["export", "--format", "transformers", str(tmp_path / "adapter"),
                 str(tmp_path / "hf")]) == 0
    names = set(json.loads((tmp_path / "hf" / "adapter_config.json").read_text())["rank_pattern"])
    assert r"^detr_encoder\.layers\.0\.cross_attn\.q_proj" in names
    assert r"^detr_encoder\.layers\.1\.self_attn\.o_proj" in names
    assert r"^vision_encoder\.backbone\.layers\.1\.attention\.v_proj" in names
    assert not any("k_proj" in n for n in names)
    # an earlier export may be replaced; a directory with other files may not
    assert main(["export", "--format", "transformers", str(tmp_path / "adapter"),
                 str(tmp_path / "hf")]) == 0
    assert main(["export", "--format", "transformers", str(tmp_path / "adapter"),
                 str(tmp_path)]) == 2
    assert "nothing was written" in capsys.readouterr().err


def test_other_forms_are_not_replaced(tmp_path, capsys):
    """Same file names, other contents: our adapter directory and a to-peft form are kept."""
    ours = randomise_trainable(make_model(lora={"components": ["vision_trunk"], "modules_to_save": []}))
    torch.save({"model": ours.state_dict()}, tmp_path / "checkpoint.pt")
    assert main(["export", str(tmp_path / "checkpoint.pt"), str(tmp_path / "adapter")]) == 0
    assert main(["to-peft", str(tmp_path / "adapter"), str(tmp_path / "peft")]) == 0
    for other in ("adapter", "peft"):
        before = (tmp_path / other / "adapter_model.safetensors").read_bytes()
        assert main(["export", "--format", "transformers", str(tmp_path / "checkpoint.pt"),
                     str(tmp_path / other)]) == 2
        assert (tmp_path / other / "adapter_model.safetensors").read_bytes() == before
    assert capsys.readouterr().err.count("nothing was written") == 2


@pytest.mark.parametrize("lora, reason", [
    ({"include": ["geometry_encoder.points_direct_project"]}, "does not have"),
    ({"modules_to_save": ["geometry_encoder"], "components": ["vision_trunk"]}, "does not have"),
    ({"modules_to_save": ["backbone.language_backbone.resizer"]}, "name suffix"),
])
def test_adapters_without_a_sam3model_form_are_refused(tmp_path, capsys, lora, reason):
    ours = make_model(lora=dict({"modules_to_save": []}, **lora))
    torch.save({"model": ours.state_dict()}, tmp_path / "checkpoint.pt")
    assert main(["export", "--format", "transformers", str(tmp_path / "checkpoint.pt"),
                 str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err and "adapters merge" in err
    assert not (tmp_path / "hf").exists()
