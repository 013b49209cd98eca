"""YOLO txt (detection and segmentation) -> COCO.

Source layouts (first match wins):

- Roboflow YOLO export: ``<src>/{train,valid,test}/{images,labels}/`` (+ ``data.yaml``);
- Ultralytics: ``<src>/images/{train,val,test}/`` with ``<src>/labels/{train,val,test}/``;
- one split: ``<src>/images/`` + ``<src>/labels/``, or images and ``.txt`` side by side.

``val`` is written as ``valid``. Label file for ``images/a/b.jpg`` is ``labels/a/b.txt``;
an image without one is kept as an image with no objects (a negative).

Lines: ``class cx cy w h`` (box, normalised centre and size) or ``class x1 y1 x2 y2 ...``
(polygon, >= 3 normalised points; 4-point rotated boxes included). Coordinates are
fractions of the image size, scaled by the real image size.

Class names: ``data.yaml``/``dataset.yaml`` ``names`` (list, or dict index -> name),
else ``classes.txt``/``obj.names`` (one per line), else the class indices themselves
(with a warning). Categories keep the names' order: class ``k`` -> category id ``k + 1``
for a contiguous list; every declared class is listed in every split.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .coco_writer import ConversionSummary, write_coco_dataset
from .sources import Shape, SourceImage, WarningTally, find_split_dirs, list_images

__all__ = ["load_yolo_names", "find_yolo_splits", "read_yolo_split", "convert_yolo"]

_NAME_FILES = ("classes.txt", "obj.names", "labels/classes.txt")


def load_yolo_names(src: str | os.PathLike, names_file: str | os.PathLike | None = None) -> dict[int, str] | None:
    """Class index -> name from ``names_file`` or the files in ``src``; None if none found.

    Raises:
        ValueError: If a YAML file has no usable ``names``.
    """
    src = Path(src)
    candidates = [Path(names_file)] if names_file else [src / "data.yaml", src / "dataset.yaml",
                                                        *(src / n for n in _NAME_FILES)]
    for path in candidates:
        if not path.is_file():
            if names_file:
                raise ValueError(f"class names file {path} not found")
            continue
        if path.suffix in (".yaml", ".yml"):
            import yaml  # PyYAML, installed with omegaconf/hydra-core

            names = (yaml.safe_load(path.read_text()) or {}).get("names")
            if isinstance(names, list):
                return {i: str(n) for i, n in enumerate(names)}
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
            raise ValueError(f"{path} has no 'names' list or dict; add names: [cat, dog, ...]")
        lines = [line.strip() for line in path.read_text().splitlines()]
        return {i: n for i, n in enumerate(lines) if n}
    return None


def find_yolo_splits(src: str | os.PathLike, split_name: str = "train") -> dict[str, tuple[Path, Path]]:
    """Split -> ``(images folder, labels folder)`` for the layouts in the module docstring."""
    src = Path(src)
    found = {split: (d / "images", d / "labels") if (d / "images").is_dir() else (d, d)
             for split, d in find_split_dirs(src).items()}
    if found:
        return found
    if (src / "images").is_dir():
        nested = find_split_dirs(src / "images")
        if nested:
            return {split: (d, src / "labels" / d.name) for split, d in nested.items()}
        return {split_name: (src / "images", src / "labels")}
    return {split_name: (src, src)}


def _class_indices(label_dirs: Iterable[Path]) -> list[int]:
    """Class indices used in the label files (for datasets without class names)."""
    seen = set()
    for folder in label_dirs:
        for path in folder.rglob("*.txt") if folder.is_dir() else ():
            for line in path.read_text().splitlines():
                try:
                    seen.add(int(float(line.split()[0])))
                except (IndexError, ValueError):
                    pass
    return sorted(seen)


def _parse_labels(path: Path, names: dict[int, str], tally: WarningTally) -> list[Shape]:
    shapes = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        tokens, ref = line.split(), f"{path.name}:{n}"
        if not tokens:
            continue
        try:
            cls, values = int(float(tokens[0])), np.asarray([float(t) for t in tokens[1:]])
        except ValueError:
            tally.add("label lines that are not numbers (skipped)", ref)
            continue
        if cls not in names:
            tally.add("labels with a class index missing from the class names (skipped)", f"{ref} class {cls}")
            continue
        if np.abs(values).max(initial=0) > 1.01:
            tally.add("label coordinates above 1 (YOLO wants fractions of the image size; clipped)", ref)
        if len(values) == 4:
            cx, cy, w, h = values
            shapes.append(Shape(label=names[cls], box=(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2),
                                normalized=True))
        elif len(values) >= 6 and len(values) % 2 == 0:
            shapes.append(Shape(label=names[cls], polygons=[values.reshape(-1, 2)], normalized=True))
        else:
            tally.add("label lines with neither 4 box values nor >= 3 polygon points (skipped)", ref)
    return shapes


def read_yolo_split(images_dir: Path, labels_dir: Path, names: dict[int, str],
                    tally: WarningTally | None = None) -> list[SourceImage]:
    """Images under ``images_dir`` with the shapes of their label files."""
    tally = tally if tally is not None else WarningTally()
    images, used = [], set()
    for image in list_images(images_dir, recursive=True):
        label = labels_dir / image.relative_to(images_dir).with_suffix(".txt")
        src = SourceImage(path=image, ref=label.name)
        if label.is_file():
            used.add(label.resolve())
            src.shapes = _parse_labels(label, names, tally)
        else:
            tally.add("images without a label file (kept, with no objects)", image.name)
        images.append(src)
    if labels_dir.is_dir():
        for label in sorted(labels_dir.rglob("*.txt")):
            if label.resolve() not in used and label.name != "classes.txt":
                tally.add("label files without an image (ignored)", label.name)
    return images


def convert_yolo(src: str | os.PathLike, out: str | os.PathLike, *, split_name: str = "train",
                 names_file: str | os.PathLike | None = None, rename: Mapping[str, str] | None = None,
                 link: str = "copy", overwrite: bool = False) -> ConversionSummary:
    """Convert a YOLO dataset to ``<out>/<split>/_annotations.coco.json`` per split.

    Args:
        src: YOLO dataset root (see the module docstring for layouts).
        out: Output dataset root.
        split_name: Output split for a single-split source.
        names_file: ``data.yaml`` or ``classes.txt`` to use instead of searching ``src``.
        rename: Class name -> category name (text prompt), e.g. ``{"0": "person"}``.
        link: ``copy``, ``hardlink`` or ``symlink`` the images.
        overwrite: Allow writing into non-empty split folders.
    """
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"YOLO source {src} is not a folder")
    tally = WarningTally()
    names = load_yolo_names(src, names_file)
    folders = find_yolo_splits(src, split_name)
    if names is None:
        names = {i: str(i) for i in _class_indices(labels for _, labels in folders.values())}
        tally.add("no data.yaml, classes.txt or obj.names found; class indices used as names", str(src))
    splits = {split: read_yolo_split(images, labels, names, tally) for split, (images, labels) in folders.items()}
    order = [names[k] for k in sorted(names)]
    return write_coco_dataset(splits, out, categories=order, rename=rename, link=link,
                              overwrite=overwrite, tally=tally)
