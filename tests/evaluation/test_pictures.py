"""The evaluation pictures: per-image F1 by hand, the gallery picks the images where base and
adapter differ most and draws base | adapter | ground truth at the size it says, the
per-category chart and the training curves are written from real-format inputs."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sam3_lora_plugin.data import make_synthetic_coco
from sam3_lora_plugin.evaluation.curves import plot_training_curves, read_val_ap
from sam3_lora_plugin.evaluation.pictures import get_image_f1, write_category_chart, write_gallery


def _box(x, y, w, h, cat=1, score=0.9):
    return {"bbox": [x, y, w, h], "category_id": cat, "score": score}


def test_image_f1_by_hand():
    gt = [_box(0, 0, 10, 10), _box(20, 20, 10, 10, cat=2)]
    assert get_image_f1([], []) == 1.0
    assert get_image_f1([], gt) == 0.0
    assert get_image_f1([_box(0, 0, 10, 10), _box(20, 20, 10, 10, cat=2)], gt) == 1.0
    # one hit, one wrong category at the right place: 2*1/(2+2)
    assert get_image_f1([_box(0, 0, 10, 10), _box(20, 20, 10, 10, cat=1)], gt) == 0.5
    # IoU 0.5 exactly counts (10x10 vs 10x20 overlapping 10x10: 100/200), below does not
    assert get_image_f1([_box(0, 0, 10, 20)], [_box(0, 0, 10, 10)]) == 1.0
    assert get_image_f1([_box(0, 0, 10, 21)], [_box(0, 0, 10, 10)]) == 0.0
    # a duplicate matches once: 2*1/(2+1)
    assert get_image_f1([_box(0, 0, 10, 10), _box(0, 0, 10, 10, score=0.8)], [_box(0, 0, 10, 10)]) \
        == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = make_synthetic_coco(tmp_path_factory.mktemp("data") / "d", num_train=0, num_valid=6,
                               num_test=0, style="shifted")
    return root / "valid", json.loads((root / "valid" / "_annotations.coco.json").read_text())


def test_gallery_picks_where_the_models_differ_and_draws_three_columns(split, tmp_path):
    folder, coco = split
    ids = [img["id"] for img in coco["images"]]
    right = {i: [dict(a, score=0.9) for a in coco["annotations"] if a["image_id"] == i] for i in ids}
    # base: nothing above the threshold; adapter: the ground truth on images 3 and 5 only
    base = [dict(_box(1, 1, 5, 5), image_id=i, score=0.2) for i in ids]
    adapter = [dict(p, image_id=i) for i in (ids[3], ids[5]) for p in right[i]]
    for p in base + adapter:
        p.pop("segmentation", None)
        p.pop("area", None), p.pop("iscrowd", None), p.pop("id", None)
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "a.json").write_text(json.dumps(adapter))
    out = tmp_path / "before_after.png"
    rows = write_gallery(str(out), str(folder / "_annotations.coco.json"), str(folder),
                         str(tmp_path / "b.json"), str(tmp_path / "a.json"), num_images=3,
                         min_side=224)
    assert [r["image_id"] for r in rows[:2]] == [ids[3], ids[5]]
    assert [(r["base_f1"], r["adapter_f1"]) for r in rows[:2]] == [(0.0, 1.0), (0.0, 1.0)]
    assert rows[2]["adapter_f1"] == rows[2]["base_f1"] == 0.0
    w, h = Image.open(out).size
    assert w == 3 * 224 + 4 * 8  # three 224-px panels (112-px images upscaled 2x) and margins
    assert h == 22 + 3 * (224 + 18 + 8) + 8


def _comparison():
    def row(b, a):
        return {"base": {"AP": b, "AP50": b, "AP75": b}, "adapter": {"AP": a, "AP50": a, "AP75": a}}

    cats = [{"id": 1, "name": "orange hexagon", **row(0.0, 0.66)},
            {"id": 2, "name": "purple diamond", **row(0.01, 0.55)},
            {"id": 3, "name": "yellow star", **row(None, 0.49)}]
    return {"results": [{"iou_type": t, "num_images": 48, "per_category": cats,
                         "overall": row(0.0, 0.59)} for t in ("bbox", "segm")]}


def test_category_chart_is_written_and_has_two_panels(tmp_path):
    out = tmp_path / "per_category_ap.png"
    assert write_category_chart(str(out), _comparison()) == str(out)
    w, h = Image.open(out).size
    assert w > 2 * h  # two panels side by side
    assert write_category_chart(str(tmp_path / "none.png"), {"results": []}) is None


def test_training_curves_from_val_stats(tmp_path):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    rows = [{"Meters_train/val_coco/detection/coco_eval_bbox_AP": 0.1 * e,
             "Meters_train/val_coco/segmentation/coco_eval_segm_AP": 0.05 * e, "Trainer/epoch": e}
            for e in range(3)]
    (logs / "val_stats.json").write_text("\n".join(map(json.dumps, rows)) + "\n")
    assert read_val_ap(str(tmp_path / "run"))[2] == {"epoch": 2, "bbox_AP": 0.2, "segm_AP": 0.1}
    out = tmp_path / "curves.png"
    assert plot_training_curves(str(tmp_path / "run"), str(out), base={"bbox_AP": 0.0}) == str(out)
    assert Image.open(out).size == (1100, 400)
    assert plot_training_curves(str(tmp_path / "empty"), str(tmp_path / "x.png")) is None
