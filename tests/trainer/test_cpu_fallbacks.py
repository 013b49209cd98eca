"""Tests for ``sam3_lora_plugin.trainer.cpu_fallbacks.enable_cpu_fallbacks``.

The fallbacks patch process globals (``torch.Tensor.pin_memory``, a function of
sam3's ``loss_fns`` module, ``MemMeter.update``, ``os.environ``), so each scenario
runs once in a fresh subprocess of this interpreter, which prints what it observed
as JSON; the tests check that JSON. Nothing is patched in the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

EXPECTED_FALLBACKS = ["pin_memory", "focal_loss_triton_off", "mem_meter_rss", "cpu_reduce"]

# Shared prologue: import the three patch targets and remember their identities.
_PROLOGUE = """
import json, os, sys
import torch
from sam3.train.loss import loss_fns
from sam3.train.utils import train_utils

def ids():
    return {
        "pin_memory": id(torch.Tensor.pin_memory),
        "focal": id(loss_fns.sigmoid_focal_loss),
        "mem_update": id(train_utils.MemMeter.update),
    }
"""

_CPU_SCENARIO = """
before = ids()
import sam3_lora_plugin
after_pkg = ids()
import sam3_lora_plugin.trainer.cpu_fallbacks as runtime
_ = sam3_lora_plugin.enable_cpu_fallbacks  # lazy attribute: resolves, does not call
after_runtime = ids()
env_before = os.environ.get("MDETR_CPU_REDUCE")

orig_focal = loss_fns.sigmoid_focal_loss
first = runtime.enable_cpu_fallbacks()
patched = ids()

t = torch.randn(3, 4)
pin_same = t.pin_memory() is t

torch.manual_seed(0)
inputs = torch.randn(2, 3, 5, 7)  # loss_on_multimask wants 4-d inputs
targets = (torch.rand(2, 3, 5, 7) > 0.7).float()
focal = {}
for name, kw in {"reduce": {}, "none": {"reduce": False},
                 "multimask": {"loss_on_multimask": True}}.items():
    new = loss_fns.sigmoid_focal_loss(inputs, targets, 3.0, alpha=0.25, gamma=2, **kw)
    ref = orig_focal(inputs, targets, 3.0, alpha=0.25, gamma=2, triton=False, **kw)
    focal[name] = [new.flatten().tolist(), ref.flatten().tolist()]

meter = train_utils.MemMeter("Mem (GB)", "cpu", ":.2f")
meter.update()
meter.update(n=2)
env_after = os.environ.get("MDETR_CPU_REDUCE")

second = runtime.enable_cpu_fallbacks()
after_second = ids()

# Last (it resets module state): a user-set MDETR_CPU_REDUCE survives a fresh application.
runtime._APPLIED.clear()
os.environ["MDETR_CPU_REDUCE"] = "0"
runtime.enable_cpu_fallbacks()
env_user = os.environ["MDETR_CPU_REDUCE"]

print(json.dumps({
    "before": before, "after_pkg": after_pkg, "after_runtime": after_runtime,
    "env_before": env_before, "first": first, "patched": patched, "pin_same": pin_same,
    "focal": focal, "meter": [meter.val, meter.peak, meter.count, meter.avg],
    "env_after": env_after, "second": second, "after_second": after_second,
    "env_user": env_user,
}))
"""

# A machine with a GPU, simulated: ``torch.cuda.is_available()`` returns True before
# anything else runs. A CPU run there (``runtime=cpu``: ``build_lora_sam3(...,
# cpu_fallbacks=True)``) must get every fallback; sam3's focal loss, called on CPU tensors
# as its loss does, must run sam3's PyTorch reference, not the Triton kernel.
_GPU_BOX_CPU_RUN = """
torch.cuda.is_available = lambda: True
import torch.nn as nn
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3
import sam3_lora_plugin.trainer.cpu_fallbacks as runtime
orig_focal = loss_fns.sigmoid_focal_loss
before = ids()
# a toy model: none of the default preset's SAM3 heads and norms to train fully
build_lora_sam3(nn.Sequential(nn.Linear(4, 4)), {"include": ["0"], "modules_to_save": []},
                cpu_fallbacks=True)
patched = ids()
torch.manual_seed(0)
inputs, targets = torch.randn(2, 3, 5, 7), (torch.rand(2, 3, 5, 7) > 0.7).float()
ref = orig_focal(inputs, targets, 3.0, alpha=0.25, gamma=2, triton=False).flatten().tolist()
try:
    focal = [loss_fns.sigmoid_focal_loss(inputs, targets, 3.0, alpha=0.25, gamma=2).flatten().tolist(), ref]
except Exception as e:  # the Triton kernel on CPU tensors ("libcuda.so cannot found!")
    focal = f"{type(e).__name__}: {e}"
try:
    t = torch.randn(2)
    pin_same = t.pin_memory() is t
except RuntimeError as e:  # real pinning needs a driver, which the simulated GPU lacks
    pin_same = str(e)
print(json.dumps({"applied": list(runtime._APPLIED), "before": before, "patched": patched,
                  "focal": focal,
                  "pin_same": pin_same,
                  "env": os.environ.get("MDETR_CPU_REDUCE")}))
"""

# A CUDA run (``accelerator="cuda"``) gets nothing. No sam3 import up front (saves ~3 s):
# if enable_cpu_fallbacks() leaves sam3's loss and train_utils modules unimported they
# cannot have been patched; if it imports them, their attributes must still be sam3's.
_CUDA_RUN = """
import json, os, sys
import torch
torch.cuda.is_available = lambda: True
pin_before = id(torch.Tensor.pin_memory)
from sam3_lora_plugin.trainer.cpu_fallbacks import enable_cpu_fallbacks
result = enable_cpu_fallbacks("cuda:0")
out = {"result": result, "pin_same": id(torch.Tensor.pin_memory) == pin_before,
       "env": os.environ.get("MDETR_CPU_REDUCE")}
lf = sys.modules.get("sam3.train.loss.loss_fns")
tu = sys.modules.get("sam3.train.utils.train_utils")
out["focal_module"] = None if lf is None else getattr(lf.sigmoid_focal_loss, "__module__", "patched")
out["mem_module"] = None if tu is None else getattr(tu.MemMeter.update, "__module__", "patched")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Run the scenarios once, in parallel fresh interpreters (importing sam3 takes ~4 s).

    ``MDETR_CPU_REDUCE`` is removed from their environment. Returns the parsed JSON
    of each: ``{"cpu": ..., "gpu_box_cpu_run": ..., "cuda_run": ...}``.
    """
    env = {k: v for k, v in os.environ.items() if k != "MDETR_CPU_REDUCE"}
    cwd = tmp_path_factory.mktemp("runtime")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, code in (("cpu", textwrap.dedent(_PROLOGUE) + _CPU_SCENARIO),
                           ("gpu_box_cpu_run", textwrap.dedent(_PROLOGUE) + _GPU_BOX_CPU_RUN),
                           ("cuda_run", _CUDA_RUN))
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        # A failed scenario fails the tests that read it, not the others.
        out[name] = (json.loads(stdout.strip().splitlines()[-1]) if proc.returncode == 0
                     else {"failed": f"{name} scenario failed:\n{stdout}\n{stderr}"})
    return out


def _scenario(runs: dict, name: str) -> dict:
    assert "failed" not in runs[name], runs[name]["failed"]
    return runs[name]


@pytest.fixture
def cpu(runs) -> dict:
    return _scenario(runs, "cpu")


def test_import_patches_nothing(runs):
    """``import sam3_lora_plugin`` (and even importing ``runtime``) patches no global, sets no env."""
    out = _scenario(runs, "cpu")
    assert out["after_pkg"] == out["before"]
    assert out["after_runtime"] == out["before"]
    assert out["env_before"] is None


def test_cpu_applies_all_fallbacks(cpu):
    """On a CPU-only machine all four fallbacks are reported and the three globals are replaced."""
    assert cpu["first"] == EXPECTED_FALLBACKS
    for key in ("pin_memory", "focal", "mem_update"):
        assert cpu["patched"][key] != cpu["before"][key], key


def test_pin_memory_returns_same_tensor(cpu):
    """After the fallbacks ``Tensor.pin_memory()`` returns the very same tensor object."""
    assert cpu["pin_same"] is True


def test_focal_loss_equals_reference_without_triton(cpu):
    """Patched ``loss_fns.sigmoid_focal_loss`` equals the original with ``triton=False``.

    Checked on fixed-seed random logits/targets for the reduced, unreduced and
    ``loss_on_multimask`` variants.
    """
    for name, (new, ref) in cpu["focal"].items():
        torch.testing.assert_close(torch.tensor(new), torch.tensor(ref), msg=name)
    assert len(cpu["focal"]["none"][0]) == 2 * 3 * 5 * 7  # really unreduced


def test_mem_meter_records_rss(cpu):
    """``MemMeter.update`` works without CUDA and records a positive peak RSS (GB)."""
    val, peak, count, avg = cpu["meter"]
    assert val > 0
    assert peak >= val
    assert count == 3
    assert avg == pytest.approx(val, rel=0.5)


def test_cpu_reduce_env(cpu):
    """``MDETR_CPU_REDUCE`` becomes ``"1"``; a value the user already set is kept."""
    assert cpu["env_after"] == "1"
    assert cpu["env_user"] == "0"


def test_second_call_is_idempotent(cpu):
    """A second call returns the same list and re-patches nothing (identities unchanged)."""
    assert cpu["second"] == cpu["first"]
    assert cpu["after_second"] == cpu["patched"]


def test_cpu_run_on_a_gpu_machine_gets_every_fallback(runs):
    """``runtime=cpu`` on a machine with CUDA (simulated): the wrapper's ``cpu_fallbacks``
    applies all four, and the focal loss on CPU tensors is sam3's PyTorch reference
    (the Triton kernel was what a CPU rehearsal on a GPU box used to get)."""
    out = _scenario(runs, "gpu_box_cpu_run")
    assert not isinstance(out["focal"], str), out["focal"]
    assert out["applied"] == EXPECTED_FALLBACKS
    for key in ("pin_memory", "focal", "mem_update"):
        assert out["patched"][key] != out["before"][key], key
    new, ref = out["focal"]
    torch.testing.assert_close(torch.tensor(new), torch.tensor(ref))
    assert out["pin_same"] is True
    assert out["env"] == "1"


def test_noop_for_a_cuda_run(runs):
    """``enable_cpu_fallbacks("cuda:0")`` (CUDA simulated) returns [] and patches nothing."""
    out = _scenario(runs, "cuda_run")
    assert out["result"] == []
    assert out["pin_same"] is True
    assert out["focal_module"] in (None, "sam3.train.loss.loss_fns")
    assert out["mem_module"] in (None, "sam3.train.utils.train_utils")
    assert out["env"] is None
