"""Box-only objects among masks: SAM3's segm evaluation crashes on them; the segm ground
truth from ``checked_path(segm_gt=True)`` scores them as ignore regions, and SAM3's
training targets already leave them out of the mask terms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sam3_lora_plugin.data import make_synthetic_coco
from sam3_lora_plugin.data.preflight import checked_path, clear_cache
from sam3_lora_plugin.data.segm_gt import count_box_only, get_segm_eval_gt, to_segm_eval_gt

ANN = "_annotations.coco.json"


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A synthetic valid split whose every third annotation lost its mask (box-only)."""
    clear_cache()
    root = make_synthetic_coco(tmp_path / "ds", num_train=1, num_valid=4, num_test=0, image_size=64)
    path = root / "valid" / ANN
    coco = json.loads(path.read_text())
    for a in coco["annotations"][::3]:
        a["segmentation"] = []
    path.write_text(json.dumps(coco))
    assert count_box_only(coco) >= 2
    return path


def _perfect_predictions(gt_path: Path, out: Path) -> Path:
    """One score-1 detection per annotation: its own mask, or for a box-only object a
    mask inside its box (the model segments it; no mask to compare with)."""
    gt = COCO(str(gt_path))
    dets = []
    for a in gt.dataset["annotations"]:
        img = gt.imgs[a["image_id"]]
        if a["segmentation"]:
            rle = gt.annToRLE(a)
        else:
            x, y, w, h = a["bbox"]
            rle = mask_utils.frPyObjects([[x + 1, y + 1, x + w - 1, y + 1, x + w - 1, y + h - 1, x + 1, y + h - 1]],
                                         img["height"], img["width"])[0]
        rle["counts"] = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                     "segmentation": rle, "score": 1.0})
    out.write_text(json.dumps(dets))
    return out


def test_segm_eval_ignores_box_only_objects(mixed: Path, tmp_path: Path) -> None:
    evaluators = pytest.importorskip("sam3.eval.coco_eval_offline")
    preds = _perfect_predictions(mixed, tmp_path / "preds.json")

    # What SAM3 does today with the split's own file as the segm gt_path.
    with pytest.raises(IndexError):
        evaluators.CocoEvaluatorOfflineWithPredFileEvaluators(str(mixed), tide=False, iou_type="segm").evaluate(preds)

    segm_gt = checked_path(str(mixed), segm_gt=True)
    assert segm_gt != str(mixed) and json.loads(mixed.read_text()) != json.loads(Path(segm_gt).read_text())
    stats = evaluators.CocoEvaluatorOfflineWithPredFileEvaluators(segm_gt, tide=False, iou_type="segm").evaluate(preds)
    # Every masked object found exactly, and the masks predicted on box-only objects are
    # neither hits nor false positives: AP 1.0.
    assert stats["coco_eval_segm_AP"] == pytest.approx(1.0)
    bbox = evaluators.CocoEvaluatorOfflineWithPredFileEvaluators(str(mixed), tide=False, iou_type="bbox").evaluate(preds)
    assert bbox["coco_eval_bbox_AP"] == pytest.approx(1.0)  # bbox: every object counts, from the original file


def test_segm_gt_marks_only_box_only_annotations(mixed: Path, tmp_path: Path) -> None:
    coco = json.loads(mixed.read_text())
    out = to_segm_eval_gt(coco)
    for before, after in zip(coco["annotations"], out["annotations"]):
        if before["segmentation"]:
            assert after == before
        else:
            assert after["iscrowd"] == 1 and after["box_only"] is True
            assert mask_utils.area(dict(after["segmentation"], counts=after["segmentation"]["counts"].encode())) \
                == pytest.approx(before["bbox"][2] * before["bbox"][3], rel=0.2)
    assert out["images"] == coco["images"] and out["categories"] == coco["categories"]
    # Cached per file version; a file with masks everywhere is returned as is.
    first = get_segm_eval_gt(mixed, cache_dir=tmp_path / "cache")
    assert get_segm_eval_gt(mixed, cache_dir=tmp_path / "cache") == first
    full = make_synthetic_coco(tmp_path / "full", num_train=1, num_valid=1, num_test=0, image_size=32)
    assert checked_path(str(full / "valid" / ANN), segm_gt=True) == str(full / "valid" / ANN)


def test_sam3_mask_terms_skip_box_only_objects(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM3's collator marks a box-only object ``is_valid_segment = 0`` and its Masks loss
    drops it: whatever mask the model predicts for it, loss_mask and loss_dice are equal."""
    torch = pytest.importorskip("torch")
    import functools

    from sam3.train.data.collator import collate_fn_api
    from sam3.train.data.sam3_image_dataset import Sam3ImageDataset
    from sam3.train.loss import loss_fns
    from sam3.train.loss.loss_fns import Masks
    from sam3.train.transforms.segmentation import DecodeRle

    if not torch.cuda.is_available():  # sam3's focal loss defaults to a Triton kernel
        monkeypatch.setattr(loss_fns, "sigmoid_focal_loss", functools.partial(loss_fns.sigmoid_focal_loss, triton=False))

    ds = Sam3ImageDataset(img_folder=str(mixed.parent), ann_file=str(mixed), transforms=[DecodeRle()],
                          max_ann_per_img=100, multiplier=1, training=True, load_segmentation=True)
    k = next(i for i in range(len(ds)) if any(o.segment is None for o in ds[i].images[0].objects))
    datapoint = ds[k]
    for im in datapoint.images:  # the collator reads image sizes from tensors
        im.data = torch.zeros(3, im.size[0], im.size[1])
    targets = collate_fn_api([datapoint], dict_key="x", with_seg_masks=True)["x"].find_targets[0]
    valid = targets.is_valid_segment.bool()
    assert (~valid).any() and valid.any()
    n = len(valid)
    torch.manual_seed(0)
    pred = torch.randn(1, n, *targets.segments.shape[-2:])
    outputs = {"pred_masks": pred}
    tgt = {"masks": targets.segments, "is_valid_mask": targets.is_valid_segment.bool()}
    indices = (torch.zeros(n, dtype=torch.long), torch.arange(n), torch.arange(n))
    loss = Masks(weight_dict={"loss_mask": 1.0, "loss_dice": 1.0})
    base = loss.get_loss(outputs, tgt, indices, num_boxes=float(n))
    changed = pred.clone()
    changed[0, ~valid] = 5.0  # a confident, full-frame mask on every box-only object
    other = loss.get_loss({"pred_masks": changed}, tgt, indices, num_boxes=float(n))
    for key in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(other[key], base[key])
    changed[0, valid] += 1.0  # ... while a masked object's prediction does move them
    assert not torch.allclose(loss.get_loss({"pred_masks": changed}, tgt, indices, num_boxes=float(n))["loss_dice"],
                              base["loss_dice"])
