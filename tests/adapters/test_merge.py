"""Merge export into a stock-layout checkpoint, loaded back with sam3's own loader."""

import pytest
import torch
from sam3.model_builder import _load_checkpoint

from sam3_lora_plugin.adapters.io import export_adapter
from sam3_lora_plugin.adapters.merge import merge_adapter_into_checkpoint
from sam3_lora_plugin.adapters.metadata import AdapterMismatchError
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import CheckpointError, write_stock_checkpoint
from tests.adapters.helpers import make_model, randomise_trainable
from sam3_lora_plugin.testing import flatten_outputs, make_batch

pytestmark = pytest.mark.usefixtures("sam3_cpu_patches")
TRACKER = {"tracker.maskmem_tpos_enc": torch.randn(7, 1, 1, 64),
           "tracker.sam_mask_decoder.iou_head.weight": torch.randn(4, 32)}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return make_batch(tmp_path_factory.mktemp("data"), training=False)["x"]


@pytest.fixture
def base_file(tmp_path):
    """A sam3.pt-style file (detector.* from our tiny builder, plus tracker.* keys)."""
    return write_stock_checkpoint(build_sam3_arch("tiny", seed=0), str(tmp_path / "sam3.pt"),
                                  extra=TRACKER)


def _export(model, tmp_path, name="adapter"):
    torch.save({"model": model.state_dict()}, tmp_path / f"{name}.pt")
    return export_adapter(str(tmp_path / f"{name}.pt"), str(tmp_path / name))


@pytest.mark.parametrize("init", ["kaiming", "pissa"])
def test_merged_checkpoint_loads_in_stock_and_matches_the_adapter(init, base_file, tmp_path, batch):
    trained = randomise_trainable(make_model(lora={"init": init}))
    adapter = _export(trained, tmp_path)
    out = merge_adapter_into_checkpoint(base_file, adapter, str(tmp_path / "merged.pt"))

    stock = build_sam3_arch("tiny", seed=3, eval_mode=True)  # other init: all must come from the file
    _load_checkpoint(stock, out)  # sam3.model_builder's own loader
    with torch.no_grad():
        got = dict(flatten_outputs(stock(batch)))
        want = dict(flatten_outputs(trained(batch)))
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in got if got[k].is_floating_point())
    assert worst <= 1e-5

    base = torch.load(base_file, weights_only=True)["model"]
    merged = torch.load(out, weights_only=True)["model"]
    # The video builder loads the whole dict strictly: same keys, shapes and dtypes.
    assert merged.keys() == base.keys()
    assert all(merged[k].shape == base[k].shape and merged[k].dtype == base[k].dtype
               for k in base)
    for k in TRACKER:
        assert torch.equal(merged[k], base[k])
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(k.startswith("detector.") for k in changed)
    assert any(k.startswith("detector.dot_prod_scoring.") for k in changed)  # modules_to_save


def test_merge_refuses_another_base_and_overwriting_the_base(base_file, tmp_path):
    adapter = _export(randomise_trainable(make_model(seed=4)), tmp_path)
    with pytest.raises(AdapterMismatchError, match="not the base the adapter was trained on"):
        merge_adapter_into_checkpoint(base_file, adapter, str(tmp_path / "m.pt"))
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.pt.tmp").exists()
    merge_adapter_into_checkpoint(base_file, adapter, str(tmp_path / "m.pt"), check_base=False)
    with pytest.raises(CheckpointError, match="Refusing to overwrite the input"):
        merge_adapter_into_checkpoint(base_file, adapter, base_file)


def test_merge_refuses_another_architecture(tmp_path):
    small = write_stock_checkpoint(build_sam3_arch("tiny", seed=0, d_model=48, num_heads=4),
                                   str(tmp_path / "other.pt"))
    adapter = _export(make_model(), tmp_path)
    with pytest.raises(AdapterMismatchError, match="another architecture or size"):
        merge_adapter_into_checkpoint(small, adapter, str(tmp_path / "m.pt"))


def test_write_stock_checkpoint_refuses_adapted_models(tmp_path):
    with pytest.raises(ValueError, match="without LoRA adapters"):
        write_stock_checkpoint(make_model(), str(tmp_path / "x.pt"))
