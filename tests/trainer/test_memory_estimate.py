"""The expected-peak estimate: its figures are the benchmark's, its arithmetic is the
documented formula, and the doctor prints it before anything is built."""

import importlib.util
from pathlib import Path

import pytest

from sam3_lora_plugin.trainer.memory_estimate import MEASURED, MEASURED_RESOLUTION, estimate_peak_bytes

ROOT = Path(__file__).resolve().parents[2]


def _figures_script():
    spec = importlib.util.spec_from_file_location("memory_figures", ROOT / "benchmarks" / "memory_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measured_figures_are_those_of_the_benchmark_results():
    """Every figure comes from a committed 1008 px benchmark result, and vice versa."""
    assert MEASURED == _figures_script().load_all()


def test_a_rerun_of_lora_default_is_filed_under_the_preset_it_stood_for():
    """A report's ``lora_default`` run counts for the named preset whose spec it recorded, so
    a rerun cannot add ``default`` to ``MEASURED``; old reports without a matching spec go
    through ``RENAMED_BEFORE``, and a preset that no longer exists keeps its name."""
    import json

    from sam3_lora_plugin.lora.config import PRESETS

    figures = _figures_script()
    later = {"date": "2099-01-01T00:00:00+00:00"}
    for name in PRESETS:
        spec = json.loads(json.dumps(PRESETS[name]))  # as a report stores it
        run = {"lora_preset": "default", "lora_preset_spec": spec}
        expected = name if name != "default" else "attention_mlp_heads_rebalanced"
        assert figures.preset_of(later, run) == expected
    assert figures.preset_of({"date": "2026-11-29T21:45:21+00:00"}, {"lora_preset": "default"}) == "image_mlp"
    gone = {"lora_preset": "default", "lora_preset_spec": {"components": ["decoder"], "roles": ["q"]}}
    assert figures.preset_of(later, gone) == "default"


@pytest.mark.parametrize("preset", sorted(MEASURED))
def test_estimate_follows_the_formula(preset):
    fig = MEASURED[preset]
    kw = dict(amp_bf16=True, segmentation=True, frozen_base_dtype="bfloat16")
    est = estimate_peak_bytes(preset, MEASURED_RESOLUTION, 1, **kw)
    assert est.weights_bytes == fig["frozen_bf16_bytes"]
    assert est.trainable_state_bytes == 16 * fig["trainable_params"]
    assert est.activation_bytes == fig["activation_bytes"]
    assert est.peak_bytes == est.weights_bytes + est.trainable_state_bytes + est.activation_bytes
    # The measured configuration reproduces the measured peak within the optimizer state
    # that did not exist yet in the measured (first) step.
    assert fig["measured_peak_bytes"] <= est.peak_bytes <= fig["measured_peak_bytes"] + est.trainable_state_bytes
    two = estimate_peak_bytes(preset, MEASURED_RESOLUTION, 2, **kw)
    assert two.activation_bytes == 2 * est.activation_bytes
    half = estimate_peak_bytes(preset, MEASURED_RESOLUTION // 2, 1, **kw)
    assert half.activation_bytes == est.activation_bytes // 4
    no_masks = estimate_peak_bytes(preset, MEASURED_RESOLUTION, 1, **{**kw, "segmentation": False})
    assert no_masks.activation_bytes == est.activation_bytes - fig["segmentation_bytes"]
    assert estimate_peak_bytes(preset, 1008, 1, **{**kw, "amp_bf16": False}) is None
    assert estimate_peak_bytes(preset, 1008, 1, **{**kw, "frozen_base_dtype": None}) is None
    assert estimate_peak_bytes("not_measured", 1008, 1, **kw) is None


def test_default_is_measured_as_the_preset_it_equals():
    """``default`` names the same layers as ``attention_mlp_heads_rebalanced``: its estimate
    is that preset's, and the doctor lists it as measured; a preset with other layers
    (``attention_mlp_heads``: one rank everywhere; ``attention_mlp``: nothing trained fully)
    has its own figures."""
    from sam3_lora_plugin.lora.config import PRESETS
    from sam3_lora_plugin.trainer.memory_estimate import measured_figures, measured_presets

    assert PRESETS["default"] == PRESETS["attention_mlp_heads_rebalanced"] and "default" not in MEASURED
    assert measured_figures("default") is MEASURED["attention_mlp_heads_rebalanced"]
    kw = dict(amp_bf16=True, segmentation=True, frozen_base_dtype="bfloat16")
    assert estimate_peak_bytes("default", 1008, 1, **kw) \
        == estimate_peak_bytes("attention_mlp_heads_rebalanced", 1008, 1, **kw)
    assert MEASURED["attention_mlp_heads_rebalanced"]["trainable_params"] \
        < MEASURED["attention_mlp_heads"]["trainable_params"]  # the text encoder's rank halved
    assert "default" in measured_presets() and "image_mlp" in measured_presets()
    assert measured_figures("image_mlp")["trainable_params"] < MEASURED["attention_mlp"]["trainable_params"]
    heads = measured_figures("attention_mlp_heads")
    assert heads is MEASURED["attention_mlp_heads"]
    assert heads["trainable_params"] > MEASURED["attention_mlp"]["trainable_params"]
    assert set(measured_presets("nf4")) == {p for p in PRESETS if "frozen_nf4_bytes" in (measured_figures(p) or {})}
    assert {"attention_mlp_heads", "attention_mlp_heads_rebalanced"} <= set(measured_presets("nf4"))
    assert measured_figures("not_a_preset") is None


@pytest.mark.parametrize("preset", sorted(p for p in MEASURED if "frozen_nf4_bytes" in MEASURED[p]))
def test_nf4_estimate_changes_only_the_weights_and_meets_its_measurement(preset):
    """With an NF4 base the weights are the NF4 run's and the rest the bf16 run's; that
    reproduces the measured NF4 step within 3% (two runs' activations) plus the optimizer
    state the measured first step did not have yet."""
    fig = MEASURED[preset]
    kw = dict(amp_bf16=True, segmentation=True)
    bf16 = estimate_peak_bytes(preset, MEASURED_RESOLUTION, 1, frozen_base_dtype="bfloat16", **kw)
    nf4 = estimate_peak_bytes(preset, MEASURED_RESOLUTION, 1, frozen_base_dtype="nf4", **kw)
    assert nf4.weights_bytes == fig["frozen_nf4_bytes"] < bf16.weights_bytes / 2
    assert (nf4.activation_bytes, nf4.trainable_state_bytes) == (bf16.activation_bytes, bf16.trainable_state_bytes)
    measured = fig["measured_nf4_peak_bytes"]
    assert 0.97 * measured <= nf4.peak_bytes <= 1.03 * measured + nf4.trainable_state_bytes


def test_doctor_prints_the_expected_peak(tmp_path):
    from sam3_lora_plugin.cli.doctor import run_checks

    preset = sorted(MEASURED)[0] if MEASURED else "default"
    checks = run_checks("configs/lora/coco_box.yaml", [
        f"paths.dataset_root={tmp_path}", f"paths.checkpoint_path={tmp_path}/sam3.pt", "runtime=gpu",
        f"lora={preset}"], network=False, check_images=False)
    (memory,) = [c for c in checks if c.name == "memory"]
    what = f"preset {preset}, 1008 px, batch 1, bf16 autocast, masks off, frozen base bfloat16"
    if MEASURED:
        assert memory.status in ("OK", "WARN") and memory.detail.startswith("expected peak ~"), memory.detail
    else:
        assert memory.status == "OK" and memory.detail.startswith("no measured figure"), memory.detail
    assert what in memory.detail
    nf4 = [p for p in sorted(MEASURED) if "frozen_nf4_bytes" in MEASURED[p]]
    if nf4:
        pytest.importorskip("torchao.quantization")
        checks = run_checks("configs/lora/coco_box.yaml", [
            f"paths.dataset_root={tmp_path}", f"paths.checkpoint_path={tmp_path}/sam3.pt", "runtime=gpu",
            f"lora={nf4[0]}", "trainer.model.frozen_base_dtype=nf4"], network=False, check_images=False)
        (memory,) = [c for c in checks if c.name == "memory"]
        assert memory.detail.startswith("expected peak ~") and "frozen base nf4" in memory.detail, memory.detail
    smoke = [c for c in run_checks("configs/lora/smoke_cpu.yaml", [], network=False, check_images=False)
             if c.name == "memory"]
    assert [c.detail.split(":")[0] for c in smoke] == ["size=tiny model"]


@pytest.mark.parametrize("free_gib", [1.0, 80.0])
def test_doctor_compares_the_peak_with_the_free_gpu_memory(free_gib, tmp_path, monkeypatch):
    """On CUDA (faked here: no GPU on the test machines) the estimate meets the free memory:
    too little is a warning naming the overrides that need less."""
    import sam3  # noqa: F401 (imported before CUDA is faked: its import probes the device)
    import torch

    from sam3_lora_plugin.cli.doctor import run_checks

    fake = {"is_available": lambda: True, "device_count": lambda: 1, "is_bf16_supported": lambda: True,
            "get_device_name": lambda *a: "fake GPU",
            "mem_get_info": lambda *a: (int(free_gib * 2**30), 80 * 2**30)}
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    checks = run_checks("configs/lora/coco_box.yaml", [
        f"paths.dataset_root={tmp_path}", f"paths.checkpoint_path={tmp_path}/sam3.pt", "runtime=gpu",
        "lora=default"], network=False, check_images=False)
    (memory,) = [c for c in checks if c.name == "memory"]
    assert f"{free_gib:.1f} GiB free on the GPU" in memory.detail, memory.detail
    if free_gib < 4:
        assert memory.status == "WARN" and "lora=low_memory" in memory.fix and "frozen_base_dtype=nf4" in memory.fix
    else:
        assert memory.status == "OK"
