"""Pascal VOC XML -> COCO (boxes, and masks from ``<polygon>`` elements).

Source layouts:

- VOCdevkit: ``Annotations/*.xml`` and ``JPEGImages/``; splits from
  ``ImageSets/Main/{train,val,test}.txt`` when present (``val`` -> ``valid``;
  ``trainval.txt`` is used as train when there is no ``train.txt``).
- Split folders ``train/``, ``valid/``/``val/``, ``test/`` holding XMLs (+ images).
- One folder of XMLs next to their images (LabelImg), written as ``--split-name``.

Each XML's ``<filename>`` is looked up beside the XML, in ``JPEGImages/`` and
``images/``; failing that, an image with the XML's stem.

Coordinates: VOC boxes are 1-based inclusive pixel indices, so ``xmin=1, xmax=W`` covers
the whole image; they become COCO ``[xmin - 1, ymin - 1, xmax - xmin + 1,
ymax - ymin + 1]`` (as detectron2 reads VOC). Tools that write 0-based coordinates
(``xmin`` of 0 appears) need ``zero_based=True`` (``--zero-based``), which reads
``xmin..xmax`` as continuous coordinates.

Polygons: an ``<object>`` with ``<polygon><x1>..</x1><y1>..</y1><x2>..`` children (as
Roboflow's and supervision's VOC exports write a mask) becomes a mask annotation. The
vertices are pixel indices along the mask's outline, 1-based like the box (0-based
with ``zero_based``); the filled outline, boundary pixels included, is the mask, as
supervision reads it back. Several ``<polygon>`` elements in one object form one mask.

Flags: ``truncated``, ``occluded`` and ``difficult`` are kept as extra annotation keys
(SAM3 ignores unknown keys). ``difficult`` objects are by default ordinary annotations
(``difficult="keep"``); ``"crowd"`` marks them ``iscrowd=1`` (SAM3's ``FilterCrowds``
drops their queries in training and COCO eval ignores them, VOC's own rule), and
``"skip"`` drops them.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .coco_writer import ConversionSummary, write_coco_dataset
from .sources import (SPLIT_ALIASES, Shape, SourceImage, WarningTally, check_something_read, find_image,
                      find_split_dirs)

__all__ = ["read_voc_xml", "convert_voc", "DIFFICULT_MODES"]

DIFFICULT_MODES = ("keep", "crowd", "skip")
_FLAGS = ("difficult", "truncated", "occluded")


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text else None


def _polygon(node: ET.Element) -> np.ndarray:
    """``(N, 2)`` vertices of a ``<polygon>`` (``x1, y1, x2, y2, ...`` children, or
    ``<pt><x>..</x><y>..</y></pt>`` points)."""
    values = [float(c.text) for c in node.iter() if c is not node and c.text and c.text.strip()]
    if len(values) % 2:
        raise ValueError(f"{len(values)} coordinates")
    return np.asarray(values, np.float64).reshape(-1, 2)


def read_voc_xml(xml_path: Path, image_dirs: Sequence[Path], *, zero_based: bool = False,
                 difficult: str = "keep", tally: WarningTally | None = None) -> SourceImage | None:
    """Parse one VOC XML into a ``SourceImage`` (None if unreadable or not a VOC
    ``<annotation>``, recorded in ``tally``)."""
    tally = tally if tally is not None else WarningTally()
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        tally.add_unreadable("unreadable VOC XML files (skipped)", xml_path, f"is not valid XML ({exc})")
        return None
    except OSError as exc:
        tally.add_unreadable("unreadable VOC XML files (skipped)", xml_path, f"cannot be read ({exc.strerror or exc})")
        return None
    if root.tag != "annotation":
        tally.add_unreadable("XML files that are not VOC annotations (skipped)", xml_path,
                             f"is not a Pascal VOC annotation (its root element is <{root.tag}>, not <annotation>)")
        return None
    filename = _text(root, "filename") or ""
    dirs = [xml_path.parent, *image_dirs]
    image = next((d / filename for d in dirs if filename and (d / filename).is_file()), None)
    image = image or next((p for d in dirs if (p := find_image(d, xml_path.stem))), None)
    size = root.find("size")
    w, h = _text(size, "width"), _text(size, "height")
    declared = (int(float(w)), int(float(h))) if w and h and float(w) > 0 and float(h) > 0 else None
    src = SourceImage(path=image or xml_path.parent / (filename or xml_path.stem), declared_size=declared,
                      ref=xml_path.name)
    offset = 0.0 if zero_based else 1.0
    for obj in root.iter("object"):
        name, box = _text(obj, "name") or "", obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(_text(box, k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            xmin = float("nan")
        try:
            polygons = [_polygon(p) for p in obj.findall("polygon")]
        except ValueError as exc:
            tally.skip("malformed", "VOC <polygon> elements that are not numbers in x/y pairs (object skipped)",
                       f"{xml_path.name}:{name} ({exc})")
            continue
        polygons = [p - offset for p in polygons if len(p) >= 1]
        if (box is None or xmin != xmin) and not polygons:
            tally.skip("malformed", "VOC objects without a numeric <bndbox> or <polygon> (skipped)",
                       f"{xml_path.name}:{name}")
            continue
        flags = {k: int(v in ("1", "1.0", "true", "True")) for k in _FLAGS if (v := _text(obj, k)) is not None}
        if flags.get("difficult") and difficult == "skip":
            tally.skip("difficult", "difficult objects skipped", f"{xml_path.name}:{name}")
            continue
        crowd = int(bool(flags.get("difficult")) and difficult == "crowd")
        if polygons:
            src.shapes.append(Shape(label=name, pixel_polygons=polygons, iscrowd=crowd, extra=flags))
            continue
        if not zero_based and (xmin == 0 or ymin == 0):
            tally.add("boxes with xmin or ymin = 0, impossible in 1-based VOC; if your tool writes 0-based "
                      "coordinates pass --zero-based", xml_path.name)
        src.shapes.append(Shape(label=name, box=(xmin - offset, ymin - offset, xmax, ymax), iscrowd=crowd,
                                extra=flags))
    return src


def _voc_split_lists(src: Path) -> dict[str, list[str]]:
    main = src / "ImageSets" / "Main"
    lists = {name: main / f"{name}.txt" for name in ("train", "trainval", "val", "test")}
    found = {n: p for n, p in lists.items() if p.is_file()}
    if "train" in found:
        found.pop("trainval", None)
    out: dict[str, list[str]] = {}
    for name, path in found.items():
        split = "train" if name == "trainval" else SPLIT_ALIASES[name]
        out[split] = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return out


def convert_voc(src: str | os.PathLike, out: str | os.PathLike, *, split_name: str = "train",
                categories: Sequence[str] | None = None, rename: Mapping[str, str] | None = None,
                zero_based: bool = False, difficult: str = "keep", link: str = "copy",
                overwrite: bool = False) -> ConversionSummary:
    """Convert Pascal VOC XML annotations to ``<out>/<split>/_annotations.coco.json``.

    Args:
        src: VOC folder (see the module docstring for the layouts).
        out: Output dataset root.
        split_name: Output split for a single-folder source.
        categories: Category order (ids 1..N); default alphabetical.
        rename: VOC class -> category name (text prompt).
        zero_based: Coordinates are 0-based continuous (not VOC's 1-based pixels).
        difficult: ``keep``, ``crowd`` or ``skip`` objects flagged difficult.
        link: ``copy``, ``hardlink`` or ``symlink`` the images.
        overwrite: Replace an earlier conversion in ``out`` (never anything else).

    Raises:
        ValueError: A bad option, ``src`` is not a folder, no image was found, or none
            was read because the XML files are invalid or not VOC (the first is named).
    """
    if difficult not in DIFFICULT_MODES:
        raise ValueError(f"difficult must be one of {DIFFICULT_MODES}, got {difficult!r}")
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"VOC source {src} is not a folder; pass the VOC folder (Annotations/ + JPEGImages/, or XMLs beside their images)")
    tally = WarningTally()
    ann_dir = src / "Annotations" if (src / "Annotations").is_dir() else src
    lists = _voc_split_lists(src) if ann_dir != src else {}
    if lists:
        groups = {split: (src, [ann_dir / f"{i}.xml" for i in ids]) for split, ids in lists.items()}
    else:
        folders = (find_split_dirs(src) if ann_dir == src else {}) or {split_name: src}
        groups = {split: (folder, sorted((folder / "Annotations" if (folder / "Annotations").is_dir() else folder)
                                         .rglob("*.xml"))) for split, folder in folders.items()}
    splits = {}
    for split, (folder, xmls) in groups.items():
        image_dirs = [d for d in (folder / "JPEGImages", folder / "images", folder) if d.is_dir()]
        images = (read_voc_xml(x, image_dirs, zero_based=zero_based, difficult=difficult, tally=tally)
                  for x in xmls)
        splits[split] = [im for im in images if im is not None]
    check_something_read(splits, tally, "VOC annotation",
                         "repair or remove the unreadable file(s); SRC is a Pascal VOC folder (Annotations/*.xml + "
                         "JPEGImages/, or XMLs beside their images)")
    return write_coco_dataset(splits, out, categories=categories, rename=rename, link=link,
                              overwrite=overwrite, tally=tally)
