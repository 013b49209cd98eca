"""Run and meter names a user would choose: runs/<paths.run_name>, meters val_coco/... in every
config, and the README's one-command GPU path composes with its keys."""

from __future__ import annotations

import pytest

from sam3_lora_plugin.trainer.compose import compose_config

GPU_KEYS = ["paths.dataset_root=/data/mydata", "paths.checkpoint_path=/ckpt/sam3.pt",
            "paths.run_name=mydata"]


@pytest.mark.parametrize("config,run", [
    ("configs/lora/smoke_cpu.yaml", "runs/smoke"),
    ("configs/lora/first_run_cpu.yaml", "runs/first_run"),
    ("configs/lora/coco_box.yaml", "runs/coco_box"),
    ("configs/lora/coco_segm.yaml", "runs/coco_segm"),
])
def test_runs_are_named_and_meters_are_val_coco(config, run):
    extra = [] if "cpu" in config else ["paths.dataset_root=/x"]
    cfg = compose_config(config, extra)
    assert cfg.launcher.experiment_log_dir == run
    assert cfg.trainer.checkpoint.save_dir == f"{run}/checkpoints"
    assert list(cfg.trainer.meters.val) == ["coco"]
    assert cfg.trainer.data.val.collate_fn.dict_key == "coco"
    assert compose_config(config, extra + ["paths.run_name=mine"]).launcher.experiment_log_dir == "runs/mine"


@pytest.mark.parametrize("config", ["configs/lora/coco_segm.yaml", "configs/lora/coco_box.yaml"])
def test_the_readme_gpu_command_composes_with_its_keys(config):
    cfg = compose_config(config, GPU_KEYS)
    assert cfg.trainer.model.model.checkpoint_path == "/ckpt/sam3.pt"
    assert cfg.scratch.train_img_folder == "/data/mydata/train/"
    assert cfg.launcher.experiment_log_dir == "runs/mydata"
    assert cfg.trainer.model.model._target_ == "sam3.model_builder.build_sam3_image_model"
