"""Pixel geometry shared by the converters: clipping, polygon/mask to COCO RLE.

Coordinates are COCO's continuous pixel coordinates: pixel ``(col, row)`` covers
``[col, col + 1) x [row, row + 1)``, so a box covering a whole ``W x H`` image is
``[0, 0, W, H]`` (XYWH). All masks are rasterised by pycocotools, which is what SAM3's
data loader (``sam3.train.data.coco_json_loaders.ann_to_rle``) uses to decode them.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "clip_box",
    "clip_polygon",
    "polygons_to_rle",
    "mask_to_polygons",
    "encode_mask",
    "rle_to_json",
]


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[tuple[float, float, float, float], bool]:
    """Clip an ``(x0, y0, x1, y1)`` box to ``[0, width] x [0, height]``.

    Corners may come in any order (LabelMe rectangles are two arbitrary corners).

    Returns:
        The clipped box as ``(x0, y0, x1, y1)`` with ``x0 <= x1``, ``y0 <= y1``, and
        whether clipping moved any coordinate.
    """
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    clipped = (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
               min(max(x1, 0.0), width), min(max(y1, 0.0), height))
    return clipped, clipped != (x0, y0, x1, y1)


def clip_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Intersect a polygon with the image rectangle ``[0, width] x [0, height]``.

    Hand-written Sutherland-Hodgman (four half-plane passes): clamping vertices would
    distort the shape (a triangle poking out of the image loses area that is inside),
    and the exact clip needs no extra dependency (shapely) for a convex clip window.
    The input may be concave or self-touching; the output can contain edges running
    along the image border, which pycocotools rasterises correctly.

    Args:
        points: ``(N, 2)`` array of ``x, y`` vertices in pixels.
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        ``(M, 2)`` float64 array; ``M < 3`` means nothing of the polygon is inside.
    """
    poly = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    # (axis, bound, keep_greater): x >= 0, x <= width, y >= 0, y <= height
    for axis, bound, keep_ge in ((0, 0.0, True), (0, float(width), False), (1, 0.0, True), (1, float(height), False)):
        if len(poly) == 0:
            break
        inside = poly[:, axis] >= bound if keep_ge else poly[:, axis] <= bound
        if inside.all():
            continue
        out: list[np.ndarray] = []
        prev, prev_in = poly[-1], inside[-1]
        for cur, cur_in in zip(poly, inside):
            if cur_in != prev_in:  # edge crosses the clip line: add the crossing point
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(prev + t * (cur - prev))
            if cur_in:
                out.append(cur)
            prev, prev_in = cur, cur_in
        poly = np.asarray(out, dtype=np.float64).reshape(-1, 2)
    if len(poly):  # drop consecutive duplicate vertices created on the border
        keep = np.any(np.abs(poly - np.roll(poly, 1, axis=0)) > 1e-9, axis=1)
        poly = poly[keep] if keep.any() else poly[:1]
    return poly


def polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> dict[str, Any]:
    """Rasterise COCO polygons (flat ``[x1, y1, x2, y2, ...]`` lists) into one merged RLE."""
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """pycocotools RLE of a 2-D binary mask."""
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """A pycocotools RLE with ``counts`` as ``str`` so that it serialises to JSON."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer outlines of a binary mask as COCO polygons along pixel edges.

    cv2.findContours traces pixel *centres*, so its polygons rasterise half a pixel
    smaller all round (a 4x4 square comes back 3x3 from pycocotools). Tracing the mask
    upsampled 2x and mapping upsampled index ``k`` to ``ceil(k / 2)`` puts every vertex on
    a pixel corner instead, and pycocotools then rasterises the polygons back to the
    same pixels. Holes are filled (COCO polygons cannot express them; use RLE to keep
    them). Parts too small to form a polygon are dropped.

    Args:
        mask: 2-D array, non-zero = object.

    Returns:
        List of flat ``[x1, y1, x2, y2, ...]`` float lists, each with >= 3 vertices.
    """
    mask = np.asarray(mask) != 0
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return []
    r0, c0 = int(rows[0]), int(cols[0])
    crop = mask[r0:int(rows[-1]) + 1, c0:int(cols[-1]) + 1].astype(np.uint8)
    up = np.kron(crop, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        pts = (contour.reshape(-1, 2) + 1) // 2
        pts = pts[np.any(pts != np.roll(pts, 1, axis=0), axis=1)]
        if len(pts) >= 3:
            polygons.append([float(v) for v in (pts + [c0, r0]).reshape(-1)])
    return polygons
