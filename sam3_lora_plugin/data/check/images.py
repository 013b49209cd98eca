"""Image entries and files: missing, unreadable or truncated files, sizes that disagree
with the JSON, EXIF orientation.

Truncation (an interrupted download or copy) is found without decoding every image:
the header gives the format, and the file's last bytes must hold the format's end
(JPEG ``FFD9`` end-of-image marker, PNG ``IEND`` chunk, GIF ``;`` trailer; BMP and WebP
state their file size in the header). Only a file whose end does not check out (or a
format with no such end, e.g. TIFF) is decoded in full, so that a JPEG with data
appended after its end marker (motion photos) still passes when it decodes.
``benchmarks/data_check_speed.py`` measures the cost.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

from .json_file import is_int, is_number
from .report import Findings, register_defects

__all__ = ["DEFECTS", "check_image_entries", "find_truncation"]

log = logging.getLogger(__name__)

DEFECTS = register_defects({
    "missing_image": ("error", "image files missing or unreadable",
                      "put the images beside the JSON (or pass image_dir) or remove their entries"),
    "size_swapped": ("error", "JSON width/height swapped relative to the image file (EXIF rotation?)",
                     "write the images upright (PIL.ImageOps.exif_transpose) so pixels match the labels, "
                     "then set width/height from the files"),
    "truncated_image": ("error", "image files truncated or corrupt (they would stop training mid-epoch)",
                        "copy or export these images again (an interrupted download or copy cuts them short), "
                        "or remove their entries"),
    "size_mismatch": ("error", "JSON width/height differ from the image file (SAM3 normalises boxes and decodes "
                      "masks at the JSON size, then places them on the file's pixels: they land in the wrong place)",
                      "set width/height from the files, e.g. convert the source again (it reads sizes from the "
                      "files; see `python -m sam3_lora_plugin.data.convert --help`); if the images were resized "
                      "after labelling, scale the boxes and polygons to the new size as well"),
    "exif_orientation": ("warning", "images carry an EXIF orientation, which SAM3 ignores",
                         "check the labels match the raw (unrotated) pixels, or write images upright"),
})


_TAIL = 64  # bytes read from the end of each file
_ENDS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82", "GIF": b";"}


def _end_checks_out(im: Image.Image) -> bool:
    """True when the open file's last bytes hold the end its format requires."""
    fp = getattr(im, "fp", None)
    if fp is None:
        return False
    fp.seek(0, 2)
    size = fp.tell()
    fp.seek(max(0, size - _TAIL))
    tail = fp.read()
    if im.format in _ENDS:
        return tail.rstrip(b"\x00").endswith(_ENDS[im.format])  # some writers pad with zero bytes
    fp.seek(0)
    head = fp.read(12)
    if im.format == "WEBP":  # RIFF size field: file size - 8
        return int.from_bytes(head[4:8], "little") + 8 <= size
    if im.format == "BMP":  # bfSize: file size (0 in some writers: decode instead)
        return 0 < int.from_bytes(head[2:6], "little") <= size
    return False


def find_truncation(im: Image.Image) -> str | None:
    """Why the opened image's file is incomplete, or None when it is whole.

    Args:
        im: An image just returned by ``PIL.Image.open`` (header read, pixels not).

    Returns:
        None for a complete file; else the decoder's complaint (e.g. ``image file is
        truncated (51 bytes not processed)``).
    """
    if _end_checks_out(im):
        return None
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # the decoder must fail on missing bytes, not pad them
    try:
        im.load()
    except (OSError, ValueError, SyntaxError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed
    return None


def _orientation(im: Image.Image) -> int:
    """EXIF orientation tag (1 = upright), without decoding a PNG's pixels."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PIL's PNG getexif() decodes the whole image to look for a late eXIf chunk
    return im.getexif().get(0x0112, 1)


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
            with Image.open(path) as f:  # reads the header, and the end of the file
                real, truncated = f.size, find_truncation(f)
                orientation = _orientation(f) if not truncated else 1
        except FileNotFoundError:
            found.add("missing_image", f"{ref}: not found")
            continue
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            found.add("missing_image", f"{ref}: {type(exc).__name__}")
            continue
        if truncated:
            found.add("truncated_image", f"{ref}: {truncated}")
        if real == (h, w) != (w, h):
            found.add("size_swapped", f"{ref}: JSON {w}x{h}, file {real[0]}x{real[1]}")
        elif real != (w, h):
            found.add("size_mismatch", f"{ref}: JSON {w}x{h}, file {real[0]}x{real[1]}")
        elif orientation not in (0, 1):
            found.add("exif_orientation", f"{ref}: orientation {orientation}")
    return sizes
