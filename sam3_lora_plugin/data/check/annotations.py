"""Annotations: references to unknown images or categories, broken, degenerate,
out-of-image or XYXY boxes, invalid or empty segmentations, box-only objects among masks.

Suspected XYXY (``[x1, y1, x2, y2]`` stored where COCO wants ``[x, y, w, h]``): flagged
when (a) at least 10% of the boxes run past the right/bottom edge as XYWH but fit inside
the image as XYXY, and at least 90% of all boxes satisfy ``bbox[2] > bbox[0]`` and
``bbox[3] > bbox[1]`` (always true for XYXY, rare for real XYWH boxes away from the
top-left corner); or (b) most annotations with a mask have a mask extent that matches
the XYXY reading of the box better than the XYWH one (by more than 1 px).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pycocotools import mask as mask_utils

from .json_file import is_int, is_number
from .report import Findings, register_defects

__all__ = ["DEFECTS", "check_annotations", "classify_segmentation", "suspect_xyxy"]

_OUTSIDE_TOL = 1.0  # px: boxes up to this far past the border count as inside (rounding)

DEFECTS = register_defects({
    "unknown_image": ("error", "annotations pointing at image ids not in 'images'",
                      "fix image_id or remove the annotations (SAM3 silently drops them)"),
    "unknown_category": ("error", "annotations pointing at category ids not in 'categories'",
                         "fix category_id or add the category (SAM3 silently drops them)"),
    "broken_bbox": ("error", "bbox is not a list of 4 finite numbers", "write bbox as [x, y, width, height] numbers"),
    "degenerate_bbox": ("error", "bbox with width or height <= 0", "fix or remove these annotations"),
    "bbox_outside": ("warning", "boxes extending outside the image (SAM3 clamps them)",
                     "clip boxes to the image, or check the image size"),
    "suspected_xyxy": ("warning", "boxes look like [x1, y1, x2, y2]; COCO bbox is [x, y, width, height]",
                       "convert with width = x2 - x1, height = y2 - y1"),
    "invalid_segmentation": ("error", "invalid segmentation (polygon with odd or < 6 coordinates, bad RLE)",
                             "polygons are lists of [x1, y1, x2, y2, ...] lists; RLE size must be [height, width]"),
    "empty_segmentation": ("error", "segmentation covers no pixels", "fix or remove these annotations"),
    "box_only_mixed": ("warning", "box-only annotations in a dataset with masks (no mask loss for them)",
                       "nothing, if intended: they train the box and score terms (SAM3's Masks loss skips objects "
                       "without a mask) and segm evaluation scores them as ignore regions (the evaluator's gt_path "
                       "is checked_path with segm_gt: true); to train their masks too, add segmentations"),
})

Box = tuple[str, list[float], float, float, "list[float] | None"]


def classify_segmentation(seg: Any, h: int, w: int) -> tuple[str, list[float] | None]:
    """Classify a segmentation: ``("none"|"invalid: why"|"empty"|"ok", mask box)``."""
    if seg is None or seg == []:
        return "none", None
    try:
        if isinstance(seg, list):
            if not all(isinstance(p, list) for p in seg):
                return "invalid: polygon not nested in a list", None
            for p in seg:
                if len(p) < 6 or len(p) % 2 or not all(is_number(v) for v in p):
                    return f"invalid: polygon with {len(p)} coordinates", None
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if list(seg["size"]) != [h, w]:
                return f"invalid: RLE size {seg['size']} != [{h}, {w}]", None
            counts = seg["counts"]
            if isinstance(counts, list):
                if sum(counts) != h * w:
                    return f"invalid: RLE counts sum to {sum(counts)}, not {h * w}", None
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            return "invalid: neither polygons nor RLE", None
        area = float(mask_utils.area(rle))
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        return f"invalid: {exc}", None
    return ("empty", None) if area == 0 else ("ok", [float(v) for v in mask_utils.toBbox(rle)])


def suspect_xyxy(boxes: list[Box]) -> list[str]:
    """Offending boxes if the boxes look XYXY (see the module docstring), else ``[]``.

    Args:
        boxes: ``(reference, bbox, image width, image height, mask box or None)`` each.
    """
    over_fit, mask_voted, ordered, n_masks = [], [], 0, 0
    for ref, (x, y, a, b), w, h, seg_box in boxes:
        ordered += a > x and b > y
        overflows = x + a > w + _OUTSIDE_TOL or y + b > h + _OUTSIDE_TOL
        if overflows and a > x and b > y and a <= w + _OUTSIDE_TOL and b <= h + _OUTSIDE_TOL:
            over_fit.append(ref)
        if seg_box is not None:
            n_masks += 1
            as_xywh = max(abs(p - q) for p, q in zip((x, y, a, b), seg_box))
            as_xyxy = max(abs(p - q) for p, q in zip((x, y, a - x, b - y), seg_box))
            if as_xyxy + 1 < as_xywh:
                mask_voted.append(ref)
    if n_masks >= 0.5 * len(boxes):  # enough masks to decide: trust them over the extents
        return mask_voted if len(mask_voted) > 0.5 * n_masks else []
    if over_fit and len(over_fit) >= 0.1 * len(boxes) and ordered >= 0.9 * len(boxes):
        return over_fit
    return []


def check_annotations(anns: list[Any], sizes: dict[Any, tuple[int, int]], cat_names: dict[Any, str],
                      found: Findings) -> Counter:
    """Check ``annotations`` against the images' JSON sizes; returns annotations per category id."""
    seen: set[Any] = set()
    per_cat: Counter = Counter()
    boxes: list[Box] = []
    kinds: Counter = Counter()
    for a in anns:
        if not isinstance(a, dict) or not is_int(a.get("id")) or "image_id" not in a or "category_id" not in a \
                or "bbox" not in a or not is_number(a.get("area")) or a.get("iscrowd") not in (0, 1):
            found.add("missing_field", f"annotation {str(a)[:80]}")
            if not isinstance(a, dict) or "image_id" not in a or "bbox" not in a:
                continue
        ref = f"annotation id {a.get('id')}"
        if a.get("id") in seen:
            found.add("duplicate_id", ref)
        seen.add(a.get("id"))
        if a.get("category_id") not in cat_names:
            found.add("unknown_category", f"{ref}: category_id {a.get('category_id')!r}")
        else:
            per_cat[a["category_id"]] += 1
        if a["image_id"] not in sizes:
            found.add("unknown_image", f"{ref}: image_id {a['image_id']!r}")
            continue
        w, h = sizes[a["image_id"]]
        bbox = a["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            found.add("broken_bbox", f"{ref}: {str(bbox)[:60]}")
            continue
        x, y, bw, bh = bbox
        if bw <= 0 or bh <= 0:
            found.add("degenerate_bbox", f"{ref}: {bbox}")
            continue
        if x < -_OUTSIDE_TOL or y < -_OUTSIDE_TOL or x + bw > w + _OUTSIDE_TOL or y + bh > h + _OUTSIDE_TOL:
            found.add("bbox_outside", f"{ref}: {bbox} in {w}x{h}")
        status, seg_box = classify_segmentation(a.get("segmentation"), h, w)
        kinds["none" if status == "none" else "mask"] += 1
        if status.startswith("invalid"):
            found.add("invalid_segmentation", f"{ref}: {status[9:]}")
        elif status == "empty":
            found.add("empty_segmentation", ref)
        boxes.append((ref, bbox, w, h, seg_box))
    for ref in suspect_xyxy(boxes):
        found.add("suspected_xyxy", ref)
    if kinds["none"] and kinds["mask"]:
        found.add("box_only_mixed", f"{kinds['none']} box-only vs {kinds['mask']} with masks", kinds["none"])
    return per_cat
