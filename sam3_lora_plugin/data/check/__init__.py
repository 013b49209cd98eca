"""Check a COCO dataset before SAM3's trainer reads it.

SAM3 (``Sam3ImageDataset`` + ``COCO_FROM_JSON``) reads ``images[].id/file_name/width/
height``, ``annotations[].image_id/category_id/bbox/iscrowd/segmentation`` and
``categories[].id/name`` (the name is the text prompt); COCO evaluation also needs
``area``. It normalises ``bbox`` (XYWH) by the JSON width/height, silently drops
annotations of unknown images or categories, and fails mid-epoch on a missing image.
This package finds those problems up front.

Severity (errors make ``raise_if_errors`` raise and the CLI exit 1):

- errors: unreadable JSON, missing sections or required fields, duplicate ids,
  missing, unreadable or truncated images, width/height that differ from the file
  (swapped by an EXIF rotation, or simply different: SAM3 normalises boxes by the JSON
  size and places them on the file's pixels), unknown image/category references, broken
  bbox (not 4 finite numbers), degenerate bbox (w or h <= 0), invalid segmentation
  (polygon with an odd count or < 6 numbers, RLE whose size is not the image's) or empty
  segmentation (zero pixels), blank category names, empty split (no images or no
  annotations), missing train split.
- warnings (training runs, but probably not as meant): EXIF orientation tags, boxes
  partly outside the image (SAM3 clamps them; tolerance 1 px), suspected XYXY boxes,
  categories without annotations (SAM3 prompts them as negatives on every image),
  code-like or duplicate category names, box-only annotations mixed with masks,
  missing valid split, categories differing between splits.

Modules, one per defect class: ``json_file`` (JSON structure, ids, categories),
``images`` (image entries and files), ``annotations`` (boxes and segmentations),
``dataset`` (splits; ``check_coco``/``check_dataset``), ``report`` (result types and
the defect table ``DEFECTS``), ``cli``.

CLI: ``python -m sam3_lora_plugin.data.check PATH`` (a JSON file, a split folder, or a
dataset root with train/valid/test); exit code 1 on errors, 0 otherwise.
"""

from __future__ import annotations

from .cli import main
from .dataset import check_coco, check_dataset
from .json_file import is_code_like_name
from .report import CheckReport, DatasetError, Issue

__all__ = ["DatasetError", "Issue", "CheckReport", "check_coco", "check_dataset", "is_code_like_name", "main"]
