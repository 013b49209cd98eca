"""Ground truth for SAM3's segm evaluation when some objects have a box but no mask.

A dataset may mix masks with box-only objects (LabelMe rectangles, VOC boxes, COCO
annotations with ``segmentation: []``). SAM3 trains on such a dataset as it should:
``COCO_FROM_JSON`` leaves their ``segmentation`` None, the collator gives them a dummy
mask with ``is_valid_segment = 0``, and the ``Masks`` loss drops them
(``keep = targets["is_valid_mask"]``), so they count for the box and score terms only.
SAM3's segm evaluation does not: ``COCOevalCustom._prepare`` calls pycocotools'
``annToRLE`` on every ground-truth annotation, and ``frPyObjects([], h, w)`` raises
``IndexError`` at the end of the first validation epoch.

``get_segm_eval_gt(path)`` returns a file for the segm evaluator's ``gt_path`` in which
each box-only annotation becomes an ignore region: ``iscrowd: 1`` and its box as the
mask. pycocotools then neither counts it as an object to find nor counts a predicted
mask on it as a false positive (a crowd region matches any detection lying inside it);
objects with masks are scored as before. The bbox evaluator keeps the original file, so
box-only objects count fully in bbox AP. Through the config:
``checked_path(path=..., segm_gt=true)`` (``sam3_lora_plugin.data.preflight``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from .convert.geometry import rle_to_json

__all__ = ["count_box_only", "get_segm_eval_gt", "is_box_only", "to_segm_eval_gt"]

_CACHE_DIR = Path(tempfile.gettempdir()) / "sam3_lora_plugin" / "segm_gt"


def is_box_only(ann: dict[str, Any]) -> bool:
    """True for an annotation with no mask: ``segmentation`` missing, None or empty."""
    return not ann.get("segmentation")


def count_box_only(coco: dict[str, Any]) -> int:
    """Box-only annotations in a COCO dict."""
    return sum(is_box_only(a) for a in coco.get("annotations", []))


def to_segm_eval_gt(coco: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``coco`` whose box-only annotations are ignore regions (``iscrowd: 1``,
    the box as an RLE mask, ``box_only: true``); other annotations are unchanged."""
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in coco["images"]}
    out = dict(coco, annotations=[])
    for ann in coco["annotations"]:
        if is_box_only(ann):
            h, w = sizes[ann["image_id"]]
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            rle = mask_utils.frPyObjects([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], h, w)[0]
            ann = dict(ann, iscrowd=1, box_only=True, segmentation=rle_to_json(rle))
        out["annotations"].append(ann)
    return out


def get_segm_eval_gt(json_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """The ground-truth file for SAM3's segm evaluator.

    Args:
        json_path: The split's COCO annotation file.
        cache_dir: Where the derived file goes (default ``<tmp>/sam3_lora_plugin/segm_gt``);
            it is named after the source's path, size and mtime, and written atomically,
            so ranks and reruns share it.

    Returns:
        ``json_path`` itself when every annotation has a mask; else the derived file.
    """
    path = Path(json_path).expanduser().absolute()
    coco = json.loads(path.read_text(encoding="utf-8"))
    if not count_box_only(coco):
        return str(json_path)
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else _CACHE_DIR
    out = folder / f"{path.parent.name}_{key}.json"
    if not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(to_segm_eval_gt(coco), f)
        os.replace(tmp, out)
    return str(out)
