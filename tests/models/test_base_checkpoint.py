"""Loading stock-layout SAM3 checkpoints (detector.* keys) into our builder."""

import pytest
import torch

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import CheckpointError, load_base_checkpoint


def _write_stock_layout(model, path):
    # The layout of sam3.pt: {"model": {"detector.<name>": ..., "tracker.<name>": ...}}
    sd = {f"detector.{k}": v for k, v in model.state_dict().items()}
    sd["tracker.some.weight"] = torch.zeros(2)
    torch.save({"model": sd}, path)


def test_round_trip_same_architecture(tmp_path):
    src = build_sam3_arch("tiny", seed=1)
    path = tmp_path / "sam3.pt"
    _write_stock_layout(src, path)
    dst = build_sam3_arch("tiny", seed=2, checkpoint_path=str(path))
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / "sam3.pt"
    _write_stock_layout(build_sam3_arch("tiny", encoder_layers=1), path)
    with pytest.raises(CheckpointError, match="does not match this model.*missing keys"):
        build_sam3_arch("tiny", checkpoint_path=str(path))


def test_not_a_stock_checkpoint(tmp_path):
    path = tmp_path / "adapter.pt"
    torch.save({"model": {"x.lora_A.q.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="no 'detector.\\*' keys"):
        load_base_checkpoint(build_sam3_arch("tiny"), str(path))
