"""The adapter directory format: PEFT-like config and keys, atomic writes, clear errors."""

import json
import os

import pytest
import torch

from sam3_lora_plugin.adapters import io as adapter_io
from sam3_lora_plugin.adapters.io import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterFileError, export_adapter, from_peft_key,
    read_adapter, to_peft_key)
from sam3_lora_plugin.adapters.metadata import METADATA_KEY
from sam3_lora_plugin.models.base_checkpoint import CheckpointError
from sam3_lora_plugin.adapters.state import get_adapter_state_keys

from tests.adapters.helpers import make_model


def test_peft_key_mapping_round_trips():
    pairs = {
        "a.qkv.lora_A.q.weight": "base_model.model.a.qkv.lora_A.q.weight",
        "a.proj.lora_B.all.weight": "base_model.model.a.proj.lora_B.weight",
        "a.proj.lora_offset.all.A": "base_model.model.a.proj.lora_offset.A",
        "a.attn.lora_offset.v.B": "base_model.model.a.attn.lora_offset.v.B",
        "dot_prod_scoring.hs_proj.weight": "base_model.model.dot_prod_scoring.hs_proj.weight",
    }
    for ours, peft in pairs.items():
        assert to_peft_key(ours) == peft
        assert from_peft_key(peft) == ours


def test_export_writes_peft_like_config_and_all_trained_tensors(trained, adapter_dir):
    assert sorted(os.listdir(adapter_dir)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    cfg = json.loads(open(os.path.join(adapter_dir, ADAPTER_CONFIG)).read())
    assert cfg["peft_type"].startswith("SAM3_LORA") and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["init_lora_weights"] is True and cfg["use_rslora"] is False
    decoder = [m for m in cfg["target_modules"] if m.startswith("transformer.decoder.")]
    assert decoder and all(cfg["rank_pattern"][m] == 2 for m in decoder)
    assert cfg["modules_to_save"] == ["dot_prod_scoring"]
    meta = cfg["sam3_lora"]
    assert meta["base_fingerprint"].startswith("sha256:") and meta["sam3_version"] == "0.1.4"
    assert meta["plugin_version"] and meta["trainer_epoch"] == 3
    adapter = read_adapter(adapter_dir)
    expected = get_adapter_state_keys(trained)
    assert set(adapter.tensors) == expected
    sd = trained.state_dict()
    for k in expected:
        assert torch.equal(adapter.tensors[k], sd[k]), k


def test_rewrite_replaces_only_when_complete(trained, adapter_dir, tmp_path, monkeypatch):
    before = open(os.path.join(adapter_dir, ADAPTER_WEIGHTS), "rb").read()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(adapter_io, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_adapter(str(tmp_path / "checkpoint.pt"), adapter_dir)
    assert open(os.path.join(adapter_dir, ADAPTER_WEIGHTS), "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["adapter", "checkpoint.pt"]  # no temp left


def test_truncated_weights_name_the_file(adapter_dir):
    path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors.*truncated or corrupt.*Re-export"):
        read_adapter(adapter_dir)


@pytest.mark.parametrize("damage, needle", [
    ("no_dir", "does not exist"),
    ("no_config", "adapter_config.json is missing"),
    ("bad_json", "is not valid JSON"),
    ("plain_peft", "no 'sam3_lora' block"),
    ("missing_tensor", "lacks 1 adapter tensor"),
])
def test_broken_adapter_directories(adapter_dir, damage, needle):
    cfg_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    if damage == "no_dir":
        adapter_dir = adapter_dir + "_nope"
    elif damage == "no_config":
        os.remove(cfg_path)
    elif damage == "bad_json":
        open(cfg_path, "w").write("{not json")
    elif damage == "plain_peft":
        cfg = json.load(open(cfg_path))
        del cfg["sam3_lora"]
        json.dump(cfg, open(cfg_path, "w"))
    else:
        from safetensors.torch import load_file, save_file
        w = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
        tensors = load_file(w)
        del tensors[next(k for k in tensors if ".lora_B." in k)]
        save_file(tensors, w)
    with pytest.raises(AdapterFileError, match=needle):
        read_adapter(adapter_dir)


def test_export_refuses_a_full_checkpoint_and_a_truncated_one(tmp_path):
    full = tmp_path / "full.pt"
    base = make_model()
    torch.save({"model": {"w": torch.zeros(2)}}, full)
    with pytest.raises(CheckpointError, match="holds no LoRA adapter metadata"):
        export_adapter(str(full), str(tmp_path / "out"))
    good = tmp_path / "good.pt"
    torch.save({"model": base.state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"cut\.pt.*truncated or corrupt"):
        export_adapter(str(tmp_path / "cut.pt"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert METADATA_KEY in torch.load(good, weights_only=True)["model"]
