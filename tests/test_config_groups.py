"""The config groups under configs/lora/: LoRA presets, dataset blocks and runtime blocks.

Every (config, dataset, runtime) combination is composed the way the launcher composes it
(group selections expanded by ``expand_group_overrides``), validated like a launch, and
checked for what its blocks promise: the data paths every reader gets, and the
accelerator, DDP backend, AMP and SLURM settings. Nothing is built or trained here; the
end-to-end tests train with ``dataset=roboflow`` (tests/test_byod_e2e.py) and submit with
``runtime=slurm_cpu`` (tests/cluster/).
"""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sam3_lora_plugin.trainer.compose import register_sam3_resolvers
from sam3_lora_plugin.trainer.config_check import ConfigError, check_required_values, validate_training_config
from sam3_lora_plugin.data import get_smoke_split_path
from sam3_lora_plugin.trainer.compose import expand_group_overrides, get_config_groups

CONFIGS = ("configs/lora/smoke_cpu.yaml", "configs/lora/coco_box.yaml", "configs/lora/coco_segm.yaml")
GROUP_DIR = resources.files("hydra_configs.configs.lora")
ANN = "_annotations.coco.json"

#: What each dataset block must set up: the overrides it needs, and the four paths (for
#: smoke, computed when a test asks: finding them generates the cached dataset).
DATASETS = {
    "smoke": ([], lambda: {"train_img": get_smoke_split_path("train"),
                           "train_ann": get_smoke_split_path("train", ANN),
                           "val_img": get_smoke_split_path("valid"),
                           "val_ann": get_smoke_split_path("valid", ANN)}),
    "roboflow": (["paths.dataset_root=/data/rf", "scratch.val_split=test"],
                 {"train_img": "/data/rf/train/", "train_ann": f"/data/rf/train/{ANN}",
                  "val_img": "/data/rf/test/", "val_ann": f"/data/rf/test/{ANN}"}),
    "coco_files": (["paths.train_images=/coco/train2017", "paths.train_annotations=/coco/tr.json",
                    "paths.val_images=/coco/val2017", "paths.val_annotations=/coco/va.json"],
                   {"train_img": "/coco/train2017/", "train_ann": "/coco/tr.json",
                    "val_img": "/coco/val2017/", "val_ann": "/coco/va.json"}),
}
#: What each runtime block must set: accelerator, backend, AMP, DummyLoss device,
#: CPU fallbacks, processes per node, use_cluster, timeout_hour, cpus_per_task.
RUNTIMES = {
    "cpu": ("cpu", "gloo", False, "cpu", True, 1, False, 1, 1),
    "gpu": ("cuda", "nccl", True, "cuda", False, 1, False, 72, 10),
    "slurm_cpu": ("cpu", "gloo", False, "cpu", True, 2, True, 1, 1),
    "slurm_gpu": ("cuda", "nccl", True, "cuda", False, 8, True, 72, 10),
}


@pytest.fixture(scope="module", autouse=True)
def hydra_module():
    register_sam3_resolvers()
    GlobalHydra.instance().clear()
    initialize_config_module("sam3.train", version_base="1.2")
    yield
    GlobalHydra.instance().clear()


def _compose(config: str, overrides: list[str]):
    return compose(config_name=config, overrides=expand_group_overrides(overrides, config))


def _value(node):
    """A plain path, or what a nested ``_target_`` (the smoke block's) returns."""
    return instantiate(node) if OmegaConf.is_dict(node) else node


def _paths(cfg) -> dict:
    """The paths the train set, the val set and the COCO evaluators are given (the
    ``path`` of each ``checked_path`` node, which is not called: nothing exists here)."""
    data = cfg.trainer.data
    return {
        "train_img": _value(data.train.dataset.img_folder.path),
        "train_ann": _value(data.train.dataset.ann_file.path),
        "val_img": _value(data.val.dataset.img_folder.path),
        "val_ann": _value(data.val.dataset.ann_file.path),
        "gt": sorted({_value(ev.gt_path.path) for meter in cfg.trainer.meters.val.values()
                      for m in meter.values() for ev in m.pred_file_evaluators}),
    }


def test_groups_are_found_next_to_each_config():
    for config in CONFIGS:
        assert {"preset", "dataset", "runtime"} <= set(get_config_groups(config)), config
    assert expand_group_overrides(["dataset=roboflow", "runtime=gpu"], CONFIGS[0]) == [
        "configs/lora/dataset@dataset=roboflow", "configs/lora/runtime@runtime=gpu"]


@pytest.mark.parametrize("config, dataset, runtime",
                         list(itertools.product(CONFIGS, DATASETS, RUNTIMES)))
def test_every_combination_composes_validates_and_sets_what_its_blocks_promise(
        config: str, dataset: str, runtime: str) -> None:
    extra, paths = DATASETS[dataset]
    paths = paths() if callable(paths) else paths
    cfg = _compose(config, [f"dataset={dataset}", f"runtime={runtime}", *extra])
    validate_training_config(cfg)
    t = cfg.trainer
    got = (t.accelerator, t.distributed.backend, t.optim.amp.enabled, t.loss.default.device,
           t.model.cpu_fallbacks, cfg.launcher.gpus_per_node, cfg.submitit.use_cluster,
           cfg.submitit.timeout_hour, cfg.submitit.cpus_per_task)
    assert got == RUNTIMES[runtime]
    if t.optim.amp.enabled:
        assert t.optim.amp.amp_dtype == "bfloat16"
    found = _paths(cfg)
    assert found.pop("gt") == [paths["val_ann"]]  # the evaluators score the val split's JSON
    assert found == paths
    # The recipe is untouched by either block: the same model and preset as the default.
    default = _compose(config, [] if "smoke" in config else ["paths.dataset_root=/x"])
    assert OmegaConf.to_container(t.model.model) == OmegaConf.to_container(default.trainer.model.model)
    assert t.model.lora.preset == "default"


def test_default_blocks_of_each_config():
    smoke = _compose(CONFIGS[0], [])
    assert (smoke.trainer.accelerator, smoke.submitit.use_cluster) == ("cpu", False)
    assert _paths(smoke)["train_ann"] == get_smoke_split_path("train", ANN)
    box = _compose(CONFIGS[1], ["paths.dataset_root=/d"])
    assert (box.trainer.accelerator, box.trainer.optim.amp.enabled) == ("cuda", True)
    assert _paths(box)["val_ann"] == f"/d/valid/{ANN}"
    # The sweeps keep their own cluster settings over the runtime block coco_box picks.
    for name, root in (("rf100vl", "paths.roboflow_vl_100_root=/rf"),
                       ("odinw13_fewshot", "paths.odinw_data_root=/o")):
        sweep = _compose(f"configs/lora/{name}.yaml", [root, "paths.sweep_dir=/e"])
        assert (sweep.submitit.use_cluster, sweep.launcher.gpus_per_node) == (True, 2), name
        assert sweep.submitit.cpus_per_task == 10 and sweep.trainer.accelerator == "cuda", name


def test_command_line_beats_the_blocks():
    cfg = _compose(CONFIGS[0], ["runtime=slurm_cpu", "submitit.timeout_hour=3",
                                "launcher.gpus_per_node=4", "dataset=roboflow",
                                "paths.dataset_root=/r", "scratch.train_split=valid"])
    assert (cfg.submitit.timeout_hour, cfg.launcher.gpus_per_node) == (3, 4)
    assert _paths(cfg)["train_ann"] == f"/r/valid/{ANN}"


def test_required_values_are_named_before_anything_runs():
    """Every ``???`` left is named at once (OmegaConf would name the first key reading one)."""
    with pytest.raises(ConfigError, match=r"required values not set: paths.roboflow_vl_100_root, "
                       r"paths.sweep_dir\. Give them on the command line"):
        check_required_values(_compose("configs/lora/rf100vl.yaml", []), "configs/lora/rf100vl.yaml")
    with pytest.raises(ConfigError, match=r"required value not set: paths.dataset_root\."):
        check_required_values(_compose(CONFIGS[0], ["dataset=roboflow"]), CONFIGS[0])
    check_required_values(_compose(CONFIGS[0], []), CONFIGS[0])


def test_required_dataset_paths_are_missing_until_given():
    cfg = _compose(CONFIGS[0], ["dataset=roboflow"])
    assert OmegaConf.is_missing(cfg.paths, "dataset_root")
    cfg = _compose(CONFIGS[1], ["dataset=coco_files"])
    assert all(OmegaConf.is_missing(cfg.paths, k) for k in
               ("train_images", "train_annotations", "val_images", "val_annotations"))


@pytest.mark.parametrize("group", ["preset", "dataset", "runtime"])
def test_each_block_documents_itself_in_its_header(group: str) -> None:
    files = sorted(p for p in GROUP_DIR.joinpath(group).iterdir() if p.name.endswith(".yaml"))
    assert len(files) >= 2
    selector = "lora" if group == "preset" else group
    for f in files:
        lines = f.read_text().splitlines()
        header = []
        for line in lines:
            if not line.startswith("#"):
                break
            header.append(line)
        assert header[0].startswith("# @package "), f.name
        name = Path(f.name).stem
        text = "\n".join(header)
        assert len(header) >= 4, f"{f.name}: header too short"
        assert f"'{name}'" in header[1] or f"'{name}'" in header[2], f"{f.name}: names itself"
        assert "python -m sam3_lora_plugin.train -c configs/lora/" in text, f.name
        assert f"{selector}={name}" in text, f"{f.name}: shows how to select it"


@pytest.mark.parametrize("config", CONFIGS + ("configs/lora/first_run_cpu.yaml",))
def test_lora_node_lists_exactly_the_lora_settings(config: str) -> None:
    """``trainer.model.lora``'s keys are LoraConfig's fields, every one of them, so each
    setting is visible in the YAML and settable without '+'."""
    import dataclasses

    from sam3_lora_plugin.lora.config import LoraConfig

    lora = _compose(config, []).trainer.model.lora
    assert set(lora) == {f.name for f in dataclasses.fields(LoraConfig)}
