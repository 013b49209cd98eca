"""Check one COCO file (``check_coco``) or a dataset's splits (``check_dataset``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..synthetic import ANN_FILE, SPLITS
from .annotations import check_annotations
from .images import check_image_entries
from .json_file import check_categories, load_json
from .report import CheckReport, Findings, register_defects

__all__ = ["DEFECTS", "check_coco", "check_dataset"]

DEFECTS = register_defects({
    "empty_split": ("error", "split has no images or no annotations", "add labelled images or drop the split"),
    "unused_category": ("warning", "categories without annotations (SAM3 prompts them as negatives everywhere)",
                        "remove them if unintended (Roboflow adds an unused category 0 named after the project)"),
    "missing_split": ("error", "train split missing", "layout: <root>/train/_annotations.coco.json"),
    "missing_valid": ("warning", "valid split missing", "configs validate on <root>/valid/_annotations.coco.json "
                      "(name the folder 'valid', not 'val')"),
    "category_mismatch": ("warning", "categories differ from the train split",
                          "use the same id -> name list in every split"),
})


def check_coco(json_path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
               check_images: bool = True, max_examples: int = 5, progress_every: int = 2000) -> CheckReport:
    """Check one COCO annotation file and its images.

    Args:
        json_path: The ``_annotations.coco.json`` (or any COCO JSON).
        image_dir: Folder that ``file_name`` is relative to; default the JSON's folder
            (Roboflow layout, and what the project's configs pass as ``img_folder``).
        check_images: Open every image file (header: size, EXIF; end of file: truncation);
            False skips file checks.
        max_examples: Offenders listed per defect.
        progress_every: Log a progress line every this many images (0: never).

    Returns:
        A ``CheckReport``; call ``raise_if_errors()`` to fail on errors.
    """
    path = Path(json_path).expanduser()
    found = Findings(path, max_examples)
    report = CheckReport(path=path)
    data = load_json(path, found)
    if data is not None:
        sections = {k: data.get(k) for k in ("images", "annotations", "categories")}
        for key, value in sections.items():
            if not isinstance(value, list):
                found.add("missing_section", key)
        images, anns, cats = (v if isinstance(v, list) else [] for v in sections.values())
        report.category_names = check_categories(cats, found)
        sizes = check_image_entries(images, Path(image_dir) if image_dir else path.parent, check_images,
                             progress_every, found)
        per_cat = check_annotations(anns, sizes, report.category_names, found)
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
    found = Findings(root, kwargs.get("max_examples", 5))
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
