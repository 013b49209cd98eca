"""Fixtures of the bad-input suite: one LoRA checkpoint + adapter made the way a run makes
them, and a small COCO dataset.

The checkpoint is the adapter-only state dict of the model ``configs/lora/smoke_cpu.yaml``
builds (``trainer.model`` instantiated from the composed config, in this process) saved
in the Trainer's layout; training it first would add minutes and change nothing the
error paths read (the metadata, the tensors, the file format).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    """A LoRA checkpoint (``ckpt/checkpoint.pt``), its adapter (``adapter/``), the smoke
    dataset cache (``cache/``) and a copy of its valid split (``data/``)."""
    import torch
    from hydra.utils import instantiate

    from sam3_lora_plugin.adapters.io import export_adapter
    from sam3_lora_plugin.data.synthetic import get_smoke_split_path
    from sam3_lora_plugin.trainer.compose import compose_config

    root = tmp_path_factory.mktemp("bad_inputs")
    cache = root / "cache"
    valid = Path(get_smoke_split_path("valid", cache_dir=str(cache)))
    shutil.copytree(valid, root / "data" / "valid")
    shutil.copytree(valid, root / "data" / "train")
    cfg = compose_config("configs/lora/smoke_cpu.yaml", ["paths.experiment_log_dir=/unused"])
    model = instantiate(cfg.trainer.model, _convert_="all")
    (root / "ckpt").mkdir()
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 1, "steps": {"train": 4, "val": 0}}, root / "ckpt" / "checkpoint.pt")
    export_adapter(str(root / "ckpt" / "checkpoint.pt"), str(root / "adapter"))
    return root


