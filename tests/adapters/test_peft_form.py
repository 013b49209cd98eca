"""Against PEFT itself: our adapter directory makes PEFT fail loudly, and the `to-peft`
form reproduces the adapted model's outputs in PEFT (issue 14)."""

import json

import pytest
import torch

from sam3_lora_plugin.adapters.__main__ import main
from sam3_lora_plugin.adapters.io import export_adapter
from sam3_lora_plugin.models.arch import build_sam3_arch
from tests.adapters.helpers import make_model, randomise_trainable

peft = pytest.importorskip("peft")

VISION = {"components": ["vision_trunk"], "modules_to_save": [], "rank": 4, "alpha": 8,
          "component_overrides": {}}


def _trunk_out(model, x):
    with torch.no_grad():
        out = model.backbone.vision_backbone.trunk(x)
    return out[-1] if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize("extra", [{}, {"roles": ["q", "v"]}, {"init": "pissa", "use_rslora": True}])
def test_to_peft_reproduces_our_outputs_in_peft(tmp_path, extra, capsys):
    ours = randomise_trainable(make_model(lora=dict(VISION, **extra)), scale=0.2)
    torch.save({"model": ours.state_dict()}, tmp_path / "checkpoint.pt")
    export_adapter(str(tmp_path / "checkpoint.pt"), str(tmp_path / "adapter"))
    assert main(["to-peft", str(tmp_path / "adapter"), str(tmp_path / "peft")]) == 0
    base = build_sam3_arch("tiny", seed=0, eval_mode=True)
    # float64, so that exact means equal to rounding (fused vs per-slice sums differ ~1e-5 in fp32)
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = _trunk_out(base.double(), x)
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval().double()
    expected = _trunk_out(ours.eval().double(), x)
    got = _trunk_out(loaded.base_model.model, x)
    assert (expected - plain).abs().max() > 1e-2  # the adapter changes the output
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_our_directory_makes_peft_fail_loudly(adapter_dir):
    cfg = json.load(open(f"{adapter_dir}/adapter_config.json"))
    assert cfg["base_model_name_or_path"] is None  # not transformers' facebook/sam3
    with pytest.raises(KeyError, match="not loadable by PEFT.*to-peft"):
        peft.PeftModel.from_pretrained(build_sam3_arch("tiny", seed=0), adapter_dir)


def test_mha_adapters_have_no_peft_form(adapter_dir, tmp_path, capsys):
    """The default adapters include decoder attention: PEFT would misload them (#3774)."""
    assert main(["to-peft", adapter_dir, str(tmp_path / "peft")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "huggingface/peft #3774" in err
    assert not (tmp_path / "peft").exists()
