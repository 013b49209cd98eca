"""Fixtures: a tiny SAM3 with trained-looking adapters, its Trainer-style checkpoint,
and the adapter directory exported from it."""

import pytest
import torch

from sam3_lora_plugin.adapters.io import export_adapter
from tests.adapters.helpers import make_model, randomise_trainable


@pytest.fixture
def trained():
    return randomise_trainable(make_model())


@pytest.fixture
def adapter_dir(trained, tmp_path):
    torch.save({"model": trained.state_dict(), "epoch": 3, "steps": {"train": 24}},
               tmp_path / "checkpoint.pt")
    return export_adapter(str(tmp_path / "checkpoint.pt"), str(tmp_path / "adapter"))
