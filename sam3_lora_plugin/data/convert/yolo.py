"""YOLO txt (detection and segmentation) -> COCO.

Splits (first match wins):

- ``data.yaml``'s ``train:``, ``val:`` and ``test:`` entries, whenever it has any, as
  Ultralytics reads them: each a folder of images (searched recursively), a ``.txt``
  file listing image paths, or a list of those; relative to the YAML's ``path:`` (itself
  relative to the YAML's folder), else to the YAML's folder, with Roboflow's
  ``../train/images`` also tried without its ``../``. Folder names are free
  (``images/train2017``); an entry that does not exist is skipped with a warning;
- Roboflow YOLO export: ``<src>/{train,valid,test}/{images,labels}/``;
- Ultralytics: ``<src>/images/{train,val,test}/`` with ``<src>/labels/{train,val,test}/``;
- one split: ``<src>/images/`` + ``<src>/labels/``, or images and ``.txt`` side by side.

``val`` is written as ``valid``. The label file of an image is Ultralytics': the last
``images`` folder of its path replaced by ``labels``, the extension by ``.txt``
(``images/train2017/a.jpg`` -> ``labels/train2017/a.txt``); without an ``images``
folder in the path, the ``.txt`` beside the image. An image without a label file is
kept as an image with no objects (a negative).

Lines: ``class cx cy w h`` (box, normalised centre and size) or ``class x1 y1 x2 y2 ...``
(polygon, >= 3 normalised points; 4-point rotated boxes included). Coordinates are
fractions of the image size, scaled by the real image size. Polygon vertices are read as
continuous coordinates, like COCO polygons; tools that trace mask pixel centres
(supervision) and OpenCV's fillPoly rasterisation (Ultralytics) differ from pycocotools'
reading by at most the one-pixel outline.

Class names: ``names_file`` (``--names``), else ``data.yaml``/``dataset.yaml`` ``names``
(list, or dict index -> name), else ``classes.txt``/``obj.names`` (one per line); without
any of them the conversion fails (the names are SAM3's text prompts: class indices would
train the prompts "0", "1"). Categories keep the names' order: class ``k`` -> category id
``k + 1`` for a contiguous list; every declared class is listed in every split.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .coco_writer import ConversionSummary, write_coco_dataset
from .sources import Shape, SourceImage, WarningTally, find_split_dirs, list_images

__all__ = ["load_yolo_names", "find_yolo_splits", "read_yolo_split", "convert_yolo", "label_path",
           "splits_from_data_yaml"]

_NAME_FILES = ("classes.txt", "obj.names", "labels/classes.txt")
_YAML_FILES = ("data.yaml", "dataset.yaml")
_YAML_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # PyYAML, installed with omegaconf/hydra-core

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML ({exc}); fix it or pass --names classes.txt") from None
    return data if isinstance(data, dict) else {}


def label_path(image: Path) -> Path:
    """Ultralytics' label file of ``image`` (last ``images`` folder -> ``labels``, ``.txt``),
    or the ``.txt`` beside the image when only that one exists."""
    parts, beside = list(image.parts), image.with_suffix(".txt")
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            label = Path(*parts).with_suffix(".txt")
            return beside if not label.is_file() and beside.is_file() else label
    return beside


def _images_of(entry: Path, tally: WarningTally) -> list[Path]:
    if entry.is_dir():
        return list_images(entry, recursive=True)
    images = []
    for line in entry.read_text().splitlines():
        line = line.strip()
        if line:
            p = Path(line)
            images.append(p if p.is_absolute() else entry.parent / p)
    return images


def splits_from_data_yaml(yaml_path: str | os.PathLike,
                          tally: WarningTally | None = None) -> dict[str, list[Path]]:
    """Split -> image files, from a data.yaml's ``train``/``val``/``test`` (see the module
    docstring); empty when it names none that exists."""
    yaml_path, tally = Path(yaml_path), tally if tally is not None else WarningTally()
    data = _read_yaml(yaml_path)
    root = yaml_path.parent / str(data["path"]) if data.get("path") else yaml_path.parent
    if not root.is_dir():
        root = yaml_path.parent
    splits: dict[str, list[Path]] = {}
    for key, split in _YAML_SPLITS.items():
        entries = data.get(key)
        for entry in entries if isinstance(entries, list) else [entries] if entries else []:
            path = root / str(entry)
            if not path.exists() and str(entry).startswith("../"):
                path = root / str(entry)[3:]  # Roboflow's data.yaml, read from the dataset folder
            if not path.exists():
                tally.add(f"{yaml_path.name} entries that do not exist (skipped)", f"{key}: {entry}")
                continue
            splits.setdefault(split, []).extend(_images_of(path, tally))
    return splits


def load_yolo_names(src: str | os.PathLike, names_file: str | os.PathLike | None = None) -> dict[int, str] | None:
    """Class index -> name from ``names_file`` or the files in ``src``; None if none found.

    Raises:
        ValueError: If a YAML file has no usable ``names``.
    """
    src = Path(src)
    candidates = [Path(names_file)] if names_file else [*(src / n for n in _YAML_FILES),
                                                        *(src / n for n in _NAME_FILES)]
    for path in candidates:
        if not path.is_file():
            if names_file:
                raise ValueError(f"class names file {path} not found; pass --names with an existing data.yaml or "
                                 f"classes.txt, or leave it out to use the one in SRC")
            continue
        if path.suffix in (".yaml", ".yml"):
            names = _read_yaml(path).get("names")
            if isinstance(names, list):
                return {i: str(n) for i, n in enumerate(names)}
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
            raise ValueError(f"{path} has no 'names' list or dict; add names: [cat, dog, ...]")
        lines = [line.strip() for line in path.read_text().splitlines()]
        return {i: n for i, n in enumerate(lines) if n}
    return None


def find_yolo_splits(src: str | os.PathLike, split_name: str = "train", names_file: str | os.PathLike | None = None,
                     tally: WarningTally | None = None) -> dict[str, list[Path]]:
    """Split -> image files, for the layouts in the module docstring."""
    src = Path(src)
    yamls = [Path(names_file)] if names_file and Path(names_file).suffix in (".yaml", ".yml") else \
        [src / n for n in _YAML_FILES]
    for path in yamls:
        if path.is_file():
            found = splits_from_data_yaml(path, tally)
            if found:
                return found
    folders = {split: d / "images" if (d / "images").is_dir() else d for split, d in find_split_dirs(src).items()}
    if not folders and (src / "images").is_dir():
        folders = find_split_dirs(src / "images") or {split_name: src / "images"}
    return {split: list_images(d, recursive=True) for split, d in (folders or {split_name: src}).items()}


def _class_indices(label_files: Iterable[Path]) -> list[int]:
    """Class indices used in the label files (named in the missing-names error)."""
    seen = set()
    for path in label_files:
        if path.is_file():
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
            tally.skip("malformed", "label lines that are not numbers (skipped)", ref)
            continue
        if cls not in names:
            tally.skip("unknown class", "labels with a class index missing from the class names (skipped)",
                       f"{ref} class {cls}")
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
            tally.skip("malformed", "label lines with neither 4 box values nor >= 3 polygon points (skipped)", ref)
    return shapes


def read_yolo_split(images: list[Path], names: dict[int, str], tally: WarningTally | None = None) -> list[SourceImage]:
    """``images`` with the shapes of their label files (``label_path``)."""
    tally = tally if tally is not None else WarningTally()
    out, used, label_dirs = [], set(), set()
    for image in images:
        label = label_path(image)
        label_dirs.add(label.parent)
        src = SourceImage(path=image, ref=label.name)
        if label.is_file():
            used.add(label.resolve())
            src.shapes = _parse_labels(label, names, tally)
        else:
            tally.add("images without a label file (kept, with no objects)", image.name)
        out.append(src)
    for folder in sorted(d for d in label_dirs if d.is_dir() and d not in {i.parent for i in images}):
        for label in sorted(folder.glob("*.txt")):
            if label.resolve() not in used and label.name != "classes.txt":
                tally.add("label files without an image (ignored)", label.name)
    return out


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
        overwrite: Replace an earlier conversion in ``out`` (never anything else).

    Raises:
        ValueError: ``src`` is not a folder, no image was found, or no class names were
            found (``names_file``, ``data.yaml``, ``classes.txt`` or ``obj.names``).
    """
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"YOLO source {src} is not a folder; pass the YOLO dataset folder (data.yaml, images/, labels/)")
    tally = WarningTally()
    names = load_yolo_names(src, names_file)
    folders = find_yolo_splits(src, split_name, names_file, tally)
    if names is None and any(folders.values()):
        used = _class_indices(label_path(im) for ims in folders.values() for im in ims)
        shown = ", ".join(map(str, used[:8])) + (", ..." if len(used) > 8 else "")
        raise ValueError(
            f"YOLO class names are missing: {src} has no data.yaml or dataset.yaml with names:, no "
            f"classes.txt and no obj.names{f' (the labels use class indices {shown})' if used else ''}. "
            f"Fix: add a data.yaml with names: [cat, dog, ...] or a classes.txt with one name per line "
            f"(line k names class k) to SRC, or pass --names FILE")
    names = names or {}  # no images: the writer says so
    splits = {split: read_yolo_split(images, names, tally) for split, images in folders.items()}
    order = [names[k] for k in sorted(names)]
    return write_coco_dataset(splits, out, categories=order, rename=rename, link=link,
                              overwrite=overwrite, tally=tally)
