"""Quick mode of ``benchmarks/learning.py``: every phase runs through SAM3's Trainer.

A few images and one epoch per phase (pretrain, base eval, LoRA, full fine-tune), each
in its own process, as in the real run. No assertions on AP values: only the structure
of the report, finite numbers, the base bit-identity check, and the plot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

METRICS = {"bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"}


@pytest.fixture(scope="module")
def quick_run(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("learning")
    return bench.main(["--quick", "--out", str(out)]), out


def _finite_metrics(metrics: dict) -> bool:
    return set(metrics) == METRICS and all(
        math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())


@pytest.mark.slow
def test_quick_run_writes_json_and_png(quick_run: tuple[dict, Path]) -> None:
    returned, out = quick_run
    report = json.loads((out / "learning.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert (out / "learning.png").stat().st_size > 0
    assert not list(out.glob("learning_work_*")), "the temporary work directory is removed"
    assert report["benchmark"] == "learning" and report["date"]
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"]
    assert report["args"]["quick"] is True
    assert report["config"] == "configs/lora/smoke_cpu.yaml"
    durations = report["durations_s"]
    assert {"datasets", "pretrain", "base_eval", "lora", "full_ft", "total"} <= set(durations)
    assert all(v >= 0 for v in durations.values())


@pytest.mark.slow
def test_ap_table_and_parameter_counts(quick_run: tuple[dict, Path]) -> None:
    report = quick_run[0]
    results = report["results"]
    assert _finite_metrics(results["base_own_domain"])
    table = results["shifted_heldout"]
    assert set(table) == {"base", "lora", "full_ft"}
    for row in table.values():
        assert _finite_metrics(row)
    params = results["trainable_params"]
    assert params["full_ft_trainable"] == params["total"] > 0
    assert 0 < params["lora_trainable"] < params["total"]
    assert math.isclose(params["lora_ratio"], params["lora_trainable"] / params["total"])
    phases = report["phases"]
    assert phases["lora"]["optimizer_steps"] == phases["full_ft"]["optimizer_steps"] > 0
    assert phases["lora"]["lora"]["preset"] == "default" and phases["full_ft"]["lora"] is None


@pytest.mark.slow
def test_base_weights_stay_bit_identical(quick_run: tuple[dict, Path]) -> None:
    results = quick_run[0]["results"]
    assert results["base_bit_identical"] is True
    check = results["base_checks"]["lora"]
    assert check["bit_identical"] and check["fingerprint_match"] and not check["mismatched"]
    assert check["frozen_tensors_compared"] > 0 and check["checkpoint_fingerprint"].startswith("sha256:")


@pytest.mark.slow
def test_curves_are_finite(quick_run: tuple[dict, Path]) -> None:
    curves = quick_run[0]["curves"]
    assert set(curves) == {"pretrain", "base_eval", "lora", "full_ft"}
    for name in ("pretrain", "lora", "full_ft"):
        c = curves[name]
        assert c["loss"] and len(c["loss"]) == len(c["loss_steps"]), name
        assert all(math.isfinite(v) for v in c["loss"]), name
        assert [p["epoch"] for p in c["ap"]] == [0], name
        assert all(_finite_metrics(p["metrics"]) for p in c["ap"]), name
    assert curves["base_eval"]["loss"] == [] and len(curves["base_eval"]["ap"]) == 1


def test_cli_rejects_bad_arguments(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--resolution", "100"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--sweep", "no_such_variant"])
    args = bench.parse_args(["--quick", "--sweep", "rank16,lr3e-3"])
    assert args.pretrain_epochs == args.adapt_epochs == 1 and args.sweep == "rank16,lr3e-3"


def test_sweep_variants_change_only_what_they_name(bench: ModuleType) -> None:
    args = bench.parse_args([])
    base, base_lr = bench._lora_settings(args)
    lora, lr = bench._lora_settings(args, bench.SWEEP_VARIANTS["rank16"])
    assert lr == base_lr and lora == {**base, "rank": 16, "alpha": 32}
    lora, lr = bench._lora_settings(args, bench.SWEEP_VARIANTS["lr3e-3"])
    assert lora == base and lr == 3e-3 != base_lr
    lora, _ = bench._lora_settings(args, bench.SWEEP_VARIANTS["scoring"])
    assert lora["modules_to_save"] == ["dot_prod_scoring"]


def test_phase_config_edits(bench: ModuleType, tmp_path: Path) -> None:
    """The composed smoke config gets our paths, sizes and model node, nothing else."""
    spec = bench.PhaseSpec(name="x", data_root=str(tmp_path / "d"), eval_split="test",
                           epochs=3, lr=2e-3, batch_size=4, steps_per_epoch=5,
                           base_checkpoint="/b.pt", lora={"rank": 4, "alpha": 8},
                           log_dir=str(tmp_path / "log"))
    cfg = bench.build_phase_config(spec)
    t = cfg.trainer
    assert t._target_ == "sam3.train.trainer.Trainer" and t.max_epochs == 3
    assert t.data.val.dataset.ann_file == str(tmp_path / "d" / "test" / "_annotations.coco.json")
    assert t.model._target_ == "sam3_lora_plugin.build_lora_sam3"
    assert t.model.model.checkpoint_path == "/b.pt" and t.model.lora.rank == 4
    assert t.optim.param_group_modifiers[0]._target_ == "sam3_lora_plugin.lora_param_groups"
    spec.lora = None
    full = bench.build_phase_config(spec).trainer
    assert full.model._target_ == "sam3_lora_plugin.build_sam3_arch"
    assert list(full.optim.param_group_modifiers) == [] and full.distributed.static_graph


def test_reuse_phase_only_with_the_same_settings_and_output(bench: ModuleType, tmp_path: Path) -> None:
    """``--reuse-base`` skips pretraining only when the earlier run had the same spec and its
    base checkpoint is still there."""
    from dataclasses import asdict

    base = tmp_path / "base.pt"
    spec = bench.PhaseSpec(name="pretrain", data_root=str(tmp_path / "d"), eval_split="test",
                           save_base_to=str(base), log_dir=str(tmp_path / "log"), steps_per_epoch=4)
    assert bench.reuse_phase(spec) is None  # nothing ran yet
    log = Path(spec.log_dir)
    log.mkdir()
    (log / "phase_spec.json").write_text(json.dumps(asdict(spec)))
    (log / "phase_result.json").write_text(json.dumps({"trainable_params": 7}))
    (log / "phase_seconds.json").write_text(json.dumps({"seconds": 12.5}))
    assert bench.reuse_phase(spec) is None  # the base checkpoint is missing
    base.write_bytes(b"x")
    reused = bench.reuse_phase(spec)
    assert reused["reused"] is True and reused["seconds"] == 12.5 and reused["trainable_params"] == 7
    assert reused["curves"] == {"loss_steps": [], "loss": [], "ap": [], "loss_terms": {}}
    spec.epochs += 1
    assert bench.reuse_phase(spec) is None  # other settings: run again


def test_loss_findings_name_the_terms_that_rose(bench: ModuleType) -> None:
    terms = {"loss_giou": {"early": 0.9, "late": 0.3}, "loss_giou_o2m": {"early": 0.1, "late": 1.7},
             "loss_ce": {"early": 0.2, "late": 0.25}, "tiny_o2m": {"early": 0.0, "late": 0.05}}
    lines = bench.loss_findings({"full_ft": {"curves": {"loss_terms": terms}}, "lora": {"curves": {}}})
    assert lines == ["full_ft: loss terms that rose (late mean > 2x early): loss_giou_o2m; fell: loss_giou."]
