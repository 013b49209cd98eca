"""``scratch.enable_segmentation`` as one switch: the loss and the meters follow it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra.utils import instantiate
from sam3.train.loss.loss_fns import Boxes, Masks
from sam3.train.loss.sam3_loss import Sam3LossWrapper

from sam3_lora_plugin.trainer.compose import compose_config
from sam3_lora_plugin.trainer.segmentation import build_sam3_loss, select_meters

SMOKE = "configs/lora/smoke_cpu.yaml"


def _loss_types(loss: Sam3LossWrapper) -> list[str]:
    return sorted(type(f).__name__ for f in loss.loss_fns_find)


@pytest.mark.parametrize("config", [SMOKE, "configs/lora/coco_segm.yaml"])
def test_switch_drops_masks_loss_and_segm_meters(config, tmp_path):
    overrides = ["paths.dataset_root=/nonexistent"] if "coco" in config else []
    on = compose_config(config, overrides)
    off = compose_config(config, overrides + ["scratch.enable_segmentation=false"])
    assert "Masks" in _loss_types(instantiate(on.scratch.loss, _convert_="all"))
    assert _loss_types(instantiate(off.scratch.loss, _convert_="all")) == [
        "Boxes", "IABCEMdetr"]
    # The segm meter of the "off" config is never built: point its dump dir and its
    # evaluator's ground truth somewhere that would fail if it were.
    meters = off.trainer.meters
    key = next(iter(meters.val))
    meters.val[key].segmentation.dump_dir = str(tmp_path / "must_not_exist")
    meters.val[key].segmentation.pred_file_evaluators[0].gt_path = "/nonexistent.json"
    meters.val[key].detection.pred_file_evaluators = None
    meters.val[key].detection.dump_dir = str(tmp_path / "bbox")
    built = instantiate(meters, _convert_="all")
    assert sorted(built["val"][key]) == ["detection"]
    assert built["val"][key]["detection"].iou_type == "bbox"
    assert not (tmp_path / "must_not_exist").exists()


def test_builders_keep_everything_when_on():
    boxes, masks = Boxes(weight_dict={"loss_bbox": 1.0}), Masks(weight_dict={"loss_mask": 1.0})
    kw = dict(matcher=None, loss_fns_find=[boxes, masks])
    assert build_sam3_loss(True, **kw).loss_fns_find == [boxes, masks]
    assert build_sam3_loss(False, **kw).loss_fns_find == [boxes]
    meters = {"val": {"k": {"a": {"_target_": "builtins.dict", "iou_type": "segm"},
                            "b": {"_target_": "builtins.dict", "iou_type": "bbox"}}},
              "train": None}
    assert select_meters(True, **meters) == {
        "val": {"k": {"a": {"iou_type": "segm"}, "b": {"iou_type": "bbox"}}}, "train": None}
    assert select_meters(False, **meters) == {"val": {"k": {"b": {"iou_type": "bbox"}}},
                                              "train": None}


@pytest.mark.slow
def test_box_only_smoke_run_trains_and_evaluates_boxes(tmp_path):
    """The switch from the command line: a full smoke run with masks off trains, and
    evaluates bbox only (before: AssertionError: pred_masks in SAM3's loss)."""
    env = dict(os.environ, SAM3_LORA_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "sam3_lora_plugin.train", "-c", SMOKE, "--verbose", "trainer.max_epochs=1",
         "scratch.enable_segmentation=false", f"launcher.experiment_log_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "coco_eval_bbox_AP" in out and "coco_eval_segm_AP" not in out
