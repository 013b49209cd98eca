"""Tests for the automatic dataset check (``sam3_lora_plugin.data.preflight``)."""

import json
import logging
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sam3_lora_plugin.data import make_synthetic_coco
from sam3_lora_plugin.data import preflight
from sam3_lora_plugin.data.check import DatasetError
from sam3_lora_plugin.data.preflight import (TARGET, check_config_datasets, checked_path, clear_cache,
                                             find_checked_paths)

ANN = "_annotations.coco.json"


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_synthetic_coco(tmp_path / "ds", num_train=3, num_valid=2, num_test=0, image_size=64)


@pytest.fixture
def count_checks(monkeypatch):
    calls = []
    real = preflight.check_coco

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(preflight, "check_coco", counting)
    return calls


def test_good_paths_are_returned_unchanged(dataset):
    folder = str(dataset / "train") + os.sep
    ann = str(dataset / "train" / ANN)
    assert checked_path(folder) == folder
    assert checked_path(ann, image_dir=folder) == ann


def test_missing_folder_and_file_name_the_path_and_the_fix(dataset):
    with pytest.raises(DatasetError, match=r"image folder '.*/nope/' does not exist\. Fix: point the config"):
        checked_path(str(dataset / "nope") + "/")
    with pytest.raises(DatasetError, match=r"annotation file '.*/valid/missing\.json' does not exist\. Fix:"):
        checked_path(str(dataset / "valid" / "missing.json"))
    with pytest.raises(DatasetError, match=r"image folder '.*/elsewhere' \(for .*\) does not exist"):
        checked_path(str(dataset / "valid" / ANN), image_dir=str(dataset / "elsewhere"))


def test_broken_dataset_raises_the_checkers_message(dataset):
    """A missing image is an error: one message naming the JSON, the problem, the image and the fix."""
    coco = json.loads((dataset / "train" / ANN).read_text())
    victim = coco["images"][1]["file_name"]
    (dataset / "train" / victim).unlink()
    with pytest.raises(DatasetError) as err:
        checked_path(str(dataset / "train" / ANN))
    msg = str(err.value)
    assert str(dataset / "train" / ANN) in msg
    assert f"image files missing or unreadable: 1 (first: {victim} (id {coco['images'][1]['id']}): not found)" in msg
    assert "Fix: put the images beside the JSON" in msg
    assert "scratch.strict_dataset_check=false" in msg


def test_not_strict_logs_and_continues(dataset, caplog):
    ann = dataset / "train" / ANN
    coco = json.loads(ann.read_text())
    coco["annotations"][0]["bbox"][2] = 0  # degenerate box: an error
    ann.write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING, logger=preflight.__name__):
        assert checked_path(str(ann), strict=False) == str(ann)
    assert "bbox with width or height <= 0" in caplog.text
    with pytest.raises(DatasetError, match="bbox with width or height <= 0"):
        checked_path(str(ann))


def test_each_file_version_is_checked_once(dataset, count_checks):
    ann = dataset / "valid" / ANN
    for _ in range(3):
        checked_path(str(ann))
    assert len(count_checks) == 1
    coco = json.loads(ann.read_text())
    coco["categories"][0]["name"] = "crimson circle"
    ann.write_text(json.dumps(coco))
    os.utime(ann, ns=(ann.stat().st_atime_ns, ann.stat().st_mtime_ns + 10**9))
    checked_path(str(ann))
    assert len(count_checks) == 2
    checked_path(str(ann), check_images=False)  # other settings: another check
    assert len(count_checks) == 3


def test_reindex_checks_the_original_and_returns_a_one_indexed_copy(dataset):
    ann = dataset / "valid" / ANN
    coco = json.loads(ann.read_text())
    for im in coco["images"]:
        im["id"] -= 1
    for a in coco["annotations"]:
        a["image_id"] -= 1
    assert min(im["id"] for im in coco["images"]) == 0
    ann.write_text(json.dumps(coco))
    out = checked_path(str(ann), reindex=True)
    assert out != str(ann)
    copy = json.loads(Path(out).read_text())
    assert sorted(im["id"] for im in copy["images"]) == sorted(im["id"] + 1 for im in coco["images"])


def _config(dataset: Path):
    node = lambda split, name="": {"_target_": TARGET, "path": f"${{root}}/{split}/{name}"}  # noqa: E731
    return OmegaConf.create({
        "root": str(dataset),
        "scratch": {"gt": node("valid", ANN)},
        "trainer": {
            "data": {"train": {"dataset": {"img_folder": node("train"), "ann_file": node("train", ANN)}}},
            "meters": {"val": [{"gt_path": "${scratch.gt}"}, {"gt_path": node("valid", ANN)}]},
        },
    })


def test_find_checked_paths_in_document_order_without_following_interpolations(dataset):
    found = [where for where, _ in find_checked_paths(_config(dataset))]
    assert found == ["scratch.gt", "trainer.data.train.dataset.img_folder",
                     "trainer.data.train.dataset.ann_file", "trainer.meters.val[1].gt_path"]


def test_check_config_datasets_checks_every_node(dataset):
    checked = check_config_datasets(_config(dataset))
    assert [p for _, p in checked] == [f"{dataset}/valid/{ANN}", f"{dataset}/train/", f"{dataset}/train/{ANN}",
                                       f"{dataset}/valid/{ANN}"]


def test_check_config_datasets_can_skip_the_train_split(dataset):
    checked = check_config_datasets(_config(dataset), skip=("trainer.data.train",))
    assert [where for where, _ in checked] == ["scratch.gt", "trainer.meters.val[1].gt_path"]


def test_check_config_datasets_surfaces_the_dataset_error(dataset):
    (dataset / "valid" / ANN).write_text("{not json")
    with pytest.raises(DatasetError, match=r"valid/_annotations\.coco\.json: annotation file cannot be read"):
        check_config_datasets(_config(dataset))


def test_check_config_datasets_can_check_every_job_array_task(tmp_path):
    """rf100vl/odinw13 pick the dataset from submitit.job_array.task_index: with
    job_array=True every task's dataset is checked, so a broken one stops the submission."""
    from sam3_lora_plugin.trainer.compose import register_sam3_resolvers

    register_sam3_resolvers()  # ${string:...}, as SAM3's launcher registers it
    roots = [make_synthetic_coco(tmp_path / name, num_train=1, num_valid=0, num_test=0, image_size=32)
             for name in ("a", "b")]
    cfg = OmegaConf.create({
        "names": ["a", "b"],
        "submitit": {"job_array": {"num_tasks": 2, "task_index": 0}},
        "ann": {"_target_": TARGET, "path": f"{tmp_path}/${{names.${{string:${{submitit.job_array.task_index}}}}}}/train/{ANN}"},
    })
    assert [p for _, p in check_config_datasets(cfg)] == [str(roots[0] / "train" / ANN)]
    assert [p for _, p in check_config_datasets(cfg, job_array=True)] == [str(r / "train" / ANN) for r in roots]
    assert cfg.submitit.job_array.task_index == 0  # the caller's config is not changed
    (roots[1] / "train" / ANN).write_text("[]")
    check_config_datasets(cfg)
    with pytest.raises(DatasetError, match=r"b/train/_annotations\.coco\.json"):
        check_config_datasets(cfg, job_array=True)


def test_truncated_image_stops_the_run(dataset):
    """The preflight opens each image to its end: a file cut short by an interrupted copy
    stops the run before training, naming the file (SAM3 would raise OSError mid-epoch)."""
    coco = json.loads((dataset / "train" / ANN).read_text())
    victim = dataset / "train" / coco["images"][0]["file_name"]
    victim.write_bytes(victim.read_bytes()[:-200])
    with pytest.raises(DatasetError, match=rf"image files truncated or corrupt.*{victim.name} \(id "):
        checked_path(str(dataset / "train" / ANN))
