"""Tests for ``sam3_lora_plugin.runtime.enable_cpu_fallbacks``.

The fallbacks patch process globals (``torch.Tensor.pin_memory``, a function of
sam3's ``loss_fns`` module, ``MemMeter.update``, ``os.environ``), so every test
runs its scenario in a fresh subprocess of this interpreter and checks the JSON
it prints; nothing is patched in the pytest process.
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

needs_cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the fallbacks are a no-op where CUDA is available"
)


def _run(code: str, tmp_path, env_extra: dict | None = None) -> dict:
    """Run ``_PROLOGUE + code`` in a fresh interpreter; its last stdout line must be JSON."""
    env = {k: v for k, v in os.environ.items() if k != "MDETR_CPU_REDUCE"}
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PROLOGUE) + textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_patches_nothing(tmp_path):
    """``import sam3_lora_plugin`` (and even importing ``runtime``) patches no global."""
    out = _run(
        """
        before = ids()
        import sam3_lora_plugin
        after_pkg = ids()
        import sam3_lora_plugin.runtime
        _ = sam3_lora_plugin.enable_cpu_fallbacks  # lazy attribute: resolves, does not call
        after_runtime = ids()
        print(json.dumps({"before": before, "after_pkg": after_pkg, "after_runtime": after_runtime,
                          "env": os.environ.get("MDETR_CPU_REDUCE")}))
        """,
        tmp_path,
    )
    assert out["after_pkg"] == out["before"]
    assert out["after_runtime"] == out["before"]
    assert out["env"] is None


@needs_cpu_only
def test_fallbacks_on_cpu(tmp_path):
    """On a CPU-only machine every fallback is applied and behaves like the stock code path.

    * ``Tensor.pin_memory`` returns the very same tensor;
    * ``loss_fns.sigmoid_focal_loss`` equals the original called with ``triton=False``
      (reduced, unreduced and ``loss_on_multimask`` variants, random inputs, fixed seed);
    * ``MemMeter.update`` works without CUDA and records a positive peak RSS in GB;
    * ``MDETR_CPU_REDUCE`` is set to ``"1"``;
    * a second call returns the same list and re-patches nothing (identities unchanged).
    """
    out = _run(
        """
        orig_focal = loss_fns.sigmoid_focal_loss
        before = ids()
        from sam3_lora_plugin.runtime import enable_cpu_fallbacks
        first = enable_cpu_fallbacks()
        patched = ids()

        t = torch.randn(3, 4)
        pin_same = t.pin_memory() is t

        torch.manual_seed(0)
        inputs = torch.randn(6, 5, 7)
        targets = (torch.rand(6, 5, 7) > 0.7).float()
        focal = {}
        for name, kw in {"reduce": {}, "none": {"reduce": False},
                         "multimask": {"loss_on_multimask": True}}.items():
            new = loss_fns.sigmoid_focal_loss(inputs, targets, 3.0, alpha=0.25, gamma=2, **kw)
            ref = orig_focal(inputs, targets, 3.0, alpha=0.25, gamma=2, triton=False, **kw)
            focal[name] = [new.flatten().tolist(), ref.flatten().tolist()]

        meter = train_utils.MemMeter("Mem (GB)", "cpu", ":.2f")
        meter.update()
        meter.update(n=2)

        second = enable_cpu_fallbacks()
        print(json.dumps({
            "first": first, "second": second, "before": before, "patched": patched,
            "after_second": ids(), "pin_same": pin_same, "focal": focal,
            "meter": [meter.val, meter.peak, meter.count, meter.avg],
            "env": os.environ.get("MDETR_CPU_REDUCE"),
        }))
        """,
        tmp_path,
    )
    assert out["first"] == EXPECTED_FALLBACKS
    assert out["second"] == out["first"]
    for key in ("pin_memory", "focal", "mem_update"):
        assert out["patched"][key] != out["before"][key], key
    assert out["after_second"] == out["patched"]
    assert out["pin_same"] is True
    for name, (new, ref) in out["focal"].items():
        torch.testing.assert_close(torch.tensor(new), torch.tensor(ref), msg=name)
    assert len(out["focal"]["none"][0]) == 6 * 5 * 7
    val, peak, count, avg = out["meter"]
    assert val > 0 and peak >= val and count == 3 and avg > 0
    assert out["env"] == "1"


@needs_cpu_only
def test_existing_cpu_reduce_env_is_kept(tmp_path):
    """An ``MDETR_CPU_REDUCE`` already set by the user is left as it is."""
    out = _run(
        """
        from sam3_lora_plugin.runtime import enable_cpu_fallbacks
        applied = enable_cpu_fallbacks()
        print(json.dumps({"applied": applied, "env": os.environ.get("MDETR_CPU_REDUCE")}))
        """,
        tmp_path,
        env_extra={"MDETR_CPU_REDUCE": "0"},
    )
    assert out["env"] == "0"
    assert "cpu_reduce" in out["applied"]


def test_noop_when_cuda_available(tmp_path):
    """With ``torch.cuda.is_available`` returning True, the call returns [] and patches nothing."""
    out = _run(
        """
        torch.cuda.is_available = lambda: True
        before = ids()
        from sam3_lora_plugin.runtime import enable_cpu_fallbacks
        result = enable_cpu_fallbacks()
        print(json.dumps({"result": result, "before": before, "after": ids(),
                          "env": os.environ.get("MDETR_CPU_REDUCE")}))
        """,
        tmp_path,
    )
    assert out["result"] == []
    assert out["after"] == out["before"]
    assert out["env"] is None
