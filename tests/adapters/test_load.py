"""load_adapter / build_lora_sam3(adapter_path=...): into the wrapper's model and into a
plain (stock-built) model, with outputs equal to the trained model; refusals."""

import pytest
import torch

from sam3_lora_plugin.adapters.io import read_adapter
from sam3_lora_plugin.adapters.load import load_adapter
from sam3_lora_plugin.adapters.metadata import AdapterMismatchError
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3
from sam3_lora_plugin.testing import flatten_outputs, make_batch

from tests.adapters.helpers import LORA, make_model


pytestmark = pytest.mark.usefixtures("sam3_cpu_patches")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return make_batch(tmp_path_factory.mktemp("data"), training=False)["x"]


def _assert_same_outputs(a, b, batch):
    with torch.no_grad():
        ta, tb = dict(flatten_outputs(a(batch))), dict(flatten_outputs(b(batch)))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6, msg=k)


def test_wrapper_with_adapter_path_reproduces_the_trained_model(trained, adapter_dir, batch):
    fresh = build_lora_sam3(build_sam3_arch("tiny", seed=0, eval_mode=True), LORA,
                            adapter_path=adapter_dir)
    _assert_same_outputs(trained, fresh, batch)


def test_plain_model_gets_adapters_injected(trained, adapter_dir, batch):
    """As with a model from stock build_sam3_image_model: no adapters yet."""
    plain = build_sam3_arch("tiny", seed=0, eval_mode=True)
    load_adapter(plain, adapter_dir)
    assert plain.lora_config.component_overrides == {"decoder": {"rank": 2}}
    _assert_same_outputs(trained, plain, batch)


@pytest.mark.parametrize("change, needle", [
    (dict(lora={"rank": 8}), r"rank 4 in the adapter, 8 here"),
    (dict(lora={"components": ["decoder"]}), r"adapted in the adapter, not in this model"),
    (dict(lora={"modules_to_save": []}), r"modules_to_save \['dot_prod_scoring'\]"),
    (dict(d_model=48, num_heads=4), r"shape \[.*\] in the adapter, \[.*\] here \(another architecture"),
    (dict(seed=5), r"trained on a different base model.*check_base=False"),
])
def test_mismatches_are_refused(adapter_dir, change, needle):
    lora = change.pop("lora", None)
    model = make_model(lora=lora, **change)
    with pytest.raises(AdapterMismatchError, match=needle):
        load_adapter(model, adapter_dir)


def test_check_base_false_applies_to_another_base(adapter_dir):
    other = make_model(seed=5)
    load_adapter(other, adapter_dir, check_base=False)
    adapter = read_adapter(adapter_dir)
    sd = other.state_dict()
    for k, v in adapter.tensors.items():
        assert torch.equal(sd[k], v), k
