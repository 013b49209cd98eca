"""Bring your own data, end to end on CPU, with the commands the README gives:

1. convert a LabelMe export (the embedded dataset, written out as LabelMe per-image JSON
   with polygons and rectangles) to the Roboflow COCO layout;
2. check it;
3. fine-tune on it through the launcher (``smoke_cpu.yaml dataset=roboflow``);
4. evaluate the base against the adapter on its valid split (SAM3's COCO evaluators);
5. predict on its valid images, writing COCO results and overlays.

Each step's output is checked against an independent reference: the converted
annotations against the source COCO file (pycocotools), the comparison table against
the numbers SAM3's evaluator logged, the predictions through pycocotools' ``loadRes``.
The base is the tiny architecture at random init (seed 0), so its AP, and the briefly
trained adapter's, are near zero: this test proves the chain, not accuracy.
``benchmarks/learning.py`` runs the same evaluation on a base that detects.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sam3_lora_plugin.data import get_smoke_dataset_root
from sam3_lora_plugin.inference import PALETTE

ANN = "_annotations.coco.json"
SMOKE = "configs/lora/smoke_cpu.yaml"
CATEGORIES = ["red circle", "blue square", "green triangle"]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args[:2])} failed:\n{out[-5000:]}"
    return out


def write_labelme_export(coco_root: Path, export: Path) -> dict[str, int]:
    """Write the train/valid splits of a COCO dataset as a LabelMe export (one JSON per
    image beside a copy of it): objects as polygons, and in the train split every third
    one as a rectangle (valid keeps every mask: it is also scored as segmentation).
    Returns the number of rectangles per split."""
    rectangles = {}
    for split in ("train", "valid"):
        coco = COCO(str(coco_root / split / ANN))
        (export / split).mkdir(parents=True)
        rectangles[split] = 0
        for img in coco.dataset["images"]:
            shutil.copy(coco_root / split / img["file_name"], export / split / img["file_name"])
            shapes = []
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                label = coco.cats[ann["category_id"]]["name"]
                if split == "train" and ann["id"] % 3 == 0:
                    x, y, w, h = ann["bbox"]
                    shapes.append({"label": label, "points": [[x, y], [x + w, y + h]],
                                   "shape_type": "rectangle", "group_id": None, "flags": {}})
                    rectangles[split] += 1
                else:
                    flat = ann["segmentation"][0]
                    shapes.append({"label": label, "points": [flat[i:i + 2] for i in range(0, len(flat), 2)],
                                   "shape_type": "polygon", "group_id": None, "flags": {}})
            doc = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": img["file_name"],
                   "imageData": None, "imageWidth": img["width"], "imageHeight": img["height"]}
            (export / split / (Path(img["file_name"]).stem + ".json")).write_text(json.dumps(doc))
    return rectangles


def _longest_run(img: np.ndarray, color) -> int:
    """Longest horizontal run of exactly ``color`` (a drawn box edge, not noise)."""
    hit = (img == np.asarray(color, np.uint8)).all(-1)
    best = 0
    for row in hit:
        edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if len(starts):
            best = max(best, int((ends - starts).max()))
    return best


def test_convert_check_train_evaluate_predict(tmp_path: Path) -> None:
    env = dict(os.environ, SAM3_LORA_CACHE=str(tmp_path / "cache"), PYTHONPATH="")
    source = Path(get_smoke_dataset_root(str(tmp_path / "cache")))
    rectangles = write_labelme_export(source, tmp_path / "export")
    assert rectangles["train"] > 0 and rectangles["valid"] == 0
    data = tmp_path / "data"

    # 1. Convert, with the categories in the source's id order.
    out = _run(["sam3_lora_plugin.data.convert", "labelme", str(tmp_path / "export"), str(data),
                "--classes", ",".join(CATEGORIES)], tmp_path, env)
    assert "wrote 24 images, 68 annotations, 3 categories" in out, out
    for split in ("train", "valid"):
        src, got = COCO(str(source / split / ANN)), COCO(str(data / split / ANN))
        assert [c["name"] for c in got.dataset["categories"]] == CATEGORIES
        by_name = {im["file_name"]: im for im in got.dataset["images"]}
        assert set(by_name) == {im["file_name"] for im in src.dataset["images"]}
        for img in src.dataset["images"]:
            mine = by_name[img["file_name"]]
            assert (mine["width"], mine["height"]) == (img["width"], img["height"])
            want = sorted((a["category_id"], *np.round(a["bbox"], 0))
                          for a in src.loadAnns(src.getAnnIds(imgIds=img["id"])))
            have = sorted((a["category_id"], *np.round(a["bbox"], 0))
                          for a in got.loadAnns(got.getAnnIds(imgIds=mine["id"])))
            assert have == want, img["file_name"]
        boxes_only = [a for a in got.dataset["annotations"] if not a.get("segmentation")]
        assert len(boxes_only) == rectangles[split]

    # 2. Check: no errors; the rectangles are reported (box-only among masks), not fatal.
    out = _run(["sam3_lora_plugin.data.check", str(data)], tmp_path, env)
    assert f"dataset {data} -- 0 error(s), 1 warning(s)" in out, out
    assert ("[box_only_mixed] box-only annotations in a dataset with masks (no mask loss for them): "
            f"{rectangles['train']} ") in out

    # 3. Fine-tune the tiny model on it (the config's preflight checks the data again).
    run = tmp_path / "run"
    out = _run(["sam3_lora_plugin.train", "-c", SMOKE, "dataset=roboflow", f"paths.dataset_root={data}",
                f"paths.experiment_log_dir={run}", "scratch.lr=0.01"], tmp_path, env)
    resolved = (run / "config_resolved.yaml").read_text()
    assert f"{data}/train/{ANN}" in resolved and "smoke_coco" not in resolved
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    logged = json.loads((run / "logs" / "val_stats.json").read_text().splitlines()[-1])
    assert "Meters_train/val_coco/detection/coco_eval_bbox_AP" in logged

    # 4. Evaluate base vs adapter on the converted valid split.
    evaluation = tmp_path / "eval"
    stdout = _run(["sam3_lora_plugin.evaluate", "-c", SMOKE, "--adapter", str(run / "adapter"),
                   "--out", str(evaluation), "dataset=roboflow", f"paths.dataset_root={data}"],
                  tmp_path, env)
    comp = json.loads((evaluation / "comparison.json").read_text())
    assert (evaluation / "comparison.md").read_text() in stdout
    assert [r["iou_type"] for r in comp["results"]] == ["bbox", "segm"]
    valid = COCO(str(data / "valid" / ANN))
    for res in comp["results"]:
        assert res["gt_path"] == str(data / "valid" / ANN)
        assert res["num_images"] == len(valid.dataset["images"])
        assert [c["name"] for c in res["per_category"]] == CATEGORIES
        for side in ("base", "adapter"):
            # The table's overall row is what SAM3's evaluator logged in that run, and the
            # same numbers come out of pycocotools on the run's prediction dump.
            stats = json.loads((evaluation / side / "logs" / "val_stats.json").read_text().splitlines()[-1])
            prefix = f"Meters_train/{res['meter']}/coco_eval_{res['iou_type']}_"
            assert res["overall"][side] == pytest.approx(
                {"AP": stats[prefix + "AP"], "AP50": stats[prefix + "AP_50"], "AP75": stats[prefix + "AP_75"]})
            assert res["recomputed_overall_matches_sam3"][side] is True
            assert res["num_detections"][side] > 0
        base, adapted = (json.loads(Path(res["dumps"][side]).read_text()) for side in ("base", "adapter"))
        assert [d["score"] for d in base] != [d["score"] for d in adapted]  # the adapter was applied

    # 5. Predict on the converted valid images with the same base and the adapter.
    pred = tmp_path / "pred"
    out = _run(["sam3_lora_plugin.predict", "--images", str(data / "valid"), "--coco-gt",
                str(data / "valid" / ANN), "--size", "tiny", "--seed", "0", "--adapter",
                str(run / "adapter"), "--threshold", "0.05", "--out", str(pred)], tmp_path, env)
    results = valid.loadRes(str(pred / "predictions.coco.json"))
    assert len(results.getAnnIds()) > 0
    assert {a["category_id"] for a in results.dataset["annotations"]} <= {1, 2, 3}
    for img in valid.dataset["images"]:
        overlay = np.asarray(Image.open(pred / "overlays" / (Path(img["file_name"]).stem + ".png")).convert("RGB"))
        assert overlay.shape[:2] == (img["height"] * 5, img["width"] * 5)  # upscaled to >= 512 px
        mine = results.loadAnns(results.getAnnIds(imgIds=img["id"]))
        if mine:
            colors = {PALETTE[a["category_id"] - 1] for a in mine}
            assert max(_longest_run(overlay, c) for c in colors) >= 20, img["file_name"]
