"""Pictures of a base-vs-adapter evaluation: a gallery and a per-category AP chart.

* ``write_gallery``: for the few images of the split where the two models differ most,
  one row each: base | adapter | ground truth, drawn from the runs' prediction dumps (no
  model is run again). "Differ most" is the absolute difference of the per-image F1 at
  IoU 0.5 over the detections scoring at least ``threshold`` (greedy matching per
  category, as a reader of the picture would count hits).
* ``write_category_chart``: grouped bars, base vs adapter AP per category, one panel per
  IoU type (bbox, segm), from ``comparison.json``'s rows.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sam3_lora_plugin.inference.overlay import draw_overlay
from sam3_lora_plugin.inference.predictor import Detection

__all__ = ["get_image_f1", "load_detections", "write_category_chart", "write_gallery"]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def get_image_f1(preds: Sequence[dict], gts: Sequence[dict], iou: float = 0.5) -> float:
    """F1 of one image's predictions (already thresholded) against its ground truth: greedy,
    highest score first, same category, box IoU >= ``iou``. 1.0 when both are empty."""
    if not preds and not gts:
        return 1.0
    free = list(gts)
    hits = 0
    for p in sorted(preds, key=lambda d: -d["score"]):
        best = max(((i, _iou(p["bbox"], g["bbox"])) for i, g in enumerate(free)
                    if g["category_id"] == p["category_id"]), key=lambda t: t[1], default=None)
        if best is not None and best[1] >= iou:
            free.pop(best[0])
            hits += 1
    return 2 * hits / (len(preds) + len(gts))


def load_detections(dump_path: str, threshold: float) -> dict[int, list[dict]]:
    """A ``PredictionDumper`` dump (COCO results) grouped by image, scores >= threshold."""
    with open(dump_path) as f:
        preds = json.load(f)
    out: dict[int, list[dict]] = defaultdict(list)
    for p in preds:
        if p["score"] >= threshold:
            out[p["image_id"]].append(p)
    return out


def _to_detections(anns: Sequence[dict], cat_index: dict[int, int], names: dict[int, str],
                   size: tuple[int, int], max_dets: int) -> list[Detection]:
    from pycocotools import mask as mask_utils

    w, h = size
    dets = []
    for a in sorted(anns, key=lambda d: -d.get("score", 1.0))[:max_dets]:
        seg = a.get("segmentation")
        mask = np.zeros((h, w), dtype=bool)
        if isinstance(seg, dict):  # RLE (dumps)
            mask = mask_utils.decode(seg).astype(bool)
        elif isinstance(seg, list) and seg:  # polygons (ground truth)
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            mask = mask_utils.decode(rle).astype(bool)
        x, y, bw, bh = a["bbox"]
        dets.append(Detection(cat_index[a["category_id"]], names[a["category_id"]],
                              float(a.get("score", 1.0)), (x, y, x + bw, y + bh), mask))
    return dets


def _caption(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    draw.text(xy, text, fill=(20, 20, 20), font=font)


def write_gallery(out_path: str, gt_path: str, image_dir: str, base_dump: str, adapter_dump: str,
                  *, num_images: int = 4, threshold: float = 0.5, min_side: int = 320,
                  max_dets: int = 20) -> list[dict[str, Any]]:
    """Write the base | adapter | ground truth gallery PNG.

    Args:
        out_path: the PNG to write.
        gt_path: the split's COCO ground truth (what the evaluators read).
        image_dir: the folder holding the split's images (``file_name`` relative to it).
        base_dump, adapter_dump: the two runs' dumps of the same meter (segm dumps carry
            masks and boxes, bbox dumps boxes only).
        num_images: rows.
        threshold: detections drawn and counted score at least this.
        min_side: panels are upscaled (nearest) to at least this many pixels.
        max_dets: at most this many detections drawn per panel.

    Returns:
        The rows: ``{"image_id", "file_name", "base_f1", "adapter_f1"}``.
    """
    with open(gt_path) as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    cat_index = {cid: i for i, cid in enumerate(sorted(names))}
    gts: dict[int, list[dict]] = defaultdict(list)
    for a in coco["annotations"]:
        gts[a["image_id"]].append(a)
    base, adapted = load_detections(base_dump, threshold), load_detections(adapter_dump, threshold)
    rows = []
    for img in coco["images"]:
        i = img["id"]
        rows.append({"image_id": i, "file_name": img["file_name"],
                     "base_f1": get_image_f1(base[i], gts[i]),
                     "adapter_f1": get_image_f1(adapted[i], gts[i])})
    rows.sort(key=lambda r: (-abs(r["adapter_f1"] - r["base_f1"]), r["image_id"]))
    rows = rows[:num_images]
    by_id = {img["id"]: img for img in coco["images"]}
    font = ImageFont.load_default()
    panels = []
    for r in rows:
        img = by_id[r["image_id"]]
        image = Image.open(os.path.join(image_dir, img["file_name"])).convert("RGB")
        size = image.size
        panels.append([draw_overlay(image, _to_detections(anns, cat_index, names, size, max_dets),
                                    min_side=min_side)
                       for anns in (base[img["id"]], adapted[img["id"]], gts[img["id"]])])
    if not panels:
        raise ValueError(f"{gt_path} has no images")
    pw, ph = panels[0][0].size
    pad, head, cap = 8, 22, 18
    canvas = Image.new("RGB", (3 * pw + 4 * pad, head + len(panels) * (ph + cap + pad) + pad),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate((f"base (score >= {threshold:g})", f"adapter (score >= {threshold:g})",
                               "ground truth")):
        _caption(draw, (pad + c * (pw + pad), 6), title, font)
    for k, (r, row) in enumerate(zip(rows, panels)):
        y = head + k * (ph + cap + pad)
        _caption(draw, (pad, y), f"{r['file_name']}: F1@0.5 base {r['base_f1']:.2f}, "
                                 f"adapter {r['adapter_f1']:.2f}", font)
        for c, panel in enumerate(row):
            canvas.paste(panel.resize((pw, ph)), (pad + c * (pw + pad), y + cap))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    canvas.save(out_path)
    return rows


def write_category_chart(out_path: str, comparison: dict[str, Any],
                         metric: str = "AP") -> Optional[str]:
    """Grouped bars of ``metric`` per category, base vs adapter, one panel per IoU type.

    Returns:
        ``out_path``, or None when the comparison has no per-category rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in comparison["results"] if r.get("per_category")]
    if not results:
        return None
    n = max(len(r["per_category"]) for r in results)
    fig, axes = plt.subplots(1, len(results), figsize=(max(5.0, 1.1 * n + 2) * len(results), 4.2),
                             squeeze=False)
    for ax, r in zip(axes[0], results):
        cats = r["per_category"]
        x = np.arange(len(cats))
        for off, side, color in ((-0.2, "base", "#9e9e9e"), (0.2, "adapter", "#1f77b4")):
            vals = [(c[side][metric] or 0.0) for c in cats]
            bars = ax.bar(x + off, vals, 0.4, label=side, color=color)
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=8, padding=2)
        ax.set_xticks(x, [c["name"] for c in cats], rotation=20 if n > 4 else 0, ha="right" if n > 4 else "center")
        ax.set(ylim=(0, 1.05), ylabel=f"{metric} ({r['iou_type']})",
               title=f"{r['iou_type']} {metric} per category ({r['num_images']} images)")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
