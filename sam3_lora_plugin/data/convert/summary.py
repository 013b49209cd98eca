"""What a conversion reports (``ConversionSummary``) and how category names are settled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..check import is_code_like_name
from ..synthetic import ANN_FILE
from .sources import WarningTally

__all__ = ["ConversionSummary", "resolve_categories"]


@dataclass
class ConversionSummary:
    """What a conversion wrote.

    Attributes:
        out_dir: Dataset root.
        splits: Split name -> ``(images, annotations)`` written.
        categories: Category names; category id = position + 1.
        warnings: One line per kind of problem, with count and first offenders.
        objects_in: Objects found in the source (LabelMe polygons sharing a group id
            count once), whether written or not.
        skipped: Reason -> source objects not written.
    """

    out_dir: Path
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    objects_in: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def images(self) -> int:
        """Images written over all splits."""
        return sum(n for n, _ in self.splits.values())

    @property
    def annotations(self) -> int:
        """Annotations written over all splits."""
        return sum(n for _, n in self.splits.values())

    @property
    def json_paths(self) -> dict[str, Path]:
        """Split name -> its ``_annotations.coco.json``."""
        return {s: self.out_dir / s / ANN_FILE for s in self.splits}

    @property
    def objects_line(self) -> str:
        """``1,234 objects in, 1,230 written, 4 skipped (3 point, 1 line)``."""
        reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return (f"{self.objects_in:,} objects in, {self.annotations:,} written, {sum(self.skipped.values()):,} "
                f"skipped" + (f" ({reasons})" if reasons else ""))

    def __str__(self) -> str:
        per_split = ", ".join(f"{s}: {i} images/{a} annotations" for s, (i, a) in self.splits.items())
        return (f"wrote {self.images} images, {self.annotations} annotations, {len(self.categories)} "
                f"categories to {self.out_dir} ({per_split}); {len(self.warnings)} warning(s)\n{self.objects_line}")


def resolve_categories(labels: Sequence[str], order: Sequence[str] | None, rename: Mapping[str, str],
                       tally: WarningTally) -> list[str]:
    """Final category names, in id order.

    Args:
        labels: Every source label seen (repeats allowed).
        order: Explicit order (source or renamed names); None for alphabetical.
        rename: Source name -> new name; several names may map to one (merging them).
        tally: Receives a warning per code-like name.
    """
    names = [rename.get(n, n) for n in (order if order is not None else sorted(set(labels)))]
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if order is None:
        names.sort()
    for name in names:
        if is_code_like_name(name):
            tally.add("category names that look like codes; SAM3 uses the name as the text prompt, "
                      "so rename them to words (e.g. --rename class_3='red car')", repr(name))
    return names
