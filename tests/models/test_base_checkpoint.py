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


@pytest.mark.parametrize("write", ["write_stock_checkpoint", "write_stock_safetensors"])
def test_stock_writers_replace_a_file_only_when_told_and_atomically(tmp_path, monkeypatch, write):
    """An existing file (someone's sam3.pt) is refused unless overwrite=True; a directory
    always; an interrupted write leaves the old file and no temporary file."""
    from sam3_lora_plugin.models.output_files import OutputPathError
    from sam3_lora_plugin.models import base_checkpoint

    writer = getattr(base_checkpoint, write)
    model = torch.nn.Linear(2, 3)
    path = tmp_path / "sam3.pt"
    path.write_bytes(b"someone's checkpoint")
    with pytest.raises(OutputPathError, match=r"sam3\.pt' already exists; nothing was written.*--overwrite"):
        writer(model, str(path))
    assert path.read_bytes() == b"someone's checkpoint"
    with pytest.raises(OutputPathError, match="is a directory"):
        writer(model, str(tmp_path), overwrite=True)
    assert writer(model, str(path), overwrite=True) == str(path)
    good = path.read_bytes()
    assert good != b"someone's checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == ["sam3.pt"]

    def partial_then_interrupt(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    if write == "write_stock_checkpoint":
        monkeypatch.setattr(torch, "save", partial_then_interrupt)
    else:
        import safetensors.torch
        monkeypatch.setattr(safetensors.torch, "save_file", partial_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        writer(model, str(path), overwrite=True)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["sam3.pt"]
