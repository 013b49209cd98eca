"""Quick mode of ``benchmarks/train_step.py``: it runs, checks itself and writes its outputs.

Tiny SAM3 architecture, 112 px, 2 steps after 1 warm-up, each configuration in its own
process, as in the real run. No timing assertions: only the structure and the internal
consistency of the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

CONFIGS = ["full_ft", "frozen_base", "lora_default", "lora_image_mlp"]


@pytest.fixture(scope="module")
def quick_run(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("train_step")
    returned = bench.main(["--quick", "--device", "cpu", "--threads", "1", "--profile", "--out", str(out)])
    return returned, out


def test_quick_run_writes_json_and_png(quick_run: tuple[dict, Path]) -> None:
    returned, out = quick_run
    report = json.loads((out / "train_step.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert (out / "train_step.png").stat().st_size > 0
    assert report["benchmark"] == "train_step" and report["date"]
    machine = report["machine"]
    assert machine["torch"] and machine["cpu_count"] >= 1 and machine["ram_bytes"] > 0
    args = report["args"]
    assert args["quick"] is True and args["size"] == "tiny" and args["resolution"] == 112
    assert args["steps"] == 2 and args["warmup"] == 1 and args["amp"] is False
    assert report["memory_metric"] == "tensor_peak_bytes"  # live tensor bytes, not RSS


def test_every_configuration_has_positive_figures(quick_run: tuple[dict, Path]) -> None:
    report = quick_run[0]
    configs = report["configs"]
    assert list(configs) == CONFIGS
    for name, r in configs.items():
        assert r["config"] == name
        assert len(r["times_s"]) == 2 and all(t > 0 for t in r["times_s"]), name
        assert r["median_s"] > 0 and r["iqr_s"] >= 0, name
        assert len(r["cpu_times_s"]) == 2 and r["cpu_median_s"] > 0, name
        assert len(r["others_cores"]) == 2 and all(c >= 0 for c in r["others_cores"]), name
        assert r["waited_s"] == [None, None], name  # no --wait-idle
        assert set(r["phases_median_s"]) == {"forward_loss", "backward", "optimizer"}
        assert all(v > 0 for v in r["phases_median_s"].values()), name
        assert all(math.isfinite(x) for x in r["losses"]), name
        assert r["peak_rss_bytes"] >= r["rss_after_build_bytes"] > 0, name
        assert r["peak_rss_bytes"] >= r["peak_rss_build_bytes"] > 0, name
        assert r["cuda_peak_bytes"] is None, name
        assert 0 < r["trainable_params"] <= r["total_params"], name
        assert r["trainable_params"] == sum(r["trainable_by_module"].values()), name
        assert r["checkpoint_bytes"] > r["checkpoint_model_bytes"] > 0, name
        assert r["checkpoint_bytes"] > r["checkpoint_optimizer_bytes"] > 0, name


def test_trainable_sets_and_checkpoint_sizes_are_ordered(quick_run: tuple[dict, Path]) -> None:
    c = quick_run[0]["configs"]
    full, frozen, lora_all, lora = (c[k] for k in CONFIGS)
    assert full["trainable_params"] == full["total_params"]
    assert len({r["total_params"] for r in (full, frozen)}) == 1
    # frozen_base trains everything outside backbone.*, and nothing inside it.
    assert not any(k.startswith("backbone") for k in frozen["trainable_by_module"])
    assert {"transformer", "segmentation_head"} <= set(frozen["trainable_by_module"])
    assert frozen["skip_saving_parameters"] == ["backbone.*"]
    assert lora["trainable_params"] < lora_all["trainable_params"] < full["trainable_params"]
    assert frozen["trainable_params"] < full["trainable_params"]
    assert lora["lora_preset"] == "image_mlp" and lora_all["lora_preset"] == "default"
    for r in (frozen, lora, lora_all):
        assert r["checkpoint_bytes"] < full["checkpoint_bytes"]
    assert lora["checkpoint_bytes"] < lora_all["checkpoint_bytes"]


def test_ratios_and_goals_follow_from_the_numbers(quick_run: tuple[dict, Path]) -> None:
    report = quick_run[0]
    configs, ratios, goals = report["configs"], report["ratios_to_full_ft"], report["goals"]
    full = configs["full_ft"]
    assert set(ratios) == set(CONFIGS)
    for name, q in ratios.items():
        r = configs[name]
        assert math.isclose(q["time_vs_full"], r["median_s"] / full["median_s"])
        assert math.isclose(q["time_min_vs_full"], r["min_s"] / full["min_s"])
        assert math.isclose(q["flops_vs_full"], sum(r["profile"]["total"].values())
                            / sum(full["profile"]["total"].values()))
        assert math.isclose(q["cpu_time_vs_full"], r["cpu_median_s"] / full["cpu_median_s"])
        assert math.isclose(q["peak_memory_vs_full"], r["tensor_peak_bytes"] / full["tensor_peak_bytes"])
        assert math.isclose(q["peak_rss_vs_full"], r["peak_rss_bytes"] / full["peak_rss_bytes"])
        assert math.isclose(q["checkpoint_vs_full"], r["checkpoint_bytes"] / full["checkpoint_bytes"])
        assert math.isclose(q["trainable_vs_full"], r["trainable_params"] / full["trainable_params"])
    assert all(v == 1.0 for v in ratios["full_ft"].values())
    assert goals["config"] == "lora_default"
    q = ratios["lora_default"]
    assert goals["met"] == {
        "peak_memory_vs_full_le_0.45": q["peak_memory_vs_full"] <= goals["peak_memory_vs_full_max"] == 0.45,
        "time_vs_full_le_0.75": q["time_vs_full"] <= goals["time_vs_full_max"] == 0.75,
        "checkpoint_vs_full_le_0.015": q["checkpoint_vs_full"] <= goals["checkpoint_vs_full_max"] == 0.015,
    }


def test_profile_counts_flops_and_writes_tables(quick_run: tuple[dict, Path]) -> None:
    report, out = quick_run
    configs = report["configs"]
    for name, r in configs.items():
        prof = r["profile"]
        assert (out / prof["file"]).read_text().count("Self CPU") >= 1, name
        total = prof["total"]
        assert set(total) == {"forward_loss", "backward", "optimizer"}, name
        assert total["forward_loss"] > 0 and total["backward"] > 0, name
        assert sum(prof["by_op"]["forward_loss"].values()) == total["forward_loss"], name
        assert sum(prof["forward_by_module"].values()) == total["forward_loss"], name
        assert prof["forward_by_module"]["backbone.vision_backbone.trunk"] > 0, name
    # Same forward for full FT and a frozen base; adapters add a little. A frozen base and
    # LoRA skip the frozen weights' gradients.
    forward = {k: r["profile"]["total"]["forward_loss"] for k, r in configs.items()}
    assert forward["frozen_base"] == forward["full_ft"]
    assert forward["full_ft"] < forward["lora_image_mlp"] < forward["lora_default"]
    full_bwd = configs["full_ft"]["profile"]["total"]["backward"]
    assert configs["frozen_base"]["profile"]["total"]["backward"] < full_bwd
    assert configs["lora_default"]["profile"]["total"]["backward"] < full_bwd


def test_subset_without_full_ft_has_no_ratios() -> None:
    import train_step_report as report
    fake = {"lora_default": {"median_s": 1.0, "peak_rss_bytes": 1, "checkpoint_bytes": 1,
                             "trainable_params": 1}}
    assert report.ratios_from(fake) == {}
    assert set(report.goals_from({}).values()) == {None}


def test_byte_counter_matches_a_file(tmp_path: Path) -> None:
    """Counted bytes == the size of the file the Trainer writes (it saves into an open
    file object, as here; a path argument gives another archive name)."""
    import harness
    import torch

    obj = {"a": torch.arange(1000, dtype=torch.float32), "b": {"c": torch.ones(3, 4)}}
    with open(tmp_path / "checkpoint.pt.tmp", "wb") as f:
        torch.save(obj, f)
    assert harness.saved_bytes(obj) == (tmp_path / "checkpoint.pt.tmp").stat().st_size


def test_cli_defaults_follow_the_device(bench: ModuleType) -> None:
    cpu = bench.parse_args(["--device", "cpu"])
    assert (cpu.size, cpu.resolution, cpu.amp, cpu.ddp) == ("full", 336, False, False)
    assert (cpu.steps, cpu.warmup, cpu.wait_idle, cpu.profile) == (3, 1, 0.0, False)
    cuda = bench.parse_args(["--device", "cuda"])
    assert (cuda.resolution, cuda.amp) == (1008, True)
    assert bench.parse_args(["--device", "cuda", "--no-amp"]).amp is False
    with pytest.raises(SystemExit):
        bench.parse_args(["--resolution", "100"])


def test_tensor_memory_breakdown_adds_up(quick_run: tuple[dict, Path]) -> None:
    """The tracked step's peak is the sum of its breakdown; weights are counted before the
    step, only trainable parameters get gradients, and LoRA keeps its frozen base."""
    configs = quick_run[0]["configs"]
    for name, r in configs.items():
        tm = r["tensor_memory"]
        assert r["tensor_peak_bytes"] == tm["peak_bytes"] == sum(tm["at_peak"].values()) > 0, name
        assert tm["peak_bytes"] >= max(tm["peak_by_phase"].values()) > 0, name
        assert tm["top_allocations"] and all(a["bytes"] > 0 for a in tm["top_allocations"]), name
        weights = tm["baseline_bytes"]["weights (trainable)"] + tm["baseline_bytes"]["weights (frozen)"]
        assert weights == 4 * r["total_params"], name  # fp32, no --frozen-base-dtype
        assert tm["baseline_bytes"]["weights (trainable)"] == 4 * r["trainable_params"], name
        if "gradients" in tm["at_peak"]:
            assert tm["at_peak"]["gradients"] <= 4 * r["trainable_params"], name
    full, lora = configs["full_ft"]["tensor_memory"], configs["lora_default"]["tensor_memory"]
    assert lora["peak_bytes"] < full["peak_bytes"]


def test_dropout_reaches_every_layer_and_the_children(bench: ModuleType) -> None:
    """``--dropout 0`` (the CPU stand-in for CUDA's fused attention) zeroes every dropout
    of the built model, attention dropout included, and is passed to each child run."""
    import torch.nn as nn

    from train_step_model import build_model
    model, _ = build_model("lora_default", "tiny", 112, 0, 4, dropout=0.0)
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    attn = [m.dropout for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert drops and attn and set(drops) == {0.0} and set(attn) == {0.0}
    stock, _ = build_model("lora_default", "tiny", 112, 0, 4)
    assert 0.1 in {m.dropout for m in stock.modules() if isinstance(m, nn.MultiheadAttention)}
    argv = bench.child_argv(bench.parse_args(["--device", "cpu", "--dropout", "0"]))
    assert argv[argv.index("--dropout") + 1] == "0.0"
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--dropout", "1.5"])
