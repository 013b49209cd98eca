"""What format readers hand to the COCO writer: images with labelled shapes.

Each reader (LabelMe, VOC, YOLO, masks) turns its files into ``SourceImage`` objects
holding ``Shape`` objects in source pixel (or, for YOLO, normalised) coordinates; the
writer in ``coco_writer`` does everything else (image sizes, clipping, rasterising,
category ids), so every format gets the same checks and warnings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Shape", "SourceImage", "WarningTally", "IMAGE_EXTS", "SPLIT_ALIASES",
           "find_split_dirs", "list_images", "find_image", "check_something_read"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Source folder name -> output split. The project's layout (and Roboflow's COCO export)
# names the validation split "valid"; Ultralytics and VOC call it "val".
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}


@dataclass
class Shape:
    """One labelled object.

    Exactly one geometry is set:

    - ``box``: ``x0, y0, x1, y1``, corners in any order;
    - ``polygons``: list of ``(N, 2)`` arrays in continuous coordinates forming one
      instance;
    - ``pixel_polygons``: list of ``(N, 2)`` arrays of 0-based pixel indices whose filled
      outlines (boundary pixels included, as ``cv2.fillPoly`` draws them) form the
      instance: Pascal VOC ``<polygon>`` vertices, which trace mask pixels;
    - ``mask_path``: a PNG; the object is the pixels equal to ``mask_value``, or all
      non-zero pixels when ``mask_value`` is None;
    - ``mask_crop``: a 2-D boolean array whose top-left pixel is ``mask_origin``
      (``x, y``) in the image (LabelMe ``mask`` shapes).

    Attributes:
        label: Source class name (before ``rename``).
        normalized: Coordinates are fractions of the image size (YOLO).
        iscrowd: COCO ``iscrowd`` flag.
        extra: Additional annotation keys kept in the COCO output (e.g. VOC flags).
    """

    label: str
    box: tuple[float, float, float, float] | None = None
    polygons: list[np.ndarray] | None = None
    pixel_polygons: list[np.ndarray] | None = None
    mask_path: Path | None = None
    mask_value: int | None = None
    mask_crop: np.ndarray | None = None
    mask_origin: tuple[int, int] = (0, 0)
    normalized: bool = False
    iscrowd: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceImage:
    """One source image and its objects.

    Attributes:
        path: The image file; may be missing when ``data`` holds the encoded image.
        shapes: Objects on the image.
        declared_size: ``(width, height)`` the annotation file states, if any; the
            writer warns when the real image differs.
        data: Encoded image bytes (LabelMe's embedded ``imageData``), used when
            ``path`` does not exist.
        ref: Name used in warnings (the annotation file, usually).
    """

    path: Path
    shapes: list[Shape] = field(default_factory=list)
    declared_size: tuple[int, int] | None = None
    data: bytes | None = None
    ref: str = ""


class WarningTally:
    """Counts warnings by message, keeping the first few offenders of each, counts the
    source objects that were not written, by reason (``skip``), and lists the annotation
    files that could not be read (``unreadable``)."""

    def __init__(self, max_examples: int = 5) -> None:
        self.max_examples = max_examples
        self._counts: Counter[str] = Counter()
        self._examples: dict[str, list[str]] = {}
        self.skipped: Counter[str] = Counter()
        self.unreadable: list[str] = []

    def add_unreadable(self, message: str, path: Path, problem: str) -> None:
        """Record the annotation file ``path`` as skipped because of ``problem`` (``is not
        valid JSON (...)``): a warning under ``message``, and a line for
        ``check_something_read``."""
        problem = " ".join(problem.split())
        self.unreadable.append(f"{path} {problem}")
        self.add(message, f"{path.name} ({problem})")

    def add(self, message: str, example: str = "", count: int = 1) -> None:
        """Record ``count`` occurrences of ``message``; ``example`` names the offender."""
        self._counts[message] += count
        examples = self._examples.setdefault(message, [])
        if example and len(examples) < self.max_examples and example not in examples:
            examples.append(example)

    def skip(self, reason: str, message: str, example: str = "", count: int = 1) -> None:
        """Record ``count`` source objects not written, for a short ``reason`` (``point``,
        ``outside image``, ...) that the summary line lists, and warn with ``message``."""
        if count:
            self.skipped[reason] += count
            self.add(message, example, count)

    def messages(self) -> list[str]:
        """One line per message, in first-seen order, with count and first offenders."""
        lines = []
        for message, n in self._counts.items():
            examples = self._examples[message]
            tail = f" (first: {', '.join(examples)})" if examples else ""
            lines.append(f"{message}: {n}{tail}")
        return lines


def find_split_dirs(src: Path) -> dict[str, Path]:
    """Sub-folders of ``src`` named like splits (``train``, ``valid``/``val``, ``test``).

    Returns:
        Output split name -> folder; empty when ``src`` has no split folders.

    Raises:
        ValueError: If two folders map to the same split (``val`` and ``valid``).
    """
    found: dict[str, Path] = {}
    for child in sorted(p for p in src.iterdir() if p.is_dir()):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split is None:
            continue
        if split in found:
            raise ValueError(f"{src} has both {found[split].name}/ and {child.name}/; both map to split "
                             f"{split!r}. Merge or rename one of them.")
        found[split] = child
    return found


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension), sorted."""
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def find_image(folder: Path, stem: str) -> Path | None:
    """The image file named ``stem`` plus an image extension in ``folder``, if any."""
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def check_something_read(splits: Mapping[str, Sequence[SourceImage]], tally: WarningTally, what: str,
                         fix: str) -> None:
    """Raise when no image was read and annotation files were unreadable: the files are
    the reason, not an empty source.

    Args:
        splits: Split -> the images read.
        tally: The reader's tally (its ``unreadable`` list).
        what: The annotations, for the message (``"LabelMe annotation"``).
        fix: What to do, for the message.

    Raises:
        ValueError: One line naming the first unreadable file, its problem, and ``fix``.
    """
    if any(splits.values()) or not tally.unreadable:
        return
    first, rest = tally.unreadable[0], tally.unreadable[1:]
    more = f" (and {len(rest)} more unreadable file{'s' if len(rest) > 1 else ''})" if rest else ""
    raise ValueError(f"no {what} could be read: {first}{more}. Fix: {fix}")
