"""Detections as COCO results (the format ``pycocotools.COCO.loadRes`` and SAM3's
evaluators read): ``bbox`` ``[x, y, width, height]`` in pixels, ``score``,
``category_id``, ``segmentation`` as compressed RLE, plus ``area`` of the mask."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from .predictor import Detection

__all__ = ["get_image_index", "to_coco_results"]


def to_coco_results(detections: Sequence[Detection], image_id: int,
                    category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO result entries of one image.

    Args:
        detections: The image's detections.
        image_id: The COCO image id to report.
        category_ids: Category id of each prompt (indexed by ``Detection.prompt_index``).
    """
    out = []
    for d in detections:
        x0, y0, x1, y1 = d.box_xyxy
        rle = mask_utils.encode(np.asfortranarray(d.mask.astype(np.uint8)))
        out.append({
            "image_id": int(image_id),
            "category_id": int(category_ids[d.prompt_index]),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(d.score, 5),
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)),
        })
    return out


def get_image_index(images: Sequence[dict[str, Any]], categories: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A COCO file without annotations: the images and categories the results refer to,
    so that ``COCO(<this file>).loadRes(<results>)`` works."""
    return {"info": {"description": "images and categories of sam3_lora_plugin.predict results"},
            "images": list(images), "categories": list(categories), "annotations": []}
