"""``sam3_lora_plugin.testing.checkpoint_size``: a checkpoint file's bound from its tensors."""

import torch

from sam3_lora_plugin.testing import max_checkpoint_file_bytes, tensor_bytes


def test_tensor_bytes_counts_nested_tensors_by_dtype():
    ckpt = {"model": {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.bfloat16)},
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1.0}]},
            "rng": [torch.zeros(7, dtype=torch.uint8)], "epoch": 3}
    assert tensor_bytes(ckpt) == (12 * 4 + 5 * 2 + 2 * 4 + 7, 4)


def test_a_saved_checkpoint_fits_its_bound_and_a_bloated_one_does_not(tmp_path):
    ckpt = {"model": {f"layer{i}.lora_A": torch.randn(4, 16) for i in range(50)}, "epoch": 1}
    torch.save(ckpt, tmp_path / "ok.pt")
    assert (tmp_path / "ok.pt").stat().st_size <= max_checkpoint_file_bytes(ckpt)
    bloated = {**ckpt, "junk": "x" * 200_000}  # non-tensor data the bound does not allow
    torch.save(bloated, tmp_path / "bloated.pt")
    assert (tmp_path / "bloated.pt").stat().st_size > max_checkpoint_file_bytes(bloated)
