"""Converters on files written by the real tools: LabelMe JSON saved by ``labelme``'s
``LabelFile``, YOLO and Pascal VOC exported by ``supervision``'s ``DetectionDataset``.

Each converted dataset is read back with pycocotools and compared with what the tool
itself means by its file: LabelMe's own ``shape_to_mask`` / ``shapes_to_label``, and
supervision's own readers (``DetectionDataset.from_yolo`` / ``from_pascal_voc``).
pycocotools' COCOeval scores the converted annotations against themselves (AP 1.0), so
the files also work in the COCO evaluation SAM3 runs.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3_lora_plugin.data.check import check_dataset
from sam3_lora_plugin.data.convert import convert_labelme, convert_voc, convert_yolo

labelme = pytest.importorskip("labelme")  # dev extra
sv = pytest.importorskip("supervision")  # dev extra

ANN = "_annotations.coco.json"


def _agree_but_the_outline(mine: np.ndarray, theirs: np.ndarray) -> bool:
    """``mine`` and ``theirs`` differ only on ``theirs``' one-pixel outline (inside or
    out): pycocotools fills a polygon by pixel centres, OpenCV's fillPoly (supervision,
    Ultralytics) draws the boundary pixels too."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    theirs_u8 = theirs.astype(np.uint8)
    band = cv2.dilate(theirs_u8, kernel).astype(bool) & ~cv2.erode(theirs_u8, kernel).astype(bool)
    return bool(not ((mine.astype(bool) ^ theirs.astype(bool)) & ~band).any() and mine.sum() > 0.5 * theirs.sum())


def _masks_by_image(coco: COCO) -> dict[str, list[tuple[str, np.ndarray]]]:
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for img in coco.dataset["images"]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        out[img["file_name"]] = [(coco.cats[a["category_id"]]["name"], coco.annToMask(a) if a["segmentation"] else None)
                                 for a in anns]
    return out


def _self_eval_ap(json_path: Path, iou_type: str) -> float:
    """COCOeval of the annotations against themselves (score 1): 1.0 when every file loads."""
    gt = COCO(str(json_path))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"]]
    if iou_type == "segm":
        for d, a in zip(dets, gt.dataset["annotations"]):
            d["segmentation"] = gt.annToRLE(a)
    ev = COCOeval(gt, gt.loadRes(dets), iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def _rng_image(path: Path, w: int, h: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


# --------------------------------------------------------------------------- LabelMe


def test_labelme_file_written_by_labelme(tmp_path: Path) -> None:
    """Every LabelMe shape with an area converts (circle, oriented rectangle and AI mask
    included); points and lines are counted as skipped."""
    from labelme import LabelFile
    from labelme.utils import img_arr_to_b64, shape_to_mask

    w, h = 64, 48
    src = tmp_path / "labelme"
    _rng_image(src / "scene.png", w, h)
    crop = np.zeros((9, 12), np.uint8)  # an AI-tool mask: an L shape inside its 12 x 9 box
    crop[:, :4], crop[6:, :] = 1, 1
    shapes = [
        {"label": "red cup", "points": [[4, 4], [20, 4], [20, 16], [4, 16]], "shape_type": "polygon"},
        {"label": "blue plate", "points": [[30, 5], [45, 18]], "shape_type": "rectangle"},
        {"label": "green ball", "points": [[15, 32], [22, 32]], "shape_type": "circle"},
        {"label": "tilted book", "points": [[40, 24], [56, 32], [52, 40], [36, 32]], "shape_type": "oriented_rectangle"},
        {"label": "bent straw", "points": [[50, 2], [61, 10]], "shape_type": "mask", "mask": img_arr_to_b64(crop)},
        {"label": "red cup", "points": [[2, 40]], "shape_type": "point"},
        {"label": "red cup", "points": [[2, 44], [10, 44]], "shape_type": "line"},
        {"label": "red cup", "points": [[2, 46], [10, 46], [12, 40]], "shape_type": "linestrip"},
    ]
    for s in shapes:
        s.update(group_id=None, flags={}, description="")
    LabelFile().save(str(src / "scene.json"), shapes=shapes, image_path="scene.png", image_height=h,
                     image_width=w)
    assert json.loads((src / "scene.json").read_text())["version"] == labelme.__version__

    summary = convert_labelme(src, tmp_path / "out")
    assert summary.objects_line == "8 objects in, 5 written, 3 skipped (1 point, 1 line, 1 linestrip)"
    assert str(summary).splitlines()[-1] == summary.objects_line
    json_path = tmp_path / "out" / "train" / ANN
    coco = COCO(str(json_path))
    got = dict(_masks_by_image(coco)["scene.png"])
    anns = {coco.cats[a["category_id"]]["name"]: a for a in coco.dataset["annotations"]}
    assert anns["blue plate"]["segmentation"] == [] and anns["blue plate"]["bbox"] == [30.0, 5.0, 15.0, 13.0]

    # Masks as LabelMe itself draws the shapes (shape_to_mask; mask shapes pasted at the box).
    lm = {s["label"]: shape_to_mask((h, w), s["points"], s["shape_type"]) for s in shapes[:4]}
    straw = np.zeros((h, w), bool)
    straw[2:11, 50:62] = crop.astype(bool)
    np.testing.assert_array_equal(got["bent straw"], straw)  # pixel-exact
    for name in ("red cup", "green ball", "tilted book"):  # LabelMe (PIL) fills the boundary pixels too
        assert _agree_but_the_outline(got[name], lm[name]), name
    assert anns["green ball"]["area"] == pytest.approx(np.pi * 7 ** 2, rel=0.05)
    assert not check_dataset(tmp_path / "out").errors


# --------------------------------------------------------------------------- supervision datasets


def _sv_dataset(root: Path, n_images: int, seed: int, with_masks: bool) -> tuple[list[str], dict]:
    """A supervision ``DetectionDataset`` of ``n_images`` 48 x 40 images, two objects each."""
    rng = np.random.default_rng(seed)
    classes = ["yellow duck", "grey stone"]
    images, annotations = [], {}
    for k in range(n_images):
        path = root / f"img_{seed}_{k}.png"
        _rng_image(path, 48, 40, seed * 100 + k)
        masks = np.zeros((2, 40, 48), bool)
        x, y = int(rng.integers(2, 16)), int(rng.integers(2, 14))
        masks[0, y:y + 12, x:x + 10] = True
        masks[0, y + 4:y + 12, x + 10:x + 16] = True  # an L-shaped duck
        yy, xx = np.mgrid[0:40, 0:48]
        masks[1] = (yy - 28) ** 2 + (xx - 36) ** 2 <= 36  # a round stone
        xyxy = np.array([[*np.argwhere(m.T).min(0), *(np.argwhere(m.T).max(0) + 1)] for m in masks], float)
        annotations[str(path)] = sv.Detections(xyxy=xyxy, mask=masks if with_masks else None,
                                               class_id=np.array([0, 1]))
        images.append(str(path))
    return classes, sv.DetectionDataset(classes=classes, images=images, annotations=annotations)


def test_yolo_written_by_supervision_splits_from_data_yaml(tmp_path: Path) -> None:
    """Ultralytics-style folders with free names (images/train2017, images/val2017): the
    splits come from data.yaml, not merged into train; polygons match supervision's reading."""
    import yaml

    src = tmp_path / "yolo"
    _, train = _sv_dataset(tmp_path / "raw_train", 3, seed=1, with_masks=True)
    _, val = _sv_dataset(tmp_path / "raw_val", 2, seed=2, with_masks=False)
    train.as_yolo(images_directory_path=str(src / "images" / "train2017"),
                  annotations_directory_path=str(src / "labels" / "train2017"), data_yaml_path=str(src / "data.yaml"))
    val.as_yolo(images_directory_path=str(src / "images" / "val2017"),
                annotations_directory_path=str(src / "labels" / "val2017"))
    data = yaml.safe_load((src / "data.yaml").read_text())
    data.update(path=".", train="images/train2017", val="images/val2017", test="images/test2017")
    (src / "data.yaml").write_text(yaml.safe_dump(data))

    summary = convert_yolo(src, tmp_path / "out")
    assert summary.splits == {"train": (3, 6), "valid": (2, 4)}, summary
    assert summary.objects_line == "10 objects in, 10 written, 0 skipped"
    assert any("data.yaml entries that do not exist (skipped): 1 (first: test: images/test2017)" in w
               for w in summary.warnings)
    coco = COCO(str(tmp_path / "out" / "train" / ANN))
    assert [c["name"] for c in coco.dataset["categories"]] == ["yellow duck", "grey stone"]
    theirs = sv.DetectionDataset.from_yolo(str(src / "images" / "train2017"), str(src / "labels" / "train2017"),
                                           str(src / "data.yaml"), force_masks=True)
    mine = _masks_by_image(coco)
    for image_path, det in theirs.annotations.items():
        for (name, mask), their_mask, cls in zip(mine[Path(image_path).name], det.mask, det.class_id):
            assert name == theirs.classes[cls] and _agree_but_the_outline(mask, their_mask), (image_path, name)
    valid = COCO(str(tmp_path / "out" / "valid" / ANN))
    val_boxes = sorted(tuple(np.round(a["bbox"])) for a in valid.dataset["annotations"])
    want = sorted(tuple(np.round([x0, y0, x1 - x0, y1 - y0])) for d in val.annotations.values() for x0, y0, x1, y1 in d.xyxy)
    assert val_boxes == want and all(a["segmentation"] == [] for a in valid.dataset["annotations"])
    assert _self_eval_ap(tmp_path / "out" / "train" / ANN, "segm") == pytest.approx(1.0)
    assert _self_eval_ap(tmp_path / "out" / "valid" / ANN, "bbox") == pytest.approx(1.0)


def test_pascal_voc_polygons_written_by_supervision(tmp_path: Path) -> None:
    """supervision writes each mask as a VOC <polygon>: converted, the masks are the ones
    supervision reads back from the same files (and the originals), pixel for pixel."""
    src = tmp_path / "voc"
    _, ds = _sv_dataset(tmp_path / "raw", 3, seed=3, with_masks=True)
    ds.as_pascal_voc(images_directory_path=str(src / "JPEGImages"), annotations_directory_path=str(src / "Annotations"))
    assert "<polygon>" in next((src / "Annotations").glob("*.xml")).read_text()

    summary = convert_voc(src, tmp_path / "out")
    assert summary.splits == {"train": (3, 6)} and summary.objects_line == "6 objects in, 6 written, 0 skipped"
    coco = COCO(str(tmp_path / "out" / "train" / ANN))
    assert all(a["segmentation"] for a in coco.dataset["annotations"])
    theirs = sv.DetectionDataset.from_pascal_voc(str(src / "JPEGImages"), str(src / "Annotations"), force_masks=True)
    mine = _masks_by_image(coco)
    for image_path, det in theirs.annotations.items():
        original = ds.annotations[str(tmp_path / "raw" / Path(image_path).name)]
        got = sorted(mine[Path(image_path).name], key=lambda nm: nm[0])
        want = sorted(zip((theirs.classes[c] for c in det.class_id), det.mask), key=lambda nm: nm[0])
        for (name, mask), (their_name, their_mask) in zip(got, want):
            assert name == their_name
            np.testing.assert_array_equal(mask, their_mask)
        np.testing.assert_array_equal(np.sort([m.sum() for _, m in got]), np.sort(original.mask.sum(axis=(1, 2))))
    assert _self_eval_ap(tmp_path / "out" / "train" / ANN, "segm") == pytest.approx(1.0)
    assert not check_dataset(tmp_path / "out").errors
