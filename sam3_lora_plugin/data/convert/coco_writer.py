"""Write ``SourceImage`` lists as a Roboflow-style COCO dataset that SAM3's trainer reads.

Output: ``<out>/<split>/_annotations.coco.json`` with the images beside it (copied,
hard-linked or symlinked), one JSON per split, the same category list in every split.

Rules every format gets:

- Image width/height come from the image file (PIL header); a differing size in the
  source annotation is reported. Images with an EXIF orientation are written upright
  (SAM3 loads pixels without applying EXIF, while LabelMe and Ultralytics label the
  upright view), unless the annotation states the raw, unrotated size.
- Boxes are clipped to the image; boxes with no width or height left are dropped.
  ``bbox`` is XYWH floats; box-only objects get ``area = w * h`` and ``segmentation: []``.
- Polygons are clipped to the image (exact polygon intersection); parts with fewer than
  3 vertices and objects with zero rasterised area are dropped. ``area``/``bbox`` come
  from the pycocotools mask, as SAM3 decodes it.
- Masks (mask files, LabelMe ``mask`` crops, and VOC ``<polygon>`` pixel outlines, which
  are filled as drawn) become pixel-exact polygons (default) or RLE; ``area``/``bbox``
  from pycocotools ``area``/``toBbox``.
- Category ids are 1..N in the given order, or alphabetical by name when no order is
  given (so separately converted splits agree); ``rename`` is applied first.
- Every source object is accounted for: the summary ends with ``N objects in, W
  written, S skipped (by reason)``, and each skip is also a warning naming the first
  offenders.
- OUT is new, empty, or an earlier conversion, replaced only with ``overwrite``;
  anything else there is refused before anything is written (``output_dir``). The splits
  are written to temporary folders in OUT and moved into place when all are complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ..synthetic import ANN_FILE
from .geometry import clip_box, clip_polygon, encode_mask, mask_to_polygons, polygons_to_rle, rle_to_json
from .output_dir import CONVERTER_MARK, SplitStaging, check_convert_output
from .sources import Shape, SourceImage, WarningTally
from .summary import ConversionSummary, resolve_categories

__all__ = ["ConversionSummary", "write_coco_dataset", "resolve_categories", "LINK_MODES", "MASK_FORMATS"]

log = logging.getLogger(__name__)

LINK_MODES = ("copy", "hardlink", "symlink")
MASK_FORMATS = ("polygon", "rle")
_EXIF_ORIENTATION = 0x0112


class _SplitWriter:
    """Accumulates one split's COCO dict and places its images."""

    def __init__(self, out_dir: Path, cat_ids: dict[str, int], rename: Mapping[str, str], link: str,
                 mask_format: str, tally: WarningTally) -> None:
        self.out_dir, self.cat_ids, self.rename = out_dir, cat_ids, rename
        self.link, self.mask_format, self.tally = link, mask_format, tally
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._mask_cache: tuple[Path | None, np.ndarray | None] = (None, None)
        self.objects_in = 0

    def _unique_name(self, name: str) -> str:
        stem, suffix = os.path.splitext(name)
        candidate, k = name, 1
        while candidate.lower() in self._names:
            candidate, k = f"{stem}-{k}{suffix}", k + 1
        if candidate != name:
            self.tally.add("images renamed because another image had the same file name", f"{name} -> {candidate}")
        self._names.add(candidate.lower())
        return candidate

    def _place_image(self, src: SourceImage) -> tuple[str, int, int] | None:
        """Put the image in the split folder; returns ``(file_name, width, height)``."""
        has_file = src.path.is_file()
        if not has_file and src.data is None:
            self.tally.add("images not found (skipped with their objects)", str(src.path))
            self.tally.skip("image missing", "objects of images not found (skipped)", str(src.path), len(src.shapes))
            return None
        name = self._unique_name(src.path.name)
        dst = self.out_dir / name  # a new name in a new folder (output_dir.SplitStaging)
        try:
            if not has_file:
                dst.write_bytes(src.data)  # type: ignore[arg-type]
            with Image.open(dst if not has_file else src.path) as im:
                raw = im.size
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                upright = (raw[1], raw[0]) if orientation in (5, 6, 7, 8) else raw
                rotate = orientation in range(2, 9) and not (src.declared_size == raw != upright)
                if rotate:
                    fmt = im.format or "PNG"
                    ImageOps.exif_transpose(im).save(dst, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
                    self.tally.add("images with an EXIF orientation written upright (SAM3 ignores EXIF)", name)
            size = upright if rotate else raw
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            self.tally.add("unreadable images (skipped with their objects)", f"{src.path} ({exc})")
            self.tally.skip("image unreadable", "objects of unreadable images (skipped)", src.path.name,
                            len(src.shapes))
            if not has_file:
                dst.unlink(missing_ok=True)
            return None
        if has_file and not rotate:
            _link(src.path, dst, self.link)
        if src.declared_size and tuple(src.declared_size) != tuple(size):
            self.tally.add("annotation states a different image size than the image file (file size used)",
                           f"{src.ref or name}: {src.declared_size[0]}x{src.declared_size[1]} vs {size[0]}x{size[1]}")
        return name, int(size[0]), int(size[1])

    def add_image(self, src: SourceImage) -> None:
        """Place ``src``'s image and append its annotations."""
        self.objects_in += len(src.shapes)
        placed = self._place_image(src)
        if placed is None:
            return
        name, width, height = placed
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for shape in src.shapes:
            label = self.rename.get(shape.label, shape.label).strip()
            if label not in self.cat_ids:
                self.tally.skip("not in categories", "objects whose label is not in the category list (skipped)",
                                repr(shape.label))
                continue
            ann = self._annotation(shape, width, height, f"{name}:{label}")
            if ann is not None:
                ann.update(id=len(self.annotations) + 1, image_id=image_id, category_id=self.cat_ids[label],
                           iscrowd=int(shape.iscrowd), **shape.extra)
                self.annotations.append(ann)

    def _annotation(self, shape: Shape, width: int, height: int, ref: str) -> dict[str, Any] | None:
        scale = np.array([width, height], np.float64) if shape.normalized else np.ones(2)
        if shape.box is not None:
            (x0, y0, x1, y1), clipped = clip_box(tuple(np.asarray(shape.box, np.float64) * np.tile(scale, 2)), width, height)
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                self.tally.skip("zero size", "boxes with no width or height (inside the image) dropped", ref)
                return None
            if clipped:
                self.tally.add("boxes clipped to the image bounds", ref)
            return {"bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "segmentation": []}
        if shape.polygons is not None:
            parts = []
            for poly in shape.polygons:
                pts = np.asarray(poly, np.float64).reshape(-1, 2) * scale
                inside = clip_polygon(pts, width, height)
                if len(inside) and (len(inside) != len(pts) or not np.allclose(inside, pts)):
                    self.tally.add("polygons clipped to the image bounds", ref)
                if len(inside) >= 3:
                    parts.append([float(v) for v in inside.reshape(-1)])
            if not parts:
                self.tally.skip("outside image", "polygons dropped: fewer than 3 points inside the image", ref)
                return None
            rle = polygons_to_rle(parts, height, width)
            if mask_utils.area(rle) == 0:
                self.tally.skip("zero area", "polygons dropped: zero area", ref)
                return None
            return {"bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                    "segmentation": parts}
        binary = self._binary_mask(shape, width, height, ref)
        return None if binary is None else self._mask_annotation(binary, ref)

    def _binary_mask(self, shape: Shape, width: int, height: int, ref: str) -> np.ndarray | None:
        """The object's ``(height, width)`` boolean mask, from whichever mask geometry it has."""
        if shape.pixel_polygons is not None:
            canvas = np.zeros((height, width), np.uint8)
            cv2.fillPoly(canvas, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in shape.pixel_polygons], 1)
            return canvas.astype(bool)
        if shape.mask_crop is not None:
            canvas = np.zeros((height, width), bool)
            x0, y0 = shape.mask_origin
            crop = np.asarray(shape.mask_crop, bool)[max(0, -y0):, max(0, -x0):]
            x0, y0 = max(0, x0), max(0, y0)
            h, w = min(crop.shape[0], height - y0), min(crop.shape[1], width - x0)
            if h < crop.shape[0] or w < crop.shape[1] or crop.shape != shape.mask_crop.shape:
                self.tally.add("masks clipped to the image bounds", ref)
            if h > 0 and w > 0:
                canvas[y0:y0 + h, x0:x0 + w] = crop[:h, :w]
            return canvas
        if self._mask_cache[0] != shape.mask_path:  # id masks hold many objects: read once
            try:
                with Image.open(shape.mask_path) as im:
                    if shape.mask_value is None and im.mode not in ("1", "L", "I", "I;16", "F"):
                        im = im.convert("L")  # binary mask saved as RGB/RGBA/palette: any non-black pixel
                    self._mask_cache = (shape.mask_path, np.asarray(im))
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                self.tally.skip("mask unreadable", "unreadable mask files (skipped)", f"{shape.mask_path.name} ({exc})")
                return None
        arr = self._mask_cache[1]
        if arr.shape[:2] != (height, width):
            self.tally.skip("mask size", "masks whose size differs from the image (skipped)",
                            f"{shape.mask_path.name}: {arr.shape[1]}x{arr.shape[0]} vs {width}x{height}")
            return None
        if arr.ndim != 2:
            raise ValueError(f"{shape.mask_path}: an id mask must be single-channel (mode L, I;16 or P), "
                             f"got {arr.shape[2]} channels; save instance ids as a grey-level PNG")
        return arr == shape.mask_value if shape.mask_value is not None else arr != 0

    def _mask_annotation(self, binary: np.ndarray, ref: str) -> dict[str, Any] | None:
        rle = encode_mask(binary)
        if mask_utils.area(rle) == 0:
            self.tally.skip("empty mask", "empty masks skipped", ref)
            return None
        segmentation: Any = mask_to_polygons(binary) if self.mask_format == "polygon" else None
        if not segmentation:
            if self.mask_format == "polygon":
                self.tally.add("masks too thin for a polygon, stored as RLE", ref)
            segmentation = rle_to_json(rle)
        return {"bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                "segmentation": segmentation}

    def write(self, categories: list[str]) -> Path:
        """Write ``_annotations.coco.json``; returns its path."""
        coco = {
            "info": {"description": CONVERTER_MARK},
            "licenses": [],
            "categories": [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(categories)],
            "images": self.images,
            "annotations": self.annotations,
        }
        path = self.out_dir / ANN_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(coco))
        os.replace(tmp, path)
        return path


def _link(src: Path, dst: Path, mode: str) -> None:
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def write_coco_dataset(splits: Mapping[str, Sequence[SourceImage]], out: str | os.PathLike, *,
                       categories: Sequence[str] | None = None, rename: Mapping[str, str] | None = None,
                       link: str = "copy", mask_format: str = "polygon", overwrite: bool = False,
                       tally: WarningTally | None = None) -> ConversionSummary:
    """Write one ``<out>/<split>/_annotations.coco.json`` (plus images) per split.

    Args:
        splits: Split name (``train``, ``valid``, ``test``) -> its images.
        out: Dataset root to write.
        categories: Category order (ids 1..N); labels outside it are skipped with a
            warning. None: every label found, alphabetical.
        rename: Source label -> category name (also merges labels).
        link: How images get beside the JSON: ``copy``, ``hardlink`` or ``symlink``.
        mask_format: Masks as ``polygon`` (pixel-exact outlines) or ``rle``.
        overwrite: Replace an earlier conversion in ``out`` (every split of it). Never
            anything else: ``out`` must otherwise be new or empty.
        tally: Warnings collected by the reader, extended here.

    Returns:
        A ``ConversionSummary``; its warnings are also logged.

    Raises:
        ValueError: On bad options, no images, an ``out`` holding anything a converter
            did not write, or an earlier conversion without ``overwrite``; nothing is
            written then.
    """
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    if not any(splits.values()):
        raise ValueError("no images found in the source; the layouts each format reads are in "
                         "`python -m sam3_lora_plugin.data.convert --help`")
    out = Path(out).expanduser().absolute()
    replaced = check_convert_output(out, overwrite=overwrite)
    tally = tally or WarningTally()
    rename = dict(rename or {})
    labels = [s.label for images in splits.values() for im in images for s in im.shapes]
    names = resolve_categories(labels, categories, rename, tally)
    cat_ids = {n: i + 1 for i, n in enumerate(names)}
    summary = ConversionSummary(out_dir=out, categories=names)
    summary.objects_in = sum(tally.skipped.values())  # objects the readers could not turn into shapes
    with SplitStaging(out, replaced) as staging:
        for split, images in splits.items():
            writer = _SplitWriter(staging.folder(split), cat_ids, rename, link, mask_format, tally)
            for image in images:
                writer.add_image(image)
            writer.write(names)
            summary.splits[split] = (len(writer.images), len(writer.annotations))
            summary.objects_in += writer.objects_in
        summary.warnings = tally.messages()
        summary.skipped = dict(tally.skipped)
        if summary.objects_in != summary.annotations + sum(summary.skipped.values()):
            raise RuntimeError(f"conversion lost track of objects: {summary.objects_line}")  # a bug here, not in the data
        staging.commit()
    for line in summary.warnings:
        log.warning("%s", line)
    log.info("%s", summary)
    return summary
