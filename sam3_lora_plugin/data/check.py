"""Check a COCO dataset before SAM3's trainer reads it.

SAM3 (``Sam3ImageDataset`` + ``COCO_FROM_JSON``) reads ``images[].id/file_name/width/
height``, ``annotations[].image_id/category_id/bbox/iscrowd/segmentation`` and
``categories[].id/name`` (the name is the text prompt); COCO evaluation also needs
``area``. It normalises ``bbox`` (XYWH) by the JSON width/height, silently drops
annotations of unknown images or categories, and fails mid-epoch on a missing image.
This module finds those problems up front.

Severity (errors make ``raise_if_errors`` raise and the CLI exit 1):

- errors: unreadable JSON, missing sections or required fields, duplicate ids,
  missing/unreadable images, width/height swapped relative to the file (EXIF rotation:
  boxes land in the wrong place), unknown image/category references, broken bbox
  (not 4 finite numbers), degenerate bbox (w or h <= 0), invalid segmentation (polygon
  with an odd count or < 6 numbers, RLE whose size is not the image's) or empty
  segmentation (zero pixels), blank category names, empty split (no images or no
  annotations), missing train split.
- warnings (training runs, but probably not as meant): other size mismatches (SAM3
  rescales normalised boxes to the real size, right only if the image was resized after
  labelling), EXIF orientation tags, boxes partly outside the image (SAM3 clamps them;
  tolerance 1 px), suspected XYXY boxes, categories without annotations (SAM3 prompts
  them as negatives on every image), code-like or duplicate category names, box-only
  annotations mixed with masks, missing valid split, categories differing between splits.

Suspected XYXY (``[x1, y1, x2, y2]`` stored where COCO wants ``[x, y, w, h]``): flagged
when (a) at least 10% of the boxes run past the right/bottom edge as XYWH but fit inside
the image as XYXY, and at least 90% of all boxes satisfy ``bbox[2] > bbox[0]`` and
``bbox[3] > bbox[1]`` (always true for XYXY, rare for real XYWH boxes away from the
top-left corner); or (b) most annotations with a mask have a mask extent that matches
the XYXY reading of the box better than the XYWH one (by more than 1 px).

CLI: ``python -m sam3_lora_plugin.data.check PATH`` (a JSON file, a split folder, or a
dataset root with train/valid/test); exit code 1 on errors, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from .synthetic import ANN_FILE, SPLITS

__all__ = ["DatasetError", "Issue", "CheckReport", "check_coco", "check_dataset", "is_code_like_name", "main"]

log = logging.getLogger(__name__)

_CODE_LIKE = re.compile(r"(?:[a-z]{0,6}[\s_.-]?)?\d+|[a-z]", re.IGNORECASE)
_OUTSIDE_TOL = 1.0  # px: boxes up to this far past the border count as inside (rounding)

# code -> (severity, what is wrong, how to fix it)
DEFECTS: dict[str, tuple[str, str, str]] = {
    "unreadable_json": ("error", "annotation file cannot be read as COCO JSON",
                        "re-export the dataset or fix the file; it must be one JSON object with "
                        "'images', 'annotations' and 'categories' lists"),
    "missing_section": ("error", "top-level 'images', 'annotations' or 'categories' missing or not a list",
                        "add the section as a JSON list"),
    "missing_field": ("error", "entries with missing or malformed required fields",
                      "images need int id, file_name, width, height; annotations need int id, image_id, "
                      "category_id, bbox, area, iscrowd (0/1); categories need int id and name"),
    "duplicate_id": ("error", "duplicate ids", "give every image, annotation and category a unique id"),
    "missing_image": ("error", "image files missing or unreadable",
                      "put the images beside the JSON (or pass image_dir) or remove their entries"),
    "size_swapped": ("error", "JSON width/height swapped relative to the image file (EXIF rotation?)",
                     "write the images upright (PIL.ImageOps.exif_transpose) so pixels match the labels, "
                     "then set width/height from the files"),
    "size_mismatch": ("warning", "JSON width/height differ from the image file",
                      "SAM3 scales boxes by JSON size -> file size, right only if images were resized after "
                      "labelling; otherwise fix width/height"),
    "exif_orientation": ("warning", "images carry an EXIF orientation, which SAM3 ignores",
                         "check the labels match the raw (unrotated) pixels, or write images upright"),
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
    "empty_split": ("error", "split has no images or no annotations", "add labelled images or drop the split"),
    "blank_category_name": ("error", "blank category names (SAM3 prompts with the name)", "name every category"),
    "code_like_name": ("warning", "category names that look like codes; SAM3 uses the name as the text prompt",
                       "rename to words describing the object (convert CLI: --rename old=new)"),
    "duplicate_category_name": ("warning", "several category ids share a name (identical prompts, "
                                "contradictory targets)", "merge them into one category"),
    "unused_category": ("warning", "categories without annotations (SAM3 prompts them as negatives everywhere)",
                        "remove them if unintended (Roboflow adds an unused category 0 named after the project)"),
    "box_only_mixed": ("warning", "box-only annotations in a dataset with masks (no mask loss for them)",
                       "add segmentations, or train without masks"),
    "missing_split": ("error", "train split missing", "layout: <root>/train/_annotations.coco.json"),
    "missing_valid": ("warning", "valid split missing", "configs validate on <root>/valid/_annotations.coco.json "
                      "(name the folder 'valid', not 'val')"),
    "category_mismatch": ("warning", "categories differ from the train split",
                          "use the same id -> name list in every split"),
}


class DatasetError(ValueError):
    """A dataset failed ``check_coco``/``check_dataset``; the message lists the problems."""


@dataclass
class Issue:
    """One kind of defect found in one file: count and first offenders."""

    code: str
    path: Path
    count: int
    examples: list[str] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return DEFECTS[self.code][0]

    @property
    def title(self) -> str:
        return DEFECTS[self.code][1]

    @property
    def fix(self) -> str:
        return DEFECTS[self.code][2]

    def describe(self) -> str:
        """``title: count (first: ...)``."""
        tail = f" (first: {'; '.join(self.examples)})" if self.examples else ""
        return f"{self.title}: {self.count}{tail}"


@dataclass
class CheckReport:
    """Result of checking one COCO file, or a dataset (``parts`` = one report per split)."""

    path: Path
    issues: list[Issue] = field(default_factory=list)
    images: int = 0
    annotations: int = 0
    category_names: dict[Any, str] = field(default_factory=dict)
    parts: list[CheckReport] = field(default_factory=list)

    def _all(self) -> list[Issue]:
        return self.issues + [i for p in self.parts for i in p._all()]

    @property
    def errors(self) -> list[Issue]:
        """Error issues, this report's and its parts'."""
        return [i for i in self._all() if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        """Warning issues, this report's and its parts'."""
        return [i for i in self._all() if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """Readable multi-line report."""
        n_err, n_warn = len(self.errors), len(self.warnings)
        head = (f"{self.path}: {self.images} images, {self.annotations} annotations, "
                f"{len(self.category_names)} categories" if not self.parts else f"dataset {self.path}")
        lines = [f"{head} -- {n_err} error(s), {n_warn} warning(s)"]
        for issue in sorted(self.issues, key=lambda i: i.severity != "error"):
            lines.append(f"  {issue.severity.upper():7} [{issue.code}] {issue.describe()}")
            lines.append(f"          fix: {issue.fix}")
        lines += ["  " + line for p in self.parts for line in p.format().splitlines()]
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        """Raise ``DatasetError`` naming every error (file, problem, count, offenders, fix)."""
        errors = self.errors
        if errors:
            body = "\n".join(f"- {i.path}: {i.describe()}. Fix: {i.fix}" for i in errors)
            raise DatasetError(f"dataset check of {self.path} found {len(errors)} error(s):\n{body}")


def is_code_like_name(name: str) -> bool:
    """True for names such as ``0``, ``class_3``, ``c12``, ``obj1``, ``x``: poor text prompts."""
    return bool(_CODE_LIKE.fullmatch(name.strip()))


class _Findings:
    def __init__(self, path: Path, max_examples: int) -> None:
        self.path, self.max_examples = path, max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, code: str, example: str = "", count: int = 1) -> None:
        self.counts[code] += count
        ex = self.examples.setdefault(code, [])
        if example and len(ex) < self.max_examples:
            ex.append(example)

    def issues(self) -> list[Issue]:
        return [Issue(c, self.path, n, self.examples[c]) for c, n in self.counts.items()]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _seg_area_box(seg: Any, h: int, w: int) -> tuple[str, list[float] | None]:
    """Classify a segmentation: ``("none"|"invalid: why"|"empty"|"ok", mask box)``."""
    if seg is None or seg == []:
        return "none", None
    try:
        if isinstance(seg, list):
            if not all(isinstance(p, list) for p in seg):
                return "invalid: polygon not nested in a list", None
            for p in seg:
                if len(p) < 6 or len(p) % 2 or not all(_num(v) for v in p):
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


def _suspect_xyxy(boxes: list[tuple[str, list[float], float, float, list[float] | None]]) -> list[str]:
    """Offending boxes if the boxes look XYXY (see the module docstring), else ``[]``."""
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


def _load_json(path: Path, found: _Findings) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        found.add("unreadable_json", "file not found")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        found.add("unreadable_json", f"{type(exc).__name__}: {exc}")
        return None
    except json.JSONDecodeError as exc:
        found.add("unreadable_json", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
        return None
    if not isinstance(data, dict):
        found.add("unreadable_json", f"top level is a {type(data).__name__}, not an object")
        return None
    return data


def _check_categories(cats: list[Any], found: _Findings) -> dict[Any, str]:
    names: dict[Any, str] = {}
    for c in cats:
        if not isinstance(c, dict) or not _int(c.get("id")) or not isinstance(c.get("name"), str):
            found.add("missing_field", f"category {str(c)[:60]}")
            continue
        if c["id"] in names:
            found.add("duplicate_id", f"category id {c['id']}")
            continue
        names[c["id"]] = name = c["name"]
        if not name.strip():
            found.add("blank_category_name", f"category id {c['id']}")
        elif is_code_like_name(name):
            found.add("code_like_name", repr(name))
    for name, n in Counter(n.strip().lower() for n in names.values() if n.strip()).items():
        if n > 1:
            found.add("duplicate_category_name", f"{name!r} x{n}")
    return names


def _check_images(images: list[Any], image_dir: Path, check_files: bool, progress_every: int,
                  found: _Findings) -> dict[Any, tuple[int, int]]:
    sizes: dict[Any, tuple[int, int]] = {}
    for k, im in enumerate(images, 1):
        if progress_every and k % progress_every == 0:
            log.info("checked %d/%d images of %s", k, len(images), found.path)
        if not isinstance(im, dict) or not _int(im.get("id")) or not isinstance(im.get("file_name"), str) \
                or not all(_num(im.get(key)) and im[key] > 0 for key in ("width", "height")):
            found.add("missing_field", f"image {str(im)[:80]}")
            continue
        if im["id"] in sizes:
            found.add("duplicate_id", f"image id {im['id']}")
            continue
        w, h = int(im["width"]), int(im["height"])
        sizes[im["id"]] = (w, h)
        if not check_files:
            continue
        ref = f"{im['file_name']} (id {im['id']})"
        path = image_dir / im["file_name"]
        try:
            with Image.open(path) as f:  # reads the header only
                real, orientation = f.size, f.getexif().get(0x0112, 1)
        except FileNotFoundError:
            found.add("missing_image", f"{ref}: not found")
            continue
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            found.add("missing_image", f"{ref}: {type(exc).__name__}")
            continue
        if real == (h, w) != (w, h):
            found.add("size_swapped", f"{ref}: JSON {w}x{h}, file {real[0]}x{real[1]}")
        elif real != (w, h):
            found.add("size_mismatch", f"{ref}: JSON {w}x{h}, file {real[0]}x{real[1]}")
        elif orientation not in (0, 1):
            found.add("exif_orientation", f"{ref}: orientation {orientation}")
    return sizes


def _check_annotations(anns: list[Any], sizes: dict[Any, tuple[int, int]], cat_names: dict[Any, str],
                       found: _Findings) -> Counter:
    seen: set[Any] = set()
    per_cat: Counter = Counter()
    boxes: list[tuple[str, list[float], float, float, list[float] | None]] = []
    kinds: Counter = Counter()
    for a in anns:
        if not isinstance(a, dict) or not _int(a.get("id")) or "image_id" not in a or "category_id" not in a \
                or "bbox" not in a or not _num(a.get("area")) or a.get("iscrowd") not in (0, 1):
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
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_num(v) for v in bbox):
            found.add("broken_bbox", f"{ref}: {str(bbox)[:60]}")
            continue
        x, y, bw, bh = bbox
        if bw <= 0 or bh <= 0:
            found.add("degenerate_bbox", f"{ref}: {bbox}")
            continue
        if x < -_OUTSIDE_TOL or y < -_OUTSIDE_TOL or x + bw > w + _OUTSIDE_TOL or y + bh > h + _OUTSIDE_TOL:
            found.add("bbox_outside", f"{ref}: {bbox} in {w}x{h}")
        status, seg_box = _seg_area_box(a.get("segmentation"), h, w)
        kinds["none" if status == "none" else "mask"] += 1
        if status.startswith("invalid"):
            found.add("invalid_segmentation", f"{ref}: {status[9:]}")
        elif status == "empty":
            found.add("empty_segmentation", ref)
        boxes.append((ref, bbox, w, h, seg_box))
    for ref in _suspect_xyxy(boxes):
        found.add("suspected_xyxy", ref)
    if kinds["none"] and kinds["mask"]:
        found.add("box_only_mixed", f"{kinds['none']} box-only vs {kinds['mask']} with masks", kinds["none"])
    return per_cat


def check_coco(json_path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
               check_images: bool = True, max_examples: int = 5, progress_every: int = 2000) -> CheckReport:
    """Check one COCO annotation file and its images.

    Args:
        json_path: The ``_annotations.coco.json`` (or any COCO JSON).
        image_dir: Folder that ``file_name`` is relative to; default the JSON's folder
            (Roboflow layout, and what the project's configs pass as ``img_folder``).
        check_images: Open every image header (size, EXIF); False skips file checks.
        max_examples: Offenders listed per defect.
        progress_every: Log a progress line every this many images (0: never).

    Returns:
        A ``CheckReport``; call ``raise_if_errors()`` to fail on errors.
    """
    path = Path(json_path).expanduser()
    found = _Findings(path, max_examples)
    report = CheckReport(path=path)
    data = _load_json(path, found)
    if data is not None:
        sections = {k: data.get(k) for k in ("images", "annotations", "categories")}
        for key, value in sections.items():
            if not isinstance(value, list):
                found.add("missing_section", key)
        images, anns, cats = (v if isinstance(v, list) else [] for v in sections.values())
        report.category_names = _check_categories(cats, found)
        sizes = _check_images(images, Path(image_dir) if image_dir else path.parent, check_images,
                              progress_every, found)
        per_cat = _check_annotations(anns, sizes, report.category_names, found)
        report.images, report.annotations = len(images), len(anns)
        if not images or not anns:
            found.add("empty_split", f"{len(images)} images, {len(anns)} annotations")
        for cid, name in report.category_names.items():
            if anns and not per_cat[cid]:
                found.add("unused_category", f"{name!r} (id {cid})")
    report.issues = found.issues()
    return report


def check_dataset(root: str | os.PathLike, splits: tuple[str, ...] = SPLITS, **kwargs: Any) -> CheckReport:
    """Check ``<root>/<split>/_annotations.coco.json`` for each split present.

    A missing train split is an error, a missing valid split a warning, a missing test
    split fine. ``kwargs`` go to ``check_coco``.

    Returns:
        A ``CheckReport`` for ``root`` whose ``parts`` are the per-split reports.
    """
    root = Path(root).expanduser()
    found = _Findings(root, kwargs.get("max_examples", 5))
    report = CheckReport(path=root)
    for split in splits:
        json_path = root / split / ANN_FILE
        if json_path.is_file():
            report.parts.append(check_coco(json_path, **kwargs))
        elif split == "train":
            found.add("missing_split", str(json_path))
        elif split == "valid":
            found.add("missing_valid", str(json_path))
    train = next((p for p in report.parts if p.path.parent.name == "train"), None)
    for part in report.parts:
        if train is not None and part is not train and part.category_names != train.category_names:
            found.add("category_mismatch", part.path.parent.name)
    report.images = sum(p.images for p in report.parts)
    report.annotations = sum(p.annotations for p in report.parts)
    report.issues = found.issues()
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see ``--help``."""
    p = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.data.check",
        description="Check a COCO dataset for SAM3 fine-tuning: missing/unreadable images, size mismatches, "
                    "broken or XYXY boxes, invalid segmentations, unknown or duplicate ids, empty splits, "
                    "unused or code-like category names.",
        epilog="PATH may be a COCO JSON file, a split folder holding _annotations.coco.json, or a dataset "
               "root with train/ valid/ test/ split folders. Exit code: 1 if any error, else 0 "
               "(warnings are printed but do not fail).",
    )
    p.add_argument("path", metavar="PATH", help="JSON file, split folder, or dataset root")
    p.add_argument("--image-dir", default=None, help="folder file_name is relative to (default: the JSON's folder)")
    p.add_argument("--no-images", action="store_true", help="skip opening image files (JSON checks only)")
    p.add_argument("--max-examples", type=int, default=5, help="offenders listed per problem (default 5)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(a.path)
    opts = dict(check_images=not a.no_images, max_examples=a.max_examples)
    if path.is_dir() and not (path / ANN_FILE).is_file():
        report = check_dataset(path, **opts)
    else:
        report = check_coco(path / ANN_FILE if path.is_dir() else path, a.image_dir, **opts)
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
