"""Image entries and files: missing or unreadable files, sizes that disagree with the
JSON, EXIF orientation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .json_file import is_int, is_number
from .report import Findings, register_defects

__all__ = ["DEFECTS", "check_image_entries"]

log = logging.getLogger(__name__)

DEFECTS = register_defects({
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
})


def check_image_entries(images: list[Any], image_dir: Path, check_files: bool, progress_every: int,
                 found: Findings) -> dict[Any, tuple[int, int]]:
    """Check ``images`` (and their files if ``check_files``); returns id -> JSON (width, height)."""
    sizes: dict[Any, tuple[int, int]] = {}
    for k, im in enumerate(images, 1):
        if progress_every and k % progress_every == 0:
            log.info("checked %d/%d images of %s", k, len(images), found.path)
        if not isinstance(im, dict) or not is_int(im.get("id")) or not isinstance(im.get("file_name"), str) \
                or not all(is_number(im.get(key)) and im[key] > 0 for key in ("width", "height")):
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
