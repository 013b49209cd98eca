"""LabelMe JSON -> COCO.

Source: LabelMe ``*.json`` files (searched recursively), each naming its image in
``imagePath`` (relative to the JSON) or embedding it in ``imageData``. Split folders
(``train/``, ``valid/`` or ``val/``, ``test/``) under the source become output splits;
otherwise the whole source is one split.

Shapes (every type with an area; LabelMe 5 and 6, and X-AnyLabeling's ``rotation``):

- ``polygon`` -> polygon mask; polygons sharing a ``group_id`` and label on one image
  form one instance (LabelMe's way of labelling an object split by occlusion);
- ``rectangle`` (two corners) -> box-only annotation;
- ``oriented_rectangle`` / ``rotation`` (four corners) -> polygon mask;
- ``circle`` (centre, a point on the rim) -> polygon mask, with enough vertices that
  no edge strays more than 1/4 px from the circle;
- ``mask`` (``points`` = top-left and bottom-right pixel, ``mask`` = base64 PNG of that
  crop, as LabelMe's AI tools write it) -> pixel-exact mask (polygons or RLE).

``point``, ``points``, ``line`` and ``linestrip`` have no area: they are skipped,
counted by type in the summary line.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .coco_writer import ConversionSummary, write_coco_dataset
from .sources import Shape, SourceImage, WarningTally, check_something_read, find_image, find_split_dirs

__all__ = ["read_labelme", "convert_labelme", "circle_polygon"]

_CORNERS = ("oriented_rectangle", "rotation")  # four corners of a rotated box


def circle_polygon(center: np.ndarray, rim: np.ndarray, tolerance: float = 0.25) -> np.ndarray:
    """``(N, 2)`` vertices of the circle through ``rim`` around ``center``.

    ``N`` is the smallest count (at least 12) whose chords stay within ``tolerance``
    pixels of the arc: ``r (1 - cos(pi / N)) <= tolerance``.
    """
    r = float(np.hypot(*(np.asarray(rim, float) - np.asarray(center, float))))
    n = 12 if r <= tolerance else max(12, int(np.ceil(np.pi / np.arccos(1 - tolerance / r))))
    angle = 2 * np.pi * np.arange(n) / n
    return np.stack([center[0] + r * np.cos(angle), center[1] + r * np.sin(angle)], axis=1)


def _mask_shape(s: dict, points: np.ndarray, label: str) -> Shape:
    """A LabelMe ``mask`` shape: the crop PNG placed at its top-left point."""
    with Image.open(io.BytesIO(base64.b64decode(s["mask"]))) as im:
        crop = np.asarray(im) != 0
    if crop.ndim == 3:
        crop = crop.any(axis=2)
    x0, y0 = (int(v) for v in np.floor(points.min(axis=0)))
    return Shape(label=label, mask_crop=crop, mask_origin=(x0, y0))


def _read_file(path: Path, tally: WarningTally) -> SourceImage | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        tally.add_unreadable("unreadable LabelMe files (skipped)", path, f"cannot be read ({exc.strerror or exc})")
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        tally.add_unreadable("unreadable LabelMe files (skipped)", path, f"is not valid JSON ({exc})")
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        tally.add_unreadable("JSON files that are not LabelMe annotations (skipped)", path,
                             "is not a LabelMe file (no \"shapes\" list)")
        return None
    image_path = path.parent / str(doc.get("imagePath") or "").replace("\\", "/")
    if not doc.get("imagePath") or not image_path.is_file():  # moved files: same stem beside the JSON
        image_path = find_image(path.parent, path.stem) or image_path
    try:
        data = base64.b64decode(doc["imageData"]) if doc.get("imageData") else None
    except ValueError:
        data = None
    declared = (doc.get("imageWidth"), doc.get("imageHeight"))
    src = SourceImage(path=image_path, data=data, ref=path.name,
                      declared_size=(int(declared[0]), int(declared[1])) if all(declared) else None)
    groups: dict[tuple[str, int], Shape] = {}
    for s in doc["shapes"]:
        kind, label = s.get("shape_type") or "polygon", str(s.get("label", ""))
        ref = f"{path.name}:{label}"
        try:
            points = np.asarray(s.get("points") or [], np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            tally.skip("malformed", "LabelMe shapes with malformed points (skipped)", ref)
            continue
        if kind == "rectangle" and len(points) >= 2:
            src.shapes.append(Shape(label=label, box=(*points.min(axis=0), *points.max(axis=0))))
        elif kind in _CORNERS and len(points) >= 3:
            src.shapes.append(Shape(label=label, polygons=[points]))
        elif kind == "circle" and len(points) >= 2:
            src.shapes.append(Shape(label=label, polygons=[circle_polygon(points[0], points[1])]))
        elif kind == "mask" and s.get("mask") and len(points) >= 1:
            try:
                src.shapes.append(_mask_shape(s, points, label))
            except (OSError, UnidentifiedImageError, ValueError, TypeError) as exc:
                tally.skip("malformed", "LabelMe mask shapes whose mask is not a base64 PNG (skipped)",
                           f"{ref} ({exc})")
        elif kind == "polygon":
            key = (label, s["group_id"]) if s.get("group_id") is not None else None
            if key is not None and key in groups:
                groups[key].polygons.append(points)  # type: ignore[union-attr]
                continue
            shape = Shape(label=label, polygons=[points])
            if key is not None:
                groups[key] = shape
            src.shapes.append(shape)
        elif kind in ("point", "points", "line", "linestrip"):
            tally.skip(kind, f"LabelMe shapes of type {kind!r} skipped (no area: not an object mask or box)", ref)
        else:
            tally.skip(kind if kind in _CORNERS + ("circle", "mask") else "unknown type",
                       f"LabelMe shapes of type {kind!r} skipped (unknown type, or too few points)", ref)
    return src


def read_labelme(folder: str | os.PathLike, tally: WarningTally | None = None) -> list[SourceImage]:
    """Read every LabelMe JSON under ``folder`` (recursively, sorted)."""
    tally = tally if tally is not None else WarningTally()
    images = (_read_file(p, tally) for p in sorted(Path(folder).rglob("*.json")))
    return [im for im in images if im is not None]


def convert_labelme(src: str | os.PathLike, out: str | os.PathLike, *, split_name: str = "train",
                    categories: Sequence[str] | None = None, rename: Mapping[str, str] | None = None,
                    link: str = "copy", overwrite: bool = False) -> ConversionSummary:
    """Convert a LabelMe folder to ``<out>/<split>/_annotations.coco.json`` plus images.

    Args:
        src: Folder of LabelMe JSON files, or one with ``train/``, ``valid/``, ``test/``.
        out: Output dataset root.
        split_name: Output split when ``src`` has no split folders.
        categories: Category order (ids 1..N); default alphabetical.
        rename: Label -> category name (text prompt).
        link: ``copy``, ``hardlink`` or ``symlink`` the images.
        overwrite: Replace an earlier conversion in ``out`` (never anything else).

    Returns:
        The ``ConversionSummary``.

    Raises:
        ValueError: ``src`` is not a folder, no image was found, or none was read because
            the JSON files are invalid or not LabelMe files (the first is named).
    """
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"LabelMe source {src} is not a folder; pass the folder holding the LabelMe *.json files (and their images)")
    tally = WarningTally()
    folders = find_split_dirs(src) or {split_name: src}
    splits = {split: read_labelme(folder, tally) for split, folder in folders.items()}
    check_something_read(splits, tally, "LabelMe annotation",
                         "repair or remove the unreadable file(s); SRC is the folder of LabelMe *.json files (each with "
                         "\"shapes\" and \"imagePath\") and their images")
    return write_coco_dataset(splits, out, categories=categories, rename=rename, link=link,
                              overwrite=overwrite, tally=tally)
