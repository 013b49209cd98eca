"""The base fingerprint: hashed once, not on every ``state_dict()``, and still right after
the base weights change."""

import pytest
import torch

import sam3_lora_plugin.adapters.metadata as metadata
from sam3_lora_plugin.adapters.metadata import METADATA_KEY, decode_metadata, get_base_fingerprint
from sam3_lora_plugin.lora.inject import merge_lora, unmerge_lora
from sam3_lora_plugin.models.arch import build_sam3_arch
from tests.adapters.helpers import make_model, randomise_trainable


_hash = metadata.fingerprint_tensors  # the real one, also while ``hashes`` counts calls


@pytest.fixture
def hashes(monkeypatch):
    """Counts the calls of ``fingerprint_tensors`` (the SHA-256 over the base weights)."""
    calls = []
    real = metadata.fingerprint_tensors

    def counting(items):
        calls.append(1)
        return real(items)

    monkeypatch.setattr(metadata, "fingerprint_tensors", counting)
    return calls


def _saved_fingerprint(model) -> str:
    return decode_metadata(model.state_dict()[METADATA_KEY])["base_fingerprint"]


def _fresh(model) -> str:
    return _hash(
        (k, model.get_parameter(k)) for k in metadata.get_base_param_keys(metadata.describe_targets(model)))


def test_checkpoints_do_not_rehash_the_base(hashes):
    """build_lora_sam3 hashes the base once; the Trainer's state_dict() calls hash nothing."""
    model = randomise_trainable(make_model())
    assert len(hashes) == 1
    fingerprints = {_saved_fingerprint(model) for _ in range(3)}
    assert len(hashes) == 1
    assert fingerprints == {_fresh(model)}


def test_fingerprint_follows_base_weights_loaded_afterwards(hashes):
    """Loading other base weights after injection (load_state_dict, in place) changes the
    saved fingerprint to that of the new base, hashed once."""
    model, other = make_model(seed=0), make_model(seed=3)
    before = _saved_fingerprint(model)
    full = build_sam3_arch("tiny", seed=3).state_dict()
    model.load_state_dict(full, strict=False)
    n = len(hashes)
    after = _saved_fingerprint(model)
    assert after != before and after == _saved_fingerprint(other) == _fresh(model)
    _saved_fingerprint(model)
    assert len(hashes) == n + 1


@pytest.mark.parametrize("change", ["copy_", "assign", "cast"])
def test_fingerprint_sees_every_kind_of_change(change):
    model = make_model(seed=0)
    key = metadata.get_base_param_keys(metadata.describe_targets(model))[0]
    before = get_base_fingerprint(model)
    if change == "copy_":
        with torch.no_grad():
            model.get_parameter(key)[0, 0] += 1.0
    elif change == "assign":
        sd = {key: model.get_parameter(key).detach().clone()}
        sd[key][0, 0] += 1.0
        model.load_state_dict(sd, strict=False, assign=True)
    else:
        model.to(torch.bfloat16)
    assert get_base_fingerprint(model) == _fresh(model) != before


def test_merge_then_unmerge_is_rehashed():
    """Merging refuses; after unmerging, the fingerprint is of the weights as they are
    now (unmerge can round the last bit), not the value cached before the merge."""
    model = randomise_trainable(make_model(), scale=0.5)
    get_base_fingerprint(model)
    merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge the adapters first"):
        get_base_fingerprint(model)
    unmerge_lora(model)
    assert get_base_fingerprint(model) == _fresh(model)
