"""The dataset configs under ``configs/lora/``: composed by Hydra through SAM3's config
module, every ``_target_`` node checked against its builder's signature, and everything
that runs on CPU instantiated on the synthetic dataset laid out as each config expects
(datasets, transforms, collate functions, loss, meters). The real SAM3 model is not built
here; the slow test trains ``coco_segm.yaml`` end to end with the tiny model swapped in.

Hydra's global state lives in a subprocess (one for all configs), as in test_hydra_plugin.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "hydra_configs" / "configs" / "lora"
NEW_CONFIGS = ["coco_box", "coco_segm", "rf100vl", "odinw13_fewshot"]

_SCRIPT = r'''
import dataclasses, inspect, json, os, shutil, sys
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra._internal.utils import _locate
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from sam3.train.utils.train_utils import register_omegaconf_resolvers

from sam3_lora_plugin.trainer.config_check import validate_training_config
from sam3_lora_plugin.data import make_synthetic_coco
from sam3_lora_plugin.lora.config import LoraConfig
from sam3_lora_plugin.trainer.compose import expand_group_overrides

register_omegaconf_resolvers()
work = Path(sys.argv[1])
syn = make_synthetic_coco(work / "syn", num_train=4, num_valid=2, num_test=2)
ANN = "_annotations.coco.json"

# RF100-VL layout: <root>/<dataset>/{train,valid,test}; task 0 is "-grccs".
rf = work / "rf100" / "-grccs"
rf.mkdir(parents=True)
for split in ("train", "valid", "test"):
    os.symlink(syn / split, rf / split)
# ODinW layout (GLIP's): task 1 Aquarium (category names are the prompts) and task 4
# NorthAmericaMushrooms (SAM3's 2 prompt overrides; the fake JSON keeps 2 categories).
for name, folder in (("Aquarium", "Aquarium/Aquarium Combined.v2-raw-1024.coco"),
                     ("NorthAmericaMushrooms", "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco")):
    for split, fname in (("train", "fewshot_train_shot10_seed300.json"), ("test", "annotations_without_background.json")):
        dst = work / "odinw" / folder / split
        shutil.copytree(syn / ("train" if split == "train" else "valid"), dst)
        coco = json.loads((dst / ANN).read_text())
        if name == "NorthAmericaMushrooms":
            coco["categories"] = coco["categories"][:2]
            coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] <= 2]
        (dst / fname).write_text(json.dumps(coco))
broken = work / "broken"
shutil.copytree(syn, broken)
coco = json.loads((broken / "train" / ANN).read_text())
(broken / "train" / coco["images"][0]["file_name"]).unlink()

logs = work / "logs"
RUNS = {
    "smoke_cpu": [f"paths.experiment_log_dir={logs}/smoke"],
    "coco_box": [f"paths.dataset_root={syn}", f"paths.experiment_log_dir={logs}/box"],
    "coco_segm": [f"paths.dataset_root={syn}", f"paths.experiment_log_dir={logs}/segm"],
    "rf100vl": [f"paths.roboflow_vl_100_root={work / 'rf100'}", f"paths.sweep_dir={logs}/rf"],
    "odinw13_fewshot": [f"paths.odinw_data_root={work / 'odinw'}", f"paths.sweep_dir={logs}/odinw",
                        "submitit.job_array.task_index=1"],
    "odinw13_fewshot@4": [f"paths.odinw_data_root={work / 'odinw'}", f"paths.sweep_dir={logs}/odinw",
                          "submitit.job_array.task_index=4"],
}
SPECIAL = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# Arguments SAM3 passes when it instantiates the node (not config keys).
AT_RUNTIME = {"torch.optim.AdamW": {"params"}}


def signature_problems(node, where, out):
    if isinstance(node, DictConfig):
        if "_target_" in node:
            params = inspect.signature(_locate(node["_target_"])).parameters
            var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
            keys = [k for k in node.keys() if k not in SPECIAL]
            unknown = [k for k in keys if k not in params and not var_kw]
            required = [n for n, p in params.items() if p.default is p.empty
                        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            given = set(keys) | AT_RUNTIME.get(node["_target_"], set())
            missing = [] if node.get("_partial_") else [n for n in required if n not in given]
            if unknown or missing:
                out.append(f"{where} -> {node['_target_']}: unknown {unknown}, missing {missing}")
        keys = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return out
    for k in keys:
        if not (OmegaConf.is_interpolation(node, k) or OmegaConf.is_missing(node, k)):
            signature_problems(node[k], f"{where}.{k}" if where else str(k), out)
    return out


def dataclass_problems(cfg):
    import sam3.train.trainer as T
    out = []
    for key, cls in (("checkpoint", T.CheckpointConf), ("logging", T.LoggingConf),
                     ("distributed", T.DistributedConf), ("optim", T.OptimConf), ("optim.amp", T.OptimAMPConf)):
        node = OmegaConf.select(cfg.trainer, key)
        fields = {f.name for f in dataclasses.fields(cls)}
        out += [f"trainer.{key}.{k}" for k in node.keys() if k not in fields]
    return out


def text_queries(datapoint):
    return sorted({q.query_text for q in datapoint.find_queries})


res = {}
with initialize_config_module("sam3.train", version_base="1.2"):
    for run, overrides in RUNS.items():
        name = run.split("@")[0]
        config = f"configs/lora/{name}.yaml"
        cfg = compose(config_name=config, overrides=overrides)
        r = res[run] = {}
        validate_training_config(cfg)  # the launcher's type check passes
        qv = compose(config_name=config, overrides=expand_group_overrides(overrides + ["lora=qv"], config))
        r["presets"] = [cfg.trainer.model.lora.preset, qv.trainer.model.lora.preset]
        r["signature_problems"] = signature_problems(cfg, "", [])
        r["dataclass_problems"] = dataclass_problems(cfg)
        r["lora"] = dataclasses.asdict(LoraConfig.from_any(OmegaConf.to_container(cfg.trainer.model.lora)))["rank"]
        r["model_target"] = cfg.trainer.model._target_
        r["builder_target"] = cfg.trainer.model.model._target_
        r["resolution"] = cfg.scratch.resolution
        r["accelerator"] = cfg.trainer.accelerator
        r["launcher_dir"] = cfg.launcher.experiment_log_dir
        job_array = cfg.submitit.get("job_array")
        r["job_array"] = OmegaConf.to_container(job_array) if job_array is not None else None
        r["use_cluster"] = cfg.submitit.use_cluster
        train = instantiate(cfg.trainer.data.train.dataset)
        val = instantiate(cfg.trainer.data.val.dataset)
        r["train_len"], r["val_len"] = len(train), len(val)
        r["train_root"], r["val_root"] = str(train.root), str(val.root)
        r["limit_ids"] = cfg.trainer.data.train.dataset.get("limit_ids")
        r["prompts"] = train.coco.prompts if hasattr(train.coco, "prompts") else None
        r["val_queries"] = text_queries(val[0])
        collate_train = instantiate(cfg.trainer.data.train.collate_fn)
        collate_val = instantiate(cfg.trainer.data.val.collate_fn)
        batch = collate_train([train[0], train[1]])
        r["train_batch_keys"] = sorted(batch)
        r["train_image_shape"] = list(batch["all"].img_batch.shape)
        r["train_has_masks"] = batch["all"].find_targets[0].segments is not None
        r["val_batch_keys"] = sorted(collate_val([val[0]]))
        meters = instantiate(cfg.trainer.meters, _convert_="all")
        r["meter_keys"] = sorted(meters["val"])
        r["meters"] = sorted(f"{k}/{n}:{m.iou_type}" for k, ms in meters["val"].items() for n, m in ms.items())
        r["gt_paths"] = sorted({ev.gt_path for ms in meters["val"].values() for m in ms.values()
                                for ev in m.pred_file_evaluators})
        loss = instantiate(cfg.trainer.loss, _convert_="all")
        r["loss_fns"] = [type(f).__name__ for f in loss["all"].loss_fns_find]

    cfg = compose(config_name="configs/lora/coco_box.yaml",
                  overrides=[f"paths.dataset_root={broken}", f"paths.experiment_log_dir={logs}/broken"])
    try:
        instantiate(cfg.trainer.data.train.dataset)
        res["broken"] = None
    except Exception as exc:
        chain, e = [], exc
        while e is not None:
            chain.append((type(e).__name__, str(e)))
            e = e.__cause__
        res["broken"] = {"chain": chain, "missing_image": coco["images"][0]["file_name"],
                         "json": str(broken / "train" / ANN)}
print(json.dumps(res))
'''


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    work = tmp_path_factory.mktemp("configs")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(work)], cwd=work, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return work, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_yaml_opens_with_the_command_that_runs_it(name):
    head = (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()
    assert head[0] == "# @package _global_"
    comment = "\n".join(line for line in head[:12] if line.startswith("#"))
    assert re.search(rf"python -m sam3_lora_plugin\.train -c configs/lora/{name}\.yaml", comment), comment


@pytest.mark.parametrize("run", ["smoke_cpu", *NEW_CONFIGS, "odinw13_fewshot@4"])
def test_every_target_node_has_exactly_builder_kwargs(composed, run):
    """Every ``_target_`` node's keys are parameters of its target (no typos, no extras), and
    required parameters are present; the Trainer's dataclass sections hold only their fields."""
    r = composed[1][run]
    assert r["signature_problems"] == []
    assert r["dataclass_problems"] == []


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_real_weights_gpu_model_section(composed, name):
    r = composed[1][name]
    assert r["model_target"] == "sam3_lora_plugin.build_lora_sam3"
    assert r["builder_target"] == "sam3.model_builder.build_sam3_image_model"
    assert (r["resolution"], r["accelerator"], r["lora"]) == (1008, "cuda", 8)
    assert r["presets"] == ["default", "qv"]  # the LoRA preset group, switched with lora=qv


def test_box_and_segm_configs_on_a_roboflow_layout_dataset(composed):
    work, res = composed
    box, segm = res["coco_box"], res["coco_segm"]
    syn = work / "syn"
    for r in (box, segm):
        assert r["train_root"].rstrip("/") == str(syn / "train")
        assert r["val_root"].rstrip("/") == str(syn / "valid")
        assert r["gt_paths"] == [str(syn / "valid" / "_annotations.coco.json")]
        assert r["train_batch_keys"] == ["all"] and r["val_batch_keys"] == r["meter_keys"] == ["coco"]
        assert r["train_image_shape"] == [2, 3, 1008, 1008]
        # 2 valid images x 2 chunks of category_chunk_size 2 over 3 categories
        assert (r["train_len"], r["val_len"]) == (4, 4)
        assert r["val_queries"] == ["blue square", "red circle"]
    assert box["meters"] == ["coco/detection:bbox"]
    assert segm["meters"] == ["coco/detection:bbox", "coco/segmentation:segm"]
    assert box["loss_fns"] == ["Boxes", "IABCEMdetr"]
    assert segm["loss_fns"] == ["Boxes", "IABCEMdetr", "Masks"]
    assert (box["train_has_masks"], segm["train_has_masks"]) == (False, True)


def test_rf100vl_is_a_job_array_over_the_100_datasets(composed):
    work, res = composed
    r = res["rf100vl"]
    root = work / "rf100" / "-grccs"
    assert r["job_array"] == {"num_tasks": 100, "task_index": 0} and r["use_cluster"] is True
    assert r["limit_ids"] == 100
    assert r["train_root"].rstrip("/") == str(root / "train")
    assert r["val_root"].rstrip("/") == str(root / "test")  # SAM3 evaluates RF100-VL on test
    assert r["gt_paths"] == [str(root / "test" / "_annotations.coco.json")]
    assert r["launcher_dir"] == str(work / "logs" / "rf" / "-grccs")
    yaml_text = (CONFIG_DIR / "rf100vl.yaml").read_text()
    names = re.findall(r"^  - (\S+)$", yaml_text.split("all_roboflow_supercategories:")[1], re.M)
    assert len(names) == len(set(names)) == 100


def test_odinw13_fewshot_uses_the_fewshot_split_prompts_and_reindexing(composed):
    work, res = composed
    aq, mush = res["odinw13_fewshot"], res["odinw13_fewshot@4"]
    assert aq["job_array"] == {"num_tasks": 13, "task_index": 1}
    folder = work / "odinw" / "Aquarium" / "Aquarium Combined.v2-raw-1024.coco"
    assert aq["train_root"].rstrip("/") == str(folder / "train")
    assert aq["val_root"].rstrip("/") == str(folder / "test")
    # reindex_coco_to_temp: the evaluator reads a 1-indexed temporary copy of the test JSON
    assert len(aq["gt_paths"]) == 1 and aq["gt_paths"][0].endswith("annotations_without_background_1_indexed.json")
    assert aq["prompts"] is None and aq["val_queries"] == ["blue square", "green triangle", "red circle"]
    assert aq["launcher_dir"] == str(work / "logs" / "odinw" / "Aquarium")
    assert mush["prompts"] == {"1": "chicken of wood", "2": "chanterelle"}
    assert mush["val_queries"] == ["chanterelle", "chicken of wood"]


def test_broken_dataset_fails_at_instantiation_with_the_checkers_message(composed):
    broken = composed[1]["broken"]
    assert broken is not None, "instantiating a dataset with a missing image did not fail"
    (kind, message), = [c for c in broken["chain"] if c[0] == "DatasetError"]
    assert broken["chain"][0][0] == "InstantiationException"
    assert broken["json"] in message
    assert f"image files missing or unreadable: 1 (first: {broken['missing_image']}" in message
    assert "Fix: put the images beside the JSON" in message


_TINY = [
    "runtime=cpu",  # accelerator, gloo, no AMP, DummyLoss device, CPU fallbacks
    "~trainer.model.model",
    "+trainer.model.model={_target_:sam3_lora_plugin.build_sam3_arch,size:tiny,resolution:112,"
    "enable_segmentation:true,seed:0}",
    "scratch.resolution=112", "scratch.num_queries=20",
    "scratch.train_transforms.0.transforms.3.sizes.min_size=96", "scratch.num_train_workers=0",
    "trainer.data.train.pin_memory=false", "trainer.data.val.pin_memory=false",
    "+scratch.segm_postprocessor.always_interpolate_masks_on_gpu=false", "trainer.max_epochs=1",
    "scratch.train_batch_size=2", "scratch.val_batch_size=2", "scratch.val_category_chunk_size=3",
    "trainer.data.train.dataset.limit_ids=4", "+trainer.data.val.dataset.limit_ids=2",
]


@pytest.mark.slow
def test_coco_segm_trains_end_to_end_with_the_tiny_model(tmp_path):
    """coco_segm.yaml through SAM3's launcher with only the model (and CPU settings) swapped:
    its transforms, Masks loss, optimizer options (param_names / module_cls_names patterns),
    LoRA param groups, dataset preflight and bbox + segm evaluation all run."""
    from sam3_lora_plugin.data import make_synthetic_coco

    syn = make_synthetic_coco(tmp_path / "syn", num_train=4, num_valid=2, num_test=0)
    exp = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sam3_lora_plugin.train", "-c", "configs/lora/coco_segm.yaml",
         f"paths.dataset_root={syn}", f"paths.experiment_log_dir={exp}", *_TINY,
         "--verbose"],  # SAM3's own log lines (the param_names matches) on the console
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=""))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    stats = json.loads((exp / "logs" / "val_stats.json").read_text().splitlines()[-1])
    assert {"Meters_train/val_coco/detection/coco_eval_bbox_AP",
            "Meters_train/val_coco/segmentation/coco_eval_segm_AP"} <= set(stats)
    assert (exp / "adapter" / "adapter_model.safetensors").is_file()
    assert "Matches for param_name [backbone.vision_backbone.*]" in out
