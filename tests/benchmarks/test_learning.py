"""Quick mode of ``benchmarks/learning.py``: every phase runs through SAM3's Trainer.

A few images and one epoch per phase (pretrain, base evals, one LoRA row and full
fine-tuning on the ``small_clutter`` shift, each with its retention run), each in its own
process, as in the real study. No assertions on AP values: the structure of the report,
finite numbers, the adapter-disabled == base check, the base bit-identity check, the plot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import learning_phase  # benchmarks/ (tests/benchmarks/conftest.py puts it on sys.path)
import learning_report
import learning_rows
import pytest

METRICS = {"bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"}


@pytest.fixture(scope="module")
def quick_run(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("learning")
    return bench.main(["--quick", "--seeds", "0", "--out", str(out)]), out


def _finite(metrics: dict) -> bool:
    return set(metrics) == METRICS and all(
        math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())


@pytest.mark.slow
def test_quick_run_writes_json_and_png(quick_run: tuple[dict, Path]) -> None:
    returned, out = quick_run
    report = json.loads((out / "learning.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["complete"] is True and (out / "learning.png").stat().st_size > 0
    assert not list(out.glob("learning_work_*")), "the temporary work directory is removed"
    assert report["machine"]["cpu_count"] >= 1 and report["args"]["quick"] is True
    assert _finite(report["base_own_domain"]) and _finite(report["pretrain"]["final"])


@pytest.mark.slow
def test_rows_report_shift_retention_cost_and_checks(quick_run: tuple[dict, Path]) -> None:
    results = quick_run[0]["results"]
    assert set(results) == {"small_clutter"}
    table = results["small_clutter"]
    assert set(table) == {"base", "full_ft", "attn_mlp_image"} and _finite(table["base"])
    for name in ("full_ft", "attn_mlp_image"):
        row = table[name]
        assert row["seeds"] == 1 and row["bbox_AP"]["n"] == 1 and row["bbox_AP"]["std"] == 0.0
        assert 0.0 <= row["retention_bbox_AP"]["mean"] <= 1.0
        assert row["trainable_params"] > 0 and row["adapter_bytes"] > 0 and row["wall_s"]["mean"] > 0
    lora, full = table["attn_mlp_image"], table["full_ft"]
    assert lora["trainable_params"] < full["trainable_params"]
    assert lora["adapter_bytes"] < full["adapter_bytes"]
    assert lora["adapter_disabled_equals_base"] is True and lora["base_bit_identical"] is True
    assert full["adapter_disabled_equals_base"] is None
    run = quick_run[0]["runs"]["attn_mlp_image@small_clutter@s0"]
    assert run["adapter_disabled"] == quick_run[0]["base_own_domain"]


def test_cli_checks(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--resolution", "100"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--rows", "no_such_row"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--shift-style", "no_such_style"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--base-checkpoint", str(tmp_path / "missing.pt")])
    args = bench.parse_args(["--shift-style", "shifted", "--shift-style", "small_clutter"])
    assert args.shift_style == ["shifted", "small_clutter"] and args.seed_list == [0, 1, 2]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("{}"), second.write_text("{}")
    assert bench.parse_args(["--reuse", str(first), "--reuse", str(second)]).reuse == [str(first), str(second)]
    with pytest.raises(SystemExit):
        bench.parse_args(["--reuse", str(first), "--reuse", str(tmp_path / "missing.json")])


def test_a_style_added_at_run_time_needs_no_other_change(bench: ModuleType, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from sam3_lora_plugin.data import synthetic

    monkeypatch.setitem(synthetic.STYLES, "texture_only", ("stripes", (128, 128, 128),
                                                           synthetic.STYLES["base"][2]))
    args = bench.parse_args(["--quick", "--shift-style", "texture_only"])
    data = learning_rows.make_datasets(args, tmp_path)
    coco = json.loads((data["texture_only"] / "test" / "_annotations.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["red circle", "blue square", "green triangle"]
    adapt, retain = learning_rows.plan_row(args, tmp_path, data, "/b.pt", "attn_mlp_image",
                                   "texture_only", 0)
    assert adapt.data_root == str(data["texture_only"]) and retain.data_root == str(data["base"])


def test_rows_and_seeds(bench: ModuleType, tmp_path: Path) -> None:
    """The seed changes the Trainer seed (LoRA init, data order), never the base or data;
    LoRA+ reaches the optimizer modifier; retention evaluates the trained adapter."""
    args = bench.parse_args([])
    data = {"base": tmp_path / "b", "shifted": tmp_path / "s"}
    a0, r0 = learning_rows.plan_row(args, tmp_path, data, "/b.pt", "attention_mlp_loraplus", "shifted", 0)
    a1, _ = learning_rows.plan_row(args, tmp_path, data, "/b.pt", "attention_mlp_loraplus", "shifted", 1)
    assert a0.seed != a1.seed and a0.base_checkpoint == a1.base_checkpoint == "/b.pt"
    assert (a0.sampler_seed, a1.sampler_seed) == (0, 1)  # the data order changes too
    train = learning_phase.build_phase_config(a1).trainer.data.train
    assert train._target_ == "sam3_lora_plugin.data.SeededTorchDataset" and train.sampler_seed == 1
    assert a0.data_root == a1.data_root and a0.loraplus_lr_ratio == 4.0
    assert r0.mode == "val" and r0.check_disabled and r0.adapter_path.startswith(a0.log_dir)
    cfg = learning_phase.build_phase_config(a0)
    assert cfg.trainer.optim.param_group_modifiers[0].loraplus_lr_ratio == 4.0
    full, retain = learning_rows.plan_row(args, tmp_path, data, "/b.pt", "full_ft", "shifted", 0)
    assert full.lora is None and retain.base_checkpoint == full.save_base_to
    assert not retain.check_disabled
    t = learning_phase.build_phase_config(full).trainer
    assert list(t.optim.param_group_modifiers) == [] and t.distributed.static_graph


def test_a_row_means_the_same_layers_whichever_preset_is_the_default(bench: ModuleType,
                                                                    tmp_path: Path) -> None:
    """A row that names no ``modules_to_save`` or per-component ranks trains none and uses
    one rank, not the default preset's; every row spells out its components and roles."""
    from sam3_lora_plugin.lora.config import PRESETS, LoraConfig

    args = bench.parse_args([])
    data = {"base": tmp_path / "b", "shifted": tmp_path / "s"}
    assert PRESETS["default"].get("modules_to_save")  # what a row must not inherit
    plain = LoraConfig(**learning_rows.plan_row(args, tmp_path, data, "/b.pt", "attention_mlp_lr3e-3",
                                                "shifted", 0)[0].lora)
    assert plain.modules_to_save == [] and plain.component_overrides == {}
    for row, spec in learning_rows.ROWS.items():
        if "lora" in spec:
            assert {"components", "roles"} <= set(spec["lora"]), row


@pytest.mark.parametrize("row,preset", [
    ("qv_lr3e-3", "qv"), ("attn_image_lr3e-3", "attention_image"),
    ("attention_lr3e-3", "attention"), ("all_linear_lr3e-3", "all_linear"),
    ("low_memory_lr3e-3", "low_memory"), ("attn_mlp_image_lr3e-3", "image_mlp"),
    ("attention_mlp_lr3e-3", "attention_mlp"), ("trunk_last_block_lr3e-3", "trunk_last8"),
])
def test_a_preset_row_adapts_the_presets_layers(row: str, preset: str) -> None:
    """The study's row for a preset (README table, the preset's YAML header) has its
    components and roles, and trains nothing fully as the preset does; trunk_last8's row
    keeps the last trunk block only, as the preset keeps the last 8 of 32."""
    from sam3_lora_plugin.lora.config import PRESETS

    spec, lora = PRESETS[preset], learning_rows.ROWS[row]["lora"]
    assert sorted(lora["components"]) == sorted(spec["components"])
    assert sorted(lora["roles"]) == sorted(spec["roles"])
    assert not spec.get("modules_to_save") and not lora.get("modules_to_save")
    assert (lora.get("trunk_blocks") is None) == (spec.get("trunk_blocks") is None)


def test_summary_is_mean_and_std_over_seeds() -> None:
    base = {m: 0.5 for m in METRICS}

    def rec(ap: float, ret: float) -> dict:
        return {"shift": {m: ap for m in METRICS}, "retention": {m: ret for m in METRICS},
                "adapter_disabled": dict(base), "trainable_params": 7, "adapter_bytes": 99,
                "wall_s": 10.0, "base_bit_identical": True}

    runs = {f"r@s1@s{i}": rec(ap, ret) for i, (ap, ret) in enumerate([(0.2, 0.4), (0.4, 0.5)])}
    row = learning_report.summarize(runs, base, {"s1": base})["s1"]["r"]
    assert row["seeds"] == 2 and row["bbox_AP"]["mean"] == pytest.approx(0.3)
    assert row["bbox_AP"]["std"] == pytest.approx(0.1414213562)
    assert row["retention_bbox_AP"]["mean"] == pytest.approx(0.45)
    assert row["adapter_disabled_equals_base"] is True
    runs["r@s1@s0"]["adapter_disabled"] = {**base, "bbox_AP": 0.49}
    assert learning_report.summarize(runs, base, {})["s1"]["r"]["adapter_disabled_equals_base"] is False


def test_reuse_takes_only_runs_with_the_same_settings_base_row_and_data_order(
        bench: ModuleType, tmp_path: Path) -> None:
    """``--reuse`` takes an earlier record only when nothing that changes it differs."""
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"base weights")
    args = bench.parse_args(["--rows", "attention_mlp,full_ft", "--seeds", "0,1",
                             "--shift-style", "shifted", "--base-checkpoint", str(base)])
    data = {"base": tmp_path / "b", "shifted": tmp_path / "s"}
    jobs = {f"{row}@shifted@s{seed}": learning_rows.plan_row(args, tmp_path, data, str(base), row,
                                                     "shifted", seed)
            for seed in (0, 1) for row in ("attention_mlp", "full_ft")}
    rec = {"shift": {}, "retention": {}, "wall_s": 1.0}
    previous = {  # an old report: no sampler_seed (stock order), no base hash (file hashed)
        "date": "then", "args": {**vars(args)}, "base_checkpoint": str(base),
        "rows": {r: learning_rows.ROWS[r] for r in ("attention_mlp", "full_ft")},
        "runs": {k: dict(rec) for k in jobs}, "losses": {k: [1.0] for k in jobs}}
    sha = __import__("hashlib").sha256(b"base weights").hexdigest()
    taken = learning_rows.reusable_runs(previous, args, sha, jobs)
    assert sorted(taken) == ["attention_mlp@shifted@s0", "full_ft@shifted@s0"]  # seed 1: order
    assert taken["full_ft@shifted@s0"]["loss"] == [1.0]
    previous["runs"]["full_ft@shifted@s1"]["sampler_seed"] = 1
    assert "full_ft@shifted@s1" in learning_rows.reusable_runs(previous, args, sha, jobs)
    assert learning_rows.reusable_runs(previous, args, "other", jobs) == {}          # another base
    assert learning_rows.reusable_runs({**previous, "args": {**vars(args), "lora_lr": 0.5}},
                               args, sha, jobs) == {}                        # another setting
    changed = {**previous, "rows": {**previous["rows"], "attention_mlp": {"lr": 1.0}}}
    assert sorted(learning_rows.reusable_runs(changed, args, sha, jobs)) == [
        "full_ft@shifted@s0", "full_ft@shifted@s1"]                          # another row
