"""Adapter-only state dicts: what the Trainer saves, and that it loads back."""

import pytest
import torch
from sam3.train.utils.checkpoint_utils import load_state_dict_into_model

from sam3_lora_plugin.adapters.metadata import METADATA_KEY, RNG_STATE_KEY, AdapterMismatchError
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import CheckpointError, read_checkpoint
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

LORA = {"components": ["vision_trunk", "decoder"], "modules_to_save": ["dot_prod_scoring"]}


def _lora_model(seed=0):
    return build_lora_sam3(build_sam3_arch("tiny", seed=seed), LORA)


def _randomise_trainable(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g))


def test_state_dict_holds_only_trainable_weights():
    """state_dict() == trainable params (+ buffers of modules_to_save), nothing frozen."""
    model = _lora_model()
    sd = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(sd)
    extra = set(sd) - trainable - {METADATA_KEY, RNG_STATE_KEY}
    assert all(k.startswith("dot_prod_scoring.") for k in extra), extra
    assert sd[METADATA_KEY].dtype == torch.uint8
    assert any(".lora_A." in k for k in sd)
    n_all = sum(p.numel() for p in model.parameters())
    n_sd = sum(v.numel() for v in sd.values())
    assert n_sd < 0.05 * n_all


def test_adapter_only_state_dict_round_trip_through_sam3_loader():
    """SAM3's own load_state_dict_into_model (its resume path, strict) accepts an
    adapter-only dict and restores the trained weights exactly."""
    src = _lora_model()
    _randomise_trainable(src)
    sd = src.state_dict()
    dst = _lora_model()
    load_state_dict_into_model(state_dict=sd, model=dst, strict=True)
    # The RNG states are process state, restored only by the Trainer's own resume.
    sd.pop(RNG_STATE_KEY)
    for k, v in sd.items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_missing_adapter_key_still_fails():
    """Only frozen keys are forgiven: a dict missing an adapter key is rejected."""
    sd = _lora_model().state_dict()
    dropped = next(k for k in sd if ".lora_B." in k)
    del sd[dropped]
    with pytest.raises(Exception, match="lora_B"):
        load_state_dict_into_model(state_dict=sd, model=_lora_model(), strict=True)


def test_full_state_dict_loads_as_usual():
    """A full dict (with frozen keys) keeps normal semantics: missing frozen keys count."""
    model = _lora_model()
    full = {k: v for k, v in build_sam3_arch("tiny", seed=3).state_dict().items()}
    missing, unexpected = model.load_state_dict(full, strict=False)
    assert unexpected == []
    assert missing and all(".lora_" in k for k in missing)
    del full[next(iter(full))]
    missing, _ = model.load_state_dict(full, strict=False)
    assert any(".lora_" not in k for k in missing)


def test_frozen_weights_come_from_the_base_not_the_checkpoint(tmp_path):
    """Saving and restoring into a model built from the same base reproduces it exactly."""
    src = _lora_model()
    _randomise_trainable(src)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict()}, path)
    dst = _lora_model()
    load_state_dict_into_model(state_dict=torch.load(path)["model"], model=dst)
    full_src = {n: p for n, p in src.named_parameters()}
    for n, p in dst.named_parameters():
        assert torch.equal(p, full_src[n]), n


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    src = tmp_path / "ok.pt"
    torch.save({"model": _lora_model().state_dict()}, src)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*truncated or corrupt"):
        read_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("other, needle", [
    (dict(lora={"rank": 8}), r"rank 4 in the adapter, 8 here"),
    (dict(seed=3), r"trained on a different base model"),
])
def test_resume_into_a_different_model_is_refused(other, needle):
    """SAM3's resume loader surfaces our metadata check, naming the difference."""
    sd = build_lora_sam3(build_sam3_arch("tiny", seed=0), dict(LORA, rank=4)).state_dict()
    lora = {**LORA, "rank": 4, **other.get("lora", {})}
    model = build_lora_sam3(build_sam3_arch("tiny", seed=other.get("seed", 0)), lora)
    with pytest.raises(AdapterMismatchError, match=needle):
        load_state_dict_into_model(state_dict=sd, model=model, strict=True)
