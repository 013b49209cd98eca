"""DoRA adapters through every file path: the Trainer's adapter-only checkpoint (resume),
export (PEFT's ``lora_magnitude_vector`` key), load into a plain model, inspect, and merge
into a stock ``sam3.pt`` read back by sam3's own loader."""

import pytest
import torch
from sam3.model_builder import _load_checkpoint
from sam3.train.utils.checkpoint_utils import load_state_dict_into_model
from safetensors.torch import load_file

from sam3_lora_plugin.adapters.__main__ import main
from sam3_lora_plugin.adapters.io import ADAPTER_WEIGHTS, export_adapter
from sam3_lora_plugin.adapters.load import load_adapter
from sam3_lora_plugin.adapters.merge import merge_adapter_into_checkpoint
from sam3_lora_plugin.adapters.metadata import RNG_STATE_KEY, AdapterMismatchError
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import write_stock_checkpoint
from sam3_lora_plugin.testing import flatten_outputs, make_batch
from tests.adapters.helpers import make_model, randomise_trainable

pytestmark = pytest.mark.usefixtures("sam3_cpu_patches")
DORA = {"use_dora": True, "components": ["vision_trunk", "fusion_encoder", "decoder"],
        "roles": ["q", "k", "v", "out", "mlp"]}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return make_batch(tmp_path_factory.mktemp("data"), training=False)["x"]


@pytest.fixture(scope="module")
def trained():
    return randomise_trainable(make_model(lora=DORA), scale=0.2)


def _outputs(model, batch):
    with torch.no_grad():
        return dict(flatten_outputs(model(batch)))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())


def test_dora_changes_the_output_and_covers_linear_qkv_and_attention(trained, batch):
    mags = [n for n, _ in trained.named_parameters() if ".lora_magnitude." in n]
    assert any(".attn.qkv.lora_magnitude.q" in n for n in mags)          # per-slice qkv
    assert any(".mlp.fc1.lora_magnitude.all" in n for n in mags)         # nn.Linear
    assert any("self_attn.lora_magnitude.out" in n for n in mags)        # MultiheadAttention
    base = make_model(lora=DORA)
    assert _max_diff(_outputs(trained, batch), _outputs(base, batch)) > 1e-3


def test_resume_from_the_adapter_only_state_dict_is_exact(trained, batch):
    sd = trained.state_dict()
    assert any(".lora_magnitude." in k for k in sd)
    fresh = make_model(lora=DORA)
    load_state_dict_into_model(state_dict=sd, model=fresh, strict=True)  # SAM3's resume path
    for k, v in sd.items():  # the RNG entry is the process's, restored only by a Trainer resume
        if k != RNG_STATE_KEY:
            assert torch.equal(fresh.state_dict()[k], v), k
    assert _max_diff(_outputs(trained, batch), _outputs(fresh, batch)) == 0.0
    plain_lora = make_model(lora={**DORA, "use_dora": False})
    with pytest.raises(AdapterMismatchError, match="use_dora True in the adapter, False here"):
        load_state_dict_into_model(state_dict=sd, model=plain_lora, strict=True)


def test_export_load_inspect_and_merge_into_sam3_pt(trained, batch, tmp_path, capsys):
    torch.save({"model": trained.state_dict()}, tmp_path / "checkpoint.pt")
    adapter = export_adapter(str(tmp_path / "checkpoint.pt"), str(tmp_path / "adapter"))
    keys = set(load_file(f"{adapter}/{ADAPTER_WEIGHTS}"))
    assert any(k.endswith(".mlp.fc1.lora_magnitude_vector") for k in keys)  # PEFT's name
    want = _outputs(trained, batch)

    plain = build_sam3_arch("tiny", seed=0, eval_mode=True)
    load_adapter(plain, adapter)
    assert _max_diff(want, _outputs(plain, batch)) <= 1e-6

    assert main(["inspect", adapter]) == 0
    assert "dora True" in capsys.readouterr().out

    base = write_stock_checkpoint(build_sam3_arch("tiny", seed=0), str(tmp_path / "sam3.pt"))
    merged = merge_adapter_into_checkpoint(base, adapter, str(tmp_path / "merged.pt"))
    stock = build_sam3_arch("tiny", seed=3, eval_mode=True)
    _load_checkpoint(stock, merged)
    assert _max_diff(want, _outputs(stock, batch)) <= 1e-5


def test_merge_lora_in_memory_round_trip(trained, batch):
    from sam3_lora_plugin.lora.inject import merge_lora, unmerge_lora

    before = {k: v.detach().clone() for k, v in trained.named_parameters()}
    want = _outputs(trained, batch)
    merge_lora(trained)
    assert _max_diff(want, _outputs(trained, batch)) <= 1e-5
    unmerge_lora(trained)
    assert _max_diff(want, _outputs(trained, batch)) <= 1e-5
    for k, v in trained.named_parameters():  # the base weights come back
        torch.testing.assert_close(v.detach(), before[k], rtol=1e-6, atol=1e-6, msg=k)
