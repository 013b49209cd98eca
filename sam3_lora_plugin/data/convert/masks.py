"""Instance mask PNGs -> COCO polygons (default) or RLE.

Source layout (optionally inside ``train/``, ``valid/``/``val/``, ``test/`` folders)::

    images/<name>.jpg                  the images
    masks/<name>/<category>/*.png      per-object binary masks, one PNG per object
    masks/<name>/*.png                 per-object binary masks of ``default_category``
    masks/<name>.png                   an id mask: each non-zero value is one object
    masks/<name>.json                  optional, for an id mask: {"<value>": "<category>"}

Binary masks: any non-zero (non-black) pixel is the object. Id masks must be single
channel (8- or 16-bit grey, or palette indices); an object's category comes from the
sidecar JSON, else from ``id_categories`` (value -> category, the same for every image),
else ``default_category``. Values with no category are skipped with a warning.

Masks must have the image's size. Polygons trace pixel edges (pycocotools rasterises
them back to the same pixels) but fill holes; ``mask_format="rle"`` keeps masks exact.
``area``/``bbox`` always come from the mask (pycocotools ``area``/``toBbox``).
Category ids: ``categories`` order if given, else alphabetical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .coco_writer import ConversionSummary, write_coco_dataset
from .sources import IMAGE_EXTS, Shape, SourceImage, WarningTally, find_split_dirs, list_images

__all__ = ["read_mask_split", "convert_masks"]


def _id_mask_shapes(path: Path, id_categories: Mapping[int, str], default_category: str | None,
                    tally: WarningTally) -> list[Shape]:
    sidecar = path.with_suffix(".json")
    mapping = dict(id_categories)
    if sidecar.is_file():
        try:
            mapping = {int(k): str(v) for k, v in json.loads(sidecar.read_text()).items()}
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{sidecar}: expected a JSON object {{\"<mask value>\": \"<category>\"}} ({exc})") from exc
    with Image.open(path) as im:
        values = np.unique(np.asarray(im))
    shapes = []
    for value in (int(v) for v in values if v != 0):
        label = mapping.get(value, default_category)
        if label is None:
            tally.add("id-mask values with no category (skipped; add masks/<name>.json, --id-map or "
                      "--category)", f"{path.name}={value}")
            continue
        shapes.append(Shape(label=label, mask_path=path, mask_value=value))
    return shapes


def read_mask_split(folder: str | os.PathLike, *, default_category: str | None = None,
                    id_categories: Mapping[int, str] | None = None,
                    tally: WarningTally | None = None) -> list[SourceImage]:
    """Images in ``folder/images`` with their objects from ``folder/masks``."""
    folder, tally = Path(folder), tally if tally is not None else WarningTally()
    mask_root = folder / "masks"
    if not (folder / "images").is_dir() or not mask_root.is_dir():
        raise ValueError(f"{folder} needs images/ and masks/ folders; the layout is in "
                         f"`python -m sam3_lora_plugin.data.convert masks --help`")
    images = []
    for image in list_images(folder / "images"):
        src = SourceImage(path=image, ref=image.name)
        per_object, id_mask = mask_root / image.stem, mask_root / f"{image.stem}.png"
        if per_object.is_dir():
            for png in sorted(p for p in per_object.rglob("*") if p.suffix.lower() in IMAGE_EXTS):
                label = png.parent.name if png.parent != per_object else default_category
                if label is None:
                    tally.add("masks directly in masks/<name>/ with no --category (skipped; or put them "
                              "in masks/<name>/<category>/)", png.name)
                    continue
                src.shapes.append(Shape(label=label, mask_path=png))
        elif id_mask.is_file():
            src.shapes = _id_mask_shapes(id_mask, id_categories or {}, default_category, tally)
        else:
            tally.add("images without masks (kept, with no objects)", image.name)
        images.append(src)
    return images


def convert_masks(src: str | os.PathLike, out: str | os.PathLike, *, split_name: str = "train",
                  default_category: str | None = None, id_categories: Mapping[int, str] | None = None,
                  categories: Sequence[str] | None = None, rename: Mapping[str, str] | None = None,
                  mask_format: str = "polygon", link: str = "copy", overwrite: bool = False) -> ConversionSummary:
    """Convert instance mask PNGs to ``<out>/<split>/_annotations.coco.json``.

    Args:
        src: Folder with ``images/`` and ``masks/`` (or split folders holding them).
        out: Output dataset root.
        split_name: Output split for a single-split source.
        default_category: Category of masks with no category folder / id mapping.
        id_categories: Id-mask value -> category, for every image without a sidecar JSON.
        categories: Category order (ids 1..N); default alphabetical.
        rename: Category -> new name (text prompt).
        mask_format: ``polygon`` or ``rle``.
        link: ``copy``, ``hardlink`` or ``symlink`` the images.
        overwrite: Replace an earlier conversion in ``out`` (never anything else).
    """
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"mask source {src} is not a folder; pass the folder holding images/ and masks/")
    tally = WarningTally()
    folders = find_split_dirs(src) or {split_name: src}
    splits = {split: read_mask_split(folder, default_category=default_category, id_categories=id_categories,
                                     tally=tally) for split, folder in folders.items()}
    return write_coco_dataset(splits, out, categories=categories, rename=rename, link=link,
                              mask_format=mask_format, overwrite=overwrite, tally=tally)
