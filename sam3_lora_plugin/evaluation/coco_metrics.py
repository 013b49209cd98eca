"""COCO AP per category from a SAM3 prediction dump, with SAM3's own COCOeval.

SAM3's ``CocoEvaluatorOfflineWithPredFileEvaluators`` reports the overall COCO numbers
of a ``PredictionDumper`` dump; this module reruns the same evaluation
(``sam3.eval.coco_eval_offline.COCOevalCustom``, same ground truth, same dump, same
``positive_split``) and reads the per-category rows out of ``COCOeval.eval['precision']``,
the array ``summarize()`` averages over:

    precision[t, r, k, a, m]   t: IoU threshold (0.50:0.05:0.95), r: 101 recall points,
                               k: category, a: area range (0 = all), m: maxDets (-1 = 100)
    AP_k   = mean over t, r of precision[t, r, k, 0, -1] (entries > -1)
    AP50_k = same at t = 0 (IoU 0.50);  AP75_k = same at t = 5 (IoU 0.75)

A category without ground truth in the split has no AP (``None``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["METRICS", "CocoScores", "evaluate_dump"]

#: Metric name -> index into COCOeval.stats (the overall numbers SAM3 logs).
METRICS: dict[str, int] = {"AP": 0, "AP50": 1, "AP75": 2}


@dataclass
class CocoScores:
    """Overall and per-category AP, AP50, AP75 of one dump (fractions in [0, 1]; None = n/a)."""

    iou_type: str
    overall: dict[str, Optional[float]]
    per_category: dict[int, dict[str, Optional[float]]] = field(default_factory=dict)
    category_names: dict[int, str] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0


def _mean_valid(values: np.ndarray) -> Optional[float]:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _na(value: float) -> Optional[float]:
    return None if value < 0 else float(value)


def evaluate_dump(gt_path: str | os.PathLike, dump_path: str | os.PathLike, iou_type: str, *,
                  positive_split: bool = False) -> CocoScores:
    """Evaluate one prediction dump against its ground truth, overall and per category.

    Args:
        gt_path: The COCO ground-truth JSON the evaluator used (``gt_path``).
        dump_path: ``coco_predictions_<iou_type>.json`` written by ``PredictionDumper``.
        iou_type: ``"bbox"`` or ``"segm"``.
        positive_split: The evaluator's ``positive_split`` (ignore detections of
            categories absent from an image).

    Returns:
        The scores; ``overall`` equals what SAM3's evaluator logged for the same files.
    """
    from pycocotools.coco import COCO

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # sam3 prints "TIDE not installed" on import
        from sam3.eval.coco_eval_offline import COCOevalCustom

    with open(dump_path) as f:
        dets = json.load(f)
    with contextlib.redirect_stdout(quiet):  # pycocotools prints progress
        gt = COCO(str(gt_path))
        names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
        scores = CocoScores(iou_type=iou_type, overall={}, category_names=names,
                            num_images=len(gt.getImgIds()), num_detections=len(dets))
        if not dets:  # loadRes cannot load an empty list; nothing detected scores 0 AP
            with_gt = {cid for cid in names if gt.getAnnIds(catIds=[cid])}
            zero = {m: 0.0 for m in METRICS}
            scores.overall = dict(zero) if with_gt else {m: None for m in METRICS}
            scores.per_category = {cid: dict(zero) if cid in with_gt else {m: None for m in METRICS}
                                   for cid in names}
            return scores
        evaluator = COCOevalCustom(gt, gt.loadRes(dets), iouType=iou_type,
                                   dt_only_positive=positive_split)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]
    scores.overall = {m: _na(evaluator.stats[i]) for m, i in METRICS.items()}
    for k, cid in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        scores.per_category[cid] = {"AP": _mean_valid(p), "AP50": _mean_valid(p[0]),
                                    "AP75": _mean_valid(p[5])}
    return scores
