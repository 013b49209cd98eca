import functools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def sam3_cpu_patches(monkeypatch):
    """The two CUDA-only spots a SAM3 forward/loss reaches on CPU (see
    sam3_lora_plugin/trainer/cpu_fallbacks.py), patched for the test only."""
    import torch
    from sam3.train.loss import loss_fns

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)
    monkeypatch.setattr(loss_fns, "sigmoid_focal_loss",
                        functools.partial(loss_fns.sigmoid_focal_loss, triton=False))


@pytest.fixture
def mha_fastpath_off():
    """nn.MultiheadAttention's fused inference fast path off: a different kernel from the
    training path the LoRA layer follows, so exact output comparisons need it off."""
    import torch

    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(True)


@pytest.fixture(scope="module")
def tiny_val_batch(tmp_path_factory):
    """One validation batch of SAM3's collated form for the tiny model."""
    from sam3_lora_plugin.testing import make_batch

    return make_batch(tmp_path_factory.mktemp("data"), training=False)["x"]
