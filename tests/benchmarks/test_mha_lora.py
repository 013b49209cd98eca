"""Quick mode of ``benchmarks/mha_lora.py``: it runs, checks itself and writes its outputs.

No timing assertions: only the structure and the internal consistency of the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType


def test_quick_run_writes_consistent_json_and_png(bench: ModuleType, tmp_path: Path) -> None:
    returned = bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)])

    report = json.loads((tmp_path / "mha_lora.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert (tmp_path / "mha_lora.png").stat().st_size > 0

    variants = report["variants"]
    assert set(variants) == {"frozen_base", "lora_activation", "lora_merge_in_forward"}
    for name, v in variants.items():
        assert v["median_s"] > 0 and v["iqr_s"] >= 0, name
        assert len(v["times_s"]) == report["args"]["repeats"] == 3
        assert v["peak_bytes"] > 0 and v["saved_bytes"] > 0, name
    assert variants["frozen_base"]["trainable_params"] == 0
    # rank 8 on q, k, v, out of two MHAs: 2 * 4 * (8*256 + 256*8)
    assert variants["lora_activation"]["trainable_params"] == 32768
    assert variants["lora_merge_in_forward"]["trainable_params"] == 32768

    act, merge, base = (variants[k] for k in ("lora_activation", "lora_merge_in_forward", "frozen_base"))
    ratios = report["ratios"]
    assert math.isclose(ratios["time_activation_vs_merge"], act["median_s"] / merge["median_s"])
    assert math.isclose(ratios["time_activation_vs_frozen"], act["median_s"] / base["median_s"])
    assert math.isclose(ratios["memory_activation_vs_merge"], act["peak_bytes"] / merge["peak_bytes"])
    assert math.isclose(ratios["memory_activation_vs_frozen"], act["peak_bytes"] / base["peak_bytes"])

    met = report["goals"]["met"]
    assert met["time_activation_vs_merge_le_0.8"] == (ratios["time_activation_vs_merge"] <= 0.8)
    assert met["time_activation_vs_frozen_le_1.15"] == (ratios["time_activation_vs_frozen"] <= 1.15)
    assert met["memory_activation_lt_merge"] == (ratios["memory_activation_vs_merge"] < 1.0)

    assert report["checks"]["lora_activation_vs_merge_in_forward"] <= 1e-4
    assert report["machine"]["torch"] and report["machine"]["cpu_count"] >= 1
    assert report["args"]["quick"] is True


def test_merge_in_forward_builds_weight_gradients() -> None:
    """The baseline is the real PEFT computation: autograd sees a full merged weight."""
    import torch
    from mha_lora_variants import MergeInForwardMHA
    from torch import nn

    mha = nn.MultiheadAttention(16, 2, batch_first=True).requires_grad_(False)
    merged = MergeInForwardMHA(mha, rank=2, alpha=4.0)
    weights = merged.merged_weights()
    assert weights["in_proj_weight"].shape == (48, 16) and weights["in_proj_weight"].requires_grad
    assert weights["out_proj.weight"].shape == (16, 16) and weights["out_proj.weight"].requires_grad
    x = torch.randn(1, 5, 16)
    out, _ = merged(x, x, x, need_weights=False)
    torch.testing.assert_close(out, mha(x, x, x, need_weights=False)[0])  # B = 0
    out.sum().backward()
    assert all(p.grad is not None for p in [*merged.lora_A.parameters(), *merged.lora_B.parameters()])
    assert all(p.grad is None for p in mha.parameters())
